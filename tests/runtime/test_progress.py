"""A running step's ``context.report_progress`` shows in status, on Ray and in process."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from runtime import Engine
from runtime.events import EventKind

H = "python:tests.handlers_for_tests"


def _sop(gate: Path) -> str:
    return f"""
sop: progress
version: "1"
steps:
  - id: work
    uses: {H}:report_then_wait
    with: {{gate: "{gate}"}}
"""


def _until(predicate, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)  # polling status: the condition, not the time, is what the test waits for
    raise AssertionError("condition not met in time")


def _check(engine: Engine, gate: Path) -> None:
    eid = engine.submit(_sop(gate))
    step = _until(lambda: (s := engine.status(eid).steps["work"]).progress == 0.5 and s)
    assert step.message == "half way" and step.status.value == "running"
    gate.touch()
    view = engine.wait(eid, timeout=60)
    assert view.status.value == "completed"
    assert view.steps["work"].progress is None  # progress belongs to a running attempt
    kinds = [e for e in engine.history(eid) if e.kind == EventKind.STEP_PROGRESS]
    assert [e.payload.fraction for e in kinds][:1] == [0.5] and all(e.step == "work" for e in kinds)


def test_progress_reported_by_a_ray_task_shows_in_status(engine, tmp_path: Path) -> None:
    _check(engine, tmp_path / "gate")


def test_progress_reported_in_process_shows_in_status(tmp_path: Path) -> None:
    engine = Engine.in_process()
    try:
        _check(engine, tmp_path / "gate")
    finally:
        engine.shutdown()


def test_progress_is_rate_limited_in_the_worker_and_bad_values_are_clamped() -> None:
    from runtime.handlers import StepContext

    sent: list = []
    ctx = StepContext("e", "s", 1, None, _progress_to=lambda f, m: sent.append((f, m)))  # type: ignore[arg-type]
    for i in range(1000):
        ctx.report_progress(i / 1000, "x" * 500)
    ctx.report_progress(7.0)
    assert len(sent) == 2  # the first, then the final 1.0 (clamped); the rest within 0.5 s were dropped
    assert sent[0] == (0.0, "x" * 200) and sent[-1] == (1.0, "")


def test_a_flood_of_progress_reports_from_outside_the_step_context_is_bounded(tmp_path: Path) -> None:
    """step_progress is an actor method any Ray client can call: the coordinator bounds what it logs."""
    engine = Engine.in_process()
    gate = tmp_path / "gate"
    try:
        eid = engine.submit(_sop(gate))
        _until(lambda: engine.status(eid).steps["work"].progress == 0.5)
        core = engine._conn.coordinator
        for i in range(500):  # as a hostile or broken client would, bypassing the worker's limit
            engine._conn._run(core.step_progress(eid, "work", 1, 0.6, f"spam {i}"))
        gate.touch()
        engine.wait(eid, timeout=60)
        logged = [e for e in engine.history(eid) if e.kind == EventKind.STEP_PROGRESS]
        assert len(logged) <= 10, len(logged)
    finally:
        engine.shutdown()
