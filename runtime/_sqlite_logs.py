"""The audit log's table in the SQLite state store: schema, writing entries with their events, queries.

One row per :class:`runtime.audit.LogEntry`, with an index per filter (each
ending in ``ts``, so a filter and the newest-first order come from one index);
a literal text filter is ``instr`` over the rows the other filters leave.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from runtime.audit import LogContext, LogEntry, LogQuery, context_of_submitted, entries_of
from runtime.events import Event, EventKind

LOG_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS logs (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, execution_id TEXT NOT NULL,
        sop TEXT NOT NULL, agent TEXT, step TEXT, attempt INTEGER, kind TEXT NOT NULL, level INTEGER NOT NULL,
        status TEXT, message TEXT NOT NULL, seq INTEGER, data TEXT)""",
    "CREATE INDEX IF NOT EXISTS logs_ts ON logs (ts)",
    "CREATE INDEX IF NOT EXISTS logs_execution ON logs (execution_id, ts)",
    "CREATE INDEX IF NOT EXISTS logs_sop ON logs (sop, ts)",
    "CREATE INDEX IF NOT EXISTS logs_agent ON logs (agent, ts) WHERE agent IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS logs_step ON logs (step, ts) WHERE step IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS logs_status ON logs (status, ts) WHERE status IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS logs_kind ON logs (kind, ts)",
    # Warnings and errors, newest first: a minimum level of warning or above reads only these.
    "CREATE INDEX IF NOT EXISTS logs_notable ON logs (ts) WHERE level >= 30",
)
_COLUMNS = "id, ts, execution_id, sop, agent, step, attempt, kind, level, status, message, seq, data"
_INSERT = "INSERT INTO logs VALUES (NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
MAX_CONTEXTS = 50_000
"""Executions whose log context a writer keeps in memory (more are read back from the store)."""


def create(conn: sqlite3.Connection) -> None:
    """Create the table and its indexes (in a new store, or one written by an older sopflow)."""
    for statement in LOG_SCHEMA:
        conn.execute(statement)


class LogWriter:
    """Turns appended events into log rows in the same transaction; keeps each execution's context."""

    def __init__(self) -> None:
        self._contexts: dict[str, LogContext] = {}

    def write(self, conn: sqlite3.Connection, events: Sequence[Event]) -> dict[str, LogContext]:
        """Insert the entries of the events not logged before; call before inserting the events.

        Returns the contexts as they are after this batch: pass them to :meth:`committed`
        once the transaction is committed (a rolled-back batch leaves the cache as it was).
        """
        changed: dict[str, LogContext] = {}
        rows: list[tuple[Any, ...]] = []
        for event in events:
            eid = event.execution_id
            ctx = changed.get(eid) or self._contexts.get(eid) or self._read(conn, eid)
            if event.seq <= ctx.last_seq:
                continue  # stored before: its entries are too
            if event.kind == EventKind.SUBMITTED:
                ctx = context_of_submitted(event)
            ctx = LogContext(ctx.sop, ctx.agent, ctx.submitted_at, event.seq)
            changed[eid] = ctx
            rows += (_row(e) for e in entries_of(event, ctx))
        if rows:
            conn.executemany(_INSERT, rows)
        return changed

    def committed(self, changed: dict[str, LogContext], finished: Iterable[str]) -> None:
        if len(self._contexts) + len(changed) > MAX_CONTEXTS:
            self._contexts.clear()  # read back on demand: one indexed read per execution
        self._contexts.update(changed)
        for eid in finished:
            self._contexts.pop(eid, None)

    def forget(self, execution_id: str | None = None) -> None:
        """Drop cached contexts (one execution's, or all) after rows were deleted."""
        if execution_id is None:
            self._contexts.clear()
        else:
            self._contexts.pop(execution_id, None)

    @staticmethod
    def _read(conn: sqlite3.Connection, eid: str) -> LogContext:
        """The context of an execution this writer has not seen: its submission and its last event."""
        from runtime._sqlite_log import _decode  # noqa: PLC0415 - the decoder lives with the event table

        row = conn.execute("SELECT ts, encoding, data FROM events WHERE execution_id = ? AND seq = 1 "
                           "AND kind = 'execution_submitted'", (eid,)).fetchone()
        last = conn.execute("SELECT MAX(seq) FROM events WHERE execution_id = ?", (eid,)).fetchone()[0] or 0
        if row is not None:
            try:
                data = _decode(EventKind.SUBMITTED, row[1], row[2])
            except Exception:  # noqa: BLE001 - an unreadable submission still gets entries, without its SOP
                data = {}
            ctx = context_of_submitted(Event(eid, 1, EventKind.SUBMITTED, row[0], data=data))
        else:
            rec = conn.execute("SELECT sop, submitted_at FROM executions WHERE id = ?", (eid,)).fetchone()
            ctx = LogContext(rec[0], None, rec[1]) if rec else LogContext()
        ctx.last_seq = last
        return ctx


_JSON = json.JSONEncoder(separators=(",", ":"), default=repr)  # one encoder: json.dumps with options makes one per call


def _row(e: LogEntry) -> tuple[Any, ...]:
    return (e.ts, e.execution_id, e.sop, e.agent, e.step, e.attempt, e.kind, e.level, e.status, e.message, e.seq,
            None if e.data is None else _JSON.encode(e.data))


def entry(row: Sequence[Any]) -> LogEntry:
    """A stored row as an entry."""
    rid, ts, eid, sop, agent, step, attempt, kind, level, status, message, seq, data = row
    return LogEntry(ts, eid, sop, kind, level, message, step, attempt, status, agent, seq,
                    None if data is None else json.loads(data), rid)


def _source(q: LogQuery) -> str:
    """The table, with a hint where SQLite's planner (no statistics) would walk the ``ts`` index
    over every row to return them newest first without a sort.

    Without an equality filter or a time range: a minimum level of warning or above walks the
    partial index of warnings and errors newest first; a text filter alone reads the table in
    order (a sequential scan, faster than the ``ts`` index when the text is rare; the caller
    tries the newest day through the ``ts`` index first, which is enough for a common text).
    """
    if q.after is not None or q.since is not None or q.until is not None or any(
            v is not None for v in (q.execution, q.sop, q.agent, q.step, q.status, q.kind)):
        return "logs"
    if q.level is not None and q.level >= 30:
        return "logs INDEXED BY logs_notable"
    return "logs NOT INDEXED" if q.text is not None else "logs"


def text_only(q: LogQuery) -> bool:
    """A query :func:`_source` answers with a full scan: worth trying the newest day first."""
    return _source(q) == "logs NOT INDEXED"


def select_sql(q: LogQuery, *, scan: bool = False) -> tuple[str, list[Any]]:
    """The SELECT answering ``q`` (see :func:`runtime.audit.select` for what it must return).

    ``scan`` reads the whole table instead of an index (the benchmark's baseline).
    """
    where: list[str] = []
    args: list[Any] = []
    for clause, value in (("execution_id = ?", q.execution), ("sop = ?", q.sop), ("agent = ?", q.agent),
                          ("step = ?", q.step), ("status = ?", q.status), ("kind = ?", q.kind),
                          ("ts >= ?", q.since), ("ts < ?", q.until), ("id > ?", q.after)):
        if value is not None:
            where.append(clause)
            args.append(value)
    if q.level is not None:
        if q.level >= 30:  # the literal term lets SQLite use the partial index logs_notable
            where.append("level >= 30")
        where.append("+level >= ?")  # a low minimum keeps nearly every row: no index for it
        args.append(q.level)
    if q.text is not None:
        where.append("instr(message, ?) > 0")  # literal: no LIKE wildcards, no escaping to get wrong
        args.append(q.text)
    sql = f"SELECT {_COLUMNS} FROM {'logs NOT INDEXED' if scan else _source(q)}"
    sql += (" WHERE " + " AND ".join(where)) if where else ""
    if q.after is not None:
        sql += " ORDER BY id"
    else:
        sql += " ORDER BY ts DESC, id DESC"
    return sql + f" LIMIT {int(q.limit)}", args

