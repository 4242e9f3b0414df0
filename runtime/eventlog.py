"""The durable event log and state store: every event of every execution, plus a summary row each.

:class:`EventLog` is the interface; :class:`MemoryEventLog` (tests, throwaway
runs) and :class:`SqliteEventLog` (one WAL file on the head node) implement it,
and :class:`GroupCommitter` batches the coordinator's appends on one writer thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pickle
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import quote

from runtime.events import Event, EventKind
from sop.errors import SopflowError

_logger = logging.getLogger("sopflow.eventlog")

DEFAULT_STATE_PATH = str(Path("~/.sopflow/state.db").expanduser())
"""Where the state store lives unless ``$SOPFLOW_STATE`` says otherwise."""

SCHEMA_VERSION = 1
"""The SQLite schema this module writes; a file with a newer one is refused."""


class StateStoreError(SopflowError):
    """Raised when the event log or state store cannot be opened, read or written."""


@dataclass(frozen=True, slots=True)
class ExecutionRecord:
    """The state store's row for one execution (a summary kept next to its events).

    Attributes:
        id: The execution id.
        sop: The SOP's name.
        status: An ``ExecutionStatus`` value, e.g. ``"running"``.
        submitted_at: When it was submitted (seconds since the epoch).
        version: The seq of the last event folded into this row; a row only
            replaces one with a lower version.
        ended_at: When it reached a terminal status, if it did.
        terminal: Whether it did.
        idempotency_key: The key it was submitted with, if any.
        parent: The execution that started it as a sub-SOP, if any.
    """

    id: str
    sop: str
    status: str
    submitted_at: float
    version: int
    ended_at: float | None = None
    terminal: bool = False
    idempotency_key: str | None = None
    parent: str | None = None


@runtime_checkable
class EventLog(Protocol):
    """Append-only events per execution, a versioned record per execution, blobs and snapshots.

    ``read(id, after_seq, until_seq)`` returns events with ``after_seq < seq <= until_seq``
    in seq order; ``query`` filters ``submitted_at`` on ``[since, until)`` and returns
    newest first; ``unfinished`` returns every non-terminal record, oldest first.
    """

    path: str | None

    def append(self, events: Sequence[Event], records: Sequence[ExecutionRecord] = ()) -> int: ...
    def read(self, execution_id: str, after_seq: int = 0, until_seq: int | None = None) -> list[Event]: ...
    def get(self, execution_id: str) -> ExecutionRecord | None: ...
    def find_key(self, idempotency_key: str) -> str | None: ...
    def query(self, *, status: str | Sequence[str] | None = None, sop: str | None = None,
              since: float | None = None, until: float | None = None, terminal: bool | None = None,
              limit: int | None = 1000) -> list[ExecutionRecord]: ...
    def unfinished(self) -> list[ExecutionRecord]: ...
    def put_blob(self, execution_id: str, kind: str, value: bytes) -> None: ...
    def get_blob(self, execution_id: str, kind: str) -> bytes | None: ...
    def drop_blob(self, execution_id: str, kind: str) -> None: ...
    def put_snapshot(self, execution_id: str, seq: int, state: bytes) -> None: ...
    def latest_snapshot(self, execution_id: str,
                        at_or_before: int | None = None) -> tuple[int, bytes] | None: ...
    def purge(self, *, ended_before: float) -> int: ...
    def delete(self, execution_id: str) -> None: ...
    def stats(self) -> dict[str, int]: ...
    def close(self) -> None: ...


def default_state_path() -> str:
    """``$SOPFLOW_STATE`` if set (a path or URL for :func:`open_log`), else :data:`DEFAULT_STATE_PATH`."""
    return os.environ.get("SOPFLOW_STATE") or DEFAULT_STATE_PATH


def open_log(url_or_path: str | None, *, readonly: bool = False) -> EventLog:
    """Open the log a setting names.

    Args:
        url_or_path: ``None``, ``":memory:"`` or ``"memory://"`` for a
            :class:`MemoryEventLog`; ``"sqlite:///abs/path.db"`` or a plain path
            (``~`` expanded) for a :class:`SqliteEventLog`.
        readonly: Open a SQLite log read-only (writes raise :class:`StateStoreError`).

    Raises:
        StateStoreError: for an unknown URL scheme, or ``readonly`` with a memory log.
    """
    if url_or_path is None or url_or_path in (":memory:", "memory://", "memory:"):
        if readonly:
            raise StateStoreError("a memory event log lives in one process and cannot be opened "
                                  "read-only elsewhere; set the state store to a SQLite file path")
        return MemoryEventLog()
    if url_or_path.startswith("sqlite://"):
        return SqliteEventLog(url_or_path.removeprefix("sqlite://"), readonly=readonly)
    if "://" in url_or_path:
        raise StateStoreError(f"unsupported state store {url_or_path!r}: expected a file path, "
                              "'sqlite:///abs/path.db' or 'memory://'")
    return SqliteEventLog(url_or_path, readonly=readonly)


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 0:
        raise StateStoreError(f"limit must be >= 0 or None, got {limit}")


class MemoryEventLog:
    """An :class:`EventLog` in dicts, for tests and runs that need no durability.

    Events, records and ``data`` dicts are stored as given (not copied): callers must
    not mutate a ``data`` dict after appending it. Thread-safe.
    """

    def __init__(self) -> None:
        self.path: str | None = None
        self._lock = threading.Lock()
        self._events: dict[str, dict[int, Event]] = {}
        self._records: dict[str, ExecutionRecord] = {}
        self._blobs: dict[tuple[str, str], bytes] = {}
        self._snapshots: dict[str, tuple[int, bytes]] = {}
        self._closed = False

    def _open(self) -> None:
        if self._closed:
            raise StateStoreError("the memory event log is closed")

    def append(self, events: Sequence[Event], records: Sequence[ExecutionRecord] = ()) -> int:
        with self._lock:
            self._open()
            stored = 0
            for ev in events:
                mine = self._events.setdefault(ev.execution_id, {})
                if ev.seq not in mine:
                    mine[ev.seq] = ev
                    stored += 1
            for rec in records:
                old = self._records.get(rec.id)
                if old is None or rec.version > old.version:
                    self._records[rec.id] = rec
            return stored

    def read(self, execution_id: str, after_seq: int = 0, until_seq: int | None = None) -> list[Event]:
        with self._lock:
            self._open()
            mine = self._events.get(execution_id, {})
            top = until_seq if until_seq is not None else float("inf")
            return [mine[s] for s in sorted(mine) if after_seq < s <= top]

    def get(self, execution_id: str) -> ExecutionRecord | None:
        with self._lock:
            self._open()
            return self._records.get(execution_id)

    def find_key(self, idempotency_key: str) -> str | None:
        with self._lock:
            self._open()
            hits = [r for r in self._records.values() if r.idempotency_key == idempotency_key]
            return min(hits, key=lambda r: (r.submitted_at, r.id)).id if hits else None

    def query(self, *, status: str | Sequence[str] | None = None, sop: str | None = None,
              since: float | None = None, until: float | None = None, terminal: bool | None = None,
              limit: int | None = 1000) -> list[ExecutionRecord]:
        _check_limit(limit)
        statuses = None if status is None else {status} if isinstance(status, str) else set(status)
        with self._lock:
            self._open()
            hits = [r for r in self._records.values()
                    if (statuses is None or r.status in statuses) and (sop is None or r.sop == sop)
                    and (since is None or r.submitted_at >= since)
                    and (until is None or r.submitted_at < until)
                    and (terminal is None or r.terminal == terminal)]
        hits.sort(key=lambda r: (r.submitted_at, r.id), reverse=True)
        return hits if limit is None else hits[:limit]

    def unfinished(self) -> list[ExecutionRecord]:
        with self._lock:
            self._open()
            return sorted((r for r in self._records.values() if not r.terminal),
                          key=lambda r: (r.submitted_at, r.id))

    def put_blob(self, execution_id: str, kind: str, value: bytes) -> None:
        with self._lock:
            self._open()
            self._blobs[execution_id, kind] = bytes(value)

    def get_blob(self, execution_id: str, kind: str) -> bytes | None:
        with self._lock:
            self._open()
            return self._blobs.get((execution_id, kind))

    def drop_blob(self, execution_id: str, kind: str) -> None:
        with self._lock:
            self._open()
            self._blobs.pop((execution_id, kind), None)

    def put_snapshot(self, execution_id: str, seq: int, state: bytes) -> None:
        with self._lock:
            self._open()
            old = self._snapshots.get(execution_id)
            if old is None or seq >= old[0]:
                self._snapshots[execution_id] = (seq, bytes(state))

    def latest_snapshot(self, execution_id: str, at_or_before: int | None = None) -> tuple[int, bytes] | None:
        with self._lock:
            self._open()
            snap = self._snapshots.get(execution_id)
        if snap is None or (at_or_before is not None and snap[0] > at_or_before):
            return None
        return snap

    def purge(self, *, ended_before: float) -> int:
        with self._lock:
            self._open()
            ids = [r.id for r in self._records.values()
                   if r.terminal and r.ended_at is not None and r.ended_at < ended_before]
            for execution_id in ids:
                self._drop(execution_id)
            return len(ids)

    def delete(self, execution_id: str) -> None:
        with self._lock:
            self._open()
            self._drop(execution_id)

    def _drop(self, execution_id: str) -> None:
        self._events.pop(execution_id, None)
        self._records.pop(execution_id, None)
        self._snapshots.pop(execution_id, None)
        for key in [k for k in self._blobs if k[0] == execution_id]:
            del self._blobs[key]

    def stats(self) -> dict[str, int]:
        with self._lock:
            self._open()
            return {"executions": len(self._records),
                    "events": sum(len(m) for m in self._events.values()),
                    "unfinished": sum(1 for r in self._records.values() if not r.terminal)}

    def close(self) -> None:
        self._closed = True


_SCHEMA = (
    """CREATE TABLE events (execution_id TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL,
        ts REAL NOT NULL, step TEXT, attempt INTEGER, encoding TEXT NOT NULL, data BLOB NOT NULL,
        PRIMARY KEY (execution_id, seq)) WITHOUT ROWID""",
    """CREATE TABLE executions (id TEXT PRIMARY KEY, sop TEXT NOT NULL, status TEXT NOT NULL,
        submitted_at REAL NOT NULL, ended_at REAL, version INTEGER NOT NULL, terminal INTEGER NOT NULL,
        idempotency_key TEXT, parent TEXT)""",
    "CREATE INDEX executions_status ON executions (status)",
    "CREATE INDEX executions_sop ON executions (sop, submitted_at)",
    "CREATE INDEX executions_submitted ON executions (submitted_at)",
    "CREATE INDEX executions_key ON executions (idempotency_key) WHERE idempotency_key IS NOT NULL",
    "CREATE INDEX executions_ended ON executions (terminal, ended_at)",
    """CREATE TABLE blobs (execution_id TEXT NOT NULL, kind TEXT NOT NULL, value BLOB NOT NULL,
        PRIMARY KEY (execution_id, kind)) WITHOUT ROWID""",
    "CREATE TABLE snapshots (execution_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, state BLOB NOT NULL)",
)
_INSERT_EVENT = "INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
_UPSERT_RECORD = """INSERT INTO executions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET
    sop = excluded.sop, status = excluded.status, submitted_at = excluded.submitted_at,
    ended_at = excluded.ended_at, version = excluded.version, terminal = excluded.terminal,
    idempotency_key = excluded.idempotency_key, parent = excluded.parent
    WHERE excluded.version > executions.version"""
_RECORD_COLUMNS = "id, sop, status, submitted_at, version, ended_at, terminal, idempotency_key, parent"
_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
_KINDS = {k.value: k for k in EventKind}


def _encode(ev: Event) -> tuple[str, str | bytes]:
    """JSON when it reads back equal; pickle otherwise (tuples, int keys, NaN, objects).

    "Equal" is ``==``: an enum member or a float subclass comes back as its plain value.
    """
    if not ev.data:
        return "json", "{}"
    try:
        text = json.dumps(ev.data, separators=(",", ":"))
        if json.loads(text) == ev.data:
            return "json", text
    except (TypeError, ValueError, RecursionError):
        pass
    try:
        return "pickle", pickle.dumps(ev.data, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - classes defined in __main__ or a function: try by value
        try:
            from ray import cloudpickle  # present wherever events come from a Ray actor

            return "pickle", cloudpickle.dumps(ev.data, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:  # noqa: BLE001 - never stop the log for one odd value: keep its repr
            _logger.warning("event #%s (%s) of %s holds data that can be neither JSON-encoded nor pickled "
                         "(%s); storing the repr of the odd values", ev.seq, ev.kind, ev.execution_id, e)
            return "json", json.dumps(ev.data, separators=(",", ":"), default=_unencodable)


def _unencodable(value: Any) -> str:
    return f"<unencodable {type(value).__name__}: {repr(value)[:300]}>"


class SqliteEventLog:
    """An :class:`EventLog` in one SQLite file (WAL), shared by threads and, read-only, by processes.

    ``synchronous="NORMAL"`` (the default) survives a crashed process or cluster:
    a commit is on disk once the OS has it. ``"FULL"`` also survives power loss,
    at the cost of an fsync per commit. ``"OFF"`` is not durable. Each thread
    gets its own connection, so reads never wait for the writer's commit.

    Args:
        path: The file; created on first use (mode 0600: it holds secrets blobs)
            with its parent directories.
        synchronous: SQLite's ``synchronous`` setting: OFF, NORMAL, FULL or EXTRA.
        readonly: Open an existing file for reading only; writes raise
            :class:`StateStoreError`. Any number of read-only openers may run beside a writer.
        busy_timeout_s: How long a statement waits for another writer's lock.

    Raises:
        StateStoreError: when the file cannot be created or opened, is not a
            sopflow state store, or has a newer schema than this sopflow knows.
    """

    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "NORMAL",
                 readonly: bool = False, busy_timeout_s: float = 10.0) -> None:
        self.path: str | None = os.path.abspath(os.path.expanduser(os.fspath(path)))
        self.synchronous = synchronous.upper()
        if self.synchronous not in _SYNCHRONOUS:
            raise StateStoreError(f"synchronous must be one of {', '.join(_SYNCHRONOUS)}, "
                                  f"got {synchronous!r}")
        self.readonly = readonly
        self._timeout = busy_timeout_s
        self._local = threading.local()  # each thread's reading connection
        self._writer: sqlite3.Connection | None = None
        self._write_lock = threading.Lock()  # writers of this process queue here, not in SQLite's busy loop
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._closed = False
        try:
            self._open_file()
        except BaseException:
            self.close()
            raise

    @classmethod
    def open_readonly(cls, path: str | os.PathLike[str]) -> SqliteEventLog:
        """Open an existing state store for reading only (e.g. from a monitor process)."""
        return cls(path, readonly=True)

    def _open_file(self) -> None:
        if self.readonly:
            if not os.path.exists(self.path):
                raise StateStoreError(f"no state store at {self.path}; it is created by the first writer")
            self._check_schema(self._conn())
            return
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        except OSError as e:
            raise StateStoreError(f"cannot create the state store {self.path}: {e.strerror}") from e
        try:
            self._writer = self._connect()
            self._writer.execute("PRAGMA journal_mode=WAL")
        except sqlite3.Error as e:
            raise StateStoreError(f"cannot open the state store {self.path}: {e}") from e
        self._write("create the schema", self._create_schema)

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table'").fetchone():
            self._check_schema(conn)
            return
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def _check_schema(self, conn: sqlite3.Connection) -> None:
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.DatabaseError as e:
            if "no such table" not in str(e) and "not a database" not in str(e):
                raise StateStoreError(f"cannot open the state store {self.path}: {e}") from e
            row = None
        if row is None:
            raise StateStoreError(f"{self.path} is not a sopflow state store (it has no schema version); "
                                  "point SOPFLOW_STATE at another file")
        if int(row[0]) > SCHEMA_VERSION:
            raise StateStoreError(f"{self.path} has state-store schema version {row[0]}, newer than the "
                                  f"{SCHEMA_VERSION} this sopflow understands; upgrade sopflow to open it")

    def _connect(self) -> sqlite3.Connection:
        target, uri = (f"file:{quote(self.path)}?mode=ro", True) if self.readonly else (self.path, False)
        conn = sqlite3.connect(target, uri=uri, timeout=self._timeout, isolation_level=None,
                               check_same_thread=False)
        with self._conns_lock:
            self._conns.append(conn)
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        return conn

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise StateStoreError(f"the state store {self.path} is closed")
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = self._local.conn = self._connect()
            except sqlite3.Error as e:
                raise StateStoreError(f"cannot open the state store {self.path}: {e}") from e
        return conn

    def _write(self, what: str, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        if self.readonly:
            raise StateStoreError(f"cannot {what}: the state store {self.path} is open read-only")
        with self._write_lock:
            if self._closed or self._writer is None:
                raise StateStoreError(f"the state store {self.path} is closed")
            conn = self._writer
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(conn)
                    conn.execute("COMMIT")
                    return result
                finally:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
            except sqlite3.Error as e:
                raise StateStoreError(f"cannot {what} in the state store {self.path}: {e}") from e

    def _read(self, what: str, sql: str, args: Sequence[Any]) -> list[Any]:
        try:
            return self._conn().execute(sql, args).fetchall()
        except sqlite3.Error as e:
            raise StateStoreError(f"cannot {what} from the state store {self.path}: {e}") from e

    def append(self, events: Sequence[Event], records: Sequence[ExecutionRecord] = ()) -> int:
        rows = [(ev.execution_id, ev.seq, str(ev.kind), ev.ts, ev.step, ev.attempt, *_encode(ev))
                for ev in events]
        recs = [(r.id, r.sop, str(r.status), r.submitted_at, r.ended_at, r.version, int(r.terminal),
                 r.idempotency_key, r.parent) for r in records]

        def write(conn: sqlite3.Connection) -> int:
            before = conn.total_changes
            conn.executemany(_INSERT_EVENT, rows)
            stored = conn.total_changes - before
            conn.executemany(_UPSERT_RECORD, recs)
            return stored

        return self._write("append events", write)

    def read(self, execution_id: str, after_seq: int = 0, until_seq: int | None = None) -> list[Event]:
        sql = ("SELECT seq, kind, ts, step, attempt, encoding, data FROM events WHERE execution_id = ? "
               "AND seq > ? AND seq <= ? ORDER BY seq")
        top = 2**63 - 1 if until_seq is None else until_seq
        rows = self._read("read events", sql, (execution_id, after_seq, top))
        out = []
        for seq, kind, ts, step, attempt, encoding, data in rows:
            if kind not in _KINDS:
                raise StateStoreError(f"event #{seq} of {execution_id} has kind {kind!r}, unknown to this "
                                      "sopflow; upgrade sopflow to read it")
            value = json.loads(data) if encoding == "json" else pickle.loads(data)
            out.append(Event(execution_id, seq, _KINDS[kind], ts, step, attempt, value))
        return out

    @staticmethod
    def _record(row: Sequence[Any]) -> ExecutionRecord:
        rid, sop, status, submitted_at, version, ended_at, terminal, key, parent = row
        return ExecutionRecord(rid, sop, status, submitted_at, version, ended_at, bool(terminal), key, parent)

    def get(self, execution_id: str) -> ExecutionRecord | None:
        rows = self._read("get", f"SELECT {_RECORD_COLUMNS} FROM executions WHERE id = ?", (execution_id,))
        return self._record(rows[0]) if rows else None

    def find_key(self, idempotency_key: str) -> str | None:
        rows = self._read("find a key", "SELECT id FROM executions WHERE idempotency_key = ? "
                          "ORDER BY submitted_at, id LIMIT 1", (idempotency_key,))
        return rows[0][0] if rows else None

    def query(self, *, status: str | Sequence[str] | None = None, sop: str | None = None,
              since: float | None = None, until: float | None = None, terminal: bool | None = None,
              limit: int | None = 1000) -> list[ExecutionRecord]:
        _check_limit(limit)
        where: list[str] = []
        args: list[Any] = []
        if status is not None:
            statuses = [str(status)] if isinstance(status, str) else [str(s) for s in status]
            where.append(f"status IN ({', '.join('?' * len(statuses))})" if statuses else "0")
            args += statuses
        for clause, value in (("sop = ?", sop), ("submitted_at >= ?", since), ("submitted_at < ?", until),
                              ("terminal = ?", None if terminal is None else int(terminal))):
            if value is not None:
                where.append(clause)
                args.append(value)
        sql = f"SELECT {_RECORD_COLUMNS} FROM executions"
        sql += (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY submitted_at DESC, id DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [self._record(r) for r in self._read("query executions", sql, args)]

    def unfinished(self) -> list[ExecutionRecord]:
        sql = f"SELECT {_RECORD_COLUMNS} FROM executions WHERE terminal = 0 ORDER BY submitted_at, id"
        return [self._record(r) for r in self._read("list unfinished executions", sql, ())]

    def put_blob(self, execution_id: str, kind: str, value: bytes) -> None:
        self._write("store a blob", lambda c: c.execute("INSERT OR REPLACE INTO blobs VALUES (?, ?, ?)",
                                                         (execution_id, kind, bytes(value))))

    def get_blob(self, execution_id: str, kind: str) -> bytes | None:
        rows = self._read("get a blob", "SELECT value FROM blobs WHERE execution_id = ? AND kind = ?",
                          (execution_id, kind))
        return bytes(rows[0][0]) if rows else None

    def drop_blob(self, execution_id: str, kind: str) -> None:
        sql = "DELETE FROM blobs WHERE execution_id = ? AND kind = ?"
        self._write("drop a blob", lambda c: c.execute(sql, (execution_id, kind)))

    def put_snapshot(self, execution_id: str, seq: int, state: bytes) -> None:
        sql = ("INSERT INTO snapshots VALUES (?, ?, ?) ON CONFLICT (execution_id) DO UPDATE SET "
               "seq = excluded.seq, state = excluded.state WHERE excluded.seq >= snapshots.seq")
        self._write("store a snapshot", lambda c: c.execute(sql, (execution_id, seq, bytes(state))))

    def latest_snapshot(self, execution_id: str, at_or_before: int | None = None) -> tuple[int, bytes] | None:
        rows = self._read("get a snapshot", "SELECT seq, state FROM snapshots WHERE execution_id = ?",
                          (execution_id,))
        if not rows or (at_or_before is not None and rows[0][0] > at_or_before):
            return None
        return rows[0][0], bytes(rows[0][1])

    def purge(self, *, ended_before: float) -> int:
        doomed = "SELECT id FROM executions WHERE terminal = 1 AND ended_at < ?"

        def write(conn: sqlite3.Connection) -> int:
            for table in ("events", "blobs", "snapshots"):
                conn.execute(f"DELETE FROM {table} WHERE execution_id IN ({doomed})", (ended_before,))
            return conn.execute("DELETE FROM executions WHERE terminal = 1 AND ended_at < ?",
                                (ended_before,)).rowcount

        return self._write("purge executions", write)

    def delete(self, execution_id: str) -> None:
        def write(conn: sqlite3.Connection) -> None:
            for table, column in (("events", "execution_id"), ("blobs", "execution_id"),
                                  ("snapshots", "execution_id"), ("executions", "id")):
                conn.execute(f"DELETE FROM {table} WHERE {column} = ?", (execution_id,))

        self._write("delete an execution", write)

    def stats(self) -> dict[str, int]:
        (n, m, k), = self._read("count", "SELECT (SELECT COUNT(*) FROM executions), (SELECT COUNT(*) FROM "
                                "events), (SELECT COUNT(*) FROM executions WHERE terminal = 0)", ())
        return {"executions": n, "events": m, "unfinished": k}

    def close(self) -> None:
        """Close every connection (after the commit in progress); reads in flight may fail."""
        with self._write_lock:
            self._closed = True
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()


_Target = asyncio.Future[None] | Callable[[], None]
_Item = tuple[Sequence[Event], Sequence[ExecutionRecord]]  # one add()


class GroupCommitter:
    """Commits events from an asyncio loop in batches on one writer thread.

    The writer sleeps until there is work, then commits everything queued (up to
    ``max_batch`` events) in one :meth:`EventLog.append`; whatever piles up
    meanwhile goes into the next commit, so batches grow with load and no time
    window is waited out. Barriers and callbacks settle on their loop, in the
    order they were registered, with one ``call_soon_threadsafe`` per batch.

    A failed commit is final: its events are lost, so later ones would leave a
    gap. Every pending and later barrier gets the :class:`StateStoreError`, and
    :meth:`add` raises it; the owner should restart from the log.

    Args:
        log: Where events go; the committer does not close it.
        max_batch: Most events in one commit (an ``add`` is never split).

    Attributes:
        stats: ``commits``, ``events`` committed and ``max_batch``, the largest commit seen.
        error: The failure that stopped the committer, if any.
    """

    def __init__(self, log: EventLog, *, max_batch: int = 5000) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.log = log
        self.max_batch = max_batch
        self.stats = {"commits": 0, "events": 0, "max_batch": 0}
        self.error: StateStoreError | None = None
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[_Item] = deque()
        self._waiters: deque[tuple[int, asyncio.AbstractEventLoop, _Target]] = deque()
        self._added = 0  # add() calls so far: a barrier waits for the count at its creation
        self._taken = 0
        self._durable = 0
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="sopflow-group-commit", daemon=True)
        self._thread.start()

    def add(self, events: Sequence[Event], records: Sequence[ExecutionRecord] = ()) -> None:
        """Queue events (and the records summarising them) for the next commit; never blocks on I/O.

        Raises:
            StateStoreError: if the committer is closed or a commit failed.
        """
        if not events and not records:
            return
        with self._cond:
            if self.error is not None:
                raise StateStoreError(f"the event log stopped accepting events: {self.error}") from self.error
            if self._closing:
                raise StateStoreError("the group committer is closed")
            self._queue.append((tuple(events), tuple(records)))
            self._added += 1
            self._cond.notify()

    def barrier(self) -> asyncio.Future[None]:
        """A future on the running loop, done once everything added before this call is durable.

        It gets the :class:`StateStoreError` instead if that commit failed.
        """
        future = asyncio.get_running_loop().create_future()
        self._wait(future)
        return future

    def on_durable(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the running loop once everything added so far is durable.

        Cheaper than :meth:`barrier`. If the commit fails the callback is not run
        and the failure is logged; an exception from the callback is logged too.
        """
        self._wait(callback)

    async def flush(self) -> None:
        """Wait until everything added so far is durable."""
        await self.barrier()

    def close(self) -> None:
        """Commit what is queued, waiting for it, and stop the writer thread. Safe to call twice."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()

    def _wait(self, target: _Target) -> None:
        loop = asyncio.get_running_loop()
        with self._cond:
            if self.error is not None or self._durable >= self._added:
                # call_soon keeps the order: earlier batches were scheduled under this lock.
                loop.call_soon(_settle, [target], self.error)
            else:
                self._waiters.append((self._added, loop, target))

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                items = self._take()
            error = self._commit(items)
            with self._cond:
                self._taken += len(items)
                if error is None:
                    self._durable = self._taken
                    ready = []
                    while self._waiters and self._waiters[0][0] <= self._durable:
                        ready.append(self._waiters.popleft())
                else:
                    self.error = error
                    ready, self._waiters = list(self._waiters), deque()
                    self._queue.clear()
                self._dispatch(ready, error)  # under the lock, so _wait's call_soon comes after it
            if error is not None:
                return

    def _take(self) -> list[_Item]:
        items = [self._queue.popleft()]
        size = len(items[0][0])
        while self._queue and size + len(self._queue[0][0]) <= self.max_batch:
            items.append(self._queue.popleft())
            size += len(items[-1][0])
        return items

    def _commit(self, items: list[_Item]) -> StateStoreError | None:
        events: list[Event] = []
        latest: dict[str, ExecutionRecord] = {}
        for evs, recs in items:
            events += evs
            for rec in recs:
                old = latest.get(rec.id)
                if old is None or rec.version > old.version:
                    latest[rec.id] = rec
        try:
            self.log.append(events, list(latest.values()))
        except Exception as e:  # noqa: BLE001 - handed to every waiter
            error = e if isinstance(e, StateStoreError) else StateStoreError(f"commit failed: {e!r}")
            if error is not e:
                error.__cause__ = e
            _logger.error("group commit of %d events failed; the log stops accepting events: %s",
                          len(events), error)
            return error
        self.stats["commits"] += 1
        self.stats["events"] += len(events)
        self.stats["max_batch"] = max(self.stats["max_batch"], len(events))
        return None

    @staticmethod
    def _dispatch(ready: list[tuple[int, asyncio.AbstractEventLoop, _Target]],
                  error: StateStoreError | None) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[_Target]] = {}
        for _, loop, target in ready:
            by_loop.setdefault(loop, []).append(target)
        for loop, targets in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(_settle, targets, error)


def _settle(targets: list[_Target], error: StateStoreError | None) -> None:
    for target in targets:
        if isinstance(target, asyncio.Future):
            if not target.done():
                if error is None:
                    target.set_result(None)
                else:
                    target.set_exception(error)
        elif error is None:
            try:
                target()
            except Exception:  # noqa: BLE001 - one bad callback must not starve the rest
                _logger.exception("on_durable callback %r failed", target)
        else:
            _logger.error("not running %r: the commit it waited for failed: %s", target, error)
