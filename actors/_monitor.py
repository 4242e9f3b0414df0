"""The ExecutionMonitor: folds the coordinator's events into views and answers queries."""

from __future__ import annotations

import asyncio
from typing import Any

from runtime.errors import ExecutionNotFound
from runtime.events import Event, EventKind
from runtime.state import ExecutionState, apply
from runtime.status import ExecutionStatus, ExecutionView


class _Metrics:
    """Ray metrics for the dashboard / Prometheus; absent outside a Ray worker."""

    def __init__(self) -> None:
        try:
            from ray.util.metrics import Counter, Gauge, Histogram

            self.steps = Counter("sopflow_step_attempts_total", "Step attempts by outcome",
                                 tag_keys=("sop", "outcome"))
            self.executions = Counter("sopflow_executions_total", "Finished executions by status",
                                      tag_keys=("sop", "status"))
            self.running = Gauge("sopflow_executions_running", "Executions not yet finished")
            self.duration = Histogram("sopflow_execution_seconds", "Execution wall time",
                                      boundaries=[0.05, 0.1, 0.5, 1, 5, 30, 120, 600, 3600],
                                      tag_keys=("sop",))
        except Exception:  # noqa: BLE001 - metrics are best-effort
            self.steps = None

    def record(self, state: ExecutionState, event: Event, running: int) -> None:
        if self.steps is None:
            return
        if event.kind in (EventKind.STEP_SUCCEEDED, EventKind.STEP_FAILED):
            outcome = "succeeded" if event.kind == EventKind.STEP_SUCCEEDED else "failed"
            self.steps.inc(tags={"sop": state.sop, "outcome": outcome})
        elif event.kind == EventKind.FINISHED:
            self.executions.inc(tags={"sop": state.sop, "status": event.data["status"]})
            self.duration.observe(event.ts - state.submitted_at, tags={"sop": state.sop})
            self.running.set(running)
        elif event.kind == EventKind.SUBMITTED:
            self.running.set(running)


class _ExecutionMonitor:
    """Plain class behind the ExecutionMonitor actor."""

    def __init__(self) -> None:
        self.states: dict[str, ExecutionState] = {}
        self.history: dict[str, list[Event]] = {}
        self.running = 0
        self._changed: asyncio.Condition | None = None
        self._metrics = _Metrics()

    async def apply(self, batch: list[Event]) -> int:
        for event in batch:
            state = self.states.get(event.execution_id)
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
            self._metrics.record(state, event, self.running)
        if self._changed is None:
            self._changed = asyncio.Condition()
        async with self._changed:
            self._changed.notify_all()
        return len(batch)

    def _state(self, execution_id: str) -> ExecutionState:
        state = self.states.get(execution_id)
        if state is None:
            raise ExecutionNotFound(execution_id)
        return state

    async def status(self, execution_id: str, with_outputs: bool = False) -> ExecutionView:
        return self._state(execution_id).view(with_outputs=with_outputs)

    async def list(self, status: str | None = None, sop: str | None = None, since: float | None = None,
                   limit: int = 1000) -> list[ExecutionView]:
        wanted = ExecutionStatus(status) if status else None
        out = []
        for state in reversed(self.states.values()):  # newest first
            if wanted is not None and state.status != wanted:
                continue
            if sop is not None and state.sop != sop:
                continue
            if since is not None and state.submitted_at < since:
                continue
            out.append(state.view())
            if len(out) >= limit:
                break
        return out

    async def events(self, execution_id: str, after_seq: int = 0, timeout: float = 0.0) -> list[Event]:
        """Events after ``after_seq``; waits up to ``timeout`` s for new ones if there are none."""
        if execution_id not in self.history and timeout <= 0:
            raise ExecutionNotFound(execution_id)
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

    async def counts(self) -> dict[str, Any]:
        by_status: dict[str, int] = {}
        for s in self.states.values():
            by_status[s.status.value] = by_status.get(s.status.value, 0) + 1
        return {"executions": len(self.states), "by_status": by_status}
