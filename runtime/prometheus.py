"""The metrics sopflow exports to Prometheus (through Ray's metrics pipeline), and how events update them.

:data:`ALL_METRICS` is the one list of names, kinds and labels: the monitor actor
creates Ray metrics from :data:`METRICS` (:mod:`actors._metrics`), the ResourceManager and
the agent hosts theirs from :data:`ACTOR_METRICS`, the Grafana dashboard is generated
from it (:mod:`runtime.grafana`) and the README documents it.
:class:`MetricsFold` turns the monitor's events into metric updates, Ray-free,
so the label rules are tested without a cluster.

Cardinality stays bounded: no execution id is ever a label; SOP names are, but
only the first ``EngineConfig.metrics_sop_labels`` distinct ones (the rest are
exported as ``sop="other"``), and step ids only for the first
:data:`STEP_LABELS` distinct ``(sop, step)`` pairs (the rest as ``step="other"``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from runtime.events import Event, EventKind

PREFIX = "ray_"
"""Ray's exporter puts application metrics in its ``ray`` namespace: ``sopflow_x`` is scraped as ``ray_sopflow_x``."""
OTHER = "other"
STEP_LABELS = 500
"""Most distinct ``(sop, step)`` pairs exported with their own ``step`` label."""
SECONDS = (0.05, 0.1, 0.5, 1, 5, 30, 120, 600, 3600, 21_600, 86_400)
"""Histogram bucket boundaries for durations (seconds)."""


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One exported metric: its name (before Ray's prefix), kind, help text and label names."""

    name: str
    kind: str
    """counter, gauge or histogram."""
    help: str
    labels: tuple[str, ...] = ()

    @property
    def exported(self) -> str:
        """The name Prometheus scrapes (see :data:`PREFIX`)."""
        return PREFIX + self.name

    def series_names(self) -> tuple[str, ...]:
        """Every name a query may use for it (a histogram's ``_bucket``, ``_sum``, ``_count``)."""
        if self.kind == "histogram":
            return tuple(self.exported + s for s in ("_bucket", "_sum", "_count"))
        return (self.exported,)


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("sopflow_executions_submitted_total", "counter", "Executions submitted", ("sop", "mode")),
    MetricSpec("sopflow_executions_total", "counter", "Executions finished, by final status",
               ("sop", "mode", "status")),
    MetricSpec("sopflow_executions_running", "gauge", "Executions not yet finished"),
    MetricSpec("sopflow_execution_seconds", "histogram", "Execution wall time, submission to end",
               ("sop", "mode")),
    MetricSpec("sopflow_step_attempts_total", "counter", "Step attempts ended, by outcome (succeeded, failed)",
               ("sop", "outcome")),
    MetricSpec("sopflow_step_failures_total", "counter",
               "Failed step attempts by class (transient, permanent, resource, crash, operator)",
               ("sop", "classification")),
    MetricSpec("sopflow_step_retries_total", "counter", "Retries scheduled", ("sop",)),
    MetricSpec("sopflow_step_seconds", "histogram", "Step attempt wall time, start to outcome", ("sop", "step")),
    MetricSpec("sopflow_steps_queued", "gauge", "Steps waiting for a run slot now (queue depth)"),
    MetricSpec("sopflow_queue_wait_seconds", "histogram", "Time a step attempt waited for a run slot", ("sop",)),
    MetricSpec("sopflow_alerts_total", "counter",
               "Alerts raised (overdue, queued_too_long, needs_decision_too_long)", ("sop", "rule")),
)
"""What the monitor actor exports (from events, through :class:`MetricsFold`)."""
ACTOR_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("sopflow_node_resources", "gauge",
               "CPU, memory (MiB) and GPU per node: total, leased to coordinators, used by running steps "
               "(the ResourceManager actor)", ("node", "resource", "kind")),
    MetricSpec("sopflow_mcp_breaker_state", "gauge",
               "Circuit breaker of an MCP data source on an agent host: 0 closed, 1 half-open, 2 open "
               "(each agent host actor)", ("source", "host")),
)
"""What other actors export from their own state (the ResourceManager, the agent hosts)."""
ALL_METRICS = METRICS + ACTOR_METRICS
BY_NAME = {m.name: m for m in ALL_METRICS}


class LabelCap:
    """Lets the first ``limit`` distinct values through as themselves; later new ones become ``other``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: set[Any] = set()

    def __call__(self, value: Any) -> Any:
        if value in self.seen:
            return value
        if len(self.seen) < self.limit:
            self.seen.add(value)
            return value
        return OTHER


Sink = Callable[[str, str, float, dict[str, str]], None]
"""``sink(metric name, "inc" | "set" | "observe", value, labels)``."""


class MetricsFold:
    """Turns the monitor's events (each after it is folded into its state) into metric updates.

    Args:
        sink: Where updates go (Ray metrics in the monitor actor; a list in tests).
        sop_labels: How many distinct SOP names get their own ``sop`` label.
    """

    def __init__(self, sink: Sink, sop_labels: int = 50) -> None:
        self.sink = sink
        self._sop = LabelCap(sop_labels)
        self._step = LabelCap(STEP_LABELS)
        self._queued: dict[str, dict[str, float]] = {}
        """Execution -> step -> when it was queued (the queue depth gauge and wait times)."""
        self._started: dict[str, dict[str, float]] = {}

    def sop(self, name: str) -> str:
        return self._sop(name or "unknown")

    def record(self, state: Any, event: Event, running: int) -> None:
        """Update the metrics for ``event`` (``state``: its execution after the event; ``running``: unfinished)."""
        sop, kind, step, exe = self.sop(state.sop), event.kind, event.step or "", event.execution_id
        if kind == EventKind.SUBMITTED:
            self.sink("sopflow_executions_submitted_total", "inc", 1, {"sop": sop, "mode": state.mode or "unknown"})
            self.sink("sopflow_executions_running", "set", running, {})
        elif kind == EventKind.STEP_QUEUED:
            self._queued.setdefault(exe, {})[step] = event.ts
            self._queue_depth()
        elif kind == EventKind.STEP_STARTED:
            self._started.setdefault(exe, {})[step] = event.ts
            since = self._queued.get(exe, {}).pop(step, None)
            if since is not None:
                self.sink("sopflow_queue_wait_seconds", "observe", max(0.0, event.ts - since), {"sop": sop})
                self._queue_depth()
        elif kind in (EventKind.STEP_SUCCEEDED, EventKind.STEP_FAILED):
            outcome = "succeeded" if kind == EventKind.STEP_SUCCEEDED else "failed"
            self.sink("sopflow_step_attempts_total", "inc", 1, {"sop": sop, "outcome": outcome})
            began = self._started.get(exe, {}).pop(step, None)
            if began is not None:
                self.sink("sopflow_step_seconds", "observe", max(0.0, event.ts - began),
                          {"sop": sop, "step": self._step_label(sop, step)})
            if kind == EventKind.STEP_FAILED:
                cls = str(event.data.get("classification") or "unknown")
                self.sink("sopflow_step_failures_total", "inc", 1, {"sop": sop, "classification": cls})
        elif kind == EventKind.RETRY_SCHEDULED:
            self.sink("sopflow_step_retries_total", "inc", 1, {"sop": sop})
        elif kind == EventKind.ALERTED:
            self.sink("sopflow_alerts_total", "inc", 1, {"sop": sop, "rule": str(event.data.get("rule") or "")})
        elif kind == EventKind.FINISHED:
            status = str(event.data.get("status") or "unknown")
            self.sink("sopflow_executions_total", "inc", 1, {"sop": sop, "mode": state.mode or "unknown",
                                                             "status": status})
            self.sink("sopflow_execution_seconds", "observe", max(0.0, event.ts - state.submitted_at),
                      {"sop": sop, "mode": state.mode or "unknown"})
            self.sink("sopflow_executions_running", "set", running, {})
            self._started.pop(exe, None)
            if self._queued.pop(exe, None) is not None:
                self._queue_depth()
        if step and kind not in (EventKind.STEP_QUEUED, EventKind.STEP_STARTED, EventKind.STEP_PROGRESS) \
                and self._queued.get(exe, {}).pop(step, None) is not None:
            self._queue_depth()  # left the queue without starting (cancelled, halted)

    def reset(self, states: Iterable[Any], running: int) -> None:
        """Set the gauges from the monitor's states (after it was restarted and reloaded the log)."""
        self._queued.clear()
        for state in states:
            if state.status.terminal:
                continue
            for sid, st in state.steps.items():
                if st.status.value == "queued":
                    self._queued.setdefault(state.id, {})[sid] = st.waiting_since or state.submitted_at
        self.sink("sopflow_executions_running", "set", running, {})
        self._queue_depth()

    def _step_label(self, sop: str, step: str) -> str:
        """The step's own id for the first :data:`STEP_LABELS` pairs of a named SOP, else ``other``."""
        if sop == OTHER:
            return OTHER
        pair = self._step((sop, step))
        return OTHER if pair == OTHER else step

    def _queue_depth(self) -> None:
        self.sink("sopflow_steps_queued", "set", sum(len(v) for v in self._queued.values()), {})
