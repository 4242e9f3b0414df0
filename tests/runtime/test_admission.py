"""The coordinator keeps at most ``max_running_steps`` step tasks in Ray; the rest wait by priority."""

from __future__ import annotations

import json

import pytest

from runtime.status import ExecutionStatus
from tests.sop_builders import H, own_engine, wait_for

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def one_at_a_time(ray_cluster, tmp_path_factory):
    with own_engine("sopflow-admission-tests", tmp_path_factory.mktemp("admission"), max_running_steps=1) as e:
        yield e


def one_step(name: str, runs, gate=None) -> str:
    return json.dumps({"sop": name, "steps": [
        {"id": "s", "uses": f"{H}:record_run", "resources": {"cpu": 0.25},
         "with": {"runs_dir": str(runs), "name": name, **({"gate": str(gate)} if gate else {})}}]})


def test_queued_steps_start_highest_priority_first_when_a_slot_frees(one_at_a_time, tmp_path) -> None:
    gate = tmp_path / "gate"
    blocker = one_at_a_time.submit(one_step("blocker", tmp_path, gate))
    wait_for(lambda: (tmp_path / "blocker.runs").exists())  # holds the only slot
    low = one_at_a_time.submit(one_step("low", tmp_path), priority=0)
    high = one_at_a_time.submit(one_step("high", tmp_path), priority=10)
    assert not (tmp_path / "low.runs").exists() and not (tmp_path / "high.runs").exists()
    gate.write_text("open")

    for eid in (blocker, low, high):
        assert one_at_a_time.wait(eid, timeout=60).status == ExecutionStatus.COMPLETED
    started = {n: float((tmp_path / f"{n}.runs").read_text().split()[3]) for n in ("low", "high")}
    assert started["high"] < started["low"]


def test_a_queued_step_of_a_force_cancelled_execution_never_starts(one_at_a_time, tmp_path) -> None:
    gate = tmp_path / "gate"
    blocker = one_at_a_time.submit(one_step("blocker", tmp_path, gate))
    wait_for(lambda: (tmp_path / "blocker.runs").exists())
    queued = one_at_a_time.submit(one_step("queued", tmp_path))
    view = one_at_a_time.cancel(queued, force=True)
    assert one_at_a_time.wait(queued, timeout=60).status == ExecutionStatus.CANCELLED
    gate.write_text("open")
    assert one_at_a_time.wait(blocker, timeout=60).status == ExecutionStatus.COMPLETED
    assert not (tmp_path / "queued.runs").exists(), view
