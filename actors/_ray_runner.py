"""The Ray side of the state machine's seams: steps as Ray tasks, the failure handler, the monitor feed."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import threading
from collections import deque
from typing import Any

import ray
from ray._common import ray_option_utils
from ray._private.utils import get_runtime_env_info, parse_runtime_env_for_task_or_actor
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors._packages import PackageKeeper, gcs_packages
from actors._preflight import ModuleCheck
from actors._ray_errors import ray_error
from actors.step_task import StepAttemptFailed, remote_execute_step
from runtime.events import Event
from runtime.execution import Execution
from runtime.failure import Decision, ErrorInfo, decide
from runtime.failure_handler import failure_report
from runtime.forecast import reserved
from runtime.seams import AttemptReport, AttemptSpec
from sop import Step

log = logging.getLogger("sopflow.ray")


class RayTaskRunner:
    """Runs each attempt of a handler step as a Ray task named ``<sop>/<step> <execution-id>``, with the
    step's resources and the runtime_env of the client that submitted the execution."""

    needs_slot = True

    def __init__(self) -> None:
        self._launches: dict[tuple, _Launch] = {}
        self._affinities: dict[str, NodeAffinitySchedulingStrategy] = {}
        self._modules = ModuleCheck()
        self.packages: PackageKeeper | None = None
        """Keeps the requests' runtime_env packages (set by the coordinator, which has the store)."""
        self._finished: deque[tuple[AttemptReport, str, Any]] = deque()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def preflight(self, requests: list[Any]) -> None:
        """Keep the requests' code packages; refuse ``python:`` modules that do not import on the workers.

        See :mod:`actors._packages` and :mod:`actors._preflight`.
        """
        if self.packages is not None:
            seen: set[int] = set()
            for request in requests:  # a batch shares one runtime_env object: look at it once
                if request.runtime_env and id(request.runtime_env) not in seen:
                    seen.add(id(request.runtime_env))
                    await self.packages.keep(request.runtime_env, request.source)
        await self._modules.check(requests)

    def start(self, spec: AttemptSpec, report: AttemptReport) -> _RayAttempt:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        exe = spec.execution
        launch = self._launch(exe, spec.step)
        if launch.packages and self.packages is not None:
            self.packages.ensure(launch.packages)
        # The execution id in the task's name: the dashboard's search finds every step of one execution.
        # `kwargs` is a fresh dict each time: Ray's tracing puts the trace context into it.
        options = launch.options
        if spec.placement is not None:  # the node best fit chose; soft: if it has gone, Ray places it anywhere
            options = {**options, "scheduling_strategy": self._affinity(spec.placement)}
        ref = remote_execute_step._remote(args=(spec.task,), kwargs={}, name=f"{launch.name} {exe.id}",
                                          serialized_runtime_env_info=launch.env_info, **options)
        ref.future().add_done_callback(functools.partial(self._finished_in_ray, report, spec.step.id))
        return _RayAttempt(ref)

    def _affinity(self, node_id: str) -> NodeAffinitySchedulingStrategy:
        strategy = self._affinities.get(node_id)
        if strategy is None:
            strategy = self._affinities[node_id] = NodeAffinitySchedulingStrategy(node_id, soft=True)
        return strategy

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

    def _launch(self, exe: Execution, step: Step) -> _Launch:
        """Ray's options for this step of this execution, built once per distinct resources and runtime_env."""
        res = reserved(exe, step)  # learned CPU and memory when the step opted in (runtime/forecast.py)
        memory = exe.memory_mb.get(step.id, res.memory_mb)
        env = exe.request.runtime_env
        key = (exe.sop.sop, step.id, res.cpu, res.gpu, memory, res.capabilities,
               json.dumps(env, sort_keys=True) if env else "")
        launch = self._launches.get(key)
        if launch is None:
            opts: dict[str, Any] = {"num_cpus": res.cpu}
            if res.gpu:
                opts["num_gpus"] = res.gpu
            if memory:
                opts["memory"] = memory * 1024 * 1024
            if res.capabilities:
                opts["resources"] = {f"capability:{c}": 0.001 for c in res.capabilities}
            if env:
                opts["runtime_env"] = env
            launch = self._launches[key] = _Launch(f"{exe.sop.sop}/{step.id}", opts, gcs_packages(env))
        return launch


class _Launch:
    """Validated Ray task options and the serialized runtime_env for one kind of step attempt.

    What ``RemoteFunction.options()`` does, done once: it costs tens of microseconds per call
    (validation, runtime_env serialization), while each attempt only adds its own task name.
    """

    __slots__ = ("name", "options", "env_info", "packages")

    def __init__(self, name: str, task_options: dict[str, Any], packages: tuple[str, ...]) -> None:
        self.name, self.packages = name, packages
        options = dict(remote_execute_step._default_options)
        options.pop("max_calls", None)  # as options() does: it applies at the worker, not per call
        options = ray_option_utils.update_options(options, task_options)
        ray_option_utils.validate_task_options(options, in_options=True)
        self.env_info = remote_execute_step._serialized_base_runtime_env_info
        if "runtime_env" in task_options:
            options["runtime_env"] = parse_runtime_env_for_task_or_actor(options["runtime_env"])
            if options["runtime_env"]:
                self.env_info = get_runtime_env_info(options["runtime_env"], is_job_runtime_env=False,
                                                     serialize=True)
        options.pop("name", None)
        self.options = options


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
