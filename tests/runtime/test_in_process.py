"""The in-process engine itself (``Engine.in_process``): threads, copies, and what stopping it leaves behind."""

from __future__ import annotations

import asyncio

import pytest

from runtime.status import StepStatus
from tests.sop_builders import H, sop_text, wait_for


def test_shutting_down_an_in_process_engine_closes_its_loop_and_leaves_no_task_pending(sop_file, tmp_path) -> None:
    """A running step's thread cannot be stopped, but the engine's loop, tasks and file handles can."""
    from runtime import Engine

    gate = tmp_path / "gate"
    engine = Engine.in_process()
    eid = engine.submit(sop_file(sop_text(f"""\
        steps:
          - id: waits
            uses: {H}:wait_for_file
            with: {{path: "{gate}", timeout_s: 30}}
        """, name="shut-down-while-running")))
    wait_for(lambda: engine.status(eid).steps["waits"].status == StepStatus.RUNNING, 30)
    loop = engine._conn._loop
    try:
        engine.shutdown()
        assert loop.is_closed()
        assert not [t for t in asyncio.all_tasks(loop) if not t.done()]
    finally:
        gate.write_text("open")  # the abandoned thread ends; its result finds a closed loop and is dropped


def test_as_many_steps_run_at_once_as_there_are_run_slots(inproc, sop_file, tmp_path) -> None:
    """Every step shown running really runs: ten steps that only pass a barrier together all pass it
    (handler threads are not capped below the run slots, nor shared with the engine's own work)."""
    from runtime.status import ExecutionStatus

    parties = 10
    barrier = tmp_path / "barrier"
    steps = "".join(f"""
          - id: p{i}
            uses: {H}:barrier
            retry: {{max_attempts: 1}}
            with: {{directory: "{barrier}", name: "p{i}", parties: {parties}, timeout_s: 10}}"""
                    for i in range(parties))
    eid = inproc.submit(sop_file(sop_text(f"""\
        steps:{steps}
        """, name="wide")))
    view = inproc.wait(eid, timeout=60)
    assert view.status == ExecutionStatus.COMPLETED, view.errors
    assert max(s.started_at for s in view.steps.values()) < min(s.ended_at for s in view.steps.values())


def test_what_the_engine_returns_is_a_copy_changing_it_changes_nothing_in_the_engine(inproc) -> None:
    """As from an actor: results, histories and events are the caller's own, like the arguments it sends."""
    import json

    eid = inproc.submit(json.dumps({
        "sop": "copies", "steps": [{"id": "a", "uses": f"{H}:echo", "with": {"value": {"k": [1, 2]}}}],
        "outputs": {"v": "${{ steps.a.output }}"}}))
    inproc.wait(eid, timeout=30)
    result = inproc.result(eid)
    result["outputs"]["v"]["k"].append("changed")
    result["steps"]["a"]["k"].append("changed")
    history = inproc.history(eid)
    history[-1].data["status"] = "failed"
    events = list(inproc.events(eid, follow=False))
    events[-1].data["outputs"] = None

    assert inproc.result(eid) == {"outputs": {"v": {"k": [1, 2]}}, "steps": {"a": {"k": [1, 2]}}}
    assert inproc.history(eid)[-1].data["status"] == "completed"
    assert list(inproc.events(eid, follow=False))[-1].data["outputs"] is not None


def test_an_engine_refused_its_state_file_leaves_no_thread_behind(tmp_path) -> None:
    import threading

    from runtime import Engine
    from runtime.errors import StateStoreInUseError

    def loops() -> int:
        return sum(t.name == "sopflow-in-process" and t.is_alive() for t in threading.enumerate())

    state = str(tmp_path / "state.db")
    holder = Engine.in_process(state=state)
    try:
        before = loops()
        for _ in range(3):
            with pytest.raises(StateStoreInUseError, match="in use by another sopflow engine"):
                Engine.in_process(state=state)
        assert loops() == before
    finally:
        holder.shutdown()


def test_list_shows_what_this_client_just_submitted(inproc) -> None:
    """The monitor is fed in batches; list() still reads this client's own writes."""
    sop = "sop: listed\nversion: '1'\nmode: system_design\nsteps:\n  - id: a\n    uses: python:tests.handlers_for_tests:echo\n"
    for _ in range(20):
        eid = inproc.submit(sop)
        assert eid in {v.id for v in inproc.list(sop="listed")}
