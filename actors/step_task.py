"""The Ray task that runs one step attempt."""

from __future__ import annotations

from typing import Any

import ray
from opentelemetry.trace import Status, StatusCode

from runtime.handlers import StepOutcome, StepTask, run_task
from runtime.masking import mask
from runtime.telemetry import attached, setup_tracing, tracer


class StepAttemptFailed(Exception):
    """Raised by a step's Ray task whose attempt failed, so Ray (and its dashboard) shows it FAILED.

    The handler's failure is already data (``outcome``); raising it as well is what makes the
    task's state FAILED, with the error as its message, instead of a FINISHED task returning a
    failure. The coordinator takes ``outcome`` back out of Ray's wrapper and handles it exactly
    as a returned one. The message has the execution's secrets masked.
    """

    def __init__(self, outcome: StepOutcome, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.outcome, str(self)))


COORDINATOR_NAME = "sopflow-coordinator"
"""The coordinator actor's name, in the namespace of the job that runs the step (the coordinator's)."""


class ProgressToCoordinator:
    """Sends an attempt's ``context.report_progress`` calls to the coordinator, without waiting.

    The coordinator is looked up by name on the first report, so attempts that report no
    progress cost nothing.
    """

    _coordinator: Any = None

    def __init__(self, execution_id: str, step: str, attempt: int) -> None:
        self.execution_id, self.step, self.attempt = execution_id, step, attempt

    def __call__(self, fraction: float | None, message: str) -> None:
        if ProgressToCoordinator._coordinator is None:
            ProgressToCoordinator._coordinator = ray.get_actor(
                COORDINATOR_NAME, namespace=ray.get_runtime_context().namespace)
        ProgressToCoordinator._coordinator.step_progress.remote(self.execution_id, self.step, self.attempt,
                                                                fraction, message)


def execute_step(task: StepTask) -> StepOutcome:
    """Run one attempt in a worker, as a child span of the coordinator's attempt span.

    Raises:
        StepAttemptFailed: the attempt failed (its outcome rides along).
    """
    setup_tracing("sopflow-worker")
    if task.progress_to is None:
        task.progress_to = ProgressToCoordinator(task.execution_id, task.step, task.attempt)
    with attached(task.trace_carrier), tracer().start_as_current_span(
        "step.handler", attributes={"sopflow.execution_id": task.execution_id,
                                    "sopflow.step": task.step, "sopflow.attempt": task.attempt,
                                    "sopflow.uses": task.uses}) as span:
        outcome = run_task(task, own_process=True)  # a Ray worker runs one task at a time
        if outcome.error is None:
            return outcome
        # The attempt failed: so does its span, with the reason (masked).
        message = mask(f"step {task.step!r} attempt {task.attempt} of {task.execution_id}: {outcome.error}",
                       task.secrets)[:1000]
        span.set_attribute("sopflow.error_type", outcome.error.type)
        span.set_status(Status(StatusCode.ERROR, message[:300]))
    raise StepAttemptFailed(outcome, message)


# Ray's own retries stay off: the FailureHandler decides, and every attempt is an event.
remote_execute_step = ray.remote(max_retries=0, retry_exceptions=False)(execute_step)
