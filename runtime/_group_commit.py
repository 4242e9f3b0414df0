"""Group commit: :class:`GroupCommitter` batches the coordinator's appends on one writer thread."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Sequence

from runtime._log_types import EventLog, ExecutionRecord
from runtime.errors import StateStoreError, StateStoreLostError
from runtime.events import Event

_logger = logging.getLogger("sopflow.eventlog")

_Target = asyncio.Future[None] | Callable[[], None]
_Item = tuple[Sequence[Event], Sequence[ExecutionRecord]]  # one add()


class GroupCommitter:
    """Commits events from an asyncio loop in batches on one writer thread.

    The writer sleeps until there is work, then commits everything queued (up to
    ``max_batch`` events) in one :meth:`EventLog.append`; whatever piles up
    meanwhile goes into the next commit, so batches grow with load and no time
    window is waited out. Barriers and callbacks settle on their loop, in the
    order they were registered, with one ``call_soon_threadsafe`` per batch.

    A commit the store cannot take *for now* (disk full, I/O error, a lock held
    too long: SQLite's operational errors) is retried with backoff, its events
    kept in order, until it lands: meanwhile :attr:`stalled` holds the error,
    barriers wait and :meth:`add` still queues. Any other failure is final: every
    pending and later barrier gets the :class:`StateStoreError`, and :meth:`add`
    raises it; so does losing the state file to another engine.

    Args:
        log: Where events go; the committer does not close it.
        max_batch: Most events in one commit (an ``add`` is never split).
        retry_s: The first and the longest wait between attempts of a stalled commit.
        on_stall: Called on the writer thread with the error when the store stops
            taking writes, and with ``None`` when it takes them again.

    Attributes:
        stats: ``commits``, ``events`` committed, ``max_batch`` (the largest commit
            seen), ``stalls`` (times the store stopped taking writes) and ``retries``.
        error: The failure that stopped the committer, if any.
        stalled: Why the store takes no writes now (commits are being retried), or ``None``.
    """

    def __init__(self, log: EventLog, *, max_batch: int = 5000, retry_s: tuple[float, float] = (0.05, 5.0),
                 on_stall: Callable[[StateStoreError | None], None] | None = None) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.log = log
        self.max_batch = max_batch
        self.retry_s = retry_s
        self.on_stall = on_stall
        self.stats = {"commits": 0, "events": 0, "max_batch": 0, "stalls": 0, "retries": 0}
        self.error: StateStoreError | None = None
        self.stalled: StateStoreError | None = None
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[_Item] = deque()
        self._waiters: deque[tuple[int, asyncio.AbstractEventLoop, _Target]] = deque()
        self._added = 0  # add() calls so far: a barrier waits for the count at its creation
        self._taken = 0
        self._durable = 0
        self._closing = False
        self._stop = threading.Event()
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
        """Commit what is queued, waiting for it, and stop the writer thread. Safe to call twice.

        A stalled commit is tried once more, then given up (its waiters get the error).
        """
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._stop.set()
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
            error = self._commit_until_durable(items)
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

    def _commit_until_durable(self, items: list[_Item]) -> StateStoreError | None:
        """Commit, retrying while the store cannot take writes for now; the final error, if any."""
        events: list[Event] = []
        latest: dict[str, ExecutionRecord] = {}
        for evs, recs in items:
            events += evs
            for rec in recs:
                old = latest.get(rec.id)
                if old is None or rec.version > old.version:
                    latest[rec.id] = rec
        records = list(latest.values())
        delay = self.retry_s[0]
        while True:
            error = self._commit(events, records)
            if error is None or not _transient(error):
                break
            with self._cond:
                if self._closing:  # nobody will wait for the store to come back
                    break
                first = self.stalled is None
                if first:
                    self.stats["stalls"] += 1
                    _logger.error("the state store takes no writes (%s); %d event(s) held, retrying until it "
                                  "does", error, len(events))
                self.stalled = error
                self.stats["retries"] += 1
            if first:
                self._tell(error)
            self._stop.wait(delay)  # close() cuts it short
            delay = min(delay * 2, self.retry_s[1])
        if self.stalled is not None:
            if error is None:
                _logger.warning("the state store takes writes again; %d held event(s) committed", len(events))
            self.stalled = None
            self._tell(None)
        if error is not None:
            _logger.error("group commit of %d events failed; the log stops accepting events: %s",
                          len(events), error)
        return error

    def _tell(self, error: StateStoreError | None) -> None:
        if self.on_stall is not None:
            try:
                self.on_stall(error)
            except Exception:  # noqa: BLE001 - a view of the stall; never stop committing for it
                _logger.exception("on_stall callback failed")

    def _commit(self, events: list[Event], records: list[ExecutionRecord]) -> StateStoreError | None:
        try:
            self.log.append(events, records)
        except Exception as e:  # noqa: BLE001 - handed to every waiter
            error = e if isinstance(e, StateStoreError) else StateStoreError(f"commit failed: {e!r}")
            if error is not e:
                error.__cause__ = e
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


def _transient(error: StateStoreError) -> bool:
    """A failure the store may get over by itself: disk full, I/O error, busy (SQLite's operational errors)."""
    return not isinstance(error, StateStoreLostError) and isinstance(error.__cause__, sqlite3.OperationalError)


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
