"""The event log's contract: the :class:`EventLog` protocol and the :class:`ExecutionRecord` it stores.

Shared by :mod:`runtime.eventlog` and its backends so that none of them imports
another to learn the interface; import these names from :mod:`runtime.eventlog`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from runtime.errors import StateStoreError
from runtime.events import Event

if TYPE_CHECKING:
    from runtime.audit import LogEntry, LogQuery


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

    ``append`` also stores the audit log entries of the events it stores (see
    :mod:`runtime.audit`), in the same commit; ``logs`` queries them.
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
    def put_setting(self, key: str, value: bytes) -> None: ...
    def settings(self, prefix: str = "") -> dict[str, bytes]: ...
    def drop_setting(self, key: str) -> None: ...
    def put_snapshot(self, execution_id: str, seq: int, state: bytes) -> None: ...
    def latest_snapshot(self, execution_id: str,
                        at_or_before: int | None = None) -> tuple[int, bytes] | None: ...
    def purge(self, *, ended_before: float, logs_before: float | None = None) -> int: ...
    def logs(self, query: LogQuery) -> list[LogEntry]: ...
    def delete(self, execution_id: str) -> None: ...
    def stats(self) -> dict[str, int]: ...
    def close(self) -> None: ...


def check_limit(limit: int | None) -> None:
    """Refuse a negative ``limit`` for :meth:`EventLog.query`."""
    if limit is not None and limit < 0:
        raise StateStoreError(f"limit must be >= 0 or None, got {limit}")
