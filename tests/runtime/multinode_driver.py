"""A multi-node Ray cluster of its own (``ray.cluster_utils.Cluster``) for the placement test (run as a script).

Nodes of 1, 2 and 4 CPUs (and a head with none) run an SOP of three parallel 1-CPU steps
that each wait for a gate, report the node they ran on, and the engine's utilisation; once
with the ResourceManager (best fit) and once without (Ray's default placement). Prints JSON.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from runtime import Engine
from runtime.config import EngineConfig

H = "python:tests.runtime.placement_handlers"


def sop(name: str, gate: Path, n: int = 3) -> str:
    return json.dumps({"sop": name, "steps": [
        {"id": f"s{i}", "uses": f"{H}:node_after_gate", "resources": {"cpu": 1},
         "with": {"gate": str(gate)}} for i in range(n)]})


def wait_until(check, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.2)  # polling a condition across processes


def run(work: Path, managed: bool) -> dict:
    gate = work / f"gate-{managed}"
    config = EngineConfig(state=str(work / f"state-{managed}.db"), resource_manager=managed)
    engine = Engine(namespace=f"placement-{managed}", config=config)
    try:
        eid = engine.submit(sop("placement-managed" if managed else "placement-ray", gate))
        wait_until(lambda: all(s.status.value == "running" for s in engine.status(eid).steps.values()))
        use = engine.resources()
        gate.write_text("open")
        view = engine.wait(eid, timeout=120)
        result = engine.result(eid) if view.status.value == "completed" else {}
        placed = {sid: out["node"] for sid, out in (result.get("steps") or {}).items()}
        return {"status": view.status.value, "placed": placed, "resources": use}
    finally:
        engine._conn.actors.kill()


def main(work: str) -> None:
    work_dir = Path(work)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = {}
    try:
        for cpus in (1, 2, 4):
            node = cluster.add_node(num_cpus=cpus)
            nodes[node.node_id] = cpus
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, namespace="placement", log_to_driver=False,
                 logging_level=logging.ERROR)
        out = {"nodes": nodes, "managed": run(work_dir, True), "ray_default": run(work_dir, False)}
        print(json.dumps(out, default=str))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
