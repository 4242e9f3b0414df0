"""The execution state machine: what happens next in an execution, decided in plain Python.

Given an event that just happened (a submission, an attempt's outcome, an
operator's request), the machine appends the events that follow from it —
steps started, skipped, halted, retried, rolled back, the execution finished —
through its :class:`runtime.seams.ExecutionHost`, and starts attempts through
the :class:`runtime.seams.StepRunner` of each step's kind. It holds no Ray and
no I/O of its own: the Coordinator actor, the in-process engine, recovery and
replay all drive this one class with different hosts and runners.

Every effect outside the machine waits for the event that announces it to be
appended first; a non-idempotent step waits for it to be *durable*.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import json
import logging
from collections.abc import Coroutine, Mapping
from typing import Any

from opentelemetry import trace

from runtime.errors import ExecutionError, StateStoreError
from runtime import events as ev
from runtime.execution import Execution, InFlight
from runtime.failure import Action, Decision, ErrorInfo, as_dict, clean_message
from runtime.handlers import StepOutcome, StepTask
from runtime.hooks import Hooks
from runtime.outputs import OutputNotData, as_data, mentions, respill
from runtime.scheduling import Verdict, verdict
from runtime.seams import Admission, AttemptSpec, ExecutionHost, FailurePolicy, StepRunner
from runtime.state import final_status
from runtime.status import ExecutionStatus, StepStatus
from runtime.telemetry import carrier_for, tracer
from sop import Step, render
from sop.expressions import ExpressionError, compile_expression, strip_braces
from sop.model import OnFailure
from sop.shell import render_command, render_env

log = logging.getLogger("sopflow.machine")

DECISIONS = ("rerun", "succeed", "fail", "skip")
"""What an operator may decide for a step that waits for a decision."""


def runner_kind(step: Step) -> str:
    """Which runner runs the step: ``sop`` for a sub-SOP, ``mcp`` for an MCP tool, else ``task``."""
    prefix = step.handler.split(":", 1)[0]
    return prefix if prefix in ("sop", "mcp") else "task"


class StateMachine:
    """Advances executions; see the module docstring.

    Args:
        host: Owns the executions: the log, timers, child executions.
        runners: Runner kind (:func:`runner_kind`) -> the runner of that kind.
        admission: Run slots for attempts whose runner needs one.
        policy: What a failed attempt means.
        hooks: Observers of attempts, retries, escalations and ends.
    """

    def __init__(self, host: ExecutionHost, runners: Mapping[str, StepRunner], admission: Admission,
                 policy: FailurePolicy, hooks: Hooks | None = None) -> None:
        self.host = host
        self.runners = dict(runners)
        self.admission = admission
        self.policy = policy
        self.hooks = hooks or Hooks()
        self.backoff_scale = 1.0
        """Multiplies retry backoffs (a replay sets 0: it waits none out)."""
        self._tasks: set[asyncio.Task] = set()

    # -- the execution --------------------------------------------------------------------

    def begin(self, exe: Execution) -> None:
        """Start a submitted execution: its root steps run (or wait for slots)."""
        self.host.emit(exe, ev.Started())
        self.advance(exe, exe.graph.roots())

    def advance(self, exe: Execution, candidates: list[str]) -> None:
        """Start, skip or halt every candidate step whose dependencies have finished.

        Candidates are the steps whose inputs may just have changed (the dependents of a
        step that finished); deciding one may make its own dependents candidates too.
        """
        state = exe.state
        if state.status.terminal:
            return
        graph = exe.active_graph
        stopping = state.cancel_requested or (exe.rollback_requested and not state.rolling_back)
        if not (stopping or state.paused):
            statuses = exe.statuses()
            todo = list(dict.fromkeys(candidates))
            while todo:
                sid = todo.pop()
                if sid not in graph or statuses[sid] != StepStatus.PENDING:
                    continue
                step = exe.steps_by_id[sid]
                what, reason = verdict(step.trigger_rule, graph.dependencies(sid), statuses, exe.tolerated)
                if what == Verdict.WAIT:
                    continue
                if what == Verdict.RUN and step.when is not None:
                    what, reason = self._condition(exe, step)
                if what == Verdict.RUN:
                    self.start(exe, step, 1)  # folds step_started or step_queued: statuses sees it
                    continue
                if what == Verdict.SKIP:
                    self.host.emit(exe, ev.StepSkipped(reason=reason), sid)
                elif what == Verdict.HALT:
                    self.host.emit(exe, ev.StepHalted(reason=reason), sid)
                else:  # the condition could not be evaluated
                    self.host.emit(exe, ev.StepFailed(error=reason, classification="permanent"), sid, 0)
                todo.extend(graph.dependents(sid))
        self._maybe_finish(exe)

    def _condition(self, exe: Execution, step: Step) -> tuple[Verdict | None, str]:
        """RUN or SKIP by the step's ``when``; ``None`` when the condition cannot be evaluated."""
        try:
            value = compile_expression(strip_braces(step.when)).evaluate(exe.expression_context())
        except ExpressionError as e:
            return None, f"condition of step '{step.id}' failed: {e}"
        if value:
            return Verdict.RUN, ""
        return Verdict.SKIP, f"condition is false: {step.when}"

    def step_ended(self, exe: Execution, sid: str) -> None:
        """A step reached a terminal status: its dependents may now run (or a rollback start)."""
        st = exe.state.steps[sid]
        if st.status == StepStatus.FAILED and exe.steps_by_id[sid].on_failure == OnFailure.ROLLBACK:
            exe.rollback_requested = True
        self.advance(exe, exe.active_graph.dependents(sid) if sid in exe.active_graph else [])

    def _maybe_finish(self, exe: Execution) -> None:
        state = exe.state
        if exe.inflight or exe.waiting_retry:
            return
        graph = exe.active_graph
        if state.cancel_requested:
            for sid in graph.nodes:
                if not state.steps[sid].status.terminal:
                    self.host.emit(exe, ev.StepCancelled(reason="execution cancelled"), sid)
            self._finish(exe, ExecutionStatus.CANCELLED)
            return
        if state.paused or exe.paused_retries:
            return
        if any(not state.steps[sid].status.terminal for sid in graph.nodes):
            if not (exe.rollback_requested and not state.rolling_back):
                return  # waiting on something that has not been decided yet
            for sid in graph.nodes:
                if not state.steps[sid].status.terminal:
                    self.host.emit(exe, ev.StepCancelled(reason="rollback started"), sid)
        if state.rolling_back:
            self._finish(exe, ExecutionStatus.FAILED)
            return
        status = final_status({s.id: state.steps[s.id].status for s in exe.sop.steps}, exe.tolerated)
        if exe.sop.rollback and (exe.rollback_requested or status == ExecutionStatus.FAILED):
            why = "a step asked for rollback" if exe.rollback_requested else "execution failed"
            self.host.emit(exe, ev.RollbackStarted(reason=why))
            self.advance(exe, exe.rollback_graph.roots())
            return
        self._finish(exe, status)

    def _finish(self, exe: Execution, status: ExecutionStatus) -> None:
        outputs, problems = self._outputs(exe)
        self.host.emit(exe, ev.Finished(status=status.value, outputs=outputs, output_errors=problems))
        if exe.span is not None:
            exe.span.set_attribute("sopflow.status", status.value)
            if status in (ExecutionStatus.FAILED, ExecutionStatus.PARTIALLY_COMPLETED):
                exe.span.set_status(trace.Status(trace.StatusCode.ERROR, _why_not_completed(exe, status)))
            exe.span.end()
        self.hooks.on_end(exe, status.value)
        self.host.on_durable(lambda: self.host.finished(exe))

    def _outputs(self, exe: Execution) -> tuple[dict[str, Any], dict[str, str]]:
        ctx = exe.expression_context()
        values: dict[str, Any] = {}
        problems: dict[str, str] = {}
        for key, template in exe.sop.outputs.items():
            try:  # a big value (a step's artifact, read back to render it) is stored once, not inlined
                values[key] = self.host.artifacts.spill(exe.id, exe.redact(render(template, ctx)),
                                                        self.host.config.max_inline_output_bytes)
            except ExpressionError as e:
                values[key] = None
                problems[key] = str(e)
        step_outputs = {sid: st.output for sid, st in exe.state.steps.items()
                        if st.status == StepStatus.SUCCEEDED}
        return {"outputs": values, "steps": step_outputs}, problems

    # -- starting attempts ------------------------------------------------------------------

    def start(self, exe: Execution, step: Step, attempt: int) -> None:
        """Start an attempt: run it at once if its runner needs no slot or a slot is free, else queue it.

        ``step_started`` is logged when the attempt gets its slot (so a status saying
        ``running`` means it was handed to its runner); an attempt that must wait for a
        slot logs ``step_queued`` first.
        """
        flight = InFlight(step, attempt, span=self._attempt_span(exe, step, attempt))
        exe.inflight[step.id] = flight
        try:
            ctx = exe.expression_context()
            args = render(step.with_, ctx)
            run = render_command(step.run, ctx, step=step.id) if step.run else None  # values quoted as data
            env = render_env(step.env, ctx, step=step.id) if step.env else {}
        except ExpressionError as e:
            self.host.emit(exe, ev.StepStarted(), step.id, attempt)
            self._spawn(self._conclude(exe, flight, None, ErrorInfo("ExpressionError", str(e), retryable=False)))
            return
        # The digest of what the handler gets lets a replay tell changed inputs from a changed
        # handler. Secrets are masked first: a hash of a short secret could be brute-forced.
        digest = inputs_digest(*exe.redact([args, _digest_run(exe, step, ctx, run), env]))
        kind = runner_kind(step)
        runner = self.runners.get(kind)
        if runner is None:
            self.host.emit(exe, ev.StepStarted(inputs=digest), step.id, attempt)
            self._spawn(self._conclude(exe, flight, None, ErrorInfo(
                "NoRunner", f"this engine has no runner for {kind!r} steps (step {step.id!r} uses "
                f"{step.handler})", retryable=False)))
            return
        task = None if kind == "sop" else StepTask(
            exe.id, exe.sop.sop, step.id, attempt, step.handler, exe.request.handlers.get(step.handler), args,
            run, env, exe.sop.effective_timeout(step),
            carrier_for(flight.span) if flight.span.is_recording() else {}, secrets=exe.secret_values,
            output_cap=self.host.config.max_inline_output_bytes,
            memory_mb=exe.memory_mb.get(step.id, exe.sop.effective_resources(step).memory_mb))
        spec = AttemptSpec(exe, step, attempt, task, args)
        if not runner.needs_slot:
            self.host.emit(exe, ev.StepStarted(inputs=digest), step.id, attempt)
            self._launch(exe, flight, runner, spec)
            return
        flight.launch = functools.partial(self._granted, exe, flight, runner, spec, digest)
        if self.admission.acquire(exe.state.priority, flight.launch):
            flight.launch()
        else:
            why = f"waiting for a run slot (max_running_steps={self.admission.capacity})"
            self.host.emit(exe, ev.StepQueued(reason=why), step.id, attempt)

    def _attempt_span(self, exe: Execution, step: Step, attempt: int) -> Any:
        return tracer().start_span(f"step {step.id}", context=trace.set_span_in_context(exe.span),
                                   attributes={"sopflow.execution_id": exe.id, "sopflow.sop": exe.sop.sop,
                                               "sopflow.version": exe.sop.version, "sopflow.step": step.id,
                                               "sopflow.attempt": attempt, "sopflow.uses": step.handler})

    def _granted(self, exe: Execution, flight: InFlight, runner: StepRunner, spec: AttemptSpec,
                 digest: str) -> None:
        """The attempt holds a slot: log ``step_started`` and launch it (a paused one is held instead)."""
        flight.holds_slot = True
        if exe.inflight.get(flight.step.id) is not flight or flight.settled:
            self._give_back(flight)  # settled meanwhile (a forced cancel)
            return
        if exe.state.paused and not exe.state.cancel_requested:  # paused: no new attempt starts
            self._give_back(flight)
            exe.held.append(flight)
            return
        if exe.state.cancel_requested:
            self._never_started(exe, flight)
            return
        self.host.emit(exe, ev.StepStarted(inputs=digest), flight.step.id, flight.number)
        if flight.step.idempotent:
            # step_started is appended (the group commit is under way); should the coordinator die
            # before it is durable, recovery runs the step again, as it would after the commit.
            self._launch(exe, flight, runner, spec)
        else:  # the log must say "may have started" before a non-idempotent step can start
            self.host.on_durable(lambda: self._launch(exe, flight, runner, spec))

    def _launch(self, exe: Execution, flight: InFlight, runner: StepRunner, spec: AttemptSpec) -> None:
        if exe.inflight.get(flight.step.id) is not flight or flight.settled:
            self._give_back(flight)
            return
        if exe.state.force_cancel:
            self._never_started(exe, flight)
            return
        flight.launch = None
        self.hooks.before_attempt(exe, flight.step.id, flight.number)
        flight.handle = runner.start(spec, _Report(self, exe, flight))
        timeout = exe.sop.effective_timeout(flight.step)
        if timeout and not flight.settled:
            flight.timer = self.host.call_later(timeout, self._time_out, exe, flight, timeout)

    def _give_back(self, flight: InFlight) -> None:
        if flight.holds_slot:
            flight.holds_slot = False
            self.admission.release()

    def release_held(self, exe: Execution) -> None:
        """The execution was resumed or cancelled: its held attempts queue again (or end, if cancelled)."""
        held, exe.held = exe.held, []
        for flight in held:
            if exe.state.cancel_requested:
                if not flight.settled:
                    self._never_started(exe, flight)
            elif flight.launch is not None and self.admission.acquire(exe.state.priority, flight.launch):
                flight.launch()

    def reattach(self, exe: Execution, step: Step, attempt: int, child_id: str) -> None:
        """Follow a sub-SOP attempt whose child execution is already running (after a restart)."""
        flight = InFlight(step, attempt, span=self._attempt_span(exe, step, attempt), child=child_id)
        exe.inflight[step.id] = flight
        spec = AttemptSpec(exe, step, attempt, None, {})
        flight.handle = self.runners["sop"].reattach(spec, child_id, _Report(self, exe, flight))  # type: ignore[attr-defined]
        timeout = exe.sop.effective_timeout(step)
        if timeout:
            flight.timer = self.host.call_later(timeout, self._time_out, exe, flight, timeout)

    # -- attempt outcomes ---------------------------------------------------------------------

    def settled(self, exe: Execution, flight: InFlight, outcome: StepOutcome | None,
                error: ErrorInfo | None) -> None:
        """The runner reported the attempt's end (a result, a failure, or its own error)."""
        if flight.settled:
            return  # the timeout came first
        if outcome is not None and outcome.key != f"{exe.id}/{flight.step.id}/{flight.number}":
            log.warning("ignoring the outcome of attempt %s delivered to attempt %s/%s/%s", outcome.key,
                        exe.id, flight.step.id, flight.number)  # at-least-once: only its own result counts
            return
        flight.settled = True
        self._give_back(flight)
        if flight.timer is not None:
            flight.timer.cancel()
        if error is None and outcome is not None and outcome.ok and outcome.spilled is None:
            self._succeeded(exe, flight, outcome)  # the common case needs no await
        else:
            self._spawn(self._conclude(exe, flight, outcome, error))

    def _time_out(self, exe: Execution, flight: InFlight, timeout: float) -> None:
        if flight.settled:
            return
        flight.settled = True
        self._give_back(flight)
        if flight.handle is not None:
            flight.handle.cancel(True)
        what = "sub-SOP" if runner_kind(flight.step) == "sop" else "attempt"
        self._spawn(self._conclude(exe, flight, None, ErrorInfo(
            "Timeout", f"{what} ran longer than timeout_s={timeout:g}", origin="timeout")))

    def _never_started(self, exe: Execution, flight: InFlight) -> None:
        """Settle an attempt cancelled before its runner got it (it was queued or held)."""
        flight.settled = True
        self._give_back(flight)
        error = ErrorInfo("Cancelled", "the attempt was cancelled before it started", retryable=False,
                          origin="cancel")
        self._spawn(self._conclude(exe, flight, None, error))

    def progress(self, exe: Execution, flight: InFlight, fraction: float | None, message: str) -> None:
        """A running attempt reported progress: log it (it shows in status) while the attempt is live."""
        if flight.settled or exe.inflight.get(flight.step.id) is not flight or exe.state.status.terminal:
            return  # late: the attempt has ended
        if fraction is not None and not (isinstance(fraction, (int, float)) and 0.0 <= fraction <= 1.0):
            return  # not from our StepContext: ignore rather than log nonsense
        self.host.emit(exe, ev.StepProgress(fraction=fraction, message=str(message)[:200]),
                       flight.step.id, flight.number)

    def _child_started(self, exe: Execution, flight: InFlight, child_id: str) -> None:
        flight.child = child_id
        self.host.emit(exe, ev.ChildSubmitted(child=child_id), flight.step.id, flight.number)

    async def _conclude(self, exe: Execution, flight: InFlight, outcome: StepOutcome | None,
                        error: ErrorInfo | None) -> None:
        """Turn an attempt's end into events: succeeded, cancelled, or failed with a retry decision."""
        step, attempt = flight.step, flight.number
        if exe.inflight.get(step.id) is not flight:
            return  # a late or duplicate result for an attempt already settled: ignore it
        if outcome is not None and not outcome.ok:
            error = outcome.error
        if error is not None:  # a user reads it: no terminal colour codes (a shell tool's stderr)
            error = dataclasses.replace(error, message=clean_message(error.message, 2000))
        if error is not None and exe.secret_values:  # spans, events and hooks all quote the error
            error = dataclasses.replace(error, message=exe.redact(error.message),
                                        traceback=exe.redact(error.traceback))
        if exe.state.cancel_requested and error is not None and error.origin in ("cancel", "crash"):
            del exe.inflight[step.id]
            _end(flight.span, "cancelled")
            self.host.emit(exe, ev.StepCancelled(reason="execution cancelled (forced)"), step.id, attempt)
            self.hooks.after_attempt(exe, step.id, attempt, "cancelled")
            self.step_ended(exe, step.id)
            return
        if outcome is not None and outcome.spilled is not None:
            # Stored (off the loop) before the event that refers to it is appended.
            try:
                outcome = await asyncio.to_thread(self._store_output, exe, outcome)
            except StateStoreError as e:  # a full disk: the attempt failed, worth another try
                size = len(outcome.spilled.data)
                outcome = dataclasses.replace(outcome, ok=False, output=None, spilled=None)
                error = ErrorInfo("ArtifactNotStored", f"step {step.id!r}: its output ({size} bytes) could not "
                                  f"be stored: {e}", retryable=True)
            if exe.inflight.get(step.id) is not flight:
                return  # settled meanwhile (a forced cancel)
        if error is None and outcome is not None and outcome.ok:
            self._succeeded(exe, flight, outcome)
            return
        assert error is not None
        decision = await self.policy.judge(exe, step, attempt, error)
        del exe.inflight[step.id]
        _end(flight.span, "failed", error, decision)
        self.host.emit(exe, ev.StepFailed(error=str(error), error_type=error.type,
                                          classification=decision.classification.value,
                                          final=decision.action != Action.RETRY, action=decision.action.value,
                                          reason=decision.reason, output=outcome.output if outcome is not None else None,
                                          **(_replay_data(outcome) if outcome is not None else {})), step.id, attempt)
        self.hooks.after_attempt(exe, step.id, attempt, "failed", error=as_dict(error),
                                 classification=decision.classification.value)
        if decision.action == Action.RETRY and not exe.state.cancel_requested:
            self.host.emit(exe, ev.RetryScheduled(delay_s=decision.delay_s, memory_mb=decision.memory_mb),
                           step.id, attempt + 1)
            self.hooks.on_retry(exe, step.id, attempt + 1, decision.delay_s, decision.reason)
            exe.waiting_retry[step.id] = self.host.call_later(decision.delay_s * self.backoff_scale, self.retry,
                                                              exe, step, attempt + 1)
            return
        if decision.action == Action.RETRY:  # cancelled meanwhile: no further attempts
            self.host.emit(exe, ev.StepCancelled(reason="execution cancelled"), step.id, attempt)
        elif decision.action == Action.ESCALATE:
            self.host.emit(exe, ev.Escalated(reason=decision.reason, classification=decision.classification.value),
                           step.id, attempt)
            self.hooks.on_escalate(exe, step.id, attempt, as_dict(error), decision.classification.value,
                                   decision.reason)
        self.step_ended(exe, step.id)

    def _store_output(self, exe: Execution, outcome: StepOutcome) -> StepOutcome:
        """Store an output too big for its event as an artifact; the outcome then holds its descriptor.

        Secret inputs are masked in it first, as events are masked (the descriptor then
        names the masked text).
        """
        output, spilled = outcome.output, outcome.spilled
        assert spilled is not None
        if exe.secret_values and mentions(spilled.data, exe.secret_values):
            output, spilled = respill(spilled, exe.redact)
        self.host.artifacts.put(exe.id, spilled)
        return dataclasses.replace(outcome, output=output, spilled=None)

    def _succeeded(self, exe: Execution, flight: InFlight, outcome: StepOutcome) -> None:
        step = flight.step
        if exe.inflight.get(step.id) is not flight:
            return  # a late or duplicate result for an attempt already settled: ignore it
        del exe.inflight[step.id]
        _end(flight.span, "succeeded")
        self.host.emit(exe, ev.StepSucceeded(output=outcome.output, duration_s=round(outcome.duration_s, 6),
                                             **_replay_data(outcome)), step.id, flight.number)
        self.hooks.after_attempt(exe, step.id, flight.number, "succeeded")
        self.step_ended(exe, step.id)

    def retry(self, exe: Execution, step: Step, attempt: int) -> None:
        """The backoff is over: start the next attempt (on resume, if the execution is paused)."""
        exe.waiting_retry.pop(step.id, None)
        if exe.state.cancel_requested or exe.state.status.terminal:
            return
        if exe.state.paused:
            exe.paused_retries[step.id] = attempt
            return
        self.start(exe, step, attempt)

    def kill_inflight(self, exe: Execution) -> None:
        """Force-cancel every attempt (and child execution) of ``exe`` in flight."""
        for flight in list(exe.inflight.values()):
            if flight.handle is not None:
                flight.handle.cancel(True)
            elif not flight.settled:  # still queued or held: its runner never got it
                self._never_started(exe, flight)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- what operators ask -------------------------------------------------------------------

    def cancel(self, exe: Execution, force: bool, by: str | None = None) -> None:
        """Start nothing new; with ``force``, also kill what runs. Steps waiting to retry end cancelled."""
        state = exe.state
        if state.status.terminal or (state.cancel_requested and not force):
            return
        self.host.emit(exe, ev.CancelRequested(force=force, by=by))
        for timer in exe.waiting_retry.values():
            timer.cancel()
        for sid in [*exe.waiting_retry, *exe.paused_retries]:
            self.host.emit(exe, ev.StepCancelled(reason="cancelled while waiting to retry"), sid)
        exe.waiting_retry.clear()
        exe.paused_retries.clear()
        if force:
            self.kill_inflight(exe)
        self.release_held(exe)
        self.advance(exe, [])

    def pause(self, exe: Execution, by: str | None = None) -> None:
        """Start no new attempt until :meth:`resume`; running ones finish."""
        exe.require_running("pause")
        if not exe.state.paused:
            self.host.emit(exe, ev.Paused(by=by))

    def resume(self, exe: Execution, by: str | None = None) -> None:
        if not exe.state.paused:
            return
        self.host.emit(exe, ev.Resumed(by=by))
        retries, exe.paused_retries = exe.paused_retries, {}
        for sid, attempt in retries.items():
            self.start(exe, exe.steps_by_id[sid], attempt)
        self.release_held(exe)
        self.advance(exe, list(exe.active_graph.nodes))

    def add_steps(self, exe: Execution, steps: list[Step], specs: list[dict[str, Any]],
                  handlers: dict[str, Any], by: str | None = None) -> None:
        """Add validated steps (``specs`` as the user gave them) and run those that are ready."""
        exe.require_running("add steps to")
        if exe.state.rolling_back:
            raise ExecutionError(f"execution {exe.id} is rolling back; steps cannot be added now")
        exe.request.handlers = {**exe.request.handlers, **handlers}  # the dict may be shared by a batch
        exe.add_steps(steps)
        references = {k: v for k, v in handlers.items() if isinstance(v, str)}
        self.host.emit(exe, ev.StepsAdded(steps=[s.id for s in steps], specs=specs, handlers=references, by=by))
        self.advance(exe, [s.id for s in steps])

    def decide(self, exe: Execution, step_id: str, decision: str, reason: str = "", output: Any = None,
               by: str | None = None) -> None:
        """Settle a step that waits for an operator after an interrupted attempt.

        Raises:
            ExecutionError: an unknown decision, a step not waiting, or an output that is not data.
        """
        if decision not in DECISIONS:
            raise ExecutionError(f"decision must be one of {', '.join(DECISIONS)}, got {decision!r}")
        st = exe.state.steps.get(step_id)
        if st is None or st.status != StepStatus.NEEDS_DECISION:
            waiting = [k for k, s in exe.state.steps.items() if s.status == StepStatus.NEEDS_DECISION]
            raise ExecutionError(f"step {step_id!r} of {exe.id} is not waiting for a decision "
                                 f"(steps waiting: {', '.join(waiting) or 'none'})")
        if decision == "succeed":  # an operator's output is a step output: data, capped like one
            try:
                output = self.host.artifacts.spill(exe.id, exe.redact(as_data(output)),
                                                   self.host.config.max_inline_output_bytes)
            except OutputNotData as e:
                raise ExecutionError(f"the output given for step {step_id!r} is not JSON data: {e}; give a "
                                     "dict with str keys, a list, a str, a number, a bool or None") from None
        self.host.emit(exe, ev.Decided(decision=decision, reason=reason, output=output if decision == "succeed" else None,
                                       by=by), step_id, st.attempts)
        if decision == "rerun" and not exe.state.cancel_requested:
            self.start(exe, exe.steps_by_id[step_id], st.attempts + 1)
        else:
            self.step_ended(exe, step_id)


class _Report:
    """How a runner reports one attempt back to the machine (:class:`runtime.seams.AttemptReport`)."""

    __slots__ = ("machine", "exe", "flight")

    def __init__(self, machine: StateMachine, exe: Execution, flight: InFlight) -> None:
        self.machine, self.exe, self.flight = machine, exe, flight

    def settle(self, outcome: StepOutcome | None, error: ErrorInfo | None = None) -> None:
        self.machine.settled(self.exe, self.flight, outcome, error)

    def child_started(self, child_id: str) -> None:
        self.machine._child_started(self.exe, self.flight, child_id)

    def progress(self, fraction: float | None, message: str = "") -> None:
        self.machine.progress(self.exe, self.flight, fraction, message)


def _digest_run(exe: Execution, step: Step, ctx: dict[str, Any], run: str | None) -> str | None:
    """The command as the digest sees it: rendered from masked values when the execution has secrets.

    Quoting can change a secret's text (``it's`` -> ``'it'"'"'s'``), so masking the command afterwards
    could miss it; and a replay, whose secrets are ``***``, must compute the same digest.
    """
    if run is None or not exe.secret_values or "${{" not in (step.run or ""):
        return run
    # Step outputs in the context come from events, masked already: only the inputs need it.
    return render_command(step.run, {**ctx, "inputs": exe.redact(ctx["inputs"])}, step=step.id)


def inputs_digest(args: Any, run: str | None, env: dict[str, str]) -> str:
    """A short, stable fingerprint of an attempt's rendered inputs."""
    text = json.dumps([args, run, env], sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _replay_data(outcome: StepOutcome) -> dict[str, Any]:
    """What a replay needs from an attempt beyond its output: values taken from the context."""
    data: dict[str, Any] = {}
    if outcome.recorded:
        data["recorded"] = [list(pair) for pair in outcome.recorded]
    if outcome.replay_diverged:
        data["replay_diverged"] = outcome.replay_diverged
    if outcome.logs:  # for the audit log: stored with the outcome, in its event
        data["logs"] = [list(line) for line in outcome.logs]
    return data


def _end(span: Any, status: str, error: ErrorInfo | None = None, decision: Decision | None = None) -> None:
    if span is None:
        return
    span.set_attribute("sopflow.status", status)
    if error is not None:
        span.set_attribute("sopflow.error_class", decision.classification.value if decision else error.type)
        span.set_attribute("sopflow.error_type", error.type)
        span.set_status(trace.Status(trace.StatusCode.ERROR, str(error)[:200]))
    span.end()


def _why_not_completed(exe: Execution, status: ExecutionStatus) -> str:
    """The reason an execution's span is an error: which steps failed, and the first one's error."""
    failed = [(sid, st) for sid, st in exe.state.steps.items() if st.status == StepStatus.FAILED]
    if not failed:
        return f"{status.value}: steps were halted or cancelled"
    first_id, first = failed[0]
    more = f" and {len(failed) - 1} more" if len(failed) > 1 else ""
    return f"{status.value}: step {first_id!r}{more} failed: {first.error or 'no error recorded'}"[:300]
