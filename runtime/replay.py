"""Deterministic replay: run a recorded execution again through the same state machine, without Ray.

The replay runs in the calling process, on a private :class:`CoordinatorCore`
with an in-memory log, its runners swapped for recorded ones: steps before the
checkpoint take their recorded outcomes (and recorded retry decisions) from
the history (a sub-SOP's or an agent step's: its child's recorded end, so no child
runs), steps from the checkpoint on run their handlers again here, fed
the values their first run took from the step context. A replay of a whole execution runs no handler at
all. Retry backoffs are not waited out.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import time
from typing import Any

from runtime.config import EngineConfig
from runtime.coordinator import CoordinatorCore, LocalFailurePolicy
from runtime.errors import ExecutionError
from runtime.events import Event, EventKind
from runtime.execution import Execution
from runtime.failure import Action, Classification, Decision, ErrorInfo
from runtime.handlers import StepOutcome
from runtime.plugins import agent_driver, step_runners
from runtime.replay_report import ReplayReport, StepDiff, agent_differences, compare, normalise
from runtime.request import request_from_log
from runtime.runners import AgentStepRunner, InProcessRunner, SubSopRunner
from runtime.seams import AttemptReport, AttemptSpec, StepRunner
from runtime.state import ExecutionState, fold
from sop import Step, check_new_steps

__all__ = ["ReplayReport", "StepDiff", "replay"]

_OUTCOMES = (EventKind.STEP_SUCCEEDED, EventKind.STEP_FAILED, EventKind.DECIDED)


class Recording:
    """What the recorded history says about each attempt of the root execution."""

    def __init__(self, events: list[Event], rerun: set[str]) -> None:
        self.rerun = rerun
        self.outcomes: dict[tuple[str, int], Event] = {}
        self.retry_delays: dict[tuple[str, int], float] = {}
        for e in events:
            if e.kind in _OUTCOMES and e.step:
                self.outcomes[(e.step, e.attempt or 1)] = e
            elif e.kind == EventKind.RETRY_SCHEDULED and e.step:
                self.retry_delays[(e.step, (e.attempt or 2) - 1)] = e.data.get("delay_s", 0.0)
        self.context_notes: dict[str, str] = {}
        """Step -> how a handler run again asked its context for other values than recorded."""

    def replays(self, exe: Execution, step: Step) -> bool:
        """True when this attempt takes its recorded outcome (root execution, before the checkpoint)."""
        return exe.request.parent is None and step.id not in self.rerun

    def outcome(self, spec: AttemptSpec) -> tuple[StepOutcome | None, ErrorInfo | None]:
        event = self.outcomes.get((spec.step.id, spec.attempt))
        key = f"{spec.execution.id}/{spec.step.id}/{spec.attempt}"
        if event is None:
            return None, ErrorInfo("NotRecorded", f"attempt {spec.attempt} of step '{spec.step.id}' has no "
                                   "recorded outcome", retryable=False)
        if event.kind == EventKind.STEP_SUCCEEDED:
            return StepOutcome(key, True, event.data.get("output"), duration_s=event.data.get("duration_s", 0.0)), None
        kind = event.data.get("error_type") or "RecordedError"
        text = str(event.data.get("error") or event.data.get("reason") or "")
        # the log keeps str(ErrorInfo), "<type>: <message>": the same error again, not "<type>: <type>: ..."
        error = ErrorInfo(kind, text.removeprefix(f"{kind}: ") if text != kind else "", retryable=False)
        return StepOutcome(key, False, event.data.get("output"), error), None


class RecordedRunner:
    """Settles attempts the replay takes from the recording; runs the others through ``fresh``."""

    def __init__(self, recording: Recording, fresh: StepRunner, decide: Any) -> None:
        self.recording = recording
        self.fresh = fresh
        self.needs_slot = fresh.needs_slot
        self.decide = decide
        """The machine's ``decide``: an attempt an operator settled is settled the same way again."""

    def start(self, spec: AttemptSpec, report: AttemptReport) -> Any:
        if not self.recording.replays(spec.execution, spec.step):
            return self.fresh.start(spec, _NotingReport(report, spec, self.recording))
        loop = asyncio.get_running_loop()
        event = self.recording.outcomes.get((spec.step.id, spec.attempt))
        if event is not None and event.kind == EventKind.DECIDED:
            # Recorded: the attempt was interrupted (a restart) and an operator decided. Replayed the
            # same way: its outcome is unknown, the step waits, the recorded decision settles it.
            loop.call_soon(report.interrupted, "the recorded attempt was interrupted; its outcome is unknown")
            decided = event.payload
            loop.call_soon(self._decided, spec, decided.decision, decided.reason, decided.output)
            return _Recorded()
        outcome, error = self.recording.outcome(spec)
        loop.call_soon(report.settle, outcome, error)
        return _Recorded()

    def _decided(self, spec: AttemptSpec, decision: str, reason: str, output: Any) -> None:
        state = spec.execution.state.steps.get(spec.step.id)
        if state is not None and state.status.value == "needs_decision":
            self.decide(spec.execution, spec.step.id, decision, reason, output)


class _Recorded:
    def cancel(self, force: bool) -> None:
        """A recorded outcome is settled already."""


class _NotingReport:
    """Passes a fresh run's outcome on, noting where its context values left the recording."""

    def __init__(self, report: AttemptReport, spec: AttemptSpec, recording: Recording) -> None:
        self.report, self.spec, self.recording = report, spec, recording

    def settle(self, outcome: StepOutcome | None, error: ErrorInfo | None = None) -> None:
        if outcome is not None and outcome.replay_diverged and self.spec.execution.request.parent is None:
            self.recording.context_notes.setdefault(self.spec.step.id, outcome.replay_diverged)
        self.report.settle(outcome, error)

    def child_started(self, child_id: str) -> None:
        self.report.child_started(child_id)


class RecordedPolicy:
    """Takes the recorded retry decisions for replayed attempts; decides afresh for the others."""

    def __init__(self, recording: Recording) -> None:
        self.recording = recording
        self.fresh = LocalFailurePolicy()

    async def judge(self, exe: Execution, step: Step, attempt: int, error: ErrorInfo) -> Decision:
        event = self.recording.outcomes.get((step.id, attempt))
        if self.recording.replays(exe, step) and event is not None and event.kind == EventKind.STEP_FAILED:
            return Decision(Action(event.data.get("action") or "fail"),
                            Classification(event.data.get("classification") or "permanent"),
                            event.data.get("reason") or "", self.recording.retry_delays.get((step.id, attempt), 0.0))
        return await self.fresh.judge(exe, step, attempt, error)


def _feed_recorded(recording: Recording) -> Any:
    """Gives a root attempt run again the values its first run took from the step context."""

    def prepare(spec: AttemptSpec) -> Any:
        task = spec.task
        if spec.execution.request.parent is None:
            recorded = recording.outcomes.get((spec.step.id, spec.attempt))
            if recorded is not None:
                task = dataclasses.replace(task, recorded=tuple(
                    tuple(pair) for pair in recorded.data.get("recorded") or ()))
        return task

    return prepare


def replay(events: list[Event], from_step: str | None = None, *, handlers: dict[str, Any] | None = None,
           timeout: float = 600.0, artifacts: dict[str, bytes] | None = None) -> ReplayReport:
    """Replay a recorded history (whole, or from ``from_step`` on) and compare it with the recording.

    Args:
        artifacts: The history's artifacts (big outputs) by SHA-256, for steps run again that read
            them (``runtime.history.artifacts_from_doc`` of an export).

    Raises:
        ExecutionError: the history is not a finished execution, or ``from_step`` is not one of its steps.
    """
    coro = _replay(events, from_step, dict(handlers or {}), timeout, dict(artifacts or {}))
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # Called from a running loop (a notebook): run on a private loop in another thread.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _replay(events: list[Event], from_step: str | None, handlers: dict[str, Any],
                  timeout: float, artifacts: dict[str, bytes]) -> ReplayReport:
    started = time.perf_counter()
    if not events or events[0].kind != EventKind.SUBMITTED:
        raise ExecutionError("a replay needs a history that starts with execution_submitted")
    execution_id = events[0].execution_id
    submitted = events[0].data
    missing = [k for k in ("sop", "version", "mode", "steps", "request") if k not in submitted]
    if missing or not isinstance(submitted.get("request"), dict) or \
            not isinstance(submitted["request"].get("definition"), dict):
        raise ExecutionError(
            f"the execution_submitted event of {execution_id} lacks what a replay needs "
            f"({', '.join(missing) or 'request.definition'}); was the history recorded by sopflow >= 0.2?")
    try:
        recorded = fold(events)
        request = request_from_log(submitted, dict(submitted.get("inputs") or {}))
    except (KeyError, TypeError, ValueError) as e:  # pydantic's ValidationError is a ValueError
        raise ExecutionError(f"the history of {execution_id} cannot be replayed: {type(e).__name__}: {e}") from e
    if not recorded.status.terminal:
        raise ExecutionError(f"execution {execution_id} is still {recorded.status.value}; "
                             "replay it once it has finished")
    request.idempotency_key, request.parent = None, None
    added = [e for e in events if e.kind == EventKind.STEPS_ADDED]
    for e in added:
        request.handlers.update(e.data.get("handlers") or {})
    request.handlers.update(handlers)
    probe = Execution("probe", request)  # the graph with added steps, to pick what runs again
    for e in added:
        probe.add_steps(check_new_steps(probe.sop, probe.graph, list(e.data.get("specs", ()))))
    rerun: set[str] = set()
    if from_step is not None:
        if from_step not in probe.graph:
            raise ExecutionError(f"step {from_step!r} is not a step of execution {execution_id} "
                                 f"(steps: {', '.join(probe.graph.nodes)})")
        rerun = {from_step, *probe.graph.descendants(from_step)}
    recording = Recording(events, rerun)
    handlers_here = InProcessRunner(prepare=_feed_recorded(recording))
    def decide(*args: Any) -> None:  # an attempt an operator settled is settled by the same decision
        coordinator.machine.decide(*args)

    coordinator = CoordinatorCore(EngineConfig(state="memory://"),
                                  task_runner=RecordedRunner(recording, handlers_here, decide),
                                  policy=RecordedPolicy(recording), capacity=lambda: 1 << 30,
                                  service_name="sopflow-replay")
    # Sub-SOP and agent steps of the root take their children's recorded outcomes; run again (from a
    # step), they start live children.
    coordinator.machine.runners["sop"] = RecordedRunner(recording, SubSopRunner(coordinator), decide)
    coordinator.machine.runners["agent"] = RecordedRunner(recording, AgentStepRunner(coordinator), decide)
    for kind, fresh in step_runners(coordinator).items():  # mcp: ...: recorded, or live from the checkpoint on
        coordinator.machine.runners[kind] = RecordedRunner(recording, fresh, decide)
    coordinator.recovery = {}  # a private, empty log: nothing to recover
    coordinator.start_gate.enabled = False  # runs at once: its batch window was honoured when it first ran
    coordinator.machine.backoff_scale = 0.0  # retry backoffs are not waited out
    if recorded.agent is not None or any(s.handler == "agent" for s in probe.steps_by_id.values()):
        # an Agent Centric Run's agent runs again from its recording; an agent step run again, live
        coordinator.machine.agents = agent_driver("local", coordinator)
        coordinator.machine.replaying = from_step is None  # whole: nothing live; from a step: live after it
        if recorded.agent is not None:
            coordinator.machine.agent_recording = {"models": recorded.agent["models"],
                                                   "tools": recorded.agent["tools"]}
    coordinator.artifacts.extra.update(artifacts)
    try:
        rid = await coordinator.submit(request)
        for e in added:
            await coordinator.add_steps(rid, list(e.data.get("specs", ())), {})
        view = await coordinator.wait(rid, timeout)
        replayed = coordinator.executions[rid].state
        await coordinator.journal.durable()
        replayed_inputs = _inputs(coordinator.event_log.read(rid))
    finally:
        coordinator.journal.close()
    notes = _notes(recorded, events)
    if not view.status.terminal:
        notes.append(f"the replay did not finish within {timeout:g} s")
    graph = probe.graph

    def upstream(sid: str) -> set[str]:  # asked only for steps that diverged
        return graph.ancestors(sid) if sid in graph else set()

    recorded_inputs = _inputs(events)
    inputs = {sid: (recorded_inputs[sid], replayed_inputs[sid])
              for sid in recorded_inputs.keys() & replayed_inputs.keys()}
    diffs = compare(recorded, replayed, rerun=rerun, upstream=upstream, context_notes=recording.context_notes,
                    inputs=inputs)
    diffs += agent_differences(recorded, replayed)
    outputs_match = normalise((recorded.outputs or {}).get("outputs")) == normalise(
        (replayed.outputs or {}).get("outputs"))
    order = [sid for sid in probe.graph.topological_order() if sid in rerun]
    return ReplayReport(execution_id, from_step, order, recorded.status.value, replayed.status.value,
                        outputs_match, diffs, notes, handlers_here.runs, replayed.last_seq,
                        time.perf_counter() - started)


def _inputs(events: list[Event]) -> dict[str, str]:
    """Step -> digest of the inputs its last attempt started with (histories from before digests: none)."""
    return {e.step: e.data["inputs"] for e in events
            if e.kind == EventKind.STEP_STARTED and e.step and "inputs" in e.data}


def _notes(recorded: ExecutionState, events: list[Event]) -> list[str]:
    notes = []
    kinds = {e.kind for e in events}
    if EventKind.CANCEL_REQUESTED in kinds:
        notes.append("the recorded execution was cancelled by a user; a replay does not repeat the cancel")
    if EventKind.RECOVERED in kinds:
        notes.append("the recorded execution was recovered after a coordinator restart")
    if any(v == "***" for v in (events[0].data.get("inputs") or {}).values()):
        notes.append("secret inputs are not in the log; steps that run again see them as '***'")
    return notes
