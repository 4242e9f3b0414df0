"""Controlling running executions: cancel, force-cancel, pause/resume, add_steps, wait.

The state machine's rules run on the in-process engine (``inproc``); killing a running
step's process on a forced cancel is Ray's, tested on the shared cluster.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.errors import ExecutionError, ExecutionNotFound, ExecutionTimeout
from runtime.events import EventKind
from runtime.status import ExecutionStatus, StepStatus
from sop import SopValidationError
from tests.actors.test_scheduling_properties import dags
from tests.sop_builders import H, events_of, sop_text


def kinds_for(events: list, step: str) -> list[str]:
    return [e.kind.value for e in events if e.step == step]


def until(predicate, timeout_s: float = 30.0) -> None:
    """Bounded polling for a condition observed through the engine."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def step_is(engine, eid: str, step: str, status: StepStatus):
    def check() -> bool:
        try:
            return engine.status(eid).steps[step].status == status
        except ExecutionNotFound:  # the monitor may lag the coordinator by a few ms
            return False
    return check


def gated_sop(gate: Path, name: str, first_timeout_s: float = 30) -> str:
    """first waits for ``gate`` to appear; second and third follow it."""
    return sop_text(f"""\
        steps:
          - id: first
            uses: {H}:wait_for_file
            with: {{path: "{gate}", timeout_s: {first_timeout_s}}}
          - id: second
            uses: {H}:echo
            depends_on: [first]
            with: {{value: two}}
          - id: third
            uses: {H}:echo
            depends_on: [second]
            with: {{value: three}}
        """, name=name)


# -- cancel -------------------------------------------------------------------------------------


def test_cancel_lets_the_running_step_finish_and_starts_nothing_new(inproc, sop_file, tmp_path) -> None:
    gate = tmp_path / "gate"
    eid = inproc.submit(sop_file(gated_sop(gate, "cancel")))
    until(step_is(inproc, eid, "first", StepStatus.RUNNING))

    view = inproc.cancel(eid)
    assert view.status == ExecutionStatus.CANCELLING
    gate.write_text("done")  # the running step may now finish
    view = inproc.wait(eid, timeout=60)

    assert view.status == ExecutionStatus.CANCELLED
    assert view.steps["first"].status == StepStatus.SUCCEEDED
    assert view.steps["second"].status == StepStatus.CANCELLED
    assert view.steps["third"].status == StepStatus.CANCELLED
    events = events_of(inproc, eid)
    assert "step_started" not in kinds_for(events, "second")
    assert "step_started" not in kinds_for(events, "third")
    with pytest.raises(ExecutionError):
        inproc.result(eid)
    # cancelling again, or a finished execution, changes nothing
    assert inproc.cancel(eid).status == ExecutionStatus.CANCELLED
    assert len(events_of(inproc, eid)) == len(events)


@pytest.mark.ray
def test_force_cancel_kills_the_running_step(engine, sop_file, tmp_path) -> None:
    gate = tmp_path / "never"
    eid = engine.submit(sop_file(gated_sop(gate, "force-cancel", first_timeout_s=45)))
    until(step_is(engine, eid, "first", StepStatus.RUNNING))

    engine.cancel(eid, force=True)
    view = engine.wait(eid, timeout=30)  # far less than the handler's own 45 s wait

    assert view.status == ExecutionStatus.CANCELLED
    assert {sid: s.status.value for sid, s in view.steps.items()} == {
        "first": "cancelled", "second": "cancelled", "third": "cancelled"}
    events = events_of(engine, eid)
    assert "step_succeeded" not in kinds_for(events, "first")
    assert "retry_scheduled" not in kinds_for(events, "first")
    [request] = [e for e in events if e.kind == EventKind.CANCEL_REQUESTED]
    assert request.data["force"] is True


def test_force_cancel_ends_the_execution_without_waiting_for_the_running_step(inproc, sop_file, tmp_path) -> None:
    """In process, the handler's thread cannot be killed: the attempt is settled cancelled at once and
    whatever the thread returns later is dropped."""
    gate = tmp_path / "never"
    eid = inproc.submit(sop_file(gated_sop(gate, "force-cancel-in-process", first_timeout_s=45)))
    until(step_is(inproc, eid, "first", StepStatus.RUNNING))
    try:
        inproc.cancel(eid, force=True)
        view = inproc.wait(eid, timeout=30)  # far less than the handler's own 45 s wait
        assert view.status == ExecutionStatus.CANCELLED
        assert {sid: s.status.value for sid, s in view.steps.items()} == {
            "first": "cancelled", "second": "cancelled", "third": "cancelled"}
    finally:
        gate.write_text("late")  # the thread ends now; its result must change nothing
    threads = inproc._conn.coordinator.machine.runners["task"]
    until(lambda: threads.runs == 1)  # the abandoned thread has returned
    inproc.flush()
    events = events_of(inproc, eid)
    assert "step_succeeded" not in kinds_for(events, "first")
    assert "retry_scheduled" not in kinds_for(events, "first")
    assert events[-1].kind == EventKind.FINISHED


def test_cancel_during_a_retry_backoff_stops_the_retry(inproc, sop_file) -> None:
    eid = inproc.submit(sop_file(sop_text(f"""\
        steps:
          - id: flaky
            uses: {H}:fail
            retry: {{max_attempts: 3, initial_delay_s: 30}}
        """, name="cancel-backoff")))
    until(step_is(inproc, eid, "flaky", StepStatus.RETRYING))
    inproc.cancel(eid)
    view = inproc.wait(eid, timeout=10)
    assert view.status == ExecutionStatus.CANCELLED
    assert view.steps["flaky"].status == StepStatus.CANCELLED
    assert view.steps["flaky"].attempts == 1


# -- pause / resume -----------------------------------------------------------------------------


def test_pause_holds_back_the_next_step_until_resume(inproc, sop_file, tmp_path) -> None:
    gate = tmp_path / "gate"
    eid = inproc.submit(sop_file(gated_sop(gate, "pause")))
    until(step_is(inproc, eid, "first", StepStatus.RUNNING))

    assert inproc.pause(eid).status == ExecutionStatus.PAUSED
    gate.write_text("done")
    until(step_is(inproc, eid, "first", StepStatus.SUCCEEDED))
    # first has finished while paused; the coordinator decided not to start second then
    view = inproc.status(eid)
    assert view.status == ExecutionStatus.PAUSED
    assert view.steps["second"].status == StepStatus.PENDING
    with pytest.raises(ExecutionTimeout):
        inproc.wait(eid, timeout=0.2)

    assert inproc.resume(eid).status == ExecutionStatus.RUNNING
    view = inproc.wait(eid, timeout=60)
    assert view.status == ExecutionStatus.COMPLETED
    kinds = [(e.kind, e.step) for e in events_of(inproc, eid)]
    assert kinds.index((EventKind.STEP_SUCCEEDED, "first")) < kinds.index((EventKind.RESUMED, None)) \
        < kinds.index((EventKind.STEP_STARTED, "second"))
    assert kinds.index((EventKind.PAUSED, None)) < kinds.index((EventKind.STEP_SUCCEEDED, "first"))


def test_a_retry_due_while_paused_waits_for_resume(inproc, sop_file, tmp_path) -> None:
    eid = inproc.submit(sop_file(sop_text(f"""\
        steps:
          - id: flaky
            uses: {H}:flaky
            with: {{fail_times: 1, counter_dir: "{tmp_path / 'attempts'}"}}
            retry: {{max_attempts: 3, initial_delay_s: 0.5}}
        """, name="pause-retry")))
    until(step_is(inproc, eid, "flaky", StepStatus.RETRYING))
    inproc.pause(eid)
    with pytest.raises(ExecutionTimeout):  # the backoff (0.5 s) ends during the pause
        inproc.wait(eid, timeout=1.5)
    assert inproc.status(eid).steps["flaky"].attempts == 1
    inproc.resume(eid)
    view = inproc.wait(eid, timeout=60)
    assert view.status == ExecutionStatus.COMPLETED
    assert view.steps["flaky"].attempts == 2
    kinds = [(e.kind, e.attempt) for e in events_of(inproc, eid)]
    assert kinds.index((EventKind.RESUMED, None)) < kinds.index((EventKind.STEP_STARTED, 2))


def test_cancelling_a_paused_execution_cancels_what_has_not_run(inproc, sop_file, tmp_path) -> None:
    gate = tmp_path / "gate"
    eid = inproc.submit(sop_file(gated_sop(gate, "pause-cancel")))
    until(step_is(inproc, eid, "first", StepStatus.RUNNING))
    inproc.pause(eid)
    inproc.cancel(eid)
    gate.write_text("done")
    view = inproc.wait(eid, timeout=60)
    assert view.status == ExecutionStatus.CANCELLED
    assert {sid: s.status.value for sid, s in view.steps.items()} == {
        "first": "succeeded", "second": "cancelled", "third": "cancelled"}


def test_pause_and_resume_of_a_finished_execution(inproc, sop_file) -> None:
    eid = inproc.submit(sop_file(sop_text(f"""\
        steps:
          - id: a
            uses: {H}:echo
        """, name="pause-finished")))
    inproc.wait(eid, timeout=60)
    with pytest.raises(ExecutionError, match="completed"):
        inproc.pause(eid)
    assert inproc.resume(eid).status == ExecutionStatus.COMPLETED


# -- wait ----------------------------------------------------------------------------------------


def test_wait_with_a_timeout_raises_execution_timeout_while_running(inproc, sop_file, tmp_path) -> None:
    gate = tmp_path / "gate"
    eid = inproc.submit(sop_file(gated_sop(gate, "wait-timeout")))
    with pytest.raises(ExecutionTimeout) as info:
        inproc.wait(eid, timeout=0.3)
    assert info.value.execution_id == eid
    assert info.value.status in ("running", "queued")
    gate.write_text("done")
    assert inproc.wait(eid, timeout=60).status == ExecutionStatus.COMPLETED


# -- adding steps at run time ------------------------------------------------------------------


def test_steps_added_to_a_running_execution_run_and_appear_in_the_result(inproc, sop_file, tmp_path) -> None:
    gate = tmp_path / "gate"
    eid = inproc.submit(sop_file(gated_sop(gate, "add-steps")))
    until(step_is(inproc, eid, "first", StepStatus.RUNNING))

    view = inproc.add_steps(eid, [
        {"id": "audit", "uses": f"{H}:echo", "depends_on": ["first"],
         "with": {"value": "audited ${{ steps.first.output }}"}},
        {"id": "archive", "run": "echo archived", "depends_on": ["audit", "third"]},
    ])
    assert {"audit", "archive"} <= set(view.steps)
    gate.write_text("payload")
    view = inproc.wait(eid, timeout=60)

    assert view.status == ExecutionStatus.COMPLETED
    assert view.steps["audit"].status == StepStatus.SUCCEEDED
    assert view.steps["archive"].status == StepStatus.SUCCEEDED
    steps = inproc.result(eid)["steps"]
    assert steps["audit"] == "audited payload"
    assert steps["archive"]["stdout"] == "archived\n"
    events = events_of(inproc, eid)
    [added] = [e for e in events if e.kind == EventKind.STEPS_ADDED]
    assert added.data["steps"] == ["audit", "archive"]


@pytest.mark.parametrize("steps, words", [
    ([{"id": "x", "uses": f"{H}:echo", "depends_on": ["y"]},
      {"id": "y", "uses": f"{H}:echo", "depends_on": ["x"]}], ["cycle"]),
    ([{"id": "x", "uses": f"{H}:echo", "depends_on": ["frist"]}], ["frist"]),
    ([{"id": "second", "uses": f"{H}:echo"}], ["second"]),
], ids=["cycle", "unknown-dependency", "duplicate-id"])
def test_invalid_added_steps_are_refused_and_the_execution_is_unchanged(
        inproc, sop_file, tmp_path, steps, words) -> None:
    gate = tmp_path / "gate"
    eid = inproc.submit(sop_file(gated_sop(gate, "add-refused")))
    until(step_is(inproc, eid, "first", StepStatus.RUNNING))

    with pytest.raises(SopValidationError) as info:
        inproc.add_steps(eid, steps)
    message = str(info.value).lower()
    assert all(w in message for w in words), message
    gate.write_text("done")
    view = inproc.wait(eid, timeout=60)

    assert view.status == ExecutionStatus.COMPLETED
    assert set(view.steps) == {"first", "second", "third"}
    assert not [e for e in events_of(inproc, eid) if e.kind == EventKind.STEPS_ADDED]
    assert set(inproc.result(eid)["steps"]) == {"first", "second", "third"}


def test_steps_cannot_be_added_to_a_finished_execution(inproc, sop_file) -> None:
    eid = inproc.submit(sop_file(sop_text(f"""\
        steps:
          - id: a
            uses: {H}:echo
        """, name="add-finished")))
    inproc.wait(eid, timeout=60)
    with pytest.raises(ExecutionError, match="completed"):
        inproc.add_steps(eid, [{"id": "late", "uses": f"{H}:echo", "depends_on": ["a"]}])


# -- any operator actions at any moment -----------------------------------------------------------

ACTIONS = st.lists(st.sampled_from(["pause", "resume", "cancel", "force", "later"]), max_size=6)


def _act(engine, eid: str, action: str) -> None:
    if action == "later":  # let the run move on: one more event, or its end
        seen = len(engine.history(eid))
        try:
            until(lambda: len(engine.history(eid)) > seen or engine.status(eid).status.terminal, 5)
        except AssertionError:
            pass  # nothing more happens while paused: go on with the next action
        return
    try:
        {"pause": engine.pause, "resume": engine.resume, "cancel": engine.cancel,
         "force": lambda e: engine.cancel(e, force=True)}[action](eid)
    except ExecutionError:  # pausing a finished (or cancelling) execution is refused: nothing changes
        pass


@given(dags(max_steps=5), ACTIONS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_property_any_pause_resume_and_cancel_at_any_moment_keep_the_rules(inproc, tmp_path, dag, actions) -> None:
    """For any DAG and any operator actions at any moment: the execution ends with every step terminal;
    no attempt starts while paused or after a cancel; nothing succeeds after a forced cancel; a cancel
    before the end ends it cancelled; a step starts only after its dependencies succeeded."""
    deps, ok = dag
    runs = tmp_path / f"runs-{uuid.uuid4().hex[:8]}"
    steps = [{"id": f"s{i}", "uses": f"{H}:record_run", "depends_on": [f"s{d}" for d in ds],
              "with": {"runs_dir": str(runs), "name": f"s{i}", "ok": ok[i], "work_s": 0.02}}
             for i, ds in deps.items()]
    eid = inproc.submit(json.dumps({"sop": "operated", "defaults": {"retry": {"max_attempts": 1}},
                                    "steps": steps}))
    for action in actions:
        _act(inproc, eid, action)
    inproc.resume(eid)  # a paused execution must still be able to end
    view = inproc.wait(eid, timeout=60)

    assert view.status.terminal and all(s.status.terminal for s in view.steps.values()), view
    events = inproc.history(eid)
    paused = cancelled = forced = False
    succeeded: set[str] = set()
    for e in events:
        if e.kind == EventKind.PAUSED:
            paused = True
        elif e.kind == EventKind.RESUMED:
            paused = False
        elif e.kind == EventKind.CANCEL_REQUESTED:
            cancelled, forced = True, forced or e.data.get("force", False)
        elif e.kind == EventKind.STEP_STARTED:
            assert not paused, f"{e.step} started while paused"
            assert not cancelled, f"{e.step} started after a cancel"
            assert {f"s{d}" for d in deps[int(e.step[1:])]} <= succeeded, f"{e.step} started too early"
        elif e.kind == EventKind.STEP_SUCCEEDED:
            assert not forced, f"{e.step} succeeded after a forced cancel"
            succeeded.add(e.step)
    finished = [i for i, e in enumerate(events) if e.kind == EventKind.FINISHED]
    assert len(finished) == 1
    assert finished[0] == len(events) - 1  # nothing follows the end
    assert (view.status == ExecutionStatus.CANCELLED) == cancelled, (view.status, cancelled)


def test_resuming_an_execution_that_ended_while_paused_appends_nothing(inproc, sop_file, tmp_path) -> None:
    gate = tmp_path / "gate"
    eid = inproc.submit(sop_file(gated_sop(gate, "resume-after-end")))
    until(step_is(inproc, eid, "first", StepStatus.RUNNING))
    try:
        inproc.pause(eid)
        inproc.cancel(eid, force=True)
        assert inproc.wait(eid, timeout=30).status == ExecutionStatus.CANCELLED
        assert inproc.resume(eid).status == ExecutionStatus.CANCELLED
    finally:
        gate.write_text("open")
    assert inproc.history(eid)[-1].kind == EventKind.FINISHED, [e.kind.value for e in inproc.history(eid)[-3:]]
