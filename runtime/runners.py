"""Step runners that need no Ray: handlers in this process, and sub-SOPs as child executions.

The Ray task runner lives in :mod:`actors`; a replay's recorded runner in
:mod:`runtime.replay`. Each implements :class:`runtime.seams.StepRunner`.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import threading
from typing import Any

from runtime.failure import ErrorInfo, error_from_exception
from runtime.handlers import StepOutcome, StepTask, run_task
from runtime.masking import secret_problems
from runtime.seams import AttemptReport, AttemptSpec, ExecutionHost


class InProcessRunner:
    """Runs a handler step in a thread of this process (the in-process engine's task runner).

    A cancelled attempt is reported cancelled at once; its thread cannot be killed and
    runs to its end, its result ignored. Shell steps run in their own process group
    as anywhere else, and are killed with it.
    """

    needs_slot = True

    def __init__(self, prepare: Any = None) -> None:
        self.prepare = prepare
        """Called with each :class:`StepTask` before it runs (a replay feeds recorded values in)."""
        self.runs = 0

    def start(self, spec: AttemptSpec, report: AttemptReport) -> _ThreadAttempt:
        assert spec.task is not None
        task = spec.task if self.prepare is None else self.prepare(spec)
        # Every handler here shares this process: its memory is no one attempt's to limit.
        loop = asyncio.get_running_loop()
        task = dataclasses.replace(task, memory_mb=None, progress_to=lambda fraction, message: (
            loop.call_soon_threadsafe(report.progress, fraction, message)))
        attempt = _ThreadAttempt(report)
        attempt.task = asyncio.get_running_loop().create_task(self._run(task, attempt))
        return attempt

    async def _run(self, task: StepTask, attempt: _ThreadAttempt) -> None:
        outcome = await _in_own_thread(run_task, task)
        self.runs += 1
        attempt.done(outcome)


async def _in_own_thread(fn: Any, arg: Any) -> Any:
    """``fn(arg)`` in a thread of its own: every attempt holding a run slot really runs (a shared pool
    would cap them at its size, and starve the engine's own work behind blocked handlers). The
    thread is a daemon: one abandoned by a forced cancel never holds up the process's exit."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def deliver(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def work() -> None:
        result, error = None, None
        try:
            result = fn(arg)
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting task
            error = e
        try:
            loop.call_soon_threadsafe(deliver, result, error)
        except RuntimeError:  # the engine was shut down meanwhile: no one waits for this any more
            pass

    context = contextvars.copy_context()  # as asyncio.to_thread does (the trace context)
    threading.Thread(target=context.run, args=(work,), name=f"sopflow-step-{getattr(arg, 'key', '')}",
                     daemon=True).start()
    return await future


class _ThreadAttempt:
    __slots__ = ("report", "task", "cancelled")

    def __init__(self, report: AttemptReport) -> None:
        self.report = report
        self.task: asyncio.Task | None = None
        self.cancelled = False

    def done(self, outcome: StepOutcome) -> None:
        if not self.cancelled:
            self.report.settle(outcome)

    def cancel(self, force: bool) -> None:
        if force and not self.cancelled:
            self.cancelled = True
            self.report.settle(None, ErrorInfo("Cancelled", "the attempt was cancelled", retryable=False,
                                               origin="cancel"))


class SubSopRunner:
    """Runs a ``sop:`` step as a child execution of the same host and settles it by how the child ended."""

    needs_slot = False  # the child's steps take their own slots

    def __init__(self, host: ExecutionHost) -> None:
        self.host = host

    def start(self, spec: AttemptSpec, report: AttemptReport) -> _ChildAttempt:
        attempt = _ChildAttempt(self.host, report)
        run = _settle_on_error(self._start_child(spec, attempt), attempt)
        attempt.task = asyncio.get_running_loop().create_task(run)
        return attempt

    def reattach(self, spec: AttemptSpec, child_id: str, report: AttemptReport) -> _ChildAttempt:
        """Follow a child started before a restart."""
        attempt = _ChildAttempt(self.host, report, child_id)
        run = _settle_on_error(self._watch(spec, attempt, child_id), attempt)
        attempt.task = asyncio.get_running_loop().create_task(run)
        return attempt

    async def _start_child(self, spec: AttemptSpec, attempt: _ChildAttempt) -> None:
        exe, step = spec.execution, spec.step
        template = exe.request.subsops[step.handler[len("sop:"):]]
        request = dataclasses.replace(template, inputs={**_defaults(template), **spec.args}, parent=exe.id,
                                      # one child per attempt, even if the coordinator restarts before
                                      # the parent logs it: submitting again finds the same child
                                      idempotency_key=f"child:{exe.id}/{step.id}/{spec.attempt}",
                                      # a child's steps run with its parent's code
                                      runtime_env=template.runtime_env or exe.request.runtime_env)
        if problems := secret_problems(template.secrets, request.inputs):  # the rule submit applies
            attempt.report.settle(None, ErrorInfo("SubmissionError", f"step {step.id!r}: " + "; ".join(problems),
                                                  retryable=False))
            return
        child_id = await self.host.submit_child(request)
        attempt.child = child_id
        attempt.report.child_started(child_id)
        if attempt.cancel_requested is not None:  # cancelled while the child was being submitted
            await self.host.cancel_child(child_id, attempt.cancel_requested)
        await self._watch(spec, attempt, child_id)

    async def _watch(self, spec: AttemptSpec, attempt: _ChildAttempt, child_id: str) -> None:
        exe, step = spec.execution, spec.step
        state = await self.host.wait_child(child_id)
        key = f"{exe.id}/{step.id}/{spec.attempt}"
        if state.status.value == "completed":
            value = (state.outputs or {}).get("outputs")
            # The child's big outputs are its artifacts: the parent's step output needs its own copy.
            await asyncio.to_thread(self.host.artifacts.adopt, child_id, exe.id, value)
            attempt.report.settle(StepOutcome(key, True, value))
        else:
            cancelled = state.status.value == "cancelled"
            attempt.report.settle(None, ErrorInfo(
                "SubSopCancelled" if cancelled else "SubSopFailed",
                f"sub-SOP execution {child_id} ended {state.status.value}", retryable=False,
                origin="cancel" if cancelled else "handler"))


class _ChildAttempt:
    __slots__ = ("host", "report", "child", "task", "cancel_requested")

    def __init__(self, host: ExecutionHost, report: AttemptReport, child: str | None = None) -> None:
        self.host, self.report, self.child = host, report, child
        self.task: asyncio.Task | None = None
        self.cancel_requested: bool | None = None

    def cancel(self, force: bool) -> None:
        """Cancel the child execution; the step settles by how the child ends."""
        if self.child is None:
            self.cancel_requested = force
            return
        asyncio.get_running_loop().create_task(self.host.cancel_child(self.child, force))


async def _settle_on_error(run: Any, attempt: _ChildAttempt) -> None:
    """Run a sub-SOP attempt; should starting or following its child raise (the state store is stalled
    and takes no new execution, say), the attempt fails with that error instead of never ending."""
    try:
        await run
    except Exception as e:  # noqa: BLE001 - any failure here is the attempt's, reported as data
        attempt.report.settle(None, error_from_exception(e))


def _defaults(request: Any) -> dict[str, Any]:
    return {k: v.default for k, v in request.sop.inputs.items() if v.default is not None}
