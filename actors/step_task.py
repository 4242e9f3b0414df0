"""The Ray task that runs one step attempt."""

from __future__ import annotations

import ray

from runtime.handlers import StepOutcome, StepTask, run_task
from runtime.telemetry import attached, setup_tracing, tracer


def execute_step(task: StepTask) -> StepOutcome:
    """Run one attempt in a worker, as a child span of the coordinator's attempt span."""
    setup_tracing()
    with attached(task.trace_carrier), tracer().start_as_current_span(
        "step.handler", attributes={"sopflow.execution_id": task.execution_id,
                                    "sopflow.step": task.step, "sopflow.attempt": task.attempt,
                                    "sopflow.uses": task.uses}) as span:
        outcome = run_task(task)
        if outcome.error is not None:
            span.set_attribute("sopflow.error_type", outcome.error.type)
        return outcome


# Ray's own retries stay off: the FailureHandler decides, and every attempt is an event.
remote_execute_step = ray.remote(max_retries=0, retry_exceptions=False)(execute_step)
