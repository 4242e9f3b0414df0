"""A big output that the state store cannot take fails the attempt (and is retried), instead of
leaving the step running forever. In-process coordinator, real SQLite file, no Ray: the in-process
runner runs the step's handler here, and its outcome takes the same path as a Ray task's."""

from __future__ import annotations

import asyncio
from pathlib import Path

from runtime.config import EngineConfig
from runtime.coordinator import CoordinatorCore
from runtime.request import SubmitRequest
from runtime.runners import InProcessRunner
from runtime.eventlog import SqliteEventLog
from sop import Sop


def test_an_output_the_state_store_cannot_take_fails_the_attempt_as_transient(tmp_path: Path) -> None:
    sop = Sop.model_validate({"sop": "big", "steps": [{
        "id": "big", "uses": "python:tests.handlers_for_tests:big_output", "with": {"n": 400_000},
        "retry": {"max_attempts": 2, "initial_delay_s": 0.01}}]})
    log = SqliteEventLog(tmp_path / "state.db")
    coordinator = CoordinatorCore(EngineConfig(state="memory://"), task_runner=InProcessRunner(), event_log=log)
    coordinator.recovery = {}
    pages = log._writer.execute("PRAGMA page_count").fetchone()[0]
    log._writer.execute(f"PRAGMA max_page_count = {pages + 30}")  # room for events, not for 400 KB

    async def scenario():
        eid = await coordinator.submit(SubmitRequest(sop))
        return await coordinator.wait(eid, 30)

    try:
        view = asyncio.run(scenario())
    finally:
        coordinator.journal.close()
    step = view.steps["big"]
    assert view.status.value == "failed" and step.attempts == 2 and step.classification == "transient"
    assert step.error.startswith("ArtifactNotStored: step 'big': its output (400011 bytes) could not be stored")
    assert "database or disk is full" in step.error
