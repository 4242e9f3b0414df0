"""Execution state as a fold over events: the one place that turns events into state.

The coordinator applies each event right after appending it; the monitor
applies the same events to answer ``status`` and ``list``; recovery replays a
log through the same function. Nothing else changes an :class:`ExecutionState`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Iterable
from typing import Any

from runtime.events import Event, EventKind
from runtime.status import ExecutionStatus, ExecutionView, StepStatus, StepView


@dataclass(slots=True)
class StepState:
    status: StepStatus = StepStatus.PENDING
    attempts: int = 0
    output: Any = None
    error: str | None = None
    classification: str | None = None
    started_at: float | None = None
    ended_at: float | None = None


@dataclass(slots=True)
class ExecutionState:
    id: str
    sop: str = ""
    version: str = ""
    mode: str = ""
    status: ExecutionStatus = ExecutionStatus.QUEUED
    priority: int = 0
    steps: dict[str, StepState] = field(default_factory=dict)
    rollback_steps: list[str] = field(default_factory=list)
    submitted_at: float = 0.0
    ended_at: float | None = None
    outputs: dict[str, Any] | None = None
    idempotency_key: str | None = None
    paused: bool = False
    cancel_requested: bool = False
    force_cancel: bool = False
    rolling_back: bool = False
    last_seq: int = 0
    trace_id: str | None = None
    """The OpenTelemetry trace of the execution (32 hex digits), when tracing was on at submit."""
    added: list[dict[str, Any]] = field(default_factory=list)
    """Specs of steps added while running (``add_steps``), in order: recovery adds them again."""
    memory_mb: dict[str, int] = field(default_factory=dict)
    """Memory raised for a retry after an out-of-memory failure, per step."""
    retry_due: dict[str, list[float]] = field(default_factory=dict)
    """Step -> ``[next attempt, wall-clock time it is due]`` while it waits out a backoff."""
    children: dict[str, str] = field(default_factory=dict)
    """``sop:`` step -> its child execution."""
    progress: dict[str, list[Any]] = field(default_factory=dict)
    """Running step -> ``[fraction done, message]`` it last reported (``context.report_progress``)."""

    def view(self, *, with_outputs: bool = False) -> ExecutionView:
        main = [s for k, s in self.steps.items() if k not in self.rollback_steps or self.rolling_back]
        done = sum(1 for s in main if s.status.terminal)
        progress = 1.0 if self.status.terminal else (done / len(main) if main else 0.0)
        return ExecutionView(
            id=self.id, sop=self.sop, version=self.version, mode=self.mode, status=self.status,
            progress=progress,
            steps={k: StepView(k, s.status, s.attempts, s.error, s.classification, s.started_at,
                               s.ended_at) for k, s in self.steps.items()},
            submitted_at=self.submitted_at, ended_at=self.ended_at,
            outputs=self.outputs if with_outputs else None, priority=self.priority,
            trace_id=self.trace_id)


def apply(state: ExecutionState, event: Event) -> None:
    """Fold one event into ``state``. Events at or below ``last_seq`` are ignored (idempotent)."""
    if event.seq <= state.last_seq:
        return
    state.last_seq = event.seq
    kind, d = event.kind, event.data
    step = state.steps.get(event.step) if event.step else None
    if kind == EventKind.SUBMITTED:
        state.sop, state.version, state.mode = d["sop"], d["version"], d["mode"]
        state.priority = d.get("priority", 0)
        state.submitted_at = event.ts
        state.trace_id = trace_id_of(d.get("trace"))
        state.idempotency_key = d.get("idempotency_key")
        state.rollback_steps = list(d.get("rollback", []))
        state.steps = {s: StepState() for s in [*d["steps"], *state.rollback_steps]}
    elif kind == EventKind.STARTED:
        state.status = ExecutionStatus.PAUSED if state.paused else ExecutionStatus.RUNNING
    elif kind == EventKind.STEPS_ADDED:
        for s in d["steps"]:
            state.steps.setdefault(s, StepState())
        state.added.extend(d.get("specs", ()))
    elif kind == EventKind.STEP_QUEUED and step is not None:
        step.status, step.attempts = StepStatus.QUEUED, event.attempt or step.attempts + 1
        state.retry_due.pop(event.step, None)
    elif kind == EventKind.STEP_STARTED and step is not None:
        step.status, step.attempts = StepStatus.RUNNING, event.attempt or step.attempts + 1
        step.started_at = step.started_at or event.ts
        state.retry_due.pop(event.step, None)
    elif kind == EventKind.STEP_PROGRESS and step is not None:
        state.progress[event.step] = [d.get("fraction"), d.get("message", "")]
    elif kind == EventKind.STEP_SUCCEEDED and step is not None:
        step.status, step.output, step.error = StepStatus.SUCCEEDED, d.get("output"), None
        step.ended_at = event.ts
        state.progress.pop(event.step, None)
    elif kind == EventKind.STEP_FAILED and step is not None:
        step.error, step.classification = d.get("error"), d.get("classification")
        state.progress.pop(event.step, None)
        if d.get("final", True):
            step.status, step.ended_at = StepStatus.FAILED, event.ts
        else:
            step.status = StepStatus.RETRYING
    elif kind == EventKind.RETRY_SCHEDULED and event.step:
        state.retry_due[event.step] = [event.attempt or 1, event.ts + d.get("delay_s", 0.0)]
        if d.get("memory_mb"):
            state.memory_mb[event.step] = d["memory_mb"]
    elif kind == EventKind.CHILD_SUBMITTED and event.step:
        state.children[event.step] = d["child"]
    elif kind == EventKind.STEP_SKIPPED and step is not None:
        step.status, step.ended_at = StepStatus.SKIPPED, event.ts
    elif kind == EventKind.STEP_HALTED and step is not None:
        step.status, step.ended_at = StepStatus.UPSTREAM_FAILED, event.ts
    elif kind == EventKind.STEP_CANCELLED and step is not None:
        step.status, step.ended_at = StepStatus.CANCELLED, event.ts
    elif kind == EventKind.PAUSED:
        state.paused = True
        if not state.status.terminal:
            state.status = ExecutionStatus.PAUSED
    elif kind == EventKind.RESUMED:
        state.paused = False
        if state.status == ExecutionStatus.PAUSED and any(
                s.status == StepStatus.NEEDS_DECISION for s in state.steps.values()):
            state.status = ExecutionStatus.NEEDS_DECISION
        elif state.status == ExecutionStatus.PAUSED:
            state.status = ExecutionStatus.RUNNING
    elif kind == EventKind.CANCEL_REQUESTED:
        state.cancel_requested, state.force_cancel = True, bool(d.get("force"))
        if not state.status.terminal:
            state.status = ExecutionStatus.CANCELLING
    elif kind == EventKind.ROLLBACK_STARTED:
        state.rolling_back = True
    elif kind == EventKind.DECISION_REQUIRED and step is not None:
        step.status = StepStatus.NEEDS_DECISION
        if state.status in (ExecutionStatus.RUNNING, ExecutionStatus.PAUSED):
            state.status = ExecutionStatus.NEEDS_DECISION
    elif kind == EventKind.DECIDED and step is not None:
        decision = d["decision"]
        if decision == "rerun":
            step.status = StepStatus.PENDING
        elif decision == "succeed":
            step.status, step.output, step.error = StepStatus.SUCCEEDED, d.get("output"), None
            step.ended_at = event.ts
        elif decision == "fail":
            step.status, step.error, step.classification = StepStatus.FAILED, d.get("reason"), "operator"
            step.ended_at = event.ts
        else:  # skip
            step.status, step.ended_at = StepStatus.SKIPPED, event.ts
        if state.status == ExecutionStatus.NEEDS_DECISION and not any(
                s.status == StepStatus.NEEDS_DECISION for s in state.steps.values()):
            state.status = ExecutionStatus.PAUSED if state.paused else ExecutionStatus.RUNNING
    elif kind == EventKind.FINISHED:
        state.status = ExecutionStatus(d["status"])
        state.outputs = d.get("outputs")
        state.ended_at = event.ts


def fold(events: Iterable[Event], state: ExecutionState | None = None) -> ExecutionState:
    """Fold ``events`` into ``state`` (a new one named after the first event if not given)."""
    for event in events:
        if state is None:
            state = ExecutionState(event.execution_id)
        apply(state, event)
    return state if state is not None else ExecutionState("")


def final_status(statuses: dict[str, StepStatus],
                 tolerated: set[str] = frozenset()) -> ExecutionStatus:  # type: ignore[assignment]
    """How an execution that ran to its end ended, from how its main steps ended.

    - completed if every step succeeded or was skipped (failures marked
      ``on_failure: continue`` are tolerated);
    - partially_completed if some steps succeeded and others failed or were halted;
    - failed if nothing succeeded.

    A cancelled execution, or one whose rollback ran, ends cancelled or failed without asking.
    """
    bad = {k for k, s in statuses.items()
           if s in (StepStatus.FAILED, StepStatus.UPSTREAM_FAILED, StepStatus.CANCELLED)} - tolerated
    if not bad:
        return ExecutionStatus.COMPLETED
    if any(s == StepStatus.SUCCEEDED for s in statuses.values()):
        return ExecutionStatus.PARTIALLY_COMPLETED
    return ExecutionStatus.FAILED


def trace_id_of(carrier: dict[str, str] | None) -> str | None:
    """The trace id in a W3C ``traceparent`` carrier (``00-<trace id>-<span id>-<flags>``), if any."""
    parts = (carrier or {}).get("traceparent", "").split("-")
    if len(parts) == 4 and len(parts[1]) == 32 and parts[1] != "0" * 32:
        return parts[1]
    return None
