"""Batch executions on the in-process engine: windows, packing, max_concurrent, preemption, restart, reports.

Properties 36-40 with real parts (the engine, its state machine, SQLite files); the pure policy
is checked for hundreds of cases in test_batch_policy.py.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from runtime import Engine, Registry
from runtime.config import EngineConfig
from runtime.errors import BatchNotFound, ScheduleError
from tests.batch_handlers import count, marks
from tests.sop_builders import events_of, wait_for

B = "python:tests.batch_handlers"


def chain(tmp: Path, name: str = "chain", gate_b: bool = True, idempotent: bool = True,
          recovery: str = "ask", extra: str = "") -> str:
    """a -> b -> c, each leaving marks in ``tmp/marks``; b waits for ``tmp/gate`` when asked."""
    gate = f", gate: \"{tmp / 'gate'}\"" if gate_b else ""
    return f"""\
sop: {name}
mode: system_design
{extra}defaults: {{timeout_s: 60, retry: {{max_attempts: 1}}}}
steps:
  - id: a
    uses: {B}:mark
    with: {{path: "{tmp / 'marks'}", name: a}}
  - id: b
    uses: {B}:mark
    depends_on: [a]
    idempotent: {str(idempotent).lower()}
    recovery: {recovery}
    with: {{path: "{tmp / 'marks'}", name: b{gate}}}
  - id: c
    uses: {B}:mark
    depends_on: [b]
    with: {{path: "{tmp / 'marks'}", name: c}}
"""


def one_step(tmp: Path, name: str, gate: Path | None = None, extra: str = "", fail: bool = False) -> str:
    waits = f", gate: \"{gate}\"" if gate else ""
    return f"""\
sop: {name}
mode: system_design
{extra}defaults: {{timeout_s: 60, retry: {{max_attempts: 1}}}}
steps:
  - id: s
    uses: {B}:mark
    with: {{path: "{tmp / (name + '.marks')}", name: {name}{waits}, fail: {str(fail).lower()}}}
"""


@pytest.fixture
def one_slot():
    """An in-process engine with one run slot: one batch step fills it."""
    engine = Engine.in_process(registry=Registry(), config=EngineConfig(max_running_steps=1))
    try:
        yield engine
    finally:
        engine.shutdown()


def kinds(engine, eid: str) -> list[str]:
    return [e.kind.value for e in events_of(engine, eid)]


def first(engine, eid: str, kind: str, step: str | None = None):
    return next(e for e in events_of(engine, eid) if e.kind.value == kind and (step is None or e.step == step))


# -- property 36: realtime_start ------------------------------------------------------------------

@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(waiting=st.integers(0, 20), running=st.integers(0, 2))
def test_realtime_start(tmp_path_factory, waiting, running):
    """Property 36: with free capacity, a real-time execution starts within 1 s, however much batch work
    waits for its window or runs beside it."""
    tmp = tmp_path_factory.mktemp("rt")
    engine = Engine.in_process(registry=Registry(), config=EngineConfig(max_running_steps=4))
    try:
        later = time.time() + 3600
        if waiting:
            engine.submit_many(one_step(tmp, "later"), [{}] * waiting, schedule={"batch": "w", "not_before": later})
        for i in range(running):
            engine.submit(one_step(tmp, f"bg{i}", gate=tmp / "never"), schedule={"batch": "r"})
        t0 = time.time()
        eid = engine.submit(one_step(tmp, "now"))
        view = engine.wait(eid, timeout=30)
        assert view.status.value == "completed"
        assert first(engine, eid, "step_started").ts - t0 < 1.0
        assert "execution_waiting" not in kinds(engine, eid)
    finally:
        engine.shutdown()


# -- property 37: batch_window ------------------------------------------------------------------

def test_batch_window_not_before(inproc, tmp_path):
    """Property 37: it waits (status says why and until when) and starts inside its window."""
    not_before = time.time() + 1.5
    eid = inproc.submit(one_step(tmp_path, "nb"), schedule={"batch": "w1", "not_before": not_before})
    view = inproc.status(eid)
    assert view.status.value == "queued" and view.schedule == {"batch": "w1", "not_before": pytest.approx(not_before)}
    assert "not_before" in view.waiting["reason"] and view.waiting["until"] == pytest.approx(not_before, abs=0.01)
    assert inproc.wait(eid, timeout=30).status.value == "completed"
    assert first(inproc, eid, "step_started").ts >= not_before
    assert kinds(inproc, eid)[:3] == ["execution_submitted", "execution_waiting", "execution_started"]


def test_batch_daily_window_with_a_controllable_clock(inproc, tmp_path):
    """Property 37 with a daily window in a timezone: at 21:59:59 in Paris it waits for 22:00, then starts."""
    paris = ZoneInfo("Europe/Paris")
    now = [datetime(2026, 12, 1, 21, 59, 59, tzinfo=paris).timestamp()]
    core, loop = inproc._conn.coordinator, inproc._conn._loop
    core.start_gate.clock = lambda: now[0]
    eid = inproc.submit(one_step(tmp_path, "nightly"), schedule={"window": "22:00-06:00 Europe/Paris"})
    wait_for(lambda: inproc.status(eid).waiting, 10)
    view = inproc.status(eid)
    assert view.status.value == "queued" and "daily window" in view.waiting["reason"]
    assert view.waiting["until"] == datetime(2026, 12, 1, 22, 0, tzinfo=paris).timestamp()
    now[0] += 1.0
    loop.call_soon_threadsafe(core.start_gate.poke)
    assert inproc.wait(eid, timeout=30).status.value == "completed"


# -- property 38: batch_packing -------------------------------------------------------------------

def test_batch_packing_keeps_peak_low_and_meets_deadlines(inproc, tmp_path):
    """Property 38 on the engine: a batch whose window fits its executions one after another runs them
    one at a time (peak 1), and every one ends by its deadline."""
    deadline = time.time() + 20
    sop = one_step(tmp_path, "packed", extra="expected_duration_s: 2\n")
    ids = inproc.submit_many(sop, [{}] * 4, schedule={"batch": "p1", "deadline": deadline})
    for eid in ids:
        assert inproc.wait(eid, timeout=60).status.value == "completed"
    spans = sorted((first(inproc, i, "execution_started").ts, first(inproc, i, "execution_finished").ts)
                   for i in ids)
    assert all(end <= deadline for _, end in spans)
    assert all(spans[k][1] <= spans[k + 1][0] + 0.05 for k in range(len(spans) - 1)), spans  # no overlap


# -- max_concurrent ------------------------------------------------------------------------------

def test_max_concurrent_of_an_sop(inproc, tmp_path):
    """Executions of an SOP beyond its max_concurrent wait at the gate (status says why), then run."""
    gate = tmp_path / "go"
    sop = one_step(tmp_path, "pool", gate=gate, extra="max_concurrent: 1\n")
    one, two = inproc.submit(sop), inproc.submit(sop)
    wait_for(lambda: inproc.status(one).steps["s"].status.value == "running", 10)
    wait_for(lambda: inproc.status(two).waiting, 10)
    assert inproc.status(two).status.value == "queued"
    assert "max_concurrent: 1" in inproc.status(two).waiting["reason"]
    gate.touch()
    assert inproc.wait(one, timeout=30).status.value == "completed"
    assert inproc.wait(two, timeout=30).status.value == "completed"
    assert first(inproc, two, "execution_started").ts >= first(inproc, one, "execution_finished").ts


# -- property 39: realtime_preempts_batch -----------------------------------------------------------

def test_realtime_preempts_batch(one_slot, tmp_path):
    """Property 39: with every slot held by batch work, a real-time execution preempts the lowest-priority
    batch execution; it is requeued and resumes from the log: completed steps never run again, the
    stopped attempt runs again as the same attempt (not counted against max_attempts: 1)."""
    engine = one_slot
    batch = engine.submit(chain(tmp_path), schedule={"batch": "night"}, priority="low")
    wait_for(lambda: engine.status(batch).steps["b"].status.value == "running", 10)
    rt = engine.submit(one_step(tmp_path, "urgent"))
    assert engine.wait(rt, timeout=30).status.value == "completed"
    preempted = first(engine, batch, "execution_preempted")
    assert preempted.data["interrupted"] == {"b": 1} and preempted.data["by"] == rt
    (tmp_path / "gate").touch()
    view = engine.wait(batch, timeout=30)
    assert view.status.value == "completed"
    assert view.steps["b"].attempts == 1
    starts = [(e.step, e.attempt) for e in events_of(engine, batch) if e.kind.value == "step_started"]
    assert starts == [("a", 1), ("b", 1), ("b", 1), ("c", 1)]
    assert count(tmp_path / "marks", "a done") == 1 and count(tmp_path / "marks", "c done") == 1
    assert [e.step for e in events_of(engine, batch) if e.kind.value == "step_succeeded"] == ["a", "b", "c"]
    assert first(engine, rt, "step_started").ts < first(engine, batch, "execution_started").ts + 60


def test_preempted_status_and_the_victim_is_the_lowest_priority(one_slot, tmp_path):
    engine = one_slot
    (tmp_path / "l").mkdir()
    low = engine.submit(chain(tmp_path / "l", "low"), schedule={"batch": "n"}, priority="low")
    wait_for(lambda: engine.status(low).steps["b"].status.value == "running", 10)
    gate = tmp_path / "rt-gate"
    rt = engine.submit(one_step(tmp_path, "holder", gate=gate))
    wait_for(lambda: engine.status(low).status.value == "preempted", 10)
    view = engine.status(low)
    assert view.steps["b"].status.value == "queued" and "preempted" in view.waiting["reason"]
    gate.touch()
    assert engine.wait(rt, timeout=30).status.value == "completed"
    (tmp_path / "l" / "gate").touch()
    assert engine.wait(low, timeout=30).status.value == "completed"


@pytest.mark.parametrize("recovery, ends", [("ask", "needs_decision"), ("fail", "partially_completed"),
                                            ("rerun", "completed")])
def test_preempted_non_idempotent_step_follows_its_recovery_rule(one_slot, tmp_path, recovery, ends):
    """A stopped attempt of a step that is not idempotent is treated as after a crash: its recovery rule."""
    engine = one_slot
    batch = engine.submit(chain(tmp_path, idempotent=False, recovery=recovery), schedule={"batch": "x"})
    wait_for(lambda: engine.status(batch).steps["b"].status.value == "running", 10)
    rt = engine.submit(one_step(tmp_path, "urgent"))
    assert engine.wait(rt, timeout=30).status.value == "completed"
    (tmp_path / "gate").touch()
    settled = ("completed", "partially_completed", "failed", "needs_decision")
    wait_for(lambda: engine.status(batch).status.value in settled, 30)
    view = engine.status(batch)
    assert view.status.value == ends and view.steps["b"].attempts == 1
    if recovery == "fail":
        assert view.steps["b"].status.value == "failed" and "recovery: fail" in view.steps["b"].error
    if ends == "needs_decision":
        engine.decide(batch, "b", "rerun")
        assert engine.wait(batch, timeout=30).status.value == "completed"


# -- durability: the gate is rebuilt from the log ----------------------------------------------------

def test_gate_is_rebuilt_after_a_restart(tmp_path):
    state = str(tmp_path / "state.db")
    not_before = time.time() + 2.0
    engine = Engine.in_process(state=state, registry=Registry())
    eid = engine.submit(one_step(tmp_path, "later"), schedule={"batch": "r", "not_before": not_before})
    engine.shutdown()
    engine = Engine.in_process(state=state, registry=Registry())
    try:
        view = engine.status(eid)
        assert view.status.value == "queued" and "not_before" in view.waiting["reason"]
        assert engine.wait(eid, timeout=30).status.value == "completed"
        assert first(engine, eid, "step_started").ts >= not_before
    finally:
        engine.shutdown()


def test_preempted_execution_resumes_after_a_restart(tmp_path):
    state = str(tmp_path / "state.db")
    config = EngineConfig(max_running_steps=1)
    engine = Engine.in_process(state=state, registry=Registry(), config=config)
    batch = engine.submit(chain(tmp_path), schedule={"batch": "r"})
    wait_for(lambda: engine.status(batch).steps["b"].status.value == "running", 10)
    rt = engine.submit(one_step(tmp_path, "urgent", gate=tmp_path / "rt-gate"))
    wait_for(lambda: engine.status(batch).status.value == "preempted", 10)
    engine.shutdown()
    engine = Engine.in_process(state=state, registry=Registry(), config=config)
    try:
        (tmp_path / "rt-gate").touch()
        (tmp_path / "gate").touch()
        assert engine.wait(rt, timeout=30).status.value == "completed"
        assert engine.wait(batch, timeout=30).status.value == "completed"
        assert [e.step for e in events_of(engine, batch) if e.kind.value == "step_succeeded"] == ["a", "b", "c"]
        assert count(tmp_path / "marks", "a done") == 1
    finally:
        engine.shutdown()


# -- property 40: batch_report ---------------------------------------------------------------------

def test_batch_report(inproc, tmp_path):
    """Property 40: a finished batch has one report: counts, durations, failures, every execution's result."""
    ok = inproc.submit_many(one_step(tmp_path, "rep"), [{}] * 3, schedule={"batch": "rep-1"})
    bad = inproc.submit(one_step(tmp_path, "rep", fail=True), schedule={"batch": "rep-1"})
    other = inproc.submit(one_step(tmp_path, "rep"), schedule={"batch": "rep-2"})
    for eid in [*ok, bad, other]:
        inproc.wait(eid, timeout=30)
    found = inproc.batch_report("rep-1")
    assert found["executions"] == 4 and found["finished"] and found["counts"] == {"completed": 3, "failed": 1}
    assert [r["id"] for r in found["results"]] == [*ok, bad]
    assert [f["id"] for f in found["failures"]] == [bad] and "asked to fail" in found["failures"][0]["errors"]["s"]
    assert found["duration_s"]["max"] >= found["duration_s"]["p50"] >= found["duration_s"]["min"] >= 0
    assert all(r["status"] == "completed" and r["duration_s"] is not None for r in found["results"][:3])


def test_batch_report_refuses_bad_and_unknown_names(inproc):
    with pytest.raises(BatchNotFound, match="no batch 'nope'"):
        inproc.batch_report("nope")
    for hostile in ("../etc", "a'; DROP TABLE meta; --", "", "x" * 500, "a\nb", "%"):
        with pytest.raises(ScheduleError, match="schedule.batch"):
            inproc.batch_report(hostile)


def test_bad_schedules_are_refused_at_submit_and_change_nothing(inproc, tmp_path):
    sop = one_step(tmp_path, "bad")
    for schedule, field in [({"deadline": "2001-01-01T00:00Z"}, "deadline"), ({"not_before": "soon"}, "not_before"),
                            ({"window": "22:00-06:00 Nowhere/City"}, "window.tz"), ({"priority": 1}, "priority"),
                            ({"batch": "a/b"}, "batch")]:
        with pytest.raises(ScheduleError) as e:
            inproc.submit(sop, schedule=schedule)
        assert e.value.field == field
    assert inproc.list() == [] or len(inproc.list()) == 0


def test_a_request_with_a_raw_schedule_is_checked_by_the_coordinator_too(inproc, tmp_path):
    """A client that skips the engine's check (a hand-built request) is refused the same way."""
    request = inproc._request(one_step(tmp_path, "raw"), {}, mode=None, priority=None, idempotency_key=None)
    request.schedule = {"not_before": "2026-12-01T22:00"}
    with pytest.raises(ScheduleError, match="no timezone"):
        inproc._conn.call("coordinator", "submit", request)
    assert marks(str(tmp_path / "raw.marks")) == []


def test_a_batch_executions_sub_sop_is_batch_work_too(inproc, tmp_path):
    """Its child's steps queue in the batch lane: a batch execution's sub-SOP cannot preempt batch work."""
    (tmp_path / "child.yaml").write_text(one_step(tmp_path, "child"))
    parent = tmp_path / "parent.yaml"
    parent.write_text("sop: parent\nmode: system_design\nsteps:\n  - id: sub\n    uses: sop:child.yaml\n")
    eid = inproc.submit(str(parent), schedule={"batch": "with-child"})
    assert inproc.wait(eid, timeout=30).status.value == "completed"
    child = first(inproc, eid, "child_submitted").data["child"]
    view = inproc.status(child)
    assert view.schedule is not None and set(view.schedule) == {"not_before"}
    assert "execution_waiting" not in kinds(inproc, child)  # it started at once


def test_schedule_and_waiting_travel_over_the_wire(inproc, tmp_path):
    """The HTTP API's views (runtime._wire) carry a batch execution's schedule and why it waits."""
    from runtime._wire import view_from_dict, view_to_dict

    eid = inproc.submit(one_step(tmp_path, "wire"), schedule={"batch": "w", "not_before": time.time() + 3600})
    view = inproc.status(eid)
    again = view_from_dict(view_to_dict(view))
    assert again.schedule == view.schedule and again.waiting == view.waiting and "not_before" in again.waiting["reason"]
    inproc.cancel(eid)
    assert inproc.wait(eid, timeout=30).status.value == "cancelled"  # cancelled while it waited: it ends


def test_waiting_for_a_window_is_not_overdue():
    """The long-running alert times batch work from its first step: a night's wait raises nothing."""
    from runtime.alerts import due_alerts
    from runtime.state import ExecutionState

    config = EngineConfig()
    waiting = ExecutionState("e", submitted_at=0.0, schedule={"batch": "n"})
    assert due_alerts(waiting, 10.0, config, now=3600.0) == []
    waiting.first_started_at = 3000.0
    alert, = due_alerts(waiting, 10.0, config, now=3600.0)
    assert alert.rule.value == "overdue" and alert.elapsed_s == 600.0
    realtime = ExecutionState("r", submitted_at=0.0)
    assert [a.elapsed_s for a in due_alerts(realtime, 10.0, config, now=3600.0)] == [3600.0]


def test_the_victim_is_the_lowest_priority_batch_execution(tmp_path):
    """Property 39 on the engine: of two batch executions filling the slots, the low one is preempted."""
    engine = Engine.in_process(registry=Registry(), config=EngineConfig(max_running_steps=2))
    try:
        for name in ("hi", "lo"):
            (tmp_path / name).mkdir()
        high = engine.submit(chain(tmp_path / "hi", "hi"), schedule={"batch": "mix"}, priority="high")
        low = engine.submit(chain(tmp_path / "lo", "lo"), schedule={"batch": "mix"}, priority="low")
        for eid in (high, low):
            wait_for(lambda eid=eid: engine.status(eid).steps["b"].status.value == "running", 10)
        rt = engine.submit(one_step(tmp_path, "urgent"))
        assert engine.wait(rt, timeout=30).status.value == "completed"
        assert "execution_preempted" in kinds(engine, low) and "execution_preempted" not in kinds(engine, high)
        for name in ("hi", "lo"):
            (tmp_path / name / "gate").touch()
        assert engine.wait(high, timeout=30).status.value == "completed"
        assert engine.wait(low, timeout=30).status.value == "completed"
        assert engine.batch_report("mix")["preemptions"] == 1
    finally:
        engine.shutdown()
