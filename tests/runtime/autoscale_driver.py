"""The client of the autoscaling test: runs the whole scale-up / scale-down story on a fake multi-node cluster.

Run as ``python autoscale_driver.py ADDRESS WORKDIR`` (in the cluster's environment); prints one
JSON report for the test to judge. Also the step handler (:func:`hold`), imported by the workers.

The story: the head has 1 CPU. Execution ``a`` takes it all (utilisation 100%), so the scaler asks
for more and a worker node (2 CPUs) comes. Execution ``b`` then runs on that node (0.5 CPU). ``a``
ends: utilisation falls to 17%, the scaler withdraws its request while ``b`` still runs there, and
the node must stay until ``b`` has ended; then it goes.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

NAMESPACE = "sopflow-scaling"
HOLD_S = 10.0
"""How long after the withdrawal ``b`` keeps running: the autoscaler removes an idle node after 3 s
(``idle_timeout_minutes=0.05``) and looks every second, so a node it wrongly took for idle would be
gone well within this."""


def hold(runs_dir: str, name: str, gate: str, context: Any = None) -> str:
    """Note this run (step, attempt, node), then wait for the file ``gate`` (at most two minutes)."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    with open(Path(runs_dir) / f"{name}.runs", "a") as f:  # one line per run: counted by the test
        f.write(f"{name} {context.attempt if context else 0} {node}\n")
    deadline = time.monotonic() + 120
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.05)  # polling interval of the step's own bounded wait for the test's gate
    return name


def wait_until(check, timeout: float, what: str) -> float:
    """Poll ``check`` until true; return the seconds it took (raise naming ``what`` on timeout)."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.1)  # polling interval
    return time.monotonic() - start


def sop(name: str, cpu: float, runs: Path, gate: Path) -> str:
    return json.dumps({"sop": name, "steps": [{
        "id": "hold", "uses": "python:tests.runtime.autoscale_driver:hold", "resources": {"cpu": cpu},
        "with": {"runs_dir": str(runs), "name": name, "gate": str(gate)}}]})


def main(address: str, workdir: Path) -> dict[str, Any]:
    import ray

    from runtime import Engine
    from runtime.config import EngineConfig

    connect_by = time.monotonic() + 90
    while True:  # on a loaded machine the new head may answer late: try again for a while
        try:
            ray.init(address=address, namespace=NAMESPACE, logging_level=logging.ERROR, log_to_driver=False)
            break
        except ConnectionError:
            if time.monotonic() > connect_by:
                raise
            time.sleep(1.0)  # back-off between connection attempts
    engine = Engine(namespace=NAMESPACE, config=EngineConfig(
        state=str(workdir / "state.db"), autoscale=True, scale_up_after_s=1.0, scale_down_after_s=3.0,
        scale_check_every_s=0.5))
    scaler = ray.get_actor("sopflow-scaler", namespace=NAMESPACE)
    head = ray.get_runtime_context().get_node_id()
    report: dict[str, Any] = {"head": head}

    def alive() -> list[str]:
        return sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])

    def actions() -> list[dict[str, Any]]:
        return ray.get(scaler.status.remote())["actions"]

    def node_of(name: str) -> str:
        return (workdir / f"{name}.runs").read_text().split()[2]

    report["nodes_at_start"] = len(alive())
    a = engine.submit(sop("a", 1.0, workdir, workdir / "gate-a"))
    wait_until(lambda: (workdir / "a.runs").exists(), 60, "step a running")
    report["a_node"] = node_of("a")
    report["scale_up_s"] = wait_until(lambda: len(alive()) == 2, 120, "a worker node joining")
    report["request_when_up"] = standing_request()
    worker = next(n for n in alive() if n != head)
    report["worker"] = worker
    b = engine.submit(sop("b", 0.5, workdir, workdir / "gate-b"))
    wait_until(lambda: (workdir / "b.runs").exists(), 60, "step b running")
    report["b_node"] = node_of("b")
    (workdir / "gate-a").write_text("")
    report["a_status"] = engine.wait(a, timeout=60).status.value
    wait_until(lambda: any(x["withdraw"] for x in actions()), 60, "the scaler withdrawing its request")
    # While b runs on the worker, the withdrawn request lets the autoscaler remove idle nodes: the
    # worker is not idle and must stay, with b undisturbed, for longer than an idle node would.
    held_until = time.monotonic() + HOLD_S
    worker_seen, b_running = True, True
    while time.monotonic() < held_until:
        worker_seen &= worker in alive()
        b_running &= engine.status(b).steps["hold"].status.value == "running"
        time.sleep(0.25)  # sampling interval of the observation window
    report["worker_kept_while_b_ran"], report["b_ran_throughout"] = worker_seen, b_running
    (workdir / "gate-b").write_text("")
    report["b_status"] = engine.wait(b, timeout=60).status.value
    report["scale_down_s"] = wait_until(lambda: worker not in alive(), 120, "the idle worker node leaving")
    report["actions"] = actions()
    report["events"] = {x: [e.kind.value for e in engine.history(x)] for x in (a, b)}
    report["runs"] = {n: (workdir / f"{n}.runs").read_text().splitlines() for n in ("a", "b")}
    engine._conn.actors.kill()  # withdraws the standing request first
    report["request_after_kill"] = standing_request()
    return report


def standing_request() -> list | None:
    """The request the (v1) autoscaler reads, as ``request_resources`` wrote it in the GCS."""
    from ray._private.ray_constants import AUTOSCALER_RESOURCE_REQUEST_CHANNEL
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(AUTOSCALER_RESOURCE_REQUEST_CHANNEL)
    return None if raw is None else json.loads(raw)


if __name__ == "__main__":
    out = main(sys.argv[1], Path(sys.argv[2]))
    print(json.dumps(out), flush=True)
