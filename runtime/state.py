"""Execution state as a fold over events: the one place that turns events into state.

The coordinator applies each event right after appending it; the monitor
applies the same events to answer ``status`` and ``list``; recovery replays a
log through the same function. Nothing else changes an :class:`ExecutionState`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Callable, Iterable
from typing import Any

from runtime import events as ev
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
    waiting_since: float | None = None
    """When the step last became queued or started to wait for a decision (alert rules use it)."""


@dataclass(slots=True)
class ExecutionState:
    id: str
    sop: str = ""
    version: str = ""
    mode: str = ""
    status: ExecutionStatus = ExecutionStatus.QUEUED
    priority: int = 0
    priority_class: str = "normal"
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
    first_started_at: float | None = None
    """When the first attempt of any step started (the execution is under way)."""
    progress: dict[str, list[Any]] = field(default_factory=dict)
    """Running step -> ``[fraction done, message]`` it last reported (``context.report_progress``)."""
    alerts: list[dict[str, Any]] = field(default_factory=list)
    """Alerts raised (``alert_raised`` events): ``{"rule", "step", "attempt", "reason", "at"}`` each."""
    agent: dict[str, Any] | None = None
    """The agent of an Agent Centric Run (see :func:`new_agent_state`); None for a DAG run."""
    schedule: dict[str, Any] | None = None
    """A batch execution's schedule (see :mod:`runtime.batch`); None: real-time."""
    waiting: dict[str, Any] | None = None
    """``{"reason", "until"}`` while it waits at the start gate; None otherwise."""
    interrupted: dict[str, int] = field(default_factory=dict)
    """Step -> attempt stopped by a preemption and not yet resumed (it follows its ``recovery`` rule)."""
    preemptions: int = 0
    """How many times it was preempted."""

    def view(self, *, with_outputs: bool = False) -> ExecutionView:
        main = [s for k, s in self.steps.items() if k not in self.rollback_steps or self.rolling_back]
        done = sum(1 for s in main if s.status.terminal)
        progress = 1.0 if self.status.terminal else (done / len(main) if main else 0.0)
        return ExecutionView(
            id=self.id, sop=self.sop, version=self.version, mode=self.mode, status=self.status,
            progress=progress,
            steps={k: StepView(k, s.status, s.attempts, s.error, s.classification, s.started_at,
                               s.ended_at, *self.progress.get(k, (None, ""))) for k, s in self.steps.items()},
            submitted_at=self.submitted_at, ended_at=self.ended_at,
            outputs=self.outputs if with_outputs else None, priority=self.priority,
            trace_id=self.trace_id, priority_class=self.priority_class, alerts=[dict(a) for a in self.alerts],
            schedule=dict(self.schedule) if self.schedule else None,
            waiting=dict(self.waiting) if self.waiting else None,
            agent=agent_view(self.agent) if self.agent is not None else None)


AGENT_CALL = "call:"
"""``call:<index>``: an agent's tool call waiting for (or settled by) an operator's decision, where a
step id would be (``decision_required`` / ``operator_decided`` events, ``sopflow decide``)."""


def new_agent_state() -> dict[str, Any]:
    """The agent part of an :class:`ExecutionState`, as data (it goes into snapshots as it is).

    ``session``: the running session's number (1, then one more each time it is started again);
    ``models``: recorded model calls ``{"request", "response"}`` in order; ``tools``: recorded MCP
    tool calls by index (as text) ``{"tool", "request", "result", "ok"}``, or ``{"tool", "request",
    "started": True}`` while one that is not idempotent runs; ``calls``: indices of the session's tool
    calls the engine has applied (a resumed session repeating one changes nothing); ``decisions``:
    ``{"step", "decision", "rationale", "at"}``; ``message``/``progress``/``seen``: its last status;
    ``waiting``: the interrupted tool call (``{"call", "reason", "since"}``) an operator must decide
    about; ``decided``: those decisions by call.
    """
    return {"session": 0, "agent": "", "model": "", "host": "", "message": "", "progress": None, "seen": None,
            "decisions": [], "models": [], "tools": {}, "calls": [], "tokens": 0, "lost": 0, "summary": None,
            "outputs": None, "waiting": None, "decided": {}}


def agent_view(agent: dict[str, Any]) -> dict[str, Any]:
    """What status shows of the agent: no recorded calls, only their counts."""
    return {"session": agent["session"], "agent": agent["agent"], "model": agent["model"], "host": agent["host"],
            "message": agent["message"], "progress": agent["progress"], "seen": agent["seen"],
            "decisions": [dict(d) for d in agent["decisions"]], "model_calls": len(agent["models"]),
            "tool_calls": len(agent["tools"]), "tokens": agent["tokens"], "lost": agent["lost"],
            "summary": agent["summary"], "outputs": agent["outputs"], "waiting": agent.get("waiting")}


def apply(state: ExecutionState, event: Event) -> None:
    """Fold one event into ``state``. Events at or below ``last_seq`` are ignored (idempotent)."""
    if event.seq <= state.last_seq:
        return
    state.last_seq = event.seq
    apply_kind = _APPLY.get(event.kind)
    if apply_kind is None:
        return  # an event that changes no state (escalated, recovered, interrupted, retry noted ...)
    step = state.steps.get(event.step) if event.step else None
    apply_kind(state, event, step, event.payload)


def _submitted(state: ExecutionState, event: Event, _: StepState | None, p: ev.Submitted) -> None:
    state.sop, state.version, state.mode, state.priority = p.sop, p.version, p.mode, p.priority
    state.priority_class = p.priority_class
    state.schedule = p.schedule
    state.submitted_at = event.ts
    state.trace_id = trace_id_of(p.trace)
    state.idempotency_key = p.idempotency_key
    state.rollback_steps = list(p.rollback)
    state.steps = {s: StepState() for s in [*p.steps, *state.rollback_steps]}


def _started(state: ExecutionState, *_: Any) -> None:
    state.status = ExecutionStatus.PAUSED if state.paused else ExecutionStatus.RUNNING
    state.waiting = None


def _waiting(state: ExecutionState, _: Event, __: StepState | None, p: ev.Waiting) -> None:
    state.waiting = {"reason": p.reason, "until": p.until}


def _preempted(state: ExecutionState, event: Event, _: StepState | None, p: ev.Preempted) -> None:
    state.status, state.preemptions = ExecutionStatus.PREEMPTED, state.preemptions + 1
    state.interrupted.update(p.interrupted)
    state.waiting = {"reason": p.reason, "until": None}
    for sid in p.interrupted:  # stopped, to be resumed: not running
        step = state.steps.get(sid)
        if step is not None:
            step.status, step.waiting_since = StepStatus.QUEUED, event.ts
            state.progress.pop(sid, None)


def _steps_added(state: ExecutionState, _: Event, __: StepState | None, p: ev.StepsAdded) -> None:
    for sid in p.steps:
        state.steps.setdefault(sid, StepState())
    state.added.extend(p.specs)


def _step_queued(state: ExecutionState, event: Event, step: StepState | None, _: ev.StepQueued) -> None:
    if step is not None:
        step.status, step.attempts = StepStatus.QUEUED, event.attempt or step.attempts + 1
        step.waiting_since = event.ts
        state.retry_due.pop(event.step, None)  # type: ignore[arg-type]


def _step_started(state: ExecutionState, event: Event, step: StepState | None, _: ev.StepStarted) -> None:
    if step is not None:
        step.status, step.attempts = StepStatus.RUNNING, event.attempt or step.attempts + 1
        step.started_at = step.started_at or event.ts
        state.first_started_at = state.first_started_at or event.ts
        state.retry_due.pop(event.step, None)  # type: ignore[arg-type]


def _step_progress(state: ExecutionState, event: Event, step: StepState | None, p: ev.StepProgress) -> None:
    if step is not None and step.status == StepStatus.RUNNING:
        state.progress[event.step] = [p.fraction, p.message]  # type: ignore[index]


def _step_succeeded(state: ExecutionState, event: Event, step: StepState | None, p: ev.StepSucceeded) -> None:
    if step is not None:
        step.status, step.output, step.error, step.ended_at = StepStatus.SUCCEEDED, p.output, None, event.ts
        state.progress.pop(event.step, None)  # type: ignore[arg-type]


def _step_failed(state: ExecutionState, event: Event, step: StepState | None, p: ev.StepFailed) -> None:
    if step is not None:
        step.error, step.classification = p.error, p.classification
        state.progress.pop(event.step, None)  # type: ignore[arg-type]
        if p.final:
            step.status, step.ended_at = StepStatus.FAILED, event.ts
        else:
            step.status = StepStatus.RETRYING


def _retry_scheduled(state: ExecutionState, event: Event, _: StepState | None, p: ev.RetryScheduled) -> None:
    if event.step:
        state.retry_due[event.step] = [event.attempt or 1, event.ts + p.delay_s]
        if p.memory_mb:
            state.memory_mb[event.step] = p.memory_mb


def _ended_as(status: StepStatus) -> Any:
    def apply_end(state: ExecutionState, event: Event, step: StepState | None, __: ev.Payload) -> None:
        if step is not None:
            step.status, step.ended_at = status, event.ts
            state.progress.pop(event.step, None)  # type: ignore[arg-type]
    return apply_end


def _attempt_interrupted(state: ExecutionState, event: Event, *_: Any) -> None:
    state.progress.pop(event.step, None)  # type: ignore[arg-type]  # its progress died with it
    state.interrupted.pop(event.step, None)  # type: ignore[arg-type]  # its recovery rule now applies


def _paused(state: ExecutionState, *_: Any) -> None:
    state.paused = True
    if not state.status.terminal and state.status != ExecutionStatus.PREEMPTED:  # it stays off until readmitted
        state.status = ExecutionStatus.PAUSED


def _resumed(state: ExecutionState, *_: Any) -> None:
    state.paused = False
    if state.status == ExecutionStatus.PAUSED:
        waiting = any(s.status == StepStatus.NEEDS_DECISION for s in state.steps.values())
        state.status = ExecutionStatus.NEEDS_DECISION if waiting else ExecutionStatus.RUNNING


def _cancel_requested(state: ExecutionState, _: Event, __: StepState | None, p: ev.CancelRequested) -> None:
    state.cancel_requested, state.force_cancel = True, p.force
    if not state.status.terminal:
        state.status = ExecutionStatus.CANCELLING


def _rollback_started(state: ExecutionState, *_: Any) -> None:
    state.rolling_back = True


def _child_submitted(state: ExecutionState, event: Event, _: StepState | None, p: ev.ChildSubmitted) -> None:
    if event.step:
        state.children[event.step] = p.child


def _decision_required(state: ExecutionState, event: Event, step: StepState | None,
                       p: ev.DecisionRequired) -> None:
    state.progress.pop(event.step, None)  # type: ignore[arg-type]
    if event.step is not None and event.step.startswith(AGENT_CALL):  # an agent's interrupted tool call
        _agent(state)["waiting"] = {"call": event.step, "reason": p.reason, "since": event.ts}
        if state.status in (ExecutionStatus.RUNNING, ExecutionStatus.PAUSED):
            state.status = ExecutionStatus.NEEDS_DECISION
    if step is not None:
        step.status, step.waiting_since = StepStatus.NEEDS_DECISION, event.ts
        if state.status in (ExecutionStatus.RUNNING, ExecutionStatus.PAUSED):
            state.status = ExecutionStatus.NEEDS_DECISION


def _decided(state: ExecutionState, event: Event, step: StepState | None, p: ev.Decided) -> None:
    state.progress.pop(event.step, None)  # type: ignore[arg-type]
    if event.step is not None and event.step.startswith(AGENT_CALL):
        agent = _agent(state)
        agent["waiting"] = None
        agent.setdefault("decided", {})[event.step] = {"decision": p.decision, "reason": p.reason,
                                                       "output": p.output}
        if state.status == ExecutionStatus.NEEDS_DECISION and not any(
                s.status == StepStatus.NEEDS_DECISION for s in state.steps.values()):
            state.status = ExecutionStatus.PAUSED if state.paused else ExecutionStatus.RUNNING
        return
    if step is None:
        return
    if p.decision == "rerun":
        step.status = StepStatus.PENDING
    elif p.decision == "succeed":
        step.status, step.output, step.error, step.ended_at = StepStatus.SUCCEEDED, p.output, None, event.ts
    elif p.decision == "fail":
        step.status, step.error, step.classification = StepStatus.FAILED, p.reason, "operator"
        step.ended_at = event.ts
    else:  # skip
        step.status, step.ended_at = StepStatus.SKIPPED, event.ts
    if state.status == ExecutionStatus.NEEDS_DECISION and not any(
            s.status == StepStatus.NEEDS_DECISION for s in state.steps.values()):
        state.status = ExecutionStatus.PAUSED if state.paused else ExecutionStatus.RUNNING


def _alerted(state: ExecutionState, event: Event, _: StepState | None, p: ev.Alerted) -> None:
    state.alerts.append({"rule": p.rule, "step": event.step, "attempt": event.attempt, "reason": p.reason,
                         "at": event.ts})


def _agent(state: ExecutionState) -> dict[str, Any]:
    if state.agent is None:
        state.agent = new_agent_state()
    return state.agent


def _agent_started(state: ExecutionState, event: Event, _: StepState | None, p: ev.AgentStarted) -> None:
    agent = _agent(state)
    agent.update(session=p.session, agent=p.agent, model=p.model, host=p.host, seen=event.ts)


def _model_called(state: ExecutionState, event: Event, _: StepState | None, p: ev.ModelCalled) -> None:
    agent = _agent(state)
    if p.index == len(agent["models"]):  # a resumed session's replayed prefix is not logged again
        agent["models"].append({"request": p.request, "response": p.response})
        agent["tokens"] += p.prompt_tokens + p.response_tokens
    agent["seen"] = event.ts


def _tool_started(state: ExecutionState, event: Event, _: StepState | None, p: ev.ToolStarted) -> None:
    agent = _agent(state)
    agent["tools"].setdefault(str(p.index), {"tool": p.tool, "request": p.request, "started": True})
    agent["seen"] = event.ts


def _tool_called(state: ExecutionState, event: Event, _: StepState | None, p: ev.ToolCalled) -> None:
    agent = _agent(state)
    agent["tools"][str(p.index)] = {"tool": p.tool, "request": p.request, "result": p.result, "ok": p.ok}
    agent["seen"] = event.ts


def _agent_decided(state: ExecutionState, event: Event, _: StepState | None, p: ev.AgentDecided) -> None:
    agent = _agent(state)
    agent["decisions"].append({"step": event.step, "decision": p.decision, "rationale": p.rationale,
                               "at": event.ts})
    if p.call is not None:
        agent["calls"].append(p.call)
    agent["message"] = f"{event.step}: {p.decision}" if event.step else p.decision
    agent["seen"] = event.ts


def _agent_status(state: ExecutionState, event: Event, _: StepState | None, p: ev.AgentStatus) -> None:
    agent = _agent(state)
    agent["message"], agent["progress"], agent["seen"] = p.message, p.progress, event.ts


def _agent_lost(state: ExecutionState, event: Event, _: StepState | None, p: ev.AgentLost) -> None:
    agent = _agent(state)
    agent["lost"] += 1
    agent["message"] = f"session {p.session} lost: {p.reason}"


def _agent_reported(state: ExecutionState, event: Event, _: StepState | None, p: ev.AgentReported) -> None:
    agent = _agent(state)
    agent["summary"], agent["outputs"], agent["seen"] = p.summary_text, p.outputs, event.ts
    if p.call is not None:
        agent["calls"].append(p.call)


def _finished(state: ExecutionState, event: Event, _: StepState | None, p: ev.Finished) -> None:
    state.status, state.outputs, state.ended_at = ExecutionStatus(p.status), p.outputs, event.ts


_APPLY: dict[EventKind, Callable[[ExecutionState, Event, StepState | None, Any], None]] = {
    EventKind.SUBMITTED: _submitted,
    EventKind.STARTED: _started,
    EventKind.STEPS_ADDED: _steps_added,
    EventKind.STEP_QUEUED: _step_queued,
    EventKind.STEP_STARTED: _step_started,
    EventKind.STEP_PROGRESS: _step_progress,
    EventKind.STEP_SUCCEEDED: _step_succeeded,
    EventKind.STEP_FAILED: _step_failed,
    EventKind.RETRY_SCHEDULED: _retry_scheduled,
    EventKind.STEP_SKIPPED: _ended_as(StepStatus.SKIPPED),
    EventKind.STEP_HALTED: _ended_as(StepStatus.UPSTREAM_FAILED),
    EventKind.STEP_CANCELLED: _ended_as(StepStatus.CANCELLED),
    EventKind.PAUSED: _paused,
    EventKind.RESUMED: _resumed,
    EventKind.CANCEL_REQUESTED: _cancel_requested,
    EventKind.ROLLBACK_STARTED: _rollback_started,
    EventKind.CHILD_SUBMITTED: _child_submitted,
    EventKind.ATTEMPT_INTERRUPTED: _attempt_interrupted,
    EventKind.DECISION_REQUIRED: _decision_required,
    EventKind.DECIDED: _decided,
    EventKind.ALERTED: _alerted,
    EventKind.FINISHED: _finished,
    EventKind.AGENT_STARTED: _agent_started,
    EventKind.MODEL_CALLED: _model_called,
    EventKind.TOOL_STARTED: _tool_started,
    EventKind.TOOL_CALLED: _tool_called,
    EventKind.AGENT_DECIDED: _agent_decided,
    EventKind.AGENT_STATUS: _agent_status,
    EventKind.AGENT_LOST: _agent_lost,
    EventKind.AGENT_REPORTED: _agent_reported,
    EventKind.WAITING: _waiting,
    EventKind.PREEMPTED: _preempted,
}
"""Event kind -> how it changes the state (kinds that change nothing are absent)."""


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
