"""Deterministic replay: run a recorded execution again through the coordinator's own state machine.

The replay runs in the calling process, on a private coordinator with an
in-memory log and no Ray: steps before the checkpoint take their recorded
outcomes (and recorded retry decisions) from the history, steps from the
checkpoint on run their handlers again here, fed the values their first run
took from the step context. A replay of a whole execution runs no handler at
all. Retry backoffs are not waited out.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from typing import Any

from actors._coordinator import _Coordinator
from actors._dispatch import Dispatcher
from actors._execution import Execution, InFlight, request_from_log
from runtime.config import EngineConfig
from runtime.errors import ExecutionError
from runtime.events import Event, EventKind
from runtime.failure import Action, Classification, Decision, ErrorInfo, decide
from runtime.handlers import StepOutcome, StepTask, run_task
from runtime.replay import ReplayReport, compare, normalise
from runtime.state import ExecutionState, fold
from sop import Step, check_new_steps

_OUTCOMES = (EventKind.STEP_SUCCEEDED, EventKind.STEP_FAILED, EventKind.DECIDED)


class ReplayDispatcher(Dispatcher):
    """Feeds recorded outcomes to the state machine, or runs handlers again in this process."""

    def __init__(self, coordinator: _Coordinator, events: list[Event], rerun: set[str]) -> None:
        super().__init__(coordinator)
        self.time_scale = 0.0
        self.rerun = rerun
        self.recorded: dict[tuple[str, int], Event] = {}
        self.retry_delays: dict[tuple[str, int], float] = {}
        for e in events:
            if e.kind in _OUTCOMES and e.step:
                self.recorded[(e.step, e.attempt or 1)] = e
            elif e.kind == EventKind.RETRY_SCHEDULED and e.step:
                self.retry_delays[(e.step, (e.attempt or 2) - 1)] = e.data.get("delay_s", 0.0)
        self.handlers_run = 0
        self.context_notes: dict[str, str] = {}

    async def preflight(self, requests: list[Any]) -> None:
        """Nothing to check: a replay runs handlers in this process, not on the workers."""

    def _replaying(self, exe: Execution, step: Step) -> bool:
        """True when this attempt takes its recorded outcome (root execution, before the checkpoint)."""
        return exe.request.parent is None and step.id not in self.rerun

    def _launch(self, exe: Execution, step: Step, flight: InFlight, task: StepTask) -> None:
        if exe.inflight.get(step.id) is not flight:
            return
        loop = asyncio.get_running_loop()
        if self._replaying(exe, step):
            flight.task = loop.create_task(self._recorded(exe, step, flight.attempt))
            return
        if exe.request.parent is None:
            recorded = self.recorded.get((step.id, flight.attempt))
            if recorded is not None:
                task.recorded = tuple(tuple(pair) for pair in recorded.data.get("recorded") or ())
        task.memory_mb = None  # every replayed handler shares this process: its memory is no one step's
        flight.task = loop.create_task(self._run_here(exe, step, flight.attempt, task))

    async def _run_here(self, exe: Execution, step: Step, attempt: int, task: StepTask) -> None:
        outcome = await asyncio.to_thread(run_task, task)
        self.handlers_run += 1
        if outcome.replay_diverged and exe.request.parent is None:
            self.context_notes.setdefault(step.id, outcome.replay_diverged)
        await self._finish(exe, step, attempt, outcome, None)

    async def _run_child(self, exe: Execution, step: Step, attempt: int, args: dict[str, Any],
                         timeout: float | None) -> None:
        if self._replaying(exe, step):
            await self._recorded(exe, step, attempt)
        else:
            await super()._run_child(exe, step, attempt, args, timeout)

    async def _recorded(self, exe: Execution, step: Step, attempt: int) -> None:
        event = self.recorded.get((step.id, attempt))
        key = f"{exe.id}/{step.id}/{attempt}"
        if event is None:
            error = ErrorInfo("NotRecorded", f"attempt {attempt} of step '{step.id}' has no recorded outcome",
                              retryable=False)
            await self._finish(exe, step, attempt, None, error)
        elif event.kind == EventKind.STEP_SUCCEEDED or (
                event.kind == EventKind.DECIDED and event.data.get("decision") == "succeed"):
            await self._finish(exe, step, attempt, StepOutcome(key, True, event.data.get("output"),
                                                               duration_s=event.data.get("duration_s", 0.0)), None)
        else:
            error = ErrorInfo(event.data.get("error_type") or "RecordedError",
                              str(event.data.get("error") or event.data.get("reason") or ""), retryable=False)
            outcome = StepOutcome(key, False, event.data.get("output"), error)
            await self._finish(exe, step, attempt, outcome, None)

    async def _decide(self, exe: Execution, step: Step, attempt: int, error: ErrorInfo) -> Decision:
        event = self.recorded.get((step.id, attempt))
        if self._replaying(exe, step) and event is not None and event.kind == EventKind.STEP_FAILED:
            return Decision(Action(event.data.get("action") or "fail"),
                            Classification(event.data.get("classification") or "permanent"),
                            event.data.get("reason") or "", self.retry_delays.get((step.id, attempt), 0.0))
        if self._replaying(exe, step) and event is not None:  # an operator failed it
            return Decision(Action.FAIL, Classification.PERMANENT, "failed by an operator")
        policy = exe.sop.effective_retry(step)
        return decide(error, attempt, policy, exe.memory_mb.get(step.id))


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
    coordinator = _Coordinator(config=EngineConfig(state="memory://"))
    coordinator.recovery = {}  # a private, empty log: nothing to recover
    coordinator.artifacts.extra.update(artifacts)
    probe = Execution("probe", request)  # the graph with added steps, to pick what runs again
    for e in added:
        probe.add_steps(check_new_steps(probe.sop, probe.graph, list(e.data.get("specs", ()))))
    rerun: set[str] = set()
    if from_step is not None:
        if from_step not in probe.graph:
            raise ExecutionError(f"step {from_step!r} is not a step of execution {execution_id} "
                                 f"(steps: {', '.join(probe.graph.nodes)})")
        rerun = {from_step, *probe.graph.descendants(from_step)}
    dispatcher = ReplayDispatcher(coordinator, events, rerun)
    coordinator.dispatcher = dispatcher
    try:
        rid = await coordinator.submit(request)
        for e in added:
            await coordinator.add_steps(rid, list(e.data.get("specs", ())), {})
        view = await coordinator.wait(rid, timeout)
        replayed = coordinator.executions[rid].state
        await coordinator.journal.durable()
        replayed_inputs = _inputs(coordinator.log.read(rid))
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
    diffs = compare(recorded, replayed, rerun=rerun, upstream=upstream, context_notes=dispatcher.context_notes,
                    inputs=inputs)
    outputs_match = normalise((recorded.outputs or {}).get("outputs")) == normalise(
        (replayed.outputs or {}).get("outputs"))
    order = [sid for sid in probe.graph.topological_order() if sid in rerun]
    return ReplayReport(execution_id, from_step, order, recorded.status.value, replayed.status.value,
                        outputs_match, diffs, notes, dispatcher.handlers_run, replayed.last_seq,
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
