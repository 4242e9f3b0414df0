"""The ResourceManager as a Ray actor (``sopflow-resource-manager``): Ray's node list, leases, metrics.

The plain class (:class:`runtime.resources.ResourceManager`) does the work; this
front reads the cluster's nodes from Ray (at most every ``NODES_REFRESH_S``, so
nodes joining and leaving show up at the next lease call), and exports per-node
capacity, leased and used amounts as Ray metrics.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import ray

from runtime.resources import Capacity, Grant, ResourceManager, nodes_from_ray
from runtime.seams import Demand

log = logging.getLogger("sopflow.resources")

NAME = "sopflow-resource-manager"
NODES_REFRESH_S = 2.0
"""How long Ray's node list is trusted (a lease call after that reads it again)."""


class ResourceManagerActor(ResourceManager):
    """The ResourceManager on Ray (named so in the dashboard)."""

    def __init__(self, ttl_s: float = 30.0) -> None:
        super().__init__(ttl_s=ttl_s)
        self._nodes_read = float("-inf")
        self._gauge: Any = None
        self.refresh()

    def refresh(self) -> None:
        """Read Ray's node list again."""
        self.set_nodes(nodes_from_ray(ray.nodes()))
        self._nodes_read = time.monotonic()

    def lease(self, holder: str, used: dict[str, Capacity] | None = None,  # type: ignore[override]
              unmet: list[Demand] | tuple[Demand, ...] = ()) -> Grant:
        if time.monotonic() > self._nodes_read + NODES_REFRESH_S:
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - keep the last node list: leases still renew
                log.warning("reading Ray's node list failed", exc_info=True)
        grant = super().lease(holder, used, unmet)
        self._export()
        return grant

    def report(self) -> dict[str, Any]:
        """Every node's total, leased and used amounts, and the holders' count."""
        return {"nodes": self.utilisation(), "holders": len(self.holders)}

    def _export(self) -> None:
        """Per node and resource: ``sopflow_node_resources{node, resource, kind=total|leased|used}``."""
        try:
            if self._gauge is None:
                from ray.util.metrics import Gauge

                from runtime.prometheus import BY_NAME

                spec = BY_NAME["sopflow_node_resources"]
                self._gauge = Gauge(spec.name, spec.help, tag_keys=spec.labels)
            for node, row in self.utilisation().items():
                for kind in ("total", "leased", "used"):
                    for resource, value in row[kind].items():
                        self._gauge.set(value, tags={"node": node[:12], "resource": resource, "kind": kind})
        except Exception:  # noqa: BLE001 - metrics are best effort; leases are not
            log.debug("exporting resource metrics failed", exc_info=True)

    def __repr__(self) -> str:
        return f"ResourceManager({len(getattr(self, 'nodes', {}))} nodes)"


def resource_manager(namespace: str, ttl_s: float = 30.0) -> Any:
    """The namespace's ResourceManager actor, created if missing (detached, on the head node)."""
    from actors.fronts import HEAD_NODE

    return ray.remote(ResourceManagerActor).options(
        name=NAME, namespace=namespace, lifetime="detached", get_if_exists=True, num_cpus=0,
        max_restarts=-1, max_task_retries=-1, resources=HEAD_NODE).remote(ttl_s)


def ray_source(namespace: str, ttl_s: float) -> Any:
    """A lease source for :class:`runtime.leases.LeaseKeeper`: calls the actor (found again if it restarts)."""
    state: dict[str, Any] = {}

    async def lease(holder: str, used: dict, unmet: list) -> Grant:
        if "handle" not in state:
            state["handle"] = resource_manager(namespace, ttl_s)
        try:
            return await state["handle"].lease.remote(holder, used, unmet)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
            state.pop("handle", None)  # killed: the next call creates it again
            raise

    return lease
