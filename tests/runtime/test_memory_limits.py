"""``resources.memory_mb`` is enforced: an attempt over it fails as ``resource`` and is retried
with ``retry.memory_growth`` x memory."""

from __future__ import annotations

import pytest

from runtime.failure import Classification, classify
from runtime.handlers import StepTask, run_task
from runtime.status import ExecutionStatus

IH = "python:tests.isolation_handlers"


def test_a_shell_step_over_its_memory_is_killed_and_classified_resource() -> None:
    command = "python3 -c 'import time; b = b\"x\" * (300 * 1024 * 1024); time.sleep(5)'; echo survived"
    outcome = run_task(StepTask("e", "mem", "big", 1, "shell", run=command, timeout_s=60, memory_mb=100))
    assert not outcome.ok and outcome.error.type == "MemoryLimitExceeded", outcome.error
    assert "memory_mb=100" in outcome.error.message and classify(outcome.error) == Classification.RESOURCE
    fits = run_task(StepTask("e", "mem", "small", 1, "shell", run="echo fine", timeout_s=60, memory_mb=100))
    assert fits.ok and fits.output["stdout"] == "fine\n"


def test_a_python_handler_over_its_memory_is_stopped_and_classified_resource() -> None:
    task = StepTask("e", "mem", "big", 1, f"{IH}:allocate", args={"mb": 300}, memory_mb=100)
    outcome = run_task(task)
    assert not outcome.ok and outcome.error.type == "MemoryLimitExceeded", outcome.error
    assert classify(outcome.error) == Classification.RESOURCE
    assert run_task(StepTask("e", "mem", "big", 2, f"{IH}:allocate", args={"mb": 300}, memory_mb=1200)).ok


@pytest.mark.ray
def test_an_attempt_over_its_memory_is_retried_with_grown_memory_until_it_fits(engine, sop_file) -> None:
    from tests.sop_builders import events_of, sop_text
    from runtime.events import EventKind

    path = sop_file(sop_text(f"""\
        steps:
          - id: big
            uses: {IH}:allocate
            with: {{mb: 300}}
            resources: {{cpu: 0.25, memory_mb: 100}}
            retry: {{max_attempts: 3, initial_delay_s: 0.05, memory_growth: 5}}
        """, name="memory"))
    eid = engine.submit(path)
    view = engine.wait(eid, timeout=120)
    assert view.status == ExecutionStatus.COMPLETED, view
    failed = [e for e in events_of(engine, eid) if e.kind == EventKind.STEP_FAILED]
    assert len(failed) == 1 and failed[0].data["classification"] == "resource", failed
    assert "MemoryLimitExceeded" in failed[0].data["error"]
    retry = next(e for e in events_of(engine, eid) if e.kind == EventKind.RETRY_SCHEDULED)
    assert retry.data["memory_mb"] == 500
    assert engine.result(eid)["steps"]["big"] == {"attempt": 2, "held_mb": 300}
