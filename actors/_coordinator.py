"""The plain class behind the Coordinator actor: the Ray-free core wired to Ray's seams.

The execution logic is :class:`runtime.coordinator.CoordinatorCore` and its
state machine; here it gets Ray task attempts, the FailureHandler actor as its
failure policy, the ExecutionMonitor actor as the feed of its events, the
cluster's CPUs as its capacity, and any step runners installed as plugins
(entry-point group ``sopflow.step_runners``: the agent and MCP runners plug in
there, so this package never imports them).
"""

from __future__ import annotations

from typing import Any

from actors._packages import PackageKeeper
from actors._ray_runner import RayFailurePolicy, RayMonitorFeed, RayTaskRunner, cluster_capacity
from actors.resource_manager import ray_source
from runtime.config import EngineConfig
from runtime.coordinator import CoordinatorCore
from runtime.plugins import agent_driver, step_runners


class _Coordinator(CoordinatorCore):
    """Plain class behind the Coordinator actor; see :class:`actors.Actors`."""

    on_ray = True
    """Step runner plugins may send work to other actors (``mcp:`` calls go to the agent hosts)."""

    def __init__(self, monitor: Any = None, failure_handler: Any = None, config: EngineConfig | None = None,
                 event_log: Any = None, owner: str | None = None, namespace: str | None = None) -> None:
        self.namespace = namespace
        """The Ray namespace of the engine's actors (its agent hosts are created there too)."""
        runner = RayTaskRunner()
        ttl = (config or EngineConfig()).resource_lease_ttl_s
        super().__init__(config, task_runner=runner, lease_source=ray_source(namespace or "sopflow", ttl),
                         policy=RayFailurePolicy(failure_handler) if failure_handler is not None else None,
                         monitor=RayMonitorFeed(monitor) if monitor is not None else None,
                         capacity=cluster_capacity, event_log=event_log, owner=owner)
        runner.packages = PackageKeeper(lambda: self.event_log, self.config.max_package_mb * 2**20)
        self.machine.runners.update(step_runners(self))
        self.machine.agents = agent_driver("ray", self)
