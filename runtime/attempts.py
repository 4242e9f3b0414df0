"""Attempts of steps: started through their runners, holding run slots, turned back into events.

The half of :class:`runtime.machine.StateMachine` that deals with one attempt
at a time (the other half decides which steps run): a mixin, so the machine
stays one object, split by concern. It starts an attempt through the
:class:`runtime.seams.StepRunner` of the step's kind once the
:class:`runtime.seams.Admission` grants a slot, times it out, and turns what
the runner reports (an outcome, progress, a child execution) into events;
a failure goes to the :class:`runtime.seams.FailurePolicy`, whose decision
becomes a retry after a backoff, a failure, or an escalation.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import json
import logging
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

from runtime import events as ev
from runtime.errors import StateStoreError
from runtime.execution import Execution, InFlight
from runtime.failure import Action, Decision, ErrorInfo, as_dict, clean_message
from runtime.forecast import reserved
from runtime.handlers import StepOutcome, StepTask
from runtime.outputs import mentions, respill
from runtime.seams import AttemptSpec, Claim, Demand, StepRunner
from runtime.status import StepStatus
from runtime.telemetry import carrier_for, tracer
from sop import Step, render
from sop.expressions import ExpressionError
from sop.shell import render_command, render_env

if TYPE_CHECKING:
    from runtime.hooks import Hooks
    from runtime.seams import Admission, ExecutionHost, FailurePolicy

logger = logging.getLogger("sopflow.attempts")

MIN_PROGRESS_INTERVAL_S = 0.2
"""Progress reports of one attempt closer together than this are dropped (the worker sends at most
two a second; anything faster is not from a ``StepContext``)."""


CHILD_KINDS = ("sop", "agent")
"""Runner kinds whose attempts are child executions (no task of their own; re-attached after a restart)."""


def runner_kind(step: Step) -> str:
    """Which runner runs the step: ``sop`` for a sub-SOP, ``mcp`` for an MCP tool, ``agent`` for an agent
    step (``uses: agent``), else ``task``."""
    if step.handler == "agent":
        return "agent"
    prefix = step.handler.split(":", 1)[0]
    return prefix if prefix in ("sop", "mcp") else "task"


class AttemptsMixin:
    """Starting attempts and taking their outcomes (mixed into :class:`runtime.machine.StateMachine`)."""

    host: ExecutionHost
    runners: dict[str, StepRunner]
    admission: Admission
    policy: FailurePolicy
    hooks: Hooks
    backoff_scale: float
    _tasks: set[asyncio.Task]

    def step_ended(self, exe: Execution, sid: str) -> None:  # pragma: no cover - the machine's
        raise NotImplementedError


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
            flight.settled = True  # its outcome is taken: a cancel or timeout meanwhile ends nothing twice
            self._spawn(self._conclude(exe, flight, None, ErrorInfo("ExpressionError", str(e), retryable=False)))
            return
        # The digest of what the handler gets lets a replay tell changed inputs from a changed
        # handler. Secrets are masked first: a hash of a short secret could be brute-forced.
        digest = inputs_digest(*exe.redact([args, _digest_run(exe, step, ctx, run), env]))
        kind = runner_kind(step)
        runner = self.runners.get(kind)
        if runner is None:
            self.host.emit(exe, ev.StepStarted(inputs=digest), step.id, attempt)
            flight.settled = True
            self._spawn(self._conclude(exe, flight, None, ErrorInfo(
                "NoRunner", f"this engine has no runner for {kind!r} steps (step {step.id!r} uses "
                f"{step.handler})", retryable=False)))
            return
        task = None if kind in CHILD_KINDS else StepTask(
            exe.id, exe.sop.sop, step.id, attempt, step.handler, exe.request.handlers.get(step.handler), args,
            run, env, exe.sop.effective_timeout(step),
            carrier_for(flight.span) if flight.span.is_recording() else {}, secrets=exe.secret_values,
            output_cap=self.host.config.max_inline_output_bytes,
            memory_mb=exe.memory_mb.get(step.id, exe.sop.effective_resources(step).memory_mb))
        spec = AttemptSpec(exe, step, attempt, task, args)
        flight.launch = functools.partial(self._granted, exe, flight, runner, spec, digest)
        flight.needs_slot = runner.needs_slot
        flight.claim = _claim(exe, flight.step) if runner.needs_slot else None
        if not runner.needs_slot:  # same rules as a slotted attempt: paused, cancelled, durable first
            flight.launch()
        elif self.admission.acquire(flight.claim, flight.launch):
            flight.launch()
        else:
            why = getattr(self.admission, "why_queued", None)
            why = why(_claim(exe, flight.step)) if why is not None else \
                f"waiting for a run slot (max_running_steps={self.admission.capacity})"
            self.host.emit(exe, ev.StepQueued(reason=why), step.id, attempt)

    def _attempt_span(self, exe: Execution, step: Step, attempt: int) -> Any:
        return tracer().start_span(f"step {step.id}", context=trace.set_span_in_context(exe.span),
                                   attributes={"sopflow.execution_id": exe.id, "sopflow.sop": exe.sop.sop,
                                               "sopflow.version": exe.sop.version, "sopflow.step": step.id,
                                               "sopflow.attempt": attempt, "sopflow.uses": step.handler})

    def _granted(self, exe: Execution, flight: InFlight, runner: StepRunner, spec: AttemptSpec,
                 digest: str) -> None:
        """The attempt holds a slot (or needs none): log ``step_started`` and launch it.

        A paused execution's attempt is held instead (logged ``step_queued``) until resumed.
        """
        flight.holds_slot = flight.needs_slot
        if flight.needs_slot:
            flight.slot = flight.launch  # the admission knows the slot by its grant
            node = getattr(self.admission, "route", lambda _: None)(flight.launch)
            if node is not None:  # the runner sends the attempt there (Ray: soft node affinity)
                spec = dataclasses.replace(spec, placement=node)
        if exe.inflight.get(flight.step.id) is not flight or flight.settled:
            self._give_back(flight)  # settled meanwhile (a forced cancel)
            return
        if exe.state.paused and not exe.state.cancel_requested:  # paused: no new attempt starts
            self._give_back(flight)
            exe.held.append(flight)
            if exe.state.steps[flight.step.id].status != StepStatus.QUEUED:
                self.host.emit(exe, ev.StepQueued(reason="held while the execution is paused"),
                               flight.step.id, flight.number)
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
            slot, flight.slot = flight.slot, None
            self.admission.release(slot)

    def release_held(self, exe: Execution) -> None:
        """The execution was resumed or cancelled: its held attempts queue again (or end, if cancelled)."""
        held, exe.held = exe.held, []
        for flight in held:
            if exe.state.cancel_requested:
                if not flight.settled:
                    self._never_started(exe, flight)
            elif flight.launch is not None and (not flight.needs_slot
                                                or self.admission.acquire(flight.claim, flight.launch)):
                flight.launch()

    def reattach(self, exe: Execution, step: Step, attempt: int, child_id: str) -> None:
        """Follow a sub-SOP or agent step attempt whose child execution is already running (after a restart)."""
        flight = InFlight(step, attempt, span=self._attempt_span(exe, step, attempt), child=child_id)
        exe.inflight[step.id] = flight
        spec = AttemptSpec(exe, step, attempt, None, {})
        runner = self.runners[runner_kind(step)]
        flight.handle = runner.reattach(spec, child_id, _Report(self, exe, flight))  # type: ignore[attr-defined]
        timeout = exe.sop.effective_timeout(step)
        if timeout:
            flight.timer = self.host.call_later(timeout, self._time_out, exe, flight, timeout)

    # -- attempt outcomes ---------------------------------------------------------------------

    def settled(self, exe: Execution, flight: InFlight, outcome: StepOutcome | None,
                error: ErrorInfo | None) -> None:
        """The runner reported the attempt's end (a result, a failure, or its own error)."""
        if flight.settled:
            if flight.stopped is not None:  # a preempted attempt is over: its execution may resume
                flight.stopped()
            return  # the timeout came first
        if outcome is not None and outcome.key != f"{exe.id}/{flight.step.id}/{flight.number}":
            logger.warning("ignoring the outcome of attempt %s delivered to attempt %s/%s/%s", outcome.key,
                        exe.id, flight.step.id, flight.number)  # at-least-once: only its own result counts
            return
        flight.settled = True
        if flight.timer is not None:
            flight.timer.cancel()
        if error is None and outcome is not None and outcome.ok and outcome.spilled is None:
            try:  # the common case needs no await
                self._succeeded(exe, flight, outcome)
            finally:  # after the steps it made ready have queued: they go before new executions
                self._give_back(flight)
        else:
            self._give_back(flight)
            self._spawn(self._conclude(exe, flight, outcome, error))

    def _time_out(self, exe: Execution, flight: InFlight, timeout: float) -> None:
        if flight.settled:
            return
        flight.settled = True
        self._give_back(flight)
        if flight.handle is not None:
            flight.handle.cancel(True)
        what = {"sop": "sub-SOP", "agent": "agent step"}.get(runner_kind(flight.step), "attempt")
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
        now = time.monotonic()
        if now - flight.progress_at < MIN_PROGRESS_INTERVAL_S and fraction != 1.0:
            return  # reports come from any Ray client, not only a well-behaved StepContext: bound the log
        flight.progress_at = now
        self.host.emit(exe, ev.StepProgress(fraction=fraction, message=str(message)[:200]),
                       flight.step.id, flight.number)

    def interrupted(self, exe: Execution, flight: InFlight, reason: str) -> None:
        """The runner lost the attempt (its outcome cannot be known): the step's recovery rule says what next."""
        if flight.settled and flight.stopped is not None:
            flight.stopped()
        if flight.settled or exe.inflight.get(flight.step.id) is not flight:
            return
        flight.settled = True
        self._give_back(flight)
        if flight.timer is not None:
            flight.timer.cancel()
        del exe.inflight[flight.step.id]
        _end(flight.span, "interrupted")
        if self.after_interruption(exe, flight.step, flight.number, reason) in ("cancelled", "failed"):
            self.step_ended(exe, flight.step.id)

    def after_interruption(self, exe: Execution, step: Step, attempt: int, reason: str) -> str:
        """Log that an attempt's outcome is unknown and apply the step's rule: run it again (idempotent, or
        ``recovery: rerun``), fail it (``recovery: fail``), or wait for an operator's decision.

        Returns what was done: ``cancelled``, ``redispatched``, ``failed`` or ``awaiting_decision``.
        """
        sid = step.id
        self.host.emit(exe, ev.AttemptInterrupted(reason=reason), sid, attempt)
        if exe.state.cancel_requested:
            self.host.emit(exe, ev.StepCancelled(reason="execution cancelled"), sid, attempt)
            return "cancelled"
        if step.idempotent or step.recovery == "rerun":
            self.start(exe, step, attempt)
            return "redispatched"
        if step.recovery == "fail":
            self.host.emit(exe, ev.StepFailed(error=f"{reason}; the step is not idempotent and its SOP says "
                                              "recovery: fail", error_type="Interrupted",
                                              classification="crash", action="fail", reason="recovery: fail"),
                           sid, attempt)
            return "failed"
        self.host.emit(exe, ev.DecisionRequired(reason=(
            f"step '{sid}' is not idempotent and attempt {attempt} may have run; decide with "
            f"`sopflow decide {exe.id} {sid} --rerun|--succeed|--fail|--skip`")), sid, attempt)
        return "awaiting_decision"

    def _child_started(self, exe: Execution, flight: InFlight, child_id: str) -> None:
        if flight.settled or exe.inflight.get(flight.step.id) is not flight or exe.state.status.terminal:
            # the attempt ended (a timeout, a forced cancel) while its child was being submitted
            self._spawn(self.host.cancel_child(child_id, True))
            return
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
                                          duration_s=round(outcome.duration_s, 6) if outcome is not None else None,
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
        if exe.state.cancel_requested or exe.state.status.terminal or (
                exe.rollback_requested and not exe.state.rolling_back):
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
                if flight.launch is not None:
                    self.admission.withdraw(flight.launch)
                self._never_started(exe, flight)

    def withdraw_queued(self, exe: Execution) -> None:
        """The execution was cancelled: its attempts still waiting for a slot end now, not once one frees."""
        for flight in list(exe.inflight.values()):
            if (flight.handle is None and not flight.settled and flight.launch is not None
                    and flight not in exe.held and self.admission.withdraw(flight.launch)):
                self._never_started(exe, flight)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _Report:
    """How a runner reports one attempt back to the machine (:class:`runtime.seams.AttemptReport`)."""

    __slots__ = ("machine", "exe", "flight")

    def __init__(self, machine: AttemptsMixin, exe: Execution, flight: InFlight) -> None:
        self.machine, self.exe, self.flight = machine, exe, flight

    def settle(self, outcome: StepOutcome | None, error: ErrorInfo | None = None) -> None:
        self.machine.settled(self.exe, self.flight, outcome, error)

    def child_started(self, child_id: str) -> None:
        self.machine._child_started(self.exe, self.flight, child_id)

    def progress(self, fraction: float | None, message: str = "") -> None:
        self.machine.progress(self.exe, self.flight, fraction, message)

    def interrupted(self, reason: str) -> None:
        self.machine.interrupted(self.exe, self.flight, reason)


def _digest_run(exe: Execution, step: Step, ctx: dict[str, Any], run: str | None) -> str | None:
    """The command as the digest sees it: rendered from masked values when the execution has secrets.

    Quoting can change a secret's text (``it's`` -> ``'it'"'"'s'``), so masking the command afterwards
    could miss it; and a replay, whose secrets are ``***``, must compute the same digest.
    """
    if run is None or not exe.secret_values or "${{" not in (step.run or ""):
        return run
    # Step outputs in the context come from events, masked already: only the inputs need it.
    return render_command(step.run, {**ctx, "inputs": exe.redact(ctx["inputs"])}, step=step.id)


def _claim(exe: Execution, step: Step) -> Claim:
    state = exe.state
    res = reserved(exe, step)  # the declared resources, or the learned ones when the step opted in
    demand = Demand(res.cpu, exe.memory_mb.get(step.id, res.memory_mb) or 0, res.gpu, res.capabilities)
    return Claim(state.priority, state.first_started_at is not None, state.submitted_at, state.priority_class,
                 exe.id, exe.request.schedule is not None, demand)


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
    if outcome.cpu_s is not None:  # what the attempt used: learned estimates (runtime/estimates.py)
        data["cpu_s"] = outcome.cpu_s
    if outcome.peak_mb is not None:
        data["peak_mb"] = outcome.peak_mb
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


