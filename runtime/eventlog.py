"""The durable event log and state store: every event of every execution, plus a summary row each.

:class:`EventLog` is the interface; :class:`MemoryEventLog` (tests, throwaway
runs) and :class:`SqliteEventLog` (one WAL file on the head node) implement it,
and :class:`GroupCommitter` batches the coordinator's appends on one writer thread.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence

from runtime._group_commit import GroupCommitter
from runtime._log_types import EventLog, ExecutionRecord, check_limit
from runtime._sqlite_log import SCHEMA_VERSION, SqliteEventLog
from runtime.config import DEFAULT_STATE_PATH, default_state_path
from runtime.errors import StateStoreError, StateStoreInUseError, StateStoreLostError
from runtime.audit import LogContext, LogEntry, LogQuery, context_of_submitted, entries_of, select
from runtime.events import Event, EventKind

__all__ = [
    # the interface and its record
    "EventLog",
    "ExecutionRecord",
    # backends
    "MemoryEventLog",
    "SqliteEventLog",
    "open_log",
    # batching appends
    "GroupCommitter",
    # settings
    "DEFAULT_STATE_PATH",
    "SCHEMA_VERSION",
    "default_state_path",
    # errors
    "StateStoreError",
    "StateStoreInUseError",
    "StateStoreLostError",
]


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
        self._settings: dict[str, bytes] = {}
        self._snapshots: dict[str, tuple[int, bytes]] = {}
        self._logs: list[LogEntry] = []  # in store order; ids from 1
        self._log_ids = 0
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
                    self._log(ev, mine)
            for rec in records:
                old = self._records.get(rec.id)
                if old is None or rec.version > old.version:
                    self._records[rec.id] = rec
            return stored

    def _log(self, ev: Event, mine: dict[int, Event]) -> None:
        """Store the audit entries of a newly stored event (as the SQLite backend does in its commit)."""
        first = mine.get(1)
        ctx = context_of_submitted(first) if first is not None and first.kind == EventKind.SUBMITTED else (
            LogContext(rec.sop, None, rec.submitted_at) if (rec := self._records.get(ev.execution_id)) else LogContext())
        for entry in entries_of(ev, ctx):
            self._log_ids += 1
            self._logs.append(dataclasses.replace(entry, id=self._log_ids))

    def logs(self, query: LogQuery) -> list[LogEntry]:
        """The audit log entries ``query`` selects (see :class:`runtime.audit.LogQuery`)."""
        with self._lock:
            self._open()
            entries = list(self._logs)
        return select(entries, query)

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
        check_limit(limit)
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

    def put_setting(self, key: str, value: bytes) -> None:
        with self._lock:
            self._open()
            self._settings[key] = bytes(value)

    def settings(self, prefix: str = "") -> dict[str, bytes]:
        with self._lock:
            self._open()
            return {k: v for k, v in sorted(self._settings.items()) if k.startswith(prefix)}

    def drop_setting(self, key: str) -> None:
        with self._lock:
            self._open()
            self._settings.pop(key, None)

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

    def purge(self, *, ended_before: float, logs_before: float | None = None) -> int:
        with self._lock:
            self._open()
            ids = [r.id for r in self._records.values()
                   if r.terminal and r.ended_at is not None and r.ended_at < ended_before]
            for execution_id in ids:
                self._drop(execution_id, logs=False)
            gone = set(ids)
            self._logs = [e for e in self._logs if e.execution_id not in gone
                          and (logs_before is None or e.ts >= logs_before)]
            return len(ids)

    def delete(self, execution_id: str) -> None:
        with self._lock:
            self._open()
            self._drop(execution_id)

    def _drop(self, execution_id: str, logs: bool = True) -> None:
        self._events.pop(execution_id, None)
        self._records.pop(execution_id, None)
        self._snapshots.pop(execution_id, None)
        for key in [k for k in self._blobs if k[0] == execution_id]:
            del self._blobs[key]
        if logs:
            self._logs = [e for e in self._logs if e.execution_id != execution_id]

    def stats(self) -> dict[str, int]:
        with self._lock:
            self._open()
            return {"executions": len(self._records),
                    "events": sum(len(m) for m in self._events.values()),
                    "unfinished": sum(1 for r in self._records.values() if not r.terminal)}

    def close(self) -> None:
        self._closed = True
