"""The ExecutionMonitor: folds the coordinator's events into views and answers status and list queries."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from runtime.config import EngineConfig
from runtime.errors import ExecutionNotFound
from runtime.events import Event, EventKind
from runtime.metrics import ExecutionFacts, compute, facts, from_log, host_resources, selected
from runtime.state import ExecutionState, apply, fold
from runtime.status import ExecutionStatus, ExecutionView


class ExecutionMonitor:
    """Plain class behind the ExecutionMonitor actor (and the in-process engine's monitor).

    Holds unfinished and recently finished executions in memory, folded from the
    coordinator's events; anything older is read from the event log (when the log
    is a file this process can open), and so is everything after a restart.
    """

    def __init__(self, config: EngineConfig | None = None, metrics: Any = None) -> None:
        self.config = (config or EngineConfig(state="memory://")).on_this_node()
        self.states: dict[str, ExecutionState] = {}
        self.history: dict[str, list[Event]] = {}
        self.finished: deque[str] = deque()
        self._retired: set[str] = set()
        self.running = 0
        self._changed: asyncio.Condition | None = None
        self._metrics = metrics
        """Exports counts (``record(state, event, running)``): Ray metrics in the actor, else none."""
        self._log: Any = None
        self._facts: dict[str, ExecutionFacts] = {}
        """Metrics' facts of finished executions in memory, read once (see :meth:`metrics`)."""
        self.resources: Callable[[], dict[str, Any]] = host_resources
        """Measures CPU and memory for :meth:`metrics` (the Ray front measures the cluster)."""
        self.stalled: str | None = None
        """Why the coordinator's store takes no writes now, if it does not."""
        if self.config.durable and os.path.exists(self.config.state):
            self._reload()

    @property
    def log(self) -> Any:
        """The event log, read-only; ``None`` when it lives in the coordinator's memory."""
        if self._log is None and self.config.durable and os.path.exists(self.config.state):
            from runtime.journal import open_event_log

            self._log = open_event_log(self.config, readonly=True)
        return self._log

    def _reload(self) -> None:
        """Rebuild the in-memory view from the log (after a restart of the monitor)."""
        event_log = self.log
        records = [*reversed(event_log.query(terminal=True, limit=self.config.keep_finished)),
                   *event_log.unfinished()]
        for record in records:
            self._load(record.id)
        self.running = sum(1 for s in self.states.values() if not s.status.terminal)
        if self._metrics is not None and hasattr(self._metrics, "reset"):
            self._metrics.reset(self.states.values(), self.running)

    async def resync(self) -> int:
        """Re-read from the log every execution this monitor thinks unfinished (after a coordinator
        restart: events sent to the monitor may have been lost with the old coordinator)."""
        if self.log is None:
            return 0
        stale = [eid for eid, s in self.states.items() if not s.status.terminal]
        stale += [r.id for r in self.log.unfinished() if r.id not in self.states]
        for eid in stale:
            self._load(eid)
        self.running = sum(1 for s in self.states.values() if not s.status.terminal)
        return len(stale)

    def _load(self, execution_id: str) -> bool:
        """Fold one execution's whole history from the log into memory; False if unknown."""
        if self.log is None:
            return False
        events = self.log.read(execution_id)
        if not events:
            return False
        state = self.states[execution_id] = fold(events)
        self.history[execution_id] = events
        if state.status.terminal:
            self._retire(execution_id)
        return True

    def _retire(self, execution_id: str) -> None:
        """Count a finished execution against ``keep_finished``; drop the oldest beyond it."""
        if execution_id in self._retired:
            return  # reloaded from the log: already counted
        self._retired.add(execution_id)
        self.finished.append(execution_id)
        while len(self.finished) > self.config.keep_finished:
            old = self.finished.popleft()
            self._retired.discard(old)
            self.states.pop(old, None)
            self.history.pop(old, None)
            self._facts.pop(old, None)

    async def apply(self, batch: list[Event]) -> int:
        for event in batch:
            state = self.states.get(event.execution_id)
            if state is None or event.seq > state.last_seq + 1:
                # New to this monitor mid-way, or a gap (events sent to a monitor that died, or
                # retired from memory): the log holds every event up to this one.
                if event.seq > 1 and self._load(event.execution_id):
                    continue
                if state is None:
                    state = self.states[event.execution_id] = ExecutionState(event.execution_id)
                    self.history[event.execution_id] = []
            if event.seq <= state.last_seq:
                continue  # duplicate delivery
            apply(state, event)
            self.history[event.execution_id].append(event)
            if event.kind == EventKind.SUBMITTED:
                self.running += 1
            elif event.kind == EventKind.FINISHED:
                self.running -= 1
                self._retire(event.execution_id)
            if self._metrics is not None:
                self._metrics.record(state, event, self.running)
        if self._changed is None:
            self._changed = asyncio.Condition()
        async with self._changed:
            self._changed.notify_all()
        return len(batch)

    def _state(self, execution_id: str) -> ExecutionState:
        state = self.states.get(execution_id)
        if state is None:
            state = self._from_log(execution_id)
        if state is None:
            raise ExecutionNotFound(execution_id)
        return state

    def _from_log(self, execution_id: str) -> ExecutionState | None:
        """An execution no longer (or not yet) in memory, folded from the log without caching it."""
        if self.log is None:
            return None
        from runtime.journal import load_state

        try:
            return load_state(self.log, execution_id)
        except ExecutionNotFound:
            return None

    async def set_stalled(self, reason: str | None) -> None:
        """The coordinator's store stopped taking writes (``reason``), or takes them again (``None``)."""
        self.stalled = reason

    def _shown(self, view: ExecutionView) -> ExecutionView:
        """A running execution is shown ``stalled`` while the store takes no writes."""
        if self.stalled is not None and view.status == ExecutionStatus.RUNNING:
            return dataclasses.replace(view, status=ExecutionStatus.STALLED)
        return view

    async def status(self, execution_id: str, with_outputs: bool = False) -> ExecutionView:
        return self._shown(self._state(execution_id).view(with_outputs=with_outputs))

    async def list(self, status: str | None = None, sop: str | None = None, since: float | None = None,
                   limit: int = 1000, until: float | None = None) -> list[ExecutionView]:
        wanted = ExecutionStatus(status) if status else None
        out = []
        for state in reversed(self.states.values()):  # newest first
            if wanted is not None and state.status != wanted:
                continue
            if sop is not None and state.sop != sop:
                continue
            if since is not None and state.submitted_at < since:
                continue
            if until is not None and state.submitted_at >= until:
                continue
            out.append(self._shown(state.view()))
            if len(out) >= limit:
                return out
        if self.log is not None:  # older executions, no longer in memory
            for record in self.log.query(status=status, sop=sop, since=since, until=until,
                                         limit=limit + len(out)):
                if record.id not in self.states:
                    out.append(_view_of(record))
                    if len(out) >= limit:
                        break
        return out

    async def events(self, execution_id: str, after_seq: int = 0, timeout: float = 0.0) -> list[Event]:
        """Events after ``after_seq``; waits up to ``timeout`` s for new ones if there are none."""
        if execution_id not in self.history and self.log is not None:
            events = self.log.read(execution_id, after_seq)
            if events:
                return events
        if timeout > 0 and self._newer(execution_id, after_seq) == []:
            if self._changed is None:
                self._changed = asyncio.Condition()
            try:
                async with self._changed:
                    await asyncio.wait_for(self._changed.wait_for(
                        lambda: bool(self._newer(execution_id, after_seq))), timeout)
            except asyncio.TimeoutError:
                pass
        if execution_id not in self.history:
            raise ExecutionNotFound(execution_id)
        return self._newer(execution_id, after_seq)

    def _newer(self, execution_id: str, after_seq: int) -> list[Event]:
        history = self.history.get(execution_id, [])
        return history[after_seq:] if len(history) >= after_seq else []

    async def metrics(self, window_s: float | None = None, sop: str | None = None, mode: str | None = None,
                      now: float | None = None, with_resources: bool = True) -> dict[str, Any]:
        """Metrics over ``window_s`` (see :func:`runtime.metrics.compute`): the histories held in memory,
        plus the state store's for executions no longer (or not yet) here, so a restarted monitor
        answers the same."""
        now = time.time() if now is None else now
        since = None if window_s is None else now - window_s
        # A snapshot taken on the loop; the events are read in a thread, so status queries go on meanwhile.
        held = [(eid, history[:], self.states.get(eid)) for eid, history in self.history.items()]
        found, whole = await asyncio.to_thread(self._facts_of, held, since, sop, mode)
        source = "monitor"
        if self.log is not None:
            found += await asyncio.to_thread(from_log, self.log, now=now, window_s=window_s, sop=sop, mode=mode,
                                             skip=whole)
            source = "monitor + state store"
        resources = await asyncio.to_thread(self.resources) if with_resources else None
        return compute(found, now=now, window_s=window_s, sop=sop, mode=mode, resources=resources, source=source)

    def _facts_of(self, held: list[tuple[str, list[Event], ExecutionState | None]], since: float | None,
                  sop: str | None, mode: str | None) -> tuple[list[ExecutionFacts], set[str]]:
        """Facts of the whole histories in ``held`` that may count, and the ids of every whole history."""
        found, whole = [], set()
        for eid, history, state in held:
            if not history or history[0].seq != 1:
                continue  # joined mid-way: the state store has its whole history, if there is one
            whole.add(eid)
            if state is not None and ((sop is not None and state.sop != sop)
                                      or (mode is not None and state.mode != mode)
                                      or (since is not None and state.submitted_at < since and state.status.terminal)):
                continue  # cannot count: skip reading its events
            f = self._facts.get(eid) or facts(history)
            if f.finished and eid in self.states:  # a finished history never changes: read it once
                self._facts[eid] = f
            if selected(f, since=since, sop=sop, mode=mode):
                found.append(f)
        return found, whole

    async def counts(self) -> dict[str, Any]:
        """Executions by status, and the steps of unfinished ones by status (queued apart from running)."""
        by_status: dict[str, int] = {}
        steps: dict[str, int] = {}
        for s in self.states.values():
            by_status[s.status.value] = by_status.get(s.status.value, 0) + 1
            if not s.status.terminal:
                for st in s.steps.values():
                    steps[st.status.value] = steps.get(st.status.value, 0) + 1
        return {"executions": len(self.states), "by_status": by_status, "steps_by_status": steps}


def _view_of(record: Any) -> ExecutionView:
    """A step-less view of an execution known only by its state-store record."""
    return ExecutionView(id=record.id, sop=record.sop, version="", mode="",
                         status=ExecutionStatus(record.status),
                         progress=1.0 if record.terminal else 0.0, steps={},
                         submitted_at=record.submitted_at, ended_at=record.ended_at)
