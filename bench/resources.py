"""ResourceManager benchmarks: its overhead on engine throughput, and bin-packing against Ray's default.

1. Throughput: N executions of 5 no-op steps (cpu 0.01), submitted with ``submit_many``,
   on one local 2-CPU cluster: an engine with the ResourceManager on, one with it off
   (``EngineConfig(resource_manager=False)``: run slots only, Ray places the steps), and
   bare Ray running the same chains, in the same run; on and off take turns three times each
   in ABBA order and the best run of each counts (load on a shared machine drifts). On one
   node placement is computed but not applied (nothing to choose), so this is the admission's
   own cost. Goal: on within 10% of off.
2. Packing: a ``ray.cluster_utils.Cluster`` on this machine (a head without CPUs, nodes of
   1, 2 and 4 CPUs) runs a mixed set of steps (3 CPUs in all) that all hold their CPUs at once (they wait
   for a gate): with the ResourceManager (best fit, node affinity) and with Ray's default
   scheduler; reported: nodes used, and the CPU utilisation of the nodes used. Runs in a
   subprocess: the multi-node cluster is its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._util import Result, start_local_ray

REPO_ROOT = Path(__file__).resolve().parent.parent
NAMESPACE = "sopflow-bench-resources"
MIX = [("one-a", 1.0), ("half-a", 0.5), ("half-b", 0.5), ("one-b", 1.0)]
"""The packing workload: (step, CPUs), started in this order; 3 CPUs on a cluster of 7 (1 + 2 + 4)."""
NODE_CPUS = (1, 2, 4)
GOAL_OVERHEAD = 0.10


def node_after_gate(gate: str, timeout_s: float = 120.0) -> dict:
    """Hold the step's CPUs until ``gate`` exists (so all run at once); report the node it ran on."""
    import ray

    deadline = time.monotonic() + timeout_s
    while not Path(gate).exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # polling a file the benchmark writes
    return {"node": ray.get_runtime_context().get_node_id()}


# -- 1. throughput ------------------------------------------------------------------------------


def _engine(managed: bool) -> Any:
    from runtime import Engine
    from runtime.config import EngineConfig

    state = Path(tempfile.mkdtemp(prefix="sopflow-bench-res-")) / "state.db"
    return Engine(namespace=f"{NAMESPACE}-{'on' if managed else 'off'}",
                  config=EngineConfig(state=str(state), resource_manager=managed))


def _throughput(quick: bool) -> list[Result]:
    from bench import engine as eb

    n = 200 if quick else 400
    start_local_ray(NAMESPACE, eb.NUM_CPUS, eb.STEP_CPU)
    engines = {True: _engine(True), False: _engine(False)}
    try:
        models = {}
        for managed, engine in engines.items():  # warm: actors, workers, the first lease
            models[managed], _, _ = engine.load(eb.linear_sop())
            eb._check(engine.wait(engine.submit(models[managed]), 60), eb.LINEAR_STEPS)
        time.sleep(eb.PAUSE_S)  # a settled worker pool before each burst (Ray reaps idle workers)
        bare = eb._bare_throughput(n)
        best: dict[bool, float] = {True: float("inf"), False: float("inf")}
        for managed in (True, False, False, True, True, False):
            time.sleep(eb.PAUSE_S)
            got = eb._throughput(engines[managed], models[managed], n, eb.SUBMIT_THREADS, None, eb.SUBMIT_BATCH)
            best[managed] = min(best[managed], got["wall"])
    finally:
        for engine in engines.values():
            engine._conn.actors.kill()
        import ray

        ray.shutdown()
    steps = n * eb.LINEAR_STEPS
    on, off, raw = steps / best[True], steps / best[False], steps / bare["wall"]
    label = f"throughput, {n:,} x {eb.LINEAR_STEPS}-step, cpu {eb.STEP_CPU:g}"
    return [
        Result(f"{label}: ResourceManager on", {"steps/s": on, "vs off": on / off, "vs bare Ray": on / raw,
                                                 "goal": f">= {1 - GOAL_OVERHEAD:.2f} x off"},
               "best of 3 (ABBA order); steps placed on the leased local node (one node: no affinity needed)"),
        Result(f"{label}: ResourceManager off", {"steps/s": off, "vs bare Ray": off / raw},
               "best of 3; run slots only, Ray places the steps"),
        Result(f"{label}: bare Ray", {"steps/s": raw}, "the same chains of no-op tasks from the driver"),
    ]


# -- 2. packing ---------------------------------------------------------------------------------


def _packing_child(work: str) -> None:
    """In its own process: the multi-node cluster, the mixed workload with and without the ResourceManager."""
    import logging

    import ray
    from ray.cluster_utils import Cluster

    from runtime import Engine
    from runtime.config import EngineConfig

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    sizes = {}
    try:
        for cpus in NODE_CPUS:
            sizes[cluster.add_node(num_cpus=cpus).node_id] = cpus
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, namespace=NAMESPACE, log_to_driver=False, logging_level=logging.ERROR)
        out: dict[str, Any] = {"sizes": sizes}
        for managed in (True, False):
            gate = Path(work) / f"gate-{managed}"
            engine = Engine(namespace=f"packing-{managed}", config=EngineConfig(
                state=str(Path(work) / f"state-{managed}.db"), resource_manager=managed))
            try:
                sop = {"sop": "packing", "steps": [
                    {"id": sid, "uses": "python:bench.resources:node_after_gate", "resources": {"cpu": cpu},
                     "with": {"gate": str(gate)}} for sid, cpu in MIX]}
                eid = engine.submit(json.dumps(sop))
                deadline = time.monotonic() + 90
                while time.monotonic() < deadline and not all(
                        s.status.value == "running" for s in engine.status(eid).steps.values()):
                    time.sleep(0.2)  # polling the engine's status
                t0 = time.monotonic()
                gate.write_text("open")
                view = engine.wait(eid, timeout=180)
                steps = engine.result(eid).get("steps") or {} if view.status.value == "completed" else {}
                out["on" if managed else "off"] = {
                    "placed": {sid: step["node"] for sid, step in steps.items()},
                    "status": view.status.value, "wait_s": time.monotonic() - t0}
            finally:
                engine._conn.actors.kill()
        print(json.dumps(out))
    finally:
        ray.shutdown()
        cluster.shutdown()


def _packing() -> list[Result]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "SOPFLOW_"))}
    env.update(PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p),
               RAY_USAGE_STATS_ENABLED="0")
    with tempfile.TemporaryDirectory(prefix="sopflow-packing-") as work:
        done = subprocess.run([sys.executable, "-m", "bench.resources", "packing", work], env=env,
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"the packing run failed: {done.stderr[-2000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    sizes, cpu_of = out["sizes"], dict(MIX)
    rows = []
    for key, label in (("on", "bin-packing (ResourceManager)"), ("off", "Ray's default scheduler")):
        placed = out[key]["placed"]
        used = {}
        for sid, node in placed.items():
            used[node] = used.get(node, 0.0) + cpu_of[sid]
        total = sum(sizes[n] for n in used)
        rows.append(Result(f"packing {len(MIX)} steps ({sum(cpu_of.values()):g} CPUs) on nodes of "
                           f"{'/'.join(map(str, NODE_CPUS))} CPUs: {label}",
                           {"nodes used": len(used), "CPU utilisation of nodes used": sum(used.values()) / total,
                            "largest node left free": max(NODE_CPUS) not in {sizes[n] for n in used}},
                           "per node (CPUs used/size): " + ", ".join(
                               f"{used[n]:g}/{sizes[n]}" for n in sorted(used, key=lambda n: sizes[n]))))
    return rows


def run(quick: bool = False) -> list[Result]:
    return _throughput(quick) + _packing()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "packing":
        _packing_child(sys.argv[2])
    else:
        for row in run("--quick" in sys.argv):
            print(row)
