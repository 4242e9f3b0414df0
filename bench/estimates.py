"""Learned-estimates benchmark: how well the history predicts later runs, and how exact the measurements are.

1. Synthetic workload with known distributions (pure, seeded): per step a
   log-normal duration and a normal peak memory; after ``n`` runs of history,
   the next 200 runs are predicted. Figures: median absolute percentage error
   (MdAPE) of the p50 against each later duration and memory, and of the
   expected execution duration (critical path of step p50s over a diamond DAG)
   against each later execution's real critical path (next to the error of
   the true median, the noise floor); and how many later runs
   the suggested ``timeout_s`` / ``memory_mb`` would have covered. A drifting
   workload (10 % slower every 20 runs) and one with 5 % outliers show the
   window and the trend at work.
2. Measurement on a real run (``Engine.in_process()``): a handler that burns a
   known CPU time and touches a known memory, and a shell step doing the same
   in a child; error of the recorded ``cpu_s`` and ``peak_mb``.
"""

from __future__ import annotations

import math
import random
import statistics
import tempfile
import time
from pathlib import Path

from bench._util import Result
from runtime import estimates as est
from runtime import events as ev
from runtime.events import new_event

SEED = 20261201
FUTURE = 200
EXE = "exe-000000000001-00000001"
DIAMOND = {"fetch": [], "left": ["fetch"], "right": ["fetch"], "join": ["left", "right"]}
"""Step -> dependencies; each step has its own distribution below."""
MEDIANS = {"fetch": 2.0, "left": 10.0, "right": 6.0, "join": 1.0}
SIGMA = 0.3
MEMORY = {"fetch": (120.0, 10.0), "left": (800.0, 60.0), "right": (300.0, 40.0), "join": (50.0, 5.0)}


def _draw(rng: random.Random, step: str, run: int, kind: str) -> tuple[float, float]:
    median = MEDIANS[step]
    if kind == "drift":
        median *= 1.1 ** (run // 20)
    duration = rng.lognormvariate(math.log(median), SIGMA)
    if kind == "outliers" and rng.random() < 0.05:
        duration *= 20
    mean, sd = MEMORY[step]
    return duration, max(1.0, rng.gauss(mean, sd))


def _mdape(predicted: float, actual: list[float]) -> float:
    return statistics.median(abs(predicted - a) / a for a in actual) * 100


def _critical(durations: dict[str, float]) -> float:
    done: dict[str, float] = {}
    for step in ("fetch", "left", "right", "join"):
        done[step] = max((done[d] for d in DIAMOND[step]), default=0.0) + durations[step]
    return done["join"]


def synthetic(history: int, kind: str) -> Result:
    from sop import Sop

    rng = random.Random(f"{SEED}-{history}-{kind}")
    sop = Sop.model_validate({"sop": "bench", "steps": [{"id": s, "uses": "x", "depends_on": d}
                                                        for s, d in DIAMOND.items()]})
    estimates = est.Estimates()
    for run in range(history):
        for step in DIAMOND:
            duration, mb = _draw(rng, step, run, kind)
            estimates.feed("bench", new_event(EXE, 2, ev.StepSucceeded(duration_s=duration, cpu_s=duration * 0.5,
                                                                       peak_mb=mb), step, 1))
        estimates.feed("bench", new_event(EXE, 3, ev.Finished(status="completed")))
    later = [{step: _draw(rng, step, history + i, kind) for step in DIAMOND} for i in range(FUTURE)]
    dur_err, oracle_err, mem_err, timeouts, memories = [], [], [], 0, 0
    for step in DIAMOND:
        found = estimates.step("bench", step)
        suggestion = found.suggestion()
        actual_d = [run[step][0] for run in later]
        actual_m = [run[step][1] for run in later]
        dur_err.append(_mdape(found.p50_s, actual_d))
        # The floor: the true median at the time of the prediction, known only to the benchmark.
        now_median = MEDIANS[step] * (1.1 ** (history // 20) if kind == "drift" else 1.0)
        oracle_err.append(_mdape(now_median, actual_d))
        mem_err.append(_mdape(found.memory_p95_mb or 0.0, actual_m))
        timeouts += sum(d <= suggestion["timeout_s"] for d in actual_d)
        memories += sum(m <= suggestion["memory_mb"] for m in actual_m)
    expected = estimates.expected_duration(sop)
    exe_err = _mdape(expected, [_critical({s: run[s][0] for s in DIAMOND}) for run in later])
    n = FUTURE * len(DIAMOND)
    return Result(f"synthetic {kind}, {history} runs of history", {
        "step duration MdAPE %": statistics.median(dur_err),
        "same, true median %": statistics.median(oracle_err), "memory MdAPE % (p95 vs run)": statistics.median(mem_err),
        "execution duration MdAPE %": exe_err, "runs within timeout_s %": 100 * timeouts / n,
        "runs within memory_mb %": 100 * memories / n})


_SOP = """\
sop: bench-measure
version: "1"
mode: system_design
defaults: {resources: {cpu: 0.5}}
steps:
  - id: handler
    uses: python:bench.estimates:burn
    with: {cpu_s: 0.2, mb: 64}
  - id: shell
    uses: shell
    run: "python3 -c 'import time; b = bytearray(64 << 20); b[::4096] = bytes(len(b) >> 12); any(time.process_time() > 0.2 for _ in iter(int, 1))'"
"""


def burn(cpu_s: float = 0.0, mb: int = 0) -> int:
    """The handler of the measured run: ``cpu_s`` seconds of this thread's CPU while ``mb`` MiB are resident."""
    block = bytearray(mb << 20)
    block[::4096] = bytes(len(block) >> 12)  # write every page: untouched pages are not resident
    end = time.thread_time() + cpu_s
    while time.thread_time() < end:
        pass
    return len(block) >> 20


def measured(runs: int) -> list[Result]:
    """Run a known workload in process; how far the recorded cpu_s and peak_mb are from it."""
    from runtime import Engine, Registry

    out: dict[str, dict[str, list[float]]] = {"handler": {"cpu": [], "mem": []}, "shell": {"cpu": [], "mem": []}}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.yaml"
        path.write_text(_SOP)
        engine = Engine.in_process(registry=Registry())
        try:
            for _ in range(runs):
                eid = engine.submit(str(path))
                engine.wait(eid, 120)
                for e in engine.events(eid, follow=False):
                    if e.kind.value == "step_succeeded":
                        out[e.step]["cpu"].append(e.data.get("cpu_s") or 0.0)
                        out[e.step]["mem"].append(e.data.get("peak_mb") or 0.0)
        finally:
            engine.shutdown()
    results = []
    for step, known_mb, note in (("handler", 64, "thread CPU; process RSS growth"),
                                 ("shell", 64, "child's rusage; sampled tree RSS, includes python3 itself (~10 MiB)")):
        cpu, mem = out[step]["cpu"], out[step]["mem"]
        results.append(Result(f"measured: {step} step (0.2 s CPU, {known_mb} MiB)", {
            "runs": len(cpu), "cpu_s median": statistics.median(cpu) if cpu else None,
            "peak_mb median": statistics.median(mem) if mem else None,
            "peak_mb error %": abs(statistics.median(mem) - known_mb) / known_mb * 100 if mem else None}, note))
    return results


def run(quick: bool) -> list[Result]:
    histories = (20, 200) if quick else (5, 20, 50, 200)
    results = [synthetic(n, "stationary") for n in histories]
    results += [synthetic(200, "drift"), synthetic(200, "outliers")]
    results += measured(3 if quick else 8)
    return results

