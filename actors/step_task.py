"""The Ray task that runs one step attempt."""

from __future__ import annotations

import ray
from opentelemetry.trace import Status, StatusCode

from runtime.handlers import StepOutcome, StepTask, run_task
from runtime.masking import mask
from runtime.telemetry import attached, setup_tracing, tracer


def execute_step(task: StepTask) -> StepOutcome:
    """Run one attempt in a worker, as a child span of the coordinator's attempt span."""
    setup_tracing("sopflow-worker")
    with attached(task.trace_carrier), tracer().start_as_current_span(
        "step.handler", attributes={"sopflow.execution_id": task.execution_id,
                                    "sopflow.step": task.step, "sopflow.attempt": task.attempt,
                                    "sopflow.uses": task.uses}) as span:
        outcome = run_task(task)
        if outcome.error is not None:  # the attempt failed: so does its span, with the reason (masked)
            span.set_attribute("sopflow.error_type", outcome.error.type)
            span.set_status(Status(StatusCode.ERROR, mask(str(outcome.error), task.secrets)[:300]))
        return outcome


# Ray's own retries stay off: the FailureHandler decides, and every attempt is an event.
remote_execute_step = ray.remote(max_retries=0, retry_exceptions=False)(execute_step)
