"""Autoscaling on Ray: the scaler's loop, the coordinator's waiting demand, and property 19 on a real autoscaler.

``non_disruptive_scaling`` runs on a cluster of its own (Ray's autoscaler with the fake multi-node
provider: simulated nodes on this machine), driven by a client in a subprocess
(tests/runtime/autoscale_driver.py), because this test session already has its Ray cluster. It
takes about a minute: marked ``slow`` (``pytest -m "not slow"`` leaves it out).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from actors.scaler import _Scaler
from runtime.config import EngineConfig
from runtime.scaling import Usage
from runtime.seams import Demand
from runtime.status import StepStatus
from tests.runtime.autoscaling_cluster import AutoscalingCluster
from tests.sop_builders import H, wait_for

DRIVER = Path(__file__).with_name("autoscale_driver.py")
DISRUPTIONS = {"retry_scheduled", "attempt_interrupted", "decision_required", "execution_recovered",
               "step_failed", "step_cancelled"}
"""Events that would mean scaling touched a running step."""


class Recorder(_Scaler):
    """The scaler's plain class with what it reads given by the test (the applier is the only seam cut)."""

    def __init__(self, config: EngineConfig, clock) -> None:
        self.sent: list[list[dict]] = []
        super().__init__("unused", config, clock=clock, apply=self.sent.append)
        self.seen: tuple[Usage, list[Demand]] | None = None

    def read(self):
        return self.seen


def test_the_scaler_sends_what_the_policy_decides_and_remembers_it() -> None:
    now = [0.0]
    scaler = Recorder(EngineConfig(scale_up_after_s=5.0, scale_down_after_s=10.0), lambda: now[0])
    assert scaler.tick() is None and scaler.sent == []  # nothing read (the coordinator did not answer)
    scaler.seen = (Usage(cpu_total=2.0, cpu_used=1.0), [Demand(cpu=1.0)] * 3)
    for now[0] in (0.0, 4.0):
        assert scaler.tick() is None
    now[0] = 5.0
    action = scaler.tick()
    assert action is not None and scaler.sent == [[{"CPU": 1.0}] * 4]  # what runs (1) + what waits (3)
    scaler.seen = (Usage(cpu_total=6.0, cpu_used=0.5), [])
    for now[0] in (6.0, 16.0):
        assert scaler.tick() is None
    now[0] = 16.5
    assert scaler.tick().withdraw and scaler.sent[-1] == []
    status = scaler.status()
    assert [a["withdraw"] for a in status["actions"]] == [False, True] and status["requested"] == []
    assert "3 attempt(s) waiting for capacity" in status["actions"][0]["reason"]


def test_a_request_that_could_not_be_sent_is_sent_again_next_period() -> None:
    now = [0.0]
    scaler = Recorder(EngineConfig(scale_up_after_s=0.0), lambda: now[0])
    scaler.seen = (Usage(cpu_total=1.0, cpu_used=1.0), [])

    def unreachable(bundles):
        raise ConnectionError("GCS unreachable")

    scaler.apply = unreachable
    assert scaler.tick() is None and scaler.policy.requested is None
    scaler.apply = scaler.sent.append
    now[0] = 1.0
    assert scaler.tick() is not None and scaler.sent == [[{"CPU": 1.0}, {"CPU": 1.0}]]


@pytest.mark.parametrize("fixed", [False, True])
def test_the_coordinator_reports_what_its_queued_attempts_need(tmp_path, fixed: bool) -> None:
    """Attempts beyond the run slots wait in the coordinator, where Ray's autoscaler cannot see them;
    under a fixed ``max_running_steps`` more nodes would not start them sooner, so none are reported."""
    from runtime import Engine

    slots = max(16, (os.cpu_count() or 2) * 8)  # the in-process engine's automatic run slots
    engine = Engine.in_process(config=EngineConfig(max_running_steps=slots if fixed else 0))
    gate = tmp_path / "gate"
    try:
        eid = engine.submit(json.dumps({"sop": "many", "steps": [
            {"id": f"s{i}", "uses": f"{H}:record_run", "resources": {"cpu": 0.25, "memory_mb": 64},
             "with": {"runs_dir": str(tmp_path), "name": f"s{i}", "gate": str(gate)}} for i in range(slots + 4)]}))
        wait_for(lambda: sum(s.status == StepStatus.QUEUED for s in engine.status(eid).steps.values()) == 4)
        waiting = engine._conn.call("coordinator", "waiting_demands")
        assert waiting == ([] if fixed else [Demand(cpu=0.25, memory_mb=64)] * 4)
        gate.write_text("")
        assert engine.wait(eid, timeout=60).status.value == "completed"
        assert engine._conn.call("coordinator", "waiting_demands") == []
    finally:
        gate.write_text("")
        engine.shutdown()


@pytest.mark.ray
def test_the_scaler_actor_runs_beside_an_engine_with_autoscale_on_and_goes_with_it(ray_cluster, tmp_path) -> None:
    """On a cluster without an autoscaler too: requests are only hints (a key in the GCS)."""
    import ray

    from tests.sop_builders import own_engine

    namespace = "sopflow-scaler-tests"
    with own_engine(namespace, tmp_path, autoscale=True, scale_check_every_s=0.2, scale_down_after_s=0.5):
        scaler = ray.get_actor("sopflow-scaler", namespace=namespace)
        wait_for(lambda: any(a["withdraw"] for a in ray.get(scaler.status.remote())["actions"]), 60)
        status = ray.get(scaler.status.remote())
        assert status["last"]["waiting"] == 0 and 0 <= status["last"]["utilisation"] <= 1
        assert status["requested"] == []  # the quiet start withdrew whatever a previous life asked for

    def gone() -> bool:  # removed with the engine's other actors (ray.kill takes effect shortly after)
        try:
            ray.get_actor("sopflow-scaler", namespace=namespace)
        except ValueError:
            return True
        return False

    wait_for(gone, 60)


@pytest.mark.slow
def test_non_disruptive_scaling(tmp_path) -> None:
    """Property 19: a node comes when the cluster stays full and goes when it stays idle, and no running
    execution is interrupted, failed or restarted by either: every step ran exactly once, on the
    node it started on, with no retry, interruption or recovery in its history."""
    cluster = AutoscalingCluster(head_cpus=1, idle_timeout_minutes=0.05, workers={
        "sopflow.worker": {"resources": {"CPU": 2}, "node_config": {}, "min_workers": 0, "max_workers": 1}})
    cluster.start()
    try:
        done = subprocess.run([sys.executable, str(DRIVER), cluster.address, str(tmp_path)], cwd=tmp_path,
                              env=cluster.env, capture_output=True, text=True, timeout=400)
    finally:
        cluster.stop()
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"node joined {report['scale_up_s']:.1f} s after the cluster filled; the idle node left "
          f"{report['scale_down_s']:.1f} s after its last step ended")  # shown with -s / -rP
    # Scale-up: only the head at first; the scaler asked (the cluster was full), and a node came.
    assert report["nodes_at_start"] == 1 and report["a_node"] == report["head"]
    actions = report["actions"]  # a first withdrawal may come before a (the scaler's start is quiet)
    ups = [x for x in actions if not x["withdraw"]]
    assert len(ups) == 1 and "utilisation 100% above 80%" in ups[0]["reason"] and ups[0]["cpu"] == 2, actions
    down = actions[-1]
    assert report["request_when_up"] == [{"CPU": 1.0}, {"CPU": 1.0}]  # what runs (1 CPU) with headroom
    assert report["b_node"] == report["worker"] != report["head"]
    # Scale-down: withdrawn while b still ran on the worker; the worker stayed until b ended, then went.
    assert down["withdraw"] and "below 30%" in down["reason"]
    assert report["worker_kept_while_b_ran"] and report["b_ran_throughout"]
    assert report["a_status"] == report["b_status"] == "completed"
    for name, lines in report["runs"].items():
        assert len(lines) == 1 and lines[0].split()[1] == "1", (name, lines)  # exactly once, first attempt
    for eid, kinds in report["events"].items():
        assert not DISRUPTIONS & set(kinds), (eid, kinds)
        assert kinds.count("step_started") == 1
    assert report["request_after_kill"] == []  # the engine's actors gone: no request keeps nodes up
    assert not cluster.own_pids(), "the simulated cluster left processes behind"
