"""The SQLite backend of the event log: :class:`SqliteEventLog`, one WAL file on the head node."""

from __future__ import annotations

import base64
import dataclasses
import contextlib
import json
import logging
import os
import pickle
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from runtime import _lease, _sqlite_logs
from runtime._log_types import ExecutionRecord, check_limit
from runtime.errors import StateStoreError, StateStoreLostError
from runtime.audit import LogEntry, LogQuery
from runtime.events import Event, EventKind, upcast
from runtime.masking import make_private

_logger = logging.getLogger("sopflow.eventlog")

SCHEMA_VERSION = 3
"""The SQLite schema this module writes; a file with a newer one is refused, an older one upgraded.

3: the audit log's ``logs`` table (:mod:`runtime._sqlite_logs`); an older store gets it, empty,
when a writer opens it (its earlier executions have no entries).

2: an event's ``encoding`` names its payload schema too (``json;2``); a bare ``json`` or ``pickle``
is a schema-1 payload, upcast when read (:func:`runtime.events.upcast`).
"""
_SETTING = "setting:"
"""Prefix of engine-wide settings in the ``meta`` table (older stores simply have none)."""


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
_FOREIGN_FIX = "point SOPFLOW_STATE (or --state) at another file, or move this one away"


def _encode(ev: Event) -> tuple[str, str | bytes]:
    """The ``encoding`` (format and payload schema, ``json;2``) and the encoded payload."""
    fmt, data = _encode_data(ev)
    return f"{fmt};{ev.schema}", data


def _decode(ev_kind: EventKind, encoding: str, data: Any) -> dict[str, Any]:
    """The payload of a stored event, upcast to this sopflow's schema (see ``SCHEMA_VERSION``)."""
    fmt, _, schema = encoding.partition(";")
    value = json.loads(data) if fmt == "json" else pickle.loads(data)
    return upcast(ev_kind, value, int(schema or 1))


def _encode_data(ev: Event) -> tuple[str, str | bytes]:
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
        owner: Take the file's lease as this holder id (an engine): every commit then
            checks that the lease is still ours, and a thread renews it every third of
            ``lease_ttl_s``. ``None`` (tools, tests): no lease is taken or checked.
        lease_ttl_s: Seconds without a heartbeat after which another engine may take
            the file over (see :mod:`runtime._lease`).
        checkpoint_every_s: Move the WAL into the main file (and truncate it) this
            often; ``None``: only on :meth:`close`. A short WAL is one a damaged disk
            block can cost little of, and a copy of the main file alone is complete.

    Raises:
        StateStoreError: when the file cannot be created or opened, is not a
            sopflow state store, or has a newer schema than this sopflow knows.
        StateStoreInUseError: ``owner`` is given and another live engine holds the file.
    """

    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "NORMAL",
                 readonly: bool = False, busy_timeout_s: float = 10.0, owner: str | None = None,
                 lease_ttl_s: float = 15.0, checkpoint_every_s: float | None = None) -> None:
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
        self._empty = False
        self.owner = owner
        self.lease_ttl_s = lease_ttl_s
        self._token: int | None = None  # our fencing token while we hold the lease
        self.lost: StateStoreLostError | None = None
        self.checkpoint_every_s = checkpoint_every_s
        self._stop = threading.Event()
        self._logs = _sqlite_logs.LogWriter()
        try:
            self._open_file()
            if owner is not None and not readonly:
                self._token = self._write("take the lease", lambda c: _lease.acquire(
                    c, self.path, owner, lease_ttl_s))
            if not readonly and (owner is not None or checkpoint_every_s):
                threading.Thread(target=self._upkeep, name="sopflow-store-upkeep", daemon=True).start()
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
            # An empty file (pre-created, or the writer has not made the schema yet) reads as empty.
            self._empty = not self._check_schema(self._conn())
            return
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
            make_private(self.path)  # it holds secrets: private even if someone else created it
        except OSError as e:
            raise StateStoreError(f"cannot create the state store {self.path}: {e.strerror}") from e
        try:
            self._writer = self._connect()
            self._check_schema(self._writer)  # before WAL mode: a foreign file is left as it was
            self._writer.execute("PRAGMA journal_mode=WAL")
        except sqlite3.Error as e:
            raise StateStoreError(f"cannot open the state store {self.path}: {e}") from e
        self._write("create the schema", self._create_schema)

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        if self._check_schema(conn):  # again inside the transaction: another writer may have made it
            # An older store: its rows read as they are; stamp the version it is written with now.
            conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version' AND CAST(value AS INTEGER) < ?",
                         (str(SCHEMA_VERSION), SCHEMA_VERSION))
            _sqlite_logs.create(conn)  # a store older than schema 3 gets its (empty) audit log
            return
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        for statement in _SCHEMA:
            conn.execute(statement)
        _sqlite_logs.create(conn)
        conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def _check_schema(self, conn: sqlite3.Connection) -> bool:
        """True for a sopflow store, False for an empty file; raises for anything else."""
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not tables:
                return False
            row = None
            if {"meta", "events", "executions"} <= tables:
                row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.DatabaseError as e:
            self._refuse_foreign(e)
            raise StateStoreError(f"cannot open the state store {self.path}: {e}") from e
        if row is None:
            raise StateStoreError(f"{self.path} is not a sopflow state store: it holds other tables "
                                  f"({', '.join(sorted(tables)[:8])}); {_FOREIGN_FIX}")
        if int(row[0]) > SCHEMA_VERSION:
            raise StateStoreError(f"{self.path} has state-store schema version {row[0]}, newer than the "
                                  f"{SCHEMA_VERSION} this sopflow understands; upgrade sopflow to open it")
        return True

    def _connect(self) -> sqlite3.Connection:
        target, uri = (f"file:{quote(self.path)}?mode=ro", True) if self.readonly else (self.path, False)
        conn = sqlite3.connect(target, uri=uri, timeout=self._timeout, isolation_level=None,
                               check_same_thread=False)
        with self._conns_lock:
            self._conns.append(conn)
        try:
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
        except sqlite3.DatabaseError as e:
            self._refuse_foreign(e)
            raise
        return conn

    def _refuse_foreign(self, e: sqlite3.DatabaseError) -> None:
        """Raise the clear refusal when ``e`` says the file is not SQLite at all."""
        if "not a database" in str(e) or "encrypted" in str(e):
            raise StateStoreError(f"{self.path} is not a sopflow state store: it is not a SQLite "
                                  f"database; {_FOREIGN_FIX}") from e

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
            if self.lost is not None:
                raise self.lost
            conn = self._writer
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    if self._token is not None:  # fencing: commit only while the file is ours
                        try:
                            _lease.renew(conn, self.path, self._token)
                        except StateStoreLostError as e:
                            self.lost = e
                            _logger.error("%s", e)
                            raise
                    result = fn(conn)
                    conn.execute("COMMIT")
                    return result
                finally:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
            except sqlite3.Error as e:
                raise StateStoreError(f"cannot {what} in the state store {self.path}: {e}") from e

    def _read(self, what: str, sql: str, args: Sequence[Any]) -> list[Any]:
        if self._empty:  # read-only on a file without a schema yet: empty until a writer makes it
            self._empty = not self._check_schema(self._conn())
            if self._empty:
                return []
        try:
            return self._conn().execute(sql, args).fetchall()
        except sqlite3.Error as e:
            raise StateStoreError(f"cannot {what} from the state store {self.path}: {e}") from e

    def append(self, events: Sequence[Event], records: Sequence[ExecutionRecord] = ()) -> int:
        rows = [(ev.execution_id, ev.seq, str(ev.kind), ev.ts, ev.step, ev.attempt, *_encode(ev))
                for ev in events]
        recs = [(r.id, r.sop, str(r.status), r.submitted_at, r.ended_at, r.version, int(r.terminal),
                 r.idempotency_key, r.parent) for r in records]

        contexts: dict[str, Any] = {}

        def write(conn: sqlite3.Connection) -> int:
            # The audit entries first: which events are new is judged before they are stored.
            contexts.update(self._logs.write(conn, events))
            before = conn.total_changes
            conn.executemany(_INSERT_EVENT, rows)
            stored = conn.total_changes - before
            conn.executemany(_UPSERT_RECORD, recs)
            return stored

        stored = self._write("append events", write)
        self._logs.committed(contexts, [ev.execution_id for ev in events if ev.kind == EventKind.FINISHED])
        return stored

    def logs(self, query: LogQuery) -> list[LogEntry]:
        """The audit log entries ``query`` selects (see :class:`runtime.audit.LogQuery`)."""
        try:
            rows = None
            if _sqlite_logs.text_only(query) and query.limit:
                # The newest day through the ts index first: if it holds `limit` matches they are
                # the newest of all (a common text); otherwise one full scan (a rare text).
                newest = self._read("query the audit log", "SELECT MAX(ts) FROM logs", ())
                if newest and newest[0][0] is not None:
                    recent = dataclasses.replace(query, since=newest[0][0] - 86_400.0)
                    rows = self._read("query the audit log", *_sqlite_logs.select_sql(recent))
                    rows = rows if len(rows) >= query.limit else None
            if rows is None:
                rows = self._read("query the audit log", *_sqlite_logs.select_sql(query))
        except StateStoreError as e:
            if "no such table: logs" in str(e):  # a store older than schema 3, opened read-only
                return []
            raise
        found = [_sqlite_logs.entry(r) for r in rows]
        return found if query.after is not None else found[::-1]

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
            try:
                value = _decode(_KINDS[kind], encoding, data)
            except ValueError as e:  # a newer payload schema
                raise StateStoreError(f"event #{seq} of {execution_id}: {e}") from e
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
        check_limit(limit)
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

    def put_setting(self, key: str, value: bytes) -> None:
        """Keep an engine-wide setting (an escalation hook's registration) in the ``meta`` table."""
        text = base64.b64encode(bytes(value)).decode()
        self._write("store a setting", lambda c: c.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                                            (_SETTING + key, text)))

    def settings(self, prefix: str = "") -> dict[str, bytes]:
        rows = self._read("read settings", "SELECT key, value FROM meta WHERE key >= ? AND key < ? ORDER BY key",
                          (_SETTING + prefix, _SETTING + prefix + "\uffff"))
        return {k[len(_SETTING):]: base64.b64decode(v) for k, v in rows}

    def drop_setting(self, key: str) -> None:
        self._write("drop a setting", lambda c: c.execute("DELETE FROM meta WHERE key = ?", (_SETTING + key,)))

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

    def purge(self, *, ended_before: float, logs_before: float | None = None) -> int:
        """Remove executions that ended before ``ended_before`` with all they hold (log entries too),
        and log entries older than ``logs_before`` of the executions kept; returns executions removed."""
        doomed = "SELECT id FROM executions WHERE terminal = 1 AND ended_at < ?"

        def write(conn: sqlite3.Connection) -> int:
            for table in ("events", "blobs", "snapshots", "logs"):
                conn.execute(f"DELETE FROM {table} WHERE execution_id IN ({doomed})", (ended_before,))
            if logs_before is not None:
                conn.execute("DELETE FROM logs WHERE ts < ?", (logs_before,))
            return conn.execute("DELETE FROM executions WHERE terminal = 1 AND ended_at < ?",
                                (ended_before,)).rowcount

        removed = self._write("purge executions", write)
        self._logs.forget()
        return removed

    def delete(self, execution_id: str) -> None:
        def write(conn: sqlite3.Connection) -> None:
            for table, column in (("events", "execution_id"), ("blobs", "execution_id"),
                                  ("snapshots", "execution_id"), ("logs", "execution_id"), ("executions", "id")):
                conn.execute(f"DELETE FROM {table} WHERE {column} = ?", (execution_id,))

        self._write("delete an execution", write)
        self._logs.forget(execution_id)

    def stats(self) -> dict[str, int]:
        rows = self._read("count", "SELECT (SELECT COUNT(*) FROM executions), (SELECT COUNT(*) FROM "
                          "events), (SELECT COUNT(*) FROM executions WHERE terminal = 0)", ())
        n, m, k = rows[0] if rows else (0, 0, 0)
        return {"executions": n, "events": m, "unfinished": k}

    def _upkeep(self) -> None:
        """Renew the lease while the writer is idle (every commit renews it too); checkpoint the WAL."""
        beat = self.lease_ttl_s / 3 if self._token is not None else float("inf")
        every = self.checkpoint_every_s or float("inf")
        next_beat, next_checkpoint = time.monotonic() + beat, time.monotonic() + every
        while not self._stop.wait(max(0.0, min(next_beat, next_checkpoint) - time.monotonic())):
            now = time.monotonic()
            try:
                if now >= next_beat:
                    next_beat = now + beat
                    self._write("renew the lease", lambda c: None)
                if now >= next_checkpoint:
                    next_checkpoint = now + every
                    self.checkpoint()
            except StateStoreLostError:
                return
            except StateStoreError as e:  # closed, or a failing disk: tried again next time
                if self._closed:
                    return
                _logger.warning("upkeep of the state store %s failed: %s", self.path, e)

    def checkpoint(self) -> bool:
        """Copy the WAL into the main file and truncate it; False if readers kept part of it."""
        if self.readonly:
            return False
        with self._write_lock:
            if self._closed or self._writer is None:
                raise StateStoreError(f"the state store {self.path} is closed")
            if self.lost is not None:
                raise self.lost
            try:
                busy, _, _ = self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            except sqlite3.Error as e:
                raise StateStoreError(f"cannot checkpoint the state store {self.path}: {e}") from e
        return not busy

    def check(self, *, deep: bool = True) -> list[str]:
        """Problems found in the store (empty: clean); see :func:`runtime._store_check.problems`."""
        from runtime._store_check import problems

        self._read("open", "SELECT 1", ())  # an empty file may have become a store meanwhile
        if self._empty:
            return []
        try:
            return problems(self._conn(), deep=deep)
        except sqlite3.Error as e:
            raise StateStoreError(f"cannot check the state store {self.path}: {e}") from e

    def lease(self) -> _lease.Lease | None:
        """The file's lease row (who owns it), or ``None`` if it was never owned."""
        try:
            return _lease.read(self._conn())
        except sqlite3.Error as e:
            raise StateStoreError(f"cannot read the lease of the state store {self.path}: {e}") from e

    def close(self) -> None:
        """Close every connection (after the commit in progress); reads in flight may fail.

        An owner releases its lease first, so the next engine takes the file at once.
        """
        self._stop.set()
        if not self.readonly and self.lost is None and not self._closed and self._writer is not None:
            if self._token is not None:
                with contextlib.suppress(StateStoreError):
                    self._write("release the lease", lambda c: _lease.release(c, self._token))
            with contextlib.suppress(StateStoreError):  # leave no data in the WAL alone
                self.checkpoint()
        with self._write_lock:
            self._closed = True
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
