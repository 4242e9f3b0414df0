"""The coordinator's side of the event log: group commits, state records, snapshots, the monitor feed.

Every event goes to the log before the coordinator acts on it: actions with an
effect outside the coordinator (starting a Ray task, answering a client,
finishing an execution) wait for :meth:`Journal.on_durable`, which fires once
the commit holding their events is done. Commits are grouped: whatever piled up
while one commit ran goes into the next.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Protocol

from runtime.config import EngineConfig
from runtime.eventlog import EventLog, ExecutionRecord, GroupCommitter, MemoryEventLog, SqliteEventLog
from runtime.errors import ExecutionNotFound
from runtime.events import Event
from runtime.snapshots import encode_snapshot, read_snapshot
from runtime.state import ExecutionState, fold

if TYPE_CHECKING:
    from runtime.execution import Execution

logger = logging.getLogger("sopflow.journal")

FLUSH_INTERVAL_S = 0.025
"""How long events may wait before a batch goes to the monitor: status lags by at most this much
(a waiter is answered at once), and under load each call to the monitor carries more events."""


def open_event_log(config: EngineConfig, *, readonly: bool = False, owner: str | None = None) -> EventLog:
    """The log named by ``config.state``: a SQLite file (owned by ``owner`` when it writes), or memory."""
    if not config.durable:
        return MemoryEventLog()
    return SqliteEventLog(config.state, synchronous=config.synchronous, readonly=readonly,
                          owner=None if readonly else owner, lease_ttl_s=config.lease_ttl_s,
                          checkpoint_every_s=None if readonly else config.checkpoint_every_s)


def record_of(exe: Execution) -> ExecutionRecord:
    """The state store's summary row of an execution, versioned by its last event."""
    state = exe.state
    return ExecutionRecord(state.id, state.sop, state.status.value, state.submitted_at, state.last_seq,
                           state.ended_at, state.status.terminal, state.idempotency_key, exe.request.parent)


def snapshot_of(exe: Execution) -> bytes | None:
    """The execution's state as a versioned JSON snapshot, or None when it cannot be one."""
    return encode_snapshot(exe.state)


class MonitorFeed(Protocol):
    """Where the journal sends committed events (the ExecutionMonitor, in whatever process it lives)."""

    def apply(self, batch: list[Event]) -> Awaitable[Any]:
        """Fold a batch of committed events into the monitor's views."""
        ...

    def set_stalled(self, reason: str | None) -> None:
        """The store stopped taking writes (``reason``) or takes them again; called from any thread."""
        ...

    def resync(self) -> Awaitable[Any]:
        """Re-read unfinished executions from the log (events sent before a restart may be lost)."""
        ...


class Journal:
    """Writes events and records through a :class:`GroupCommitter`; feeds the monitor."""

    def __init__(self, config: EngineConfig, monitor: MonitorFeed | None = None,
                 event_log: EventLog | None = None, owner: str | None = None) -> None:
        self.config = config
        self.log = event_log if event_log is not None else open_event_log(config, owner=owner)
        self.committer = GroupCommitter(self.log, on_stall=self._stall_changed)
        self.monitor = monitor
        self._outbox: list[Event] = []
        self._events: list[Event] = []
        self._records: list[ExecutionRecord] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handover_due = False
        self._after_monitor: list[Callable[[], None]] = []
        self._outbox_ready: asyncio.Event | None = None
        self._urgent: asyncio.Event | None = None
        self._flusher: asyncio.Task | None = None

    def write(self, exe: Execution, event: Event, status_changed: bool) -> None:
        """Queue an event (and the execution's record, when its status changed) for the next commit.

        Events written in one turn of the loop reach the committer together, at the end of the
        turn (or earlier, when someone waits for durability): one hand-over instead of one per event.
        """
        self._events.append(event)
        if status_changed:
            self._records.append(record_of(exe))
        if not self._handover_due:
            self._handover_due = True
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            self._loop.call_soon(self.hand_over)
        exe.since_snapshot += 1
        if exe.since_snapshot >= self.config.snapshot_every:
            exe.since_snapshot = 0
            blob, seq = snapshot_of(exe), exe.state.last_seq
            if blob is not None:
                self.on_durable(lambda: self.log.put_snapshot(exe.id, seq, blob))
        if self.monitor is not None:
            self._outbox.append(event)
            self._wake_flusher()

    def _stall_changed(self, error: Exception | None) -> None:
        """Tell the monitor the store stopped (or resumed) taking writes: its views say ``stalled``."""
        if self.monitor is not None:
            self.monitor.set_stalled(None if error is None else str(error))

    def hand_over(self) -> None:
        """Give the events written so far to the committer (see :meth:`write`)."""
        self._handover_due = False
        if self._events or self._records:
            events, records, self._events, self._records = self._events, self._records, [], []
            self.committer.add(events, records)

    def on_durable(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the loop once everything written so far is committed."""
        self.hand_over()
        self.committer.on_durable(callback)

    async def durable(self) -> None:
        """Wait until everything written so far is committed."""
        self.hand_over()
        await self.committer.barrier()

    def close(self) -> None:
        """Commit what is written and close the log (from any thread, once the loop writes no more)."""
        self.hand_over()
        self.committer.close()
        self.log.close()

    # -- the monitor feed -------------------------------------------------------------------

    def _wake_flusher(self, urgent: bool = False) -> None:
        if self._outbox_ready is None or self._urgent is None:
            self._outbox_ready, self._urgent = asyncio.Event(), asyncio.Event()
            self._flusher = asyncio.get_running_loop().create_task(self._flush_forever())
        self._outbox_ready.set()
        if urgent:
            self._urgent.set()

    async def _flush_forever(self) -> None:
        assert self._outbox_ready is not None and self._urgent is not None
        while True:
            await self._outbox_ready.wait()
            if not self._urgent.is_set():
                try:  # a batching window, cut short when someone waits on the monitor
                    await asyncio.wait_for(self._urgent.wait(), FLUSH_INTERVAL_S)
                except asyncio.TimeoutError:
                    pass
            self._outbox_ready.clear()
            self._urgent.clear()
            await self.flush_monitor()

    def after_monitor(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the monitor has the events written so far (so it answers with them)."""
        if self.monitor is None:
            callback()
            return
        self._after_monitor.append(callback)
        self._wake_flusher(urgent=True)  # someone waits on it: no batching window

    async def flush_monitor(self) -> None:
        """Send pending events to the monitor now."""
        batch, self._outbox = self._outbox, []
        callbacks, self._after_monitor = self._after_monitor, []
        if batch and self.monitor is not None:
            try:
                await self.durable()  # the monitor shows only what the log holds
                await self.monitor.apply(batch)
            except Exception:  # noqa: BLE001 - the monitor is a view; never stop dispatch for it
                logger.exception("could not forward %d events to the monitor", len(batch))
        for callback in callbacks:
            callback()


def load_state(event_log: Any, execution_id: str) -> ExecutionState:
    """Fold an execution's state from the log: its latest snapshot, then the events after it."""
    state = ExecutionState(execution_id)
    snap = event_log.latest_snapshot(execution_id)
    after = 0
    loaded = read_snapshot(snap[1], execution_id) if snap is not None else None
    if snap is not None and loaded is not None:
        after, state = snap[0], loaded
    events = event_log.read(execution_id, after)
    if not events and snap is None:
        raise ExecutionNotFound(execution_id)
    return fold(events, state)
