"""One life of a local Ray cluster, for the whole-cluster restart test (run as a script, twice).

``start``: start a cluster on the state file, submit executions whose middle step
blocks on a gate, wait until that step runs, print the ids, then stop the whole
cluster with the executions unfinished. ``resume``: start a fresh cluster on the
same state file (sopflow recovers on start), open the gate, wait, print the results.
``hold``: like ``start``, with a 2 s lease, but keep the cluster (and the state file's
lease) until stdin closes or the process is killed.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from runtime import Engine
from runtime.config import EngineConfig

H = "python:tests.handlers_for_tests"


def sop(work: Path, gate: Path, n: int) -> str:
    def step(sid: str, deps: list[str], **extra: object) -> dict:
        upstream = "${{ steps.%s.output }}" % deps[0] if deps else None
        return {"id": sid, "uses": f"{H}:record_run", "depends_on": deps,
                "with": {"runs_dir": str(work / str(n)), "name": sid, "upstream": upstream, **extra}}

    return json.dumps({"sop": f"restart-{n}", "defaults": {"resources": {"cpu": 0.25}}, "steps": [
        step("a", []), step("b", ["a"], gate=str(gate)), step("c", ["b"])]})


def main(phase: str, state: str, work: str) -> None:
    work_dir, gate = Path(work), Path(work) / "gate"
    config = EngineConfig(state=state, lease_ttl_s=2.0 if phase == "hold" else 15.0)
    engine = Engine.local(num_cpus=2, dashboard=False, config=config, logging_level=logging.ERROR)
    try:
        if phase in ("start", "hold"):
            ids = [engine.submit(sop(work_dir, gate, n)) for n in range(2)]
            deadline = time.monotonic() + 60
            while not all((work_dir / str(n) / "b.runs").exists() for n in range(2)):
                if time.monotonic() > deadline:
                    raise SystemExit("step b never started")
                time.sleep(0.02)  # polling interval of a bounded wait for a condition
            print(json.dumps({"ids": ids}), flush=True)
            if phase == "hold":
                sys.stdin.read()  # until the test closes stdin or kills this cluster
        else:
            recovery = engine.info()["recovery"]
            gate.write_text("open")
            ids = json.loads(sys.stdin.read())["ids"]
            views = {i: engine.wait(i, timeout=120) for i in ids}
            print(json.dumps({"recovery": recovery, "results": {
                i: {"status": v.status.value, "outputs": v.outputs} for i, v in views.items()}}))
    finally:
        engine.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:4])
