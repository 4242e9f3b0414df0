"""A failed attempt's Ray task fails in Ray too, so the dashboard's task list shows it FAILED."""

from __future__ import annotations

import pytest
import ray

from actors.step_task import StepAttemptFailed, remote_execute_step
from runtime.handlers import StepTask

pytestmark = pytest.mark.ray
H = "tests.handlers_for_tests"


def task(handler: str, args: dict, secrets: tuple[str, ...] = ()) -> StepTask:
    return StepTask("exe-0123456789ab-01234567", "orders", "ship", 1, "test", f"{H}:{handler}", args,
                    secrets=secrets)


def test_a_failed_attempt_is_a_failed_ray_task_carrying_its_outcome(ray_cluster) -> None:
    secret = "hunter2-hunter2"
    ref = remote_execute_step.options(name="orders/ship").remote(
        task("fail", {"message": f"the ledger is locked for {secret}", "kind": "permanent"}, (secret,)))
    with pytest.raises(ray.exceptions.RayTaskError) as caught:
        ray.get(ref, timeout=60)
    cause = caught.value.cause
    assert isinstance(cause, StepAttemptFailed)
    assert not cause.outcome.ok and cause.outcome.error.type == "PermanentError"
    # What Ray (and its dashboard) shows: the step, the attempt and the error, secrets masked.
    assert "step 'ship' attempt 1" in str(cause) and "the ledger is locked" in str(cause)
    assert secret not in str(caught.value) and secret not in str(cause)
    assert secret in cause.outcome.error.message  # the coordinator masks the outcome itself, as before


def test_a_successful_attempt_is_a_finished_task_returning_its_outcome(ray_cluster) -> None:
    outcome = ray.get(remote_execute_step.remote(task("echo", {"value": 7})), timeout=60)
    assert outcome.ok and outcome.output == 7
