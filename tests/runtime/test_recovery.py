"""Crash recovery on the shared Ray cluster: kill the coordinator, a step's worker, or decide by hand.

These tests run their own set of sopflow actors (a namespace and state file of
their own), so killing that coordinator leaves the other tests' actors alone.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.events import EventKind
from runtime.status import ExecutionStatus, StepStatus
from tests.actors.test_scheduling_properties import dags, descendants, expected_final
from tests.sop_builders import H, own_engine, wait_for

pytestmark = pytest.mark.ray



@pytest.fixture(scope="module")
def durable(ray_cluster, tmp_path_factory):
    """An engine with its own actors and state file (so its coordinator can be killed)."""
    with own_engine("sopflow-recovery-tests", tmp_path_factory.mktemp("recovery"), snapshot_every=10) as e:
        yield e


def kill_coordinator(engine) -> None:
    """Crash the coordinator; Ray restarts it and it rebuilds from the log."""
    import ray

    ray.kill(engine._conn.actors.coordinator, no_restart=False)


def dag_sop(name: str, deps: dict[int, list[int]], ok: list[bool], runs: Path, work: list[float],
            idempotent: bool = True) -> str:
    steps = []
    for i, ds in deps.items():
        upstream = "${{ " + " ~ '+' ~ ".join(f"steps.s{d}.output" for d in ds) + " }}" if ds else None
        steps.append({"id": f"s{i}", "uses": f"{H}:record_run", "depends_on": [f"s{d}" for d in ds],
                      "idempotent": idempotent,
                      "with": {"runs_dir": str(runs), "name": f"s{i}", "ok": ok[i], "upstream": upstream,
                               "work_s": work[i]}})
    return json.dumps({"sop": name, "defaults": {"retry": {"max_attempts": 1}, "timeout_s": 60,
                                                 "resources": {"cpu": 0.25}}, "steps": steps})


def expected_outputs(deps: dict[int, list[int]], ok: list[bool]) -> dict[str, str]:
    out: dict[str, str] = {}
    failed = {i for i in deps if not ok[i]}
    below = descendants(deps, failed)
    for i, ds in sorted(deps.items()):
        if i in below or not ok[i]:
            continue
        out[f"s{i}"] = f"s{i}<{'+'.join(out[f's{d}'] for d in ds)}>" if ds else f"s{i}"
    return out


def check_history(engine, eid: str, runs: Path) -> None:
    """Nothing lost or duplicated, and no step ran again after its success was logged."""
    events = engine.history(eid)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [e.seq for e in engine.events(eid, follow=False)] == [e.seq for e in events]
    succeeded = {}
    for e in events:
        if e.kind == EventKind.STEP_SUCCEEDED:
            assert e.step not in succeeded, f"{e.step} succeeded twice"
            succeeded[e.step] = e.ts
    starts = {}
    for e in events:
        if e.kind == EventKind.STEP_STARTED:
            starts[e.step] = starts.get(e.step, 0) + 1
    for step, done_at in succeeded.items():
        lines = (runs / f"{step}.runs").read_text().splitlines()
        assert len(lines) <= starts[step], f"{step} ran {len(lines)} times, dispatched {starts[step]}"
        assert all(float(line.split()[3]) < done_at for line in lines), f"{step} ran after it completed"


# -- the coordinator dies at random points ---------------------------------------------------------


@given(dags(max_steps=5), st.lists(st.integers(2, 14), min_size=1, max_size=3),
       st.lists(st.sampled_from([0.0, 0.02, 0.1]), min_size=5, max_size=5))
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_killing_the_coordinator_at_any_point_changes_nothing_but_timing(durable, tmp_path_factory,
                                                                         dag, kill_after, work) -> None:
    deps, ok = dag
    runs = tmp_path_factory.mktemp("runs")
    eids = [durable.submit(dag_sop(f"crash-{i}", deps, ok, runs / str(i), work)) for i in range(2)]
    for k in kill_after:  # kill once the first execution has logged at least k events
        wait_for(lambda k=k: len(durable.history(eids[0])) >= k or
                 durable.status(eids[0]).status.terminal)
        kill_coordinator(durable)

    for i, eid in enumerate(eids):
        view = durable.wait(eid, timeout=120)
        statuses = {sid: s.status for sid, s in view.steps.items()}
        assert view.status == expected_final(statuses)
        for j in deps:
            want = StepStatus.SUCCEEDED if ok[j] else StepStatus.FAILED
            if j in descendants(deps, {d for d in deps if not ok[d]}):
                want = StepStatus.UPSTREAM_FAILED
            assert statuses[f"s{j}"] == want
        assert view.outputs["steps"] == expected_outputs(deps, ok)
        check_history(durable, eid, runs / str(i))


def test_an_interrupted_attempt_runs_again_and_the_run_says_it_was_recovered(durable, tmp_path) -> None:
    gate = tmp_path / "gate"
    text = json.dumps({"sop": "interrupted", "defaults": {"resources": {"cpu": 0.25}}, "steps": [
        {"id": "a", "uses": f"{H}:record_run", "with": {"runs_dir": str(tmp_path), "name": "a"}},
        {"id": "b", "uses": f"{H}:record_run", "depends_on": ["a"],
         "with": {"runs_dir": str(tmp_path), "name": "b", "gate": str(gate)}}]})
    eid = durable.submit(text)
    wait_for(lambda: (tmp_path / "b.runs").exists())  # b is running, blocked on the gate
    kill_coordinator(durable)
    wait_for(lambda: any(e.kind == EventKind.RECOVERED for e in durable.history(eid)))
    gate.write_text("open")

    view = durable.wait(eid, timeout=60)
    assert view.status == ExecutionStatus.COMPLETED
    kinds = [(e.kind, e.step) for e in durable.history(eid)]
    assert (EventKind.ATTEMPT_INTERRUPTED, "b") in kinds
    assert len((tmp_path / "a.runs").read_text().splitlines()) == 1  # completed before the crash: not rerun
    assert view.steps["b"].attempts == 1  # the same attempt, dispatched again
    check_history(durable, eid, tmp_path)


def test_a_non_idempotent_step_waits_for_an_operator_after_a_crash(durable, tmp_path) -> None:
    gate = tmp_path / "gate"
    text = json.dumps({"sop": "charge-card", "defaults": {"resources": {"cpu": 0.25}}, "steps": [
        {"id": "charge", "uses": f"{H}:record_run", "idempotent": False,
         "with": {"runs_dir": str(tmp_path), "name": "charge", "gate": str(gate)}},
        {"id": "receipt", "uses": f"{H}:record_run", "depends_on": ["charge"],
         "with": {"runs_dir": str(tmp_path), "name": "receipt", "upstream": "${{ steps.charge.output }}"}}]})
    eid = durable.submit(text)
    wait_for(lambda: (tmp_path / "charge.runs").exists())
    kill_coordinator(durable)

    view = wait_for(lambda: (v := durable.status(eid)).status == ExecutionStatus.NEEDS_DECISION and v)
    assert view.steps["charge"].status == StepStatus.NEEDS_DECISION
    required = [e for e in durable.history(eid) if e.kind == EventKind.DECISION_REQUIRED]
    assert "sopflow decide" in required[0].data["reason"]
    gate.write_text("open")  # the interrupted attempt is gone with its worker; nothing reruns by itself
    with pytest.raises(Exception, match="not waiting for a decision"):
        durable.decide(eid, "receipt", "rerun")

    with pytest.raises(Exception, match=r"step 'charge' is not JSON data: output\['at'\] is a datetime.datetime"):
        durable.decide(eid, "charge", "succeed", output={"at": datetime.datetime.now()})
    durable.decide(eid, "charge", "succeed", reason="the bank shows the charge", output="charged")
    view = durable.wait(eid, timeout=60)
    assert view.status == ExecutionStatus.COMPLETED
    assert view.outputs["steps"] == {"charge": "charged", "receipt": "receipt<charged>"}
    assert len((tmp_path / "charge.runs").read_text().splitlines()) == 1  # never re-run behind our back


def test_an_operator_can_rerun_a_step_that_waits_for_a_decision(durable, tmp_path) -> None:
    gate = tmp_path / "gate"
    text = json.dumps({"sop": "send-mail", "defaults": {"resources": {"cpu": 0.25}}, "steps": [
        {"id": "send", "uses": f"{H}:record_run", "idempotent": False,
         "with": {"runs_dir": str(tmp_path), "name": "send", "gate": str(gate)}}]})
    eid = durable.submit(text)
    wait_for(lambda: (tmp_path / "send.runs").exists())
    kill_coordinator(durable)
    wait_for(lambda: durable.status(eid).status == ExecutionStatus.NEEDS_DECISION)
    gate.write_text("open")

    durable.decide(eid, "send", "rerun", reason="no mail went out")
    view = durable.wait(eid, timeout=60)
    assert view.status == ExecutionStatus.COMPLETED
    assert view.steps["send"].attempts == 2
    assert len((tmp_path / "send.runs").read_text().splitlines()) == 2


def test_a_killed_step_worker_is_retried_and_the_result_is_unchanged(durable, tmp_path) -> None:
    gate = tmp_path / "gate"
    text = json.dumps({"sop": "worker-dies", "defaults": {"resources": {"cpu": 0.25},
                                                          "retry": {"initial_delay_s": 0.05}}, "steps": [
        {"id": "w", "uses": f"{H}:record_run",
         "with": {"runs_dir": str(tmp_path), "name": "w", "gate": str(gate)}}]})
    eid = durable.submit(text)
    line = wait_for(lambda: (tmp_path / "w.runs").exists() and (tmp_path / "w.runs").read_text())
    os.kill(int(line.split()[2]), signal.SIGKILL)
    gate.write_text("open")

    view = durable.wait(eid, timeout=60)
    assert view.status == ExecutionStatus.COMPLETED
    assert view.steps["w"].attempts == 2
    failed = [e for e in durable.history(eid) if e.kind == EventKind.STEP_FAILED]
    assert failed[0].data["classification"] == "crash"
    assert view.outputs["steps"] == {"w": "w"}


def test_a_finished_execution_is_answered_from_the_log_after_a_restart(durable) -> None:
    eid = durable.submit(json.dumps({"sop": "quick", "steps": [
        {"id": "x", "uses": f"{H}:echo", "with": {"value": 7}, "resources": {"cpu": 0.25}}]}))
    durable.wait(eid, timeout=60)
    kill_coordinator(durable)
    view = durable.wait(eid, timeout=60)  # the new coordinator has it only in the log
    assert view.status == ExecutionStatus.COMPLETED
    recovered = durable.recover()  # what the restarted coordinator did on start
    assert {"executions", "redispatched", "awaiting_decision", "retries", "seconds"} <= set(recovered)
    assert recovered["failed"] == {}
    assert view.outputs["steps"] == {"x": 7}
    assert durable.history(eid)[-1].kind == EventKind.FINISHED


@pytest.mark.parametrize("recovery, status, runs", [("rerun", ExecutionStatus.COMPLETED, 2),
                                                    ("fail", ExecutionStatus.FAILED, 1)])
def test_a_non_idempotent_step_follows_its_recovery_setting(durable, tmp_path, recovery, status, runs) -> None:
    gate = tmp_path / "gate"
    text = json.dumps({"sop": f"recovery-{recovery}", "defaults": {"resources": {"cpu": 0.25}}, "steps": [
        {"id": "s", "uses": f"{H}:record_run", "idempotent": False, "recovery": recovery,
         "with": {"runs_dir": str(tmp_path), "name": "s", "gate": str(gate)}}]})
    eid = durable.submit(text)
    wait_for(lambda: (tmp_path / "s.runs").exists())
    kill_coordinator(durable)
    wait_for(lambda: any(e.kind == EventKind.RECOVERED for e in durable.history(eid)))
    gate.write_text("open")

    view = durable.wait(eid, timeout=60)
    assert view.status == status
    assert len((tmp_path / "s.runs").read_text().splitlines()) == runs
    assert not [e for e in durable.history(eid) if e.kind == EventKind.DECISION_REQUIRED]
