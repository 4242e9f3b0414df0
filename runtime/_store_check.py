"""Checking and copying a SQLite state store: ``sopflow check``, ``sopflow backup``, and the check at start.

A store is consistent when every execution has both its events and its summary
row, the events of each run 1, 2, … without a gap, and the row agrees with them
(its version is an event that exists; it is terminal exactly when the events end
the execution). A damaged file or WAL shows up here instead of as executions that
silently stop being resumed.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from urllib.parse import quote

from runtime.errors import StateStoreError

MAX_LISTED = 50
"""Problems of the same kind listed one by one; the rest are counted."""

_PER_EXECUTION = """
SELECT x.id, x.version, x.terminal, e.n, e.first, e.last, e.finished FROM executions x
LEFT JOIN (SELECT execution_id, COUNT(*) AS n, MIN(seq) AS first, MAX(seq) AS last,
           SUM(kind = 'execution_finished') AS finished FROM events GROUP BY execution_id) e
       ON e.execution_id = x.id
UNION ALL
SELECT e.execution_id, NULL, NULL, COUNT(*), MIN(seq), MAX(seq), SUM(kind = 'execution_finished')
FROM events e WHERE NOT EXISTS (SELECT 1 FROM executions x WHERE x.id = e.execution_id)
GROUP BY e.execution_id
"""


def problems(conn: sqlite3.Connection, *, deep: bool = True) -> list[str]:
    """Every inconsistency found, one sentence each; empty when the store is clean.

    Args:
        conn: A connection to the store.
        deep: Also run SQLite's ``integrity_check`` over every page (slow on a big file).
    """
    found: list[str] = []
    if deep:
        rows = [r[0] for r in conn.execute("PRAGMA integrity_check(100)")]
        if rows != ["ok"]:
            found += [f"SQLite integrity: {r}" for r in rows]
    kinds: dict[str, list[str]] = {}
    for eid, version, terminal, n, first, last, finished in conn.execute(_PER_EXECUTION):
        for kind, text in _execution_problems(eid, version, terminal, n, first, last, finished):
            kinds.setdefault(kind, []).append(text)
    for texts in kinds.values():
        found += texts[:MAX_LISTED]
        if len(texts) > MAX_LISTED:
            found.append(f"... and {len(texts) - MAX_LISTED} more like the above")
    return found


def _execution_problems(eid: str, version: int | None, terminal: int | None, n: int | None,
                        first: int | None, last: int | None, finished: int | None) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if version is None:
        return [("no-row", f"execution {eid} has {n} event(s) but no state row: it is not listed and would "
                           "not be resumed")]
    if not n:
        return [("no-events", f"execution {eid} has a state row but no events: its history is lost")]
    if first != 1 or last != n:
        out.append(("gap", f"execution {eid} has {n} event(s) numbered {first}..{last}: "
                           f"{last - n} missing"))
    if version > last:
        out.append(("behind", f"execution {eid}: its state row is at event #{version} but its last event is "
                              f"#{last}: events were lost"))
    if bool(terminal) != bool(finished):
        says, events = ("finished", "do not end it") if terminal else ("unfinished", "end it")
        out.append(("terminal", f"execution {eid}: its state row says {says} but its events {events}"))
    return out


def backup(path: str, dest: str | os.PathLike[str]) -> dict[str, int]:
    """Copy the store at ``path`` to ``dest`` with SQLite's online backup (safe while an engine writes).

    The copy is written beside ``dest`` and renamed into place once complete, so
    ``dest`` is never a half-written file. Returns the copy's ``executions`` and ``events``.

    Raises:
        StateStoreError: ``path`` is missing or not a store, or ``dest`` cannot be written.
    """
    target = Path(dest).expanduser().resolve()
    if not Path(path).is_file():
        raise StateStoreError(f"no state store at {path}; give the file with --state or $SOPFLOW_STATE")
    if target == Path(path).resolve():
        raise StateStoreError(f"the backup {target} would overwrite the state file itself; pick another DEST")
    partial = target.with_name(f".{target.name}.partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial.unlink(missing_ok=True)
        fd = os.open(partial, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)  # it holds secrets blobs too
        os.close(fd)
        src = sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True)
        dst = sqlite3.connect(partial)
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
            (n,), = dst.execute("SELECT COUNT(*) FROM executions")
            (m,), = dst.execute("SELECT COUNT(*) FROM events")
        finally:
            dst.close()
            src.close()
        os.replace(partial, target)
    except (OSError, sqlite3.Error) as e:
        partial.unlink(missing_ok=True)
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise StateStoreError(f"cannot back up {path} to {target}: {why}") from e
    return {"executions": n, "events": m}
