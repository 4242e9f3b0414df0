"""Dispatching step attempts as Ray tasks and turning their outcomes into events."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import heapq
import itertools
import json
import logging
import time
from typing import TYPE_CHECKING, Any

import ray
from opentelemetry import trace

from actors._execution import Execution, InFlight
from actors._preflight import ModuleCheck
from actors._ray_errors import ray_error as _ray_error
from actors.step_task import StepAttemptFailed, remote_execute_step
from runtime.errors import StateStoreError
from runtime.events import EventKind
from runtime.failure import Action, Decision, ErrorInfo, as_dict, clean_message, decide
from runtime.handlers import StepOutcome, StepTask
from runtime.masking import secret_problems
from runtime.outputs import mentions, respill
from runtime.telemetry import carrier_for, tracer
from sop import Step, render
from sop.expressions import ExpressionError
from sop.shell import render_command, render_env

if TYPE_CHECKING:
    from actors._coordinator import _Coordinator

log = logging.getLogger("sopflow.dispatch")


class Dispatcher:
    """Starts attempts, awaits them, asks the failure handler what a failure means."""

    def __init__(self, coordinator: _Coordinator) -> None:
        self.coordinator = coordinator
        self._remote_fns: dict[tuple, Any] = {}
        self.time_scale = 1.0
        """Multiplies retry backoffs (a replay does not wait them out)."""
        self.running = 0
        """Step tasks launched into Ray and not yet settled."""
        self._queue: list[tuple] = []
        self._held: dict[str, list[tuple]] = {}
        """Queued attempts of paused executions, by execution: they take no slot until resumed."""
        self._order = itertools.count()
        self._modules = ModuleCheck()
        self._starting = 0
        """Attempts holding a slot while their ``step_started`` becomes durable (not idempotent)."""
        self._max_running: int | None = None
        self._max_running_checked = 0.0

    # -- starting -------------------------------------------------------------------------

    async def preflight(self, requests: list[Any]) -> None:
        """Refuse requests whose ``python:`` modules do not import on the workers (see :mod:`actors._preflight`)."""
        await self._modules.check(requests)

    def start(self, exe: Execution, step: Step, attempt: int) -> None:
        """Start an attempt: launch it into Ray if a run slot is free, else queue it for one.

        ``step_started`` is logged when the attempt gets its slot and is launched (so a status
        saying ``running`` means a task is in Ray); an attempt that must wait for a slot logs
        ``step_queued`` first. A step that gets a slot at once costs one event, as before.
        """
        c = self.coordinator
        error: ErrorInfo | None = None
        args: dict[str, Any] = {}
        run, env = None, {}
        try:
            ctx = exe.expression_context()
            args = render(step.with_, ctx)
            run = render_command(step.run, ctx, step=step.id) if step.run else None  # values quoted as data
            env = render_env(step.env, ctx, step=step.id) if step.env else {}
        except ExpressionError as e:
            error = ErrorInfo("ExpressionError", str(e), retryable=False)
        span = tracer().start_span(f"step {step.id}", context=trace.set_span_in_context(exe.span),
                                   attributes={"sopflow.execution_id": exe.id, "sopflow.sop": exe.sop.sop,
                                               "sopflow.version": exe.sop.version, "sopflow.step": step.id,
                                               "sopflow.attempt": attempt, "sopflow.uses": step.handler})
        flight = InFlight(attempt, span=span)
        exe.inflight[step.id] = flight
        if error is not None:
            c.emit(exe, EventKind.STEP_STARTED, step.id, attempt)
            flight.task = asyncio.get_running_loop().create_task(self._finish(exe, step, attempt, None, error))
            return
        # The digest of what the handler gets lets a replay tell changed inputs from a changed
        # handler. Secrets are masked first: a hash of a short secret could be brute-forced.
        digest = inputs_digest(*exe.redact([args, _digest_run(exe, step, ctx, run), env]))
        timeout = exe.sop.effective_timeout(step)
        if step.handler.startswith("sop:"):  # runs no task of its own: needs no slot
            c.emit(exe, EventKind.STEP_STARTED, step.id, attempt, inputs=digest)
            flight.task = asyncio.get_running_loop().create_task(
                self._run_child(exe, step, attempt, args, timeout))
            return
        task = StepTask(exe.id, exe.sop.sop, step.id, attempt, step.handler,
                        exe.request.handlers.get(step.handler), args, run, env, timeout,
                        carrier_for(span) if span.is_recording() else {}, secrets=exe.secret_values,
                        output_cap=c.config.max_inline_output_bytes,
                        memory_mb=exe.memory_mb.get(step.id, exe.sop.effective_resources(step).memory_mb))
        self._admit(exe, step, flight, task, digest)

    def _admit(self, exe: Execution, step: Step, flight: InFlight, task: StepTask, digest: str) -> None:
        """Take a run slot now, or queue the attempt (by execution priority) while enough steps run."""
        if self.running + self._starting >= self.max_running:
            self.coordinator.emit(exe, EventKind.STEP_QUEUED, step.id, flight.attempt,
                                  reason=f"waiting for a run slot (max_running_steps={self.max_running})")
            heapq.heappush(self._queue, (-exe.state.priority, next(self._order), exe, step, flight, task, digest))
            return
        self._take_slot(exe, step, flight, task, digest)

    def _take_slot(self, exe: Execution, step: Step, flight: InFlight, task: StepTask, digest: str) -> None:
        """Log ``step_started`` and launch; a queued attempt of a cancelled execution never starts."""
        if exe.inflight.get(step.id) is not flight or flight.settled:
            return  # settled meanwhile (a forced cancel)
        if exe.state.paused and not exe.state.cancel_requested:  # paused: no new attempt starts
            self._held.setdefault(exe.id, []).append(
                (-exe.state.priority, next(self._order), exe, step, flight, task, digest))
            return
        if exe.state.cancel_requested:
            self._never_started(exe, step, flight)
            return
        c = self.coordinator
        c.emit(exe, EventKind.STEP_STARTED, step.id, flight.attempt, inputs=digest)
        if step.idempotent:
            # step_started is appended (the group commit is under way); should the coordinator die
            # before it is durable, recovery runs the step again, as it would after the commit.
            self._launch(exe, step, flight, task)
            return
        # The log must say "may have started" before a non-idempotent step can start; its slot
        # is held meanwhile (``_starting``) so the commit wait cannot overfill the cluster.
        self._starting += 1

        def launch() -> None:
            self._starting -= 1
            self._launch(exe, step, flight, task)

        c.journal.on_durable(launch)

    def _never_started(self, exe: Execution, step: Step, flight: InFlight) -> None:
        """Settle an attempt that was cancelled before it reached Ray (it was queued or held)."""
        flight.settled = True
        error = ErrorInfo("Cancelled", "the attempt was cancelled before it started", retryable=False,
                          origin="cancel")
        flight.task = asyncio.get_running_loop().create_task(self._finish(exe, step, flight.attempt, None, error))

    def _release(self) -> None:
        """A launched attempt ended: start queued ones while there is room."""
        self.running -= 1
        self._drain()

    def _drain(self) -> None:
        while self._queue and self.running + self._starting < self.max_running:
            *_, exe, step, flight, task, digest = heapq.heappop(self._queue)
            self._take_slot(exe, step, flight, task, digest)

    def release_held(self, exe: Execution) -> None:
        """The execution was resumed or cancelled: its held attempts queue again (or end, if cancelled)."""
        for entry in self._held.pop(exe.id, ()):
            if exe.state.cancel_requested:
                self._take_slot(*entry[2:])  # settles it as cancelled; takes no slot
            else:
                heapq.heappush(self._queue, entry)
        self._drain()

    @property
    def max_running(self) -> int:
        """How many step tasks may be in Ray at once: ``max_running_steps``, or 8 per cluster CPU.

        Ray would start a worker process for every runnable task with a small CPU share; past a
        few per core they only compete for the CPU (and starve the coordinator), so the rest wait
        here, highest priority first.
        """
        now = time.monotonic()
        if self._max_running is None or now > self._max_running_checked + 60:
            configured = self.coordinator.config.max_running_steps
            if configured:
                self._max_running = configured
            else:
                try:
                    cpus = ray.cluster_resources().get("CPU", 2.0)
                except Exception:  # noqa: BLE001 - no cluster (a replay in a client): keep the floor
                    cpus = 2.0
                self._max_running = max(16, int(cpus * 8))
            self._max_running_checked = now
        return self._max_running

    def _launch(self, exe: Execution, step: Step, flight: InFlight, task: StepTask) -> None:
        if exe.inflight.get(step.id) is not flight or flight.settled:
            return  # settled meanwhile (a forced cancel)
        if exe.state.force_cancel:
            self._never_started(exe, step, flight)
            return
        self.running += 1
        flight.ref = ref = self._remote(exe, step).remote(task)
        # A callback, not a task per attempt: the outcome arrives on the loop when the ref resolves.
        loop = asyncio.get_running_loop()
        if task.timeout_s:
            flight.timer = loop.call_later(task.timeout_s, self._time_out, exe, step, flight, task.timeout_s)
        asyncio.wrap_future(ref.future(), loop=loop).add_done_callback(
            functools.partial(self._settled, exe, step, flight))

    def _remote(self, exe: Execution, step: Step) -> Any:
        res = exe.sop.effective_resources(step)
        memory = exe.memory_mb.get(step.id, res.memory_mb)
        key = (exe.sop.sop, step.id, res.cpu, res.gpu, memory, res.capabilities)
        fn = self._remote_fns.get(key)
        if fn is None:
            opts: dict[str, Any] = {"name": f"{exe.sop.sop}/{step.id}", "num_cpus": res.cpu}
            if res.gpu:
                opts["num_gpus"] = res.gpu
            if memory:
                opts["memory"] = memory * 1024 * 1024
            if res.capabilities:
                opts["resources"] = {f"capability:{c}": 0.001 for c in res.capabilities}
            fn = self._remote_fns[key] = remote_execute_step.options(**opts)
        return fn

    # -- waiting --------------------------------------------------------------------------

    def _settled(self, exe: Execution, step: Step, flight: InFlight, fut: asyncio.Future) -> None:
        """The attempt's Ray task ended (or was cancelled): turn its result into an outcome."""
        if flight.settled:
            return  # the timeout came first
        flight.settled = True
        self._release()
        if flight.timer is not None:
            flight.timer.cancel()
        outcome: StepOutcome | None = None
        error: ErrorInfo | None = None
        exc = fut.exception() if not fut.cancelled() else ray.exceptions.TaskCancelledError()
        if exc is None:
            outcome = fut.result()
        elif isinstance(getattr(exc, "cause", None), StepAttemptFailed):
            outcome = exc.cause.outcome  # a failed attempt, raised so Ray shows the task FAILED
        else:
            error = _ray_error(exc, step.id)
        if error is None and outcome is not None and outcome.ok and outcome.spilled is None:
            self._succeeded(exe, step, flight.attempt, outcome)  # the common case needs no await
        else:
            flight.task = asyncio.get_running_loop().create_task(
                self._finish(exe, step, flight.attempt, outcome, error))

    def _time_out(self, exe: Execution, step: Step, flight: InFlight, timeout: float) -> None:
        if flight.settled:
            return
        flight.settled = True
        self._release()
        ray.cancel(flight.ref, force=True)
        error = ErrorInfo("Timeout", f"attempt ran longer than timeout_s={timeout:g}", origin="timeout")
        flight.task = asyncio.get_running_loop().create_task(self._finish(exe, step, flight.attempt, None, error))

    async def _run_child(self, exe: Execution, step: Step, attempt: int, args: dict[str, Any],
                         timeout: float | None) -> None:
        c = self.coordinator
        template = exe.request.subsops[step.handler[len("sop:"):]]
        child_req = dataclasses.replace(template, inputs={**_defaults(template), **args}, parent=exe.id,
                                        idempotency_key=None)
        if problems := secret_problems(template.secrets, child_req.inputs):  # the rule submit applies
            await self._finish(exe, step, attempt, None, ErrorInfo(
                "SubmissionError", f"step {step.id!r}: " + "; ".join(problems), retryable=False))
            return
        child_id = await c.submit(child_req)
        exe.inflight[step.id].child = child_id
        c.emit(exe, EventKind.CHILD_SUBMITTED, step.id, attempt, child=child_id)
        await self.watch_child(exe, step, attempt, child_id, timeout)

    async def watch_child(self, exe: Execution, step: Step, attempt: int, child_id: str,
                          timeout: float | None) -> None:
        """Wait for a sub-SOP's child execution and settle the step by how it ended."""
        c = self.coordinator
        child = c.executions.get(child_id)
        try:
            if child is not None:
                await asyncio.wait_for(child.done.wait(), timeout)
        except asyncio.TimeoutError:
            await c.cancel(child_id, force=True)
            await self._finish(exe, step, attempt, None, ErrorInfo(
                "Timeout", f"sub-SOP ran longer than timeout_s={timeout:g}", origin="timeout"))
            return
        view = c.state_of(child_id)
        if view.status.value == "completed":
            value = (view.outputs or {}).get("outputs")
            # The child's big outputs are its artifacts: the parent's step output needs its own copy.
            await asyncio.to_thread(c.artifacts.adopt, child_id, exe.id, value)
            out = StepOutcome(f"{exe.id}/{step.id}/{attempt}", True, value)
            await self._finish(exe, step, attempt, out, None)
        else:
            await self._finish(exe, step, attempt, None, ErrorInfo(
                "SubSopFailed", f"sub-SOP execution {child_id} ended {view.status.value}", retryable=False))

    async def _finish(self, exe: Execution, step: Step, attempt: int, outcome: StepOutcome | None,
                      error: ErrorInfo | None) -> None:
        c = self.coordinator
        flight = exe.inflight.get(step.id)
        if flight is None or flight.attempt != attempt:
            return  # a late or duplicate result for an attempt already settled: ignore it
        if outcome is not None and not outcome.ok:
            error = outcome.error
        if error is not None:  # a user reads it: no terminal colour codes (a shell tool's stderr)
            error = dataclasses.replace(error, message=clean_message(error.message, 2000))
        if error is not None and exe.secret_values:  # spans, events and hooks all quote the error
            error = dataclasses.replace(error, message=exe.redact(error.message),
                                        traceback=exe.redact(error.traceback))
        span = flight.span
        if exe.state.cancel_requested and (error is not None and error.origin in ("cancel", "crash")):
            del exe.inflight[step.id]
            _end(span, "cancelled")
            c.emit(exe, EventKind.STEP_CANCELLED, step.id, attempt, reason="execution cancelled (forced)")
            c.step_finished(exe, step.id)
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
            self._succeeded(exe, step, attempt, outcome)
            return
        assert error is not None
        decision = await self._decide(exe, step, attempt, error)
        del exe.inflight[step.id]
        _end(span, "failed", error, decision)
        failed_output = outcome.output if outcome is not None else None
        c.emit(exe, EventKind.STEP_FAILED, step.id, attempt, error=str(error),
               error_type=error.type, classification=decision.classification.value,
               final=decision.action != Action.RETRY, action=decision.action.value,
               reason=decision.reason, output=failed_output,
               **(_replay_data(outcome) if outcome is not None else {}))
        if decision.action == Action.RETRY and not exe.state.cancel_requested:
            c.emit(exe, EventKind.RETRY_SCHEDULED, step.id, attempt + 1, delay_s=decision.delay_s,
                   memory_mb=decision.memory_mb)
            loop = asyncio.get_running_loop()
            exe.waiting_retry[step.id] = loop.call_later(decision.delay_s * self.time_scale, self.retry,
                                                         exe, step, attempt + 1)
            return
        if decision.action == Action.RETRY:  # cancelled meanwhile: no further attempts
            c.emit(exe, EventKind.STEP_CANCELLED, step.id, attempt, reason="execution cancelled")
        elif decision.action == Action.ESCALATE:
            c.emit(exe, EventKind.ESCALATED, step.id, attempt, reason=decision.reason,
                   classification=decision.classification.value)
        c.step_finished(exe, step.id)

    def _store_output(self, exe: Execution, outcome: StepOutcome) -> StepOutcome:
        """Store an output too big for its event as an artifact; the outcome then holds its descriptor.

        Secret inputs are masked in it first, as ``emit`` masks them in events (the descriptor then
        names the masked text).
        """
        output, spilled = outcome.output, outcome.spilled
        assert spilled is not None
        if exe.secret_values and mentions(spilled.data, exe.secret_values):
            output, spilled = respill(spilled, exe.redact)
        self.coordinator.artifacts.put(exe.id, spilled)
        return dataclasses.replace(outcome, output=output, spilled=None)

    def _succeeded(self, exe: Execution, step: Step, attempt: int, outcome: StepOutcome) -> None:
        flight = exe.inflight.get(step.id)
        if flight is None or flight.attempt != attempt:
            return  # a late or duplicate result for an attempt already settled: ignore it
        del exe.inflight[step.id]
        _end(flight.span, "succeeded")
        self.coordinator.emit(exe, EventKind.STEP_SUCCEEDED, step.id, attempt, output=outcome.output,
                              duration_s=round(outcome.duration_s, 6), **_replay_data(outcome))
        self.coordinator.step_finished(exe, step.id)

    async def _decide(self, exe: Execution, step: Step, attempt: int, error: ErrorInfo) -> Decision:
        policy = exe.sop.effective_retry(step)
        memory = exe.memory_mb.get(step.id, exe.sop.effective_resources(step).memory_mb)
        handler = self.coordinator.failure_handler
        if handler is None:
            return decide(error, attempt, policy, memory)
        report = {"execution_id": exe.id, "sop": exe.sop.sop, "step": step.id, "attempt": attempt,
                  "error": exe.redact(as_dict(error)), "policy": policy, "memory_mb": memory}
        try:
            return await handler.handle.remote(error, report)
        except ray.exceptions.RayError:
            log.exception("failure handler unreachable; deciding locally")
            return decide(error, attempt, policy, memory)

    def retry(self, exe: Execution, step: Step, attempt: int) -> None:
        exe.waiting_retry.pop(step.id, None)
        if exe.state.cancel_requested or exe.state.status.terminal:
            return
        if exe.state.paused:
            exe.paused_retries[step.id] = attempt
            return
        self.start(exe, step, attempt)

    def kill_inflight(self, exe: Execution) -> None:
        """Force-cancel every running attempt (and child execution) of ``exe``."""
        loop = asyncio.get_running_loop()
        for sid, flight in list(exe.inflight.items()):
            if flight.ref is not None:
                ray.cancel(flight.ref, force=True)
            elif flight.child is not None:
                loop.create_task(self.coordinator.cancel(flight.child, force=True))
            elif not flight.settled:  # still queued here: it never reached Ray
                self._never_started(exe, exe.steps_by_id[sid], flight)


def _defaults(request: Any) -> dict[str, Any]:
    return {k: v.default for k, v in request.sop.inputs.items() if v.default is not None}


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

