"""The Ray side of the state machine's seams: steps as Ray tasks, the failure handler, the monitor feed."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections import deque
from typing import Any

import ray

from actors._preflight import ModuleCheck
from actors._ray_errors import ray_error
from actors.step_task import StepAttemptFailed, remote_execute_step
from runtime.events import Event
from runtime.execution import Execution
from runtime.failure import Decision, ErrorInfo, decide
from runtime.failure_handler import failure_report
from runtime.seams import AttemptReport, AttemptSpec
from sop import Step

log = logging.getLogger("sopflow.ray")


class RayTaskRunner:
    """Runs each attempt of a handler step as a Ray task named ``<sop>/<step>`` with the step's resources."""

    needs_slot = True

    def __init__(self) -> None:
        self._remote_fns: dict[tuple, Any] = {}
        self._modules = ModuleCheck()
        self._finished: deque[tuple[AttemptReport, str, Any]] = deque()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def preflight(self, requests: list[Any]) -> None:
        """Refuse requests whose ``python:`` modules do not import on the workers (:mod:`actors._preflight`)."""
        await self._modules.check(requests)

    def start(self, spec: AttemptSpec, report: AttemptReport) -> _RayAttempt:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        ref = self._remote(spec.execution, spec.step).remote(spec.task)
        ref.future().add_done_callback(functools.partial(self._finished_in_ray, report, spec.step.id))
        return _RayAttempt(ref)

    def _finished_in_ray(self, report: AttemptReport, step_id: str, future: Any) -> None:
        """On Ray's thread: queue the outcome; wake the loop once for every batch, not once per task."""
        with self._lock:
            wake = not self._finished
            self._finished.append((report, step_id, future))
        if wake:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._settle_finished)

    def _settle_finished(self) -> None:
        """On the loop: report every outcome that arrived since the last wake-up."""
        with self._lock:
            batch, self._finished = self._finished, deque()
        for report, step_id, future in batch:
            try:
                _settle(report, step_id, future)
            except Exception:  # noqa: BLE001 - one outcome must not keep the rest of the batch back
                log.exception("settling an attempt of step %s failed", step_id)

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


class _RayAttempt:
    __slots__ = ("ref",)

    def __init__(self, ref: Any) -> None:
        self.ref = ref

    def cancel(self, force: bool) -> None:
        if force:  # a soft cancel lets a running step finish
            ray.cancel(self.ref, force=True)


def _settle(report: AttemptReport, step_id: str, fut: Any) -> None:
    """The attempt's Ray task ended (or was cancelled): report its outcome."""
    exc = fut.exception() if not fut.cancelled() else ray.exceptions.TaskCancelledError()
    if exc is None:
        report.settle(fut.result())
    elif isinstance(getattr(exc, "cause", None), StepAttemptFailed):
        report.settle(exc.cause.outcome)  # a failed attempt, raised so Ray shows the task FAILED
    else:
        report.settle(None, ray_error(exc, step_id))


class RayFailurePolicy:
    """Asks the FailureHandler actor; decides locally when it cannot be reached."""

    def __init__(self, handler: Any) -> None:
        self.handler = handler

    async def judge(self, exe: Execution, step: Step, attempt: int, error: ErrorInfo) -> Decision:
        report = failure_report(exe, step, attempt, error)
        try:
            return await self.handler.handle.remote(error, report)
        except ray.exceptions.RayError:
            log.exception("failure handler unreachable; deciding locally")
            return decide(error, attempt, report["policy"], report["memory_mb"])


class RayMonitorFeed:
    """The ExecutionMonitor actor as the journal's :class:`runtime.journal.MonitorFeed`."""

    def __init__(self, monitor: Any) -> None:
        self.monitor = monitor

    def apply(self, batch: list[Event]) -> Any:
        return self.monitor.apply.remote(batch)

    def set_stalled(self, reason: str | None) -> None:
        self.monitor.set_stalled.remote(reason)  # an actor call is safe from the writer thread

    def resync(self) -> Any:
        return self.monitor.resync.remote()


def cluster_capacity() -> int:
    """How many step tasks may be in Ray at once: 8 per cluster CPU (at least 16).

    Ray would start a worker process for every runnable task with a small CPU share; past a
    few per core they only compete for the CPU (and starve the coordinator), so the rest wait
    in the coordinator, highest priority first.
    """
    try:
        cpus = ray.cluster_resources().get("CPU", 2.0)
    except Exception:  # noqa: BLE001 - no cluster reachable: keep the floor
        cpus = 2.0
    return max(16, int(cpus * 8))
