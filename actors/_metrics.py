"""Ray metrics of the ExecutionMonitor, for the dashboard and Prometheus."""

from __future__ import annotations

from runtime.events import Event, EventKind
from runtime.state import ExecutionState


class RayMetrics:
    """Ray metrics for the dashboard / Prometheus; absent outside a Ray worker."""

    def __init__(self) -> None:
        try:
            from ray.util.metrics import Counter, Gauge, Histogram

            self.steps = Counter("sopflow_step_attempts_total", "Step attempts by outcome",
                                 tag_keys=("sop", "outcome"))
            self.executions = Counter("sopflow_executions_total", "Finished executions by status",
                                      tag_keys=("sop", "status"))
            self.running = Gauge("sopflow_executions_running", "Executions not yet finished")
            self.duration = Histogram("sopflow_execution_seconds", "Execution wall time",
                                      boundaries=[0.05, 0.1, 0.5, 1, 5, 30, 120, 600, 3600],
                                      tag_keys=("sop",))
        except Exception:  # noqa: BLE001 - metrics are best-effort
            self.steps = None

    def record(self, state: ExecutionState, event: Event, running: int) -> None:
        if self.steps is None:
            return
        if event.kind in (EventKind.STEP_SUCCEEDED, EventKind.STEP_FAILED):
            outcome = "succeeded" if event.kind == EventKind.STEP_SUCCEEDED else "failed"
            self.steps.inc(tags={"sop": state.sop, "outcome": outcome})
        elif event.kind == EventKind.FINISHED:
            self.executions.inc(tags={"sop": state.sop, "status": event.data["status"]})
            self.duration.observe(event.ts - state.submitted_at, tags={"sop": state.sop})
            self.running.set(running)
        elif event.kind == EventKind.SUBMITTED:
            self.running.set(running)


