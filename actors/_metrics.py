"""Ray metrics of the ExecutionMonitor (for the Ray dashboard and Prometheus), and the cluster's utilisation.

The names, kinds and labels are :data:`runtime.prometheus.METRICS`; which event
updates what is :class:`runtime.prometheus.MetricsFold`. Here they become
``ray.util.metrics`` objects, which Ray's metrics agent on each node exports
for Prometheus (as ``ray_<name>``).
"""

from __future__ import annotations

import logging
from typing import Any

from runtime.events import Event
from runtime.metrics import host_resources
from runtime.prometheus import METRICS, SECONDS, MetricsFold
from runtime.state import ExecutionState

log = logging.getLogger("sopflow.metrics")


class RayMetrics:
    """Ray metrics for the dashboard / Prometheus; does nothing outside a Ray worker."""

    def __init__(self, sop_labels: int = 50) -> None:
        self._metrics: dict[str, Any] = {}
        try:
            from ray.util.metrics import Counter, Gauge, Histogram

            for spec in METRICS:
                if spec.kind == "counter":
                    metric = Counter(spec.name, spec.help, tag_keys=spec.labels)
                elif spec.kind == "gauge":
                    metric = Gauge(spec.name, spec.help, tag_keys=spec.labels)
                else:
                    metric = Histogram(spec.name, spec.help, boundaries=list(SECONDS), tag_keys=spec.labels)
                self._metrics[spec.name] = metric
        except Exception as e:  # noqa: BLE001 - metrics are best-effort: the monitor works without them
            log.warning("Ray metrics are off: %s", e)
            self._metrics = {}
        self.fold = MetricsFold(self._update, sop_labels)

    def _update(self, name: str, op: str, value: float, tags: dict[str, str]) -> None:
        metric = self._metrics.get(name)
        if metric is None:
            return
        if op == "inc":
            metric.inc(value, tags=tags or None)
        elif op == "set":
            metric.set(value, tags=tags or None)
        else:
            metric.observe(value, tags=tags or None)

    def record(self, state: ExecutionState, event: Event, running: int) -> None:
        self.fold.record(state, event, running)

    def reset(self, states: Any, running: int) -> None:
        self.fold.reset(states, running)


def ray_resources() -> dict[str, Any]:
    """The cluster's CPU and memory from Ray (logical: reserved by tasks and actors) and this node's use."""
    import ray

    out: dict[str, Any] = {}
    try:
        total, free = ray.cluster_resources(), ray.available_resources()
        out = {"source": "ray.cluster_resources()/available_resources() (logical: reserved by tasks and "
                         "actors), and psutil on the monitor's node (physical)",
               "nodes": sum(1 for n in ray.nodes() if n.get("Alive")),
               "cluster_cpu_total": total.get("CPU", 0.0),
               "cluster_cpu_reserved": total.get("CPU", 0.0) - free.get("CPU", 0.0),
               "cluster_memory_total_bytes": total.get("memory", 0.0),
               "cluster_memory_reserved_bytes": total.get("memory", 0.0) - free.get("memory", 0.0)}
        out["cluster_cpu_utilisation"] = (out["cluster_cpu_reserved"] / out["cluster_cpu_total"]
                                          if out["cluster_cpu_total"] else None)
    except Exception as e:  # noqa: BLE001 - say why the cluster's numbers are missing rather than fail
        out = {"source": f"psutil on the monitor's node (Ray's resources unavailable: {type(e).__name__})"}
    node = host_resources()
    out.update({f"node_{k}": v for k, v in node.items() if k != "source"})
    return out
