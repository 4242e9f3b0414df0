"""CLI latency: ``sopflow status ID`` and ``sopflow list`` as a user runs them, over Ray and over the HTTP API.

One fresh local Ray cluster with sopflow's actors in the CLI's namespace (``sopflow``,
state in a temporary file) and one finished execution. Each row runs the real
``sopflow`` console script as a subprocess (wall time from spawn to exit, Python
start-up and imports included), alternating the two paths call by call so drift in
load hits both alike: over Ray (``SOPFLOW_API=off``: a driver connection and a new
Ray job per command, as before the API) and over the API (found through its
discovery file, ``$RAY_ADDRESS`` naming the cluster).

Goal (from the issue): every read or control command answers in < 500 ms against a
running cluster.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._util import Result

REPO_ROOT = Path(__file__).resolve().parent.parent
SOPFLOW = Path(sys.executable).with_name("sopflow")
GOAL_MS = 500.0


def _nearest_rank(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s), max(1, math.ceil(q / 100 * len(s)))) - 1]


def _run(args: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run([str(SOPFLOW), *args], env=env, capture_output=True, text=True, timeout=120)
    ms = (time.perf_counter() - t0) * 1000.0
    if done.returncode != 0:
        raise RuntimeError(f"sopflow {' '.join(args)} failed: {done.stderr[-2000:]}")
    return ms


def run(quick: bool = False) -> list[Result]:
    import ray

    from runtime import Engine
    from runtime._api_client import ApiClient
    from runtime.config import EngineConfig
    from runtime.engine import DEFAULT_NAMESPACE

    repeat = 5 if quick else 20
    state = Path(tempfile.mkdtemp(prefix="sopflow-bench-cli-")) / "state.db"
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             namespace=DEFAULT_NAMESPACE,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT)}})
    try:
        engine = Engine(namespace=DEFAULT_NAMESPACE, config=EngineConfig(state=str(state)))
        ray.get(engine._conn.actors.api.ready.remote())
        eid = engine.submit(str(REPO_ROOT / "examples" / "hello-linear.yaml"), {"name": "bench"})
        engine.wait(eid, timeout=120)
        base = {k: v for k, v in os.environ.items() if k != "SOPFLOW_API"}
        base["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
        over_ray, over_api = {**base, "SOPFLOW_API": "off"}, base
        os.environ["RAY_ADDRESS"] = base["RAY_ADDRESS"]
        try:
            if ApiClient.discover(DEFAULT_NAMESPACE, base["RAY_ADDRESS"]) is None:
                raise RuntimeError("the API of this cluster is not discoverable; the API rows would measure Ray")
        finally:
            del os.environ["RAY_ADDRESS"]
        results = []
        for name, args in (("sopflow status ID", ["status", eid]), ("sopflow list", ["list"])):
            _run(args, over_ray), _run(args, over_api)  # warm-up: page cache, Ray's first job
            ray_ms: list[float] = []
            api_ms: list[float] = []
            for _ in range(repeat):
                ray_ms.append(_run(args, over_ray))
                api_ms.append(_run(args, over_api))
            for path, samples in (("over Ray (SOPFLOW_API=off)", ray_ms), ("over the API", api_ms)):
                p50, p95 = _nearest_rank(samples, 50), _nearest_rank(samples, 95)
                figures = {"n": len(samples), "p50 ms": p50, "p95 ms": p95, "min ms": min(samples)}
                if samples is api_ms:
                    figures["Ray/API (p50)"] = _nearest_rank(ray_ms, 50) / p50
                figures["goal"] = f"< {GOAL_MS:.0f} ms" if samples is api_ms else ""
                results.append(Result(f"{name} {path}", figures))
        startup = [_run(["--version"], base) for _ in range(repeat)]
        results.append(Result("sopflow --version (start-up alone, no cluster)",
                              {"n": repeat, "p50 ms": _nearest_rank(startup, 50),
                               "p95 ms": _nearest_rank(startup, 95), "min ms": min(startup)}))
        engine._conn.actors.kill()  # removes the API's discovery file
        return results
    finally:
        ray.shutdown()
