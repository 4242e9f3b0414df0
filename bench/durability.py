"""Durability benchmarks: what the SQLite event log costs, how fast a crashed coordinator recovers, replay.

One local Ray cluster (2 CPUs asked for) runs everything, with two sets of sopflow
actors on it: namespace ``sopflow-bench-sqlite`` logs to a SQLite file (WAL,
``synchronous=NORMAL``, in a temporary directory) and ``sopflow-bench-memory`` to the
in-memory log. Steps are the engine benchmark's no-op handler
``python:bench.engine:noop`` with ``resources: {cpu: 0.01}``.

- Throughput: N executions of the 5-step linear SOP submitted from 16 threads (each
  submit a blocking actor call), then waited for, as in the engine benchmark but
  without the status prober. The backends alternate run by run in the order
  SQLite, memory, memory, SQLite (ABBA, so a linear drift in machine load hits both
  alike), with a pause before each run so the worker pool settles. The durability
  cost is ``1 - SQLite steps/s / memory steps/s`` over the pooled runs. Actor CPU is
  the coordinator's and monitor's process CPU time (/proc) per step; "events/commit"
  is the coordinator's group-commit batch size; "peak workers" the most Ray worker
  processes seen at once. With 0.01-CPU steps Ray starts a worker process per
  concurrently runnable task, which dominates these runs on 2 cores, so the
  diagnostic rows repeat them (ABBA again) with 0.5-CPU steps on reused workers.
- The log alone: one ``append`` (one transaction) of 1 event, and of the 13 events
  of a real 5-step execution, into the in-memory log and into SQLite files with
  ``synchronous=NORMAL`` and ``FULL`` (in this process, no Ray).
- Latency: a warm 5-step execution, ``engine.submit(sop_object)`` + ``engine.wait``,
  alternating SQLite and memory call by call.
- Recovery: a third set of actors (SQLite, namespace ``sopflow-bench-recovery``)
  gets N executions whose first step needs the capability ``never`` (a Ray
  resource no node has), so each has a STEP_STARTED in the log and a task queued
  without a worker. Then the coordinator is killed (``ray.kill(..., no_restart=False)``);
  Ray restarts it and it rebuilds and re-dispatches every execution. Figures: the
  wall clock from the kill until ``info()`` answers with all N recovered (polled
  every 10 ms), and the coordinator's own ``recovery["seconds"]`` (rebuild + resume
  + commit). The executions are then force-cancelled and the actors removed.
- Replay: a 1,000-step linear chain of no-op steps runs on the SQLite engine; its
  history (``engine.history``) is replayed whole in this process
  (``runtime.replay.replay``, no handlers, no Ray) and folded into state
  (``runtime.state.apply`` over the events), with reading the events from the
  SQLite file and fetching them through the coordinator for comparison.

Goal (from the issue, 2-core machine): the SQLite log costs <= 20% of throughput.

Set ``SOPFLOW_BENCH_PROFILE=<dir>`` to also record both coordinators with py-spy
during the first throughput run of each backend and step size (``<dir>/*.txt``, raw
collapsed stacks).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench._util import Result, measure, measure_pair, start_local_ray

NAMESPACE = "sopflow-bench-durability"
NS_SQLITE = "sopflow-bench-sqlite"
NS_MEMORY = "sopflow-bench-memory"
NS_RECOVERY = "sopflow-bench-recovery"
SUBMIT_THREADS = 16
PAUSE_S = 3.0
ORDER = ("sqlite", "memory", "memory", "sqlite")
"""Throughput runs, ABBA: a linear drift in load costs both backends the same."""
GOAL_COST_PCT = 20.0
CHAIN_STEPS = 1000


# -- the cluster and the engines ----------------------------------------------------------


def _init_ray() -> None:
    from bench.engine import NUM_CPUS, STEP_CPU

    start_local_ray(NAMESPACE, NUM_CPUS, STEP_CPU)


_TITLES = ("Coordinator", "ExecutionMonitor", "_RecoveringCoordinator", "_Coordinator", "_ExecutionMonitor", "_Monitor")
"""Class names the coordinator and monitor actors have had (their process title is ``ray::<class>``)."""


def _class_name(handle: Any) -> str:
    try:
        return handle._ray_actor_creation_function_descriptor.class_name
    except AttributeError:  # a Ray without this private attribute: guess
        return "Coordinator" if "oordinator" in repr(handle) else "ExecutionMonitor"


def _pids(cls_name: str) -> set[int]:
    from bench.engine import _descendants

    return {pid for pid, cmd in _descendants()
            if cmd.startswith(f"ray::{cls_name}") and cmd[len(cls_name) + 5:len(cls_name) + 6] in ("", ".", " ")}


class _Backend:
    """One set of sopflow actors (a namespace) and the pids of its coordinator and monitor."""

    def __init__(self, label: str, namespace: str, state: str) -> None:
        from runtime import Engine, Registry
        from runtime.config import EngineConfig

        self._before = {c: _pids(c) for c in _TITLES}
        t0 = time.perf_counter()
        self.label = label
        self.state = state
        self.engine = Engine(namespace=namespace, registry=Registry(), config=EngineConfig(state=state))
        self.start_ms = (time.perf_counter() - t0) * 1e3
        self.pids: dict[str, int | None] = {}

    def find_pids(self, others: list[_Backend]) -> None:
        """The new coordinator and monitor processes since this backend's actors were created.

        Call once every backend exists and has run something (a fresh actor process keeps the
        title ``ray::IDLE`` until its actor is set up).
        """
        taken = {p for b in others if b is not self for p in b.pids.values() if p}
        actors = self.engine._conn.actors
        for role, handle in (("coordinator", actors.coordinator), ("monitor", actors.monitor)):
            cls = _class_name(handle)
            new = _pids(cls) - self._before.get(cls, set()) - taken
            self.pids[role] = min(new) if new else None

    def kill(self) -> None:
        self.engine._conn.actors.kill()


def _cpu(pids: dict[str, int | None]) -> dict[str, float]:
    from bench.engine import _cpu_s

    return {k: _cpu_s(p) for k, p in pids.items() if p}


class _Profiler:
    """py-spy record of one backend's coordinator while a block runs (SOPFLOW_BENCH_PROFILE)."""

    def __init__(self, out_dir: str | None, label: str, pid: int | None) -> None:
        self.out_dir, self.label, self.pid, self.proc = out_dir, label, pid, None

    def __enter__(self) -> _Profiler:
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not self.out_dir or not self.pid or not Path(spy).exists():
            return self
        Path(self.out_dir).mkdir(parents=True, exist_ok=True)
        out = Path(self.out_dir) / f"durability-{self.label}-coordinator.txt"
        self.proc = subprocess.Popen(
            [spy, "record", "--pid", str(self.pid), "--rate", "500", "--format", "raw", "--threads",
             "--nonblocking", "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # let py-spy attach
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None:
            self.proc.send_signal(2)  # SIGINT: py-spy writes the profile and exits
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# -- throughput and latency ---------------------------------------------------------------


def _throughput(backend: _Backend, model: Any, n: int, profile: str | None, tag: str) -> dict[str, Any]:
    """Submit ``n`` executions from SUBMIT_THREADS threads, then wait for all of them."""
    from bench.engine import LINEAR_STEPS, _check, _WorkerCount

    engine = backend.engine
    commits0 = engine.info()["commits"]
    cpu0 = _cpu(backend.pids)
    with _Profiler(profile, tag, backend.pids.get("coordinator")), _WorkerCount() as workers, \
            ThreadPoolExecutor(SUBMIT_THREADS) as pool:
        t0 = time.perf_counter()
        ids = list(pool.map(lambda _: engine.submit(model), range(n)))
        t_sub = time.perf_counter() - t0
        views = list(pool.map(lambda eid: engine.wait(eid, 300), ids))
        wall = time.perf_counter() - t0
    cpu1 = _cpu(backend.pids)
    commits1 = engine.info()["commits"]
    failed = [v for v in views if v.status.value != "completed"]
    if failed:
        _check(failed[0], LINEAR_STEPS)  # raises with the first failure
    return {"wall": wall, "submit": t_sub, "cpu": {k: cpu1[k] - cpu0[k] for k in cpu1},
            "commits": commits1["commits"] - commits0["commits"],
            "events": commits1["events"] - commits0["events"], "workers": workers.peak}


def _throughput_rows(backends: dict[str, _Backend], n: int, cpu: float, pause: float,
                     profile: str | None, diagnostic: bool = False) -> tuple[list[Result], dict[str, float]]:
    """ABBA runs of ``n`` 5-step executions with steps of ``cpu``; one pooled row per backend."""
    from bench.engine import LINEAR_STEPS, _check, linear_sop

    models = {}
    for label, b in backends.items():
        models[label], _, _ = b.engine.load(linear_sop(cpu=cpu))
        _check(b.engine.wait(b.engine.submit(models[label]), 120), LINEAR_STEPS)
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in backends}
    steps = n * LINEAR_STEPS
    for label in ORDER:
        time.sleep(pause)  # each burst starts from a settled worker pool (Ray reaps idle workers after ~1 s)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        r = _throughput(backends[label], models[label], n, profile if not runs[label] else None,
                        f"{label}-cpu{cpu:g}")
        r["load"] = load
        runs[label].append(r)
    rates = {label: steps * len(rs) / sum(r["wall"] for r in rs) for label, rs in runs.items()}
    order = "".join("AB"[list(backends).index(label)] for label in ORDER)
    rows = []
    for label, rs in runs.items():
        actor_cpu = {k: sum(r["cpu"].get(k, 0.0) for r in rs) / (steps * len(rs)) * 1e3 for k in rs[0]["cpu"]}
        per_run = "; ".join(f"{steps / r['wall']:.0f} steps/s (submits took {r['submit']:.1f} s, "
                            f"load avg before {r['load']:.1f})" for r in rs)
        rows.append(Result(
            f"throughput, {n:,} x {LINEAR_STEPS}-step, cpu {cpu:g}: {label}{' (diagnostic)' if diagnostic else ''}",
            {"n": n * len(rs), "wall s": sum(r["wall"] for r in rs), "steps/s": rates[label],
             "vs memory (steps/s)": rates[label] / rates["memory"] if label != "memory" else None,
             "events/commit": sum(r["events"] for r in rs) / max(1, sum(r["commits"] for r in rs)),
             "peak workers": max(r["workers"] for r in rs)},
            f"{len(rs)} runs of the {order} order, pooled: {per_run}; actor CPU per step: "
            + (", ".join(f"{k} {v:.2f} ms" for k, v in actor_cpu.items()) or "unknown")))
    return rows, rates


def _latency_rows(backends: dict[str, _Backend], repeat: int) -> tuple[list[Result], dict[str, Any]]:
    from bench.engine import LINEAR_STEPS, _check, linear_sop

    sq, mem = backends["sqlite"], backends["memory"]
    m_sq, _, _ = sq.engine.load(linear_sop())
    m_mem, _, _ = mem.engine.load(linear_sop())

    def run_sqlite() -> None:
        _check(sq.engine.wait(sq.engine.submit(m_sq), 60), LINEAR_STEPS)

    def run_memory() -> None:
        _check(mem.engine.wait(mem.engine.submit(m_mem), 60), LINEAR_STEPS)

    t_sq, t_mem = measure_pair(run_sqlite, run_memory, repeat, warmup=max(5, repeat // 10))
    rows = [
        Result.timing(f"{LINEAR_STEPS}-step linear end to end (warm): sqlite", t_sq,
                      "submit(Sop object) + wait; alternated call by call with memory",
                      **{"vs memory (p50)": t_sq.p50 / t_mem.p50}),
        Result.timing(f"{LINEAR_STEPS}-step linear end to end (warm): memory", t_mem, ""),
    ]
    return rows, {"sqlite": t_sq, "memory": t_mem}


# -- recovery -----------------------------------------------------------------------------


def blocked_sop(cpu: float) -> str:
    """A 5-step chain whose first step needs a capability no node has: its task queues forever."""
    from bench.engine import HANDLER, LINEAR_STEPS

    out = ["sop: bench-blocked", 'version: "1.0"', "defaults:", f"  resources: {{cpu: {cpu:g}}}",
           "  timeout_s: 3600", "steps:",
           "  - id: s0", f"    uses: {HANDLER}", f"    resources: {{cpu: {cpu:g}, capabilities: [never]}}"]
    for i in range(1, LINEAR_STEPS):
        out += [f"  - id: s{i}", f"    uses: {HANDLER}", f"    depends_on: [s{i - 1}]"]
    return "\n".join(out) + "\n"


def _info_now(actors: Any) -> dict[str, Any] | None:
    """The coordinator's info, or None while it cannot answer (dead, restarting)."""
    import ray

    from actors import call
    from runtime.errors import EngineUnavailable

    try:
        return call(actors.coordinator.info.remote(), 5.0)
    except (EngineUnavailable, ray.exceptions.GetTimeoutError, ray.exceptions.RayError):
        return None


def _recovery_rows(state_dir: Path, n: int) -> list[Result]:
    import ray

    from bench.engine import STEP_CPU

    backend = _Backend("recovery", NS_RECOVERY, str(state_dir / "recovery.db"))
    engine = backend.engine
    try:
        model, _, _ = engine.load(blocked_sop(STEP_CPU))
        t0 = time.perf_counter()
        with ThreadPoolExecutor(SUBMIT_THREADS) as pool:
            ids = list(pool.map(lambda _: engine.submit(model), range(n)))
        t_sub = time.perf_counter() - t0
        before = engine.info()
        if before["unfinished"] != n:
            raise AssertionError(f"expected {n} unfinished executions before the kill, got {before}")
        statuses = {engine.status(ids[0]).steps["s0"].status.value, engine.status(ids[-1]).steps["s0"].status.value}

        clock = time.perf_counter
        t_kill = clock()
        ray.kill(engine._conn.actors.coordinator, no_restart=False)
        first_new: float | None = None  # first answer from the restarted coordinator
        deadline = t_kill + 300
        while True:
            info = _info_now(engine._conn.actors)
            now = clock()
            rec = (info or {}).get("recovery")
            if info is not None and first_new is None and (rec is None or rec.get("executions")):
                first_new = now
            if rec and rec.get("executions") == n:
                t_done = now
                break
            if rec and rec.get("executions") and rec["executions"] != n:
                raise AssertionError(f"recovery rebuilt {rec['executions']} executions, expected {n}: {rec}")
            if now > deadline:
                raise AssertionError(f"no recovery of {n} executions within 300 s: {info}")
            time.sleep(0.01)  # polling interval of a bounded wait
        wall = t_done - t_kill
        after = engine.status(ids[0])

        # Clean up: cancel everything (kills the re-dispatched, still queued tasks), then the actors.
        t0 = time.perf_counter()
        with ThreadPoolExecutor(SUBMIT_THREADS) as pool:
            list(pool.map(lambda eid: engine.cancel(eid, force=True), ids))
            ended = list(pool.map(lambda eid: engine.wait(eid, 60), ids))
        t_cancel = time.perf_counter() - t0
        not_cancelled = sum(1 for v in ended if v.status.value != "cancelled")
    finally:
        backend.kill()
    return [
        Result(f"recovery: kill -> info() shows {n:,} executions recovered", {"n": n, "wall s": wall},
               f"ray.kill(coordinator, no_restart=False), then info() polled every 10 ms; first answer "
               f"from the restarted coordinator after {(first_new - t_kill) if first_new else float('nan'):.2f} s"),
        Result(f"recovery: recovery['seconds'] ({n:,} executions)",
               {"n": n, "wall s": float(rec["seconds"]),
                "executions/s": n / rec["seconds"] if rec["seconds"] else None},
               f"the coordinator's own rebuild + resume + commit; redispatched {rec['redispatched']:,}, "
               f"retries {rec['retries']}, awaiting decision {rec['awaiting_decision']}, "
               f"failed {len(rec['failed'])}"),
        Result(f"recovery setup: submit {n:,} blocked executions", {"n": n, "wall s": t_sub},
               f"first step needs capability 'never' (no node has it); s0 status before kill: "
               f"{'/'.join(sorted(statuses))}, after recovery: {after.steps['s0'].status.value}; "
               f"force-cancelled all (and waited for them to end) afterwards in {t_cancel:.1f} s"
               + (f" ({not_cancelled} not cancelled)" if not_cancelled else "")),
    ]


# -- replay -------------------------------------------------------------------------------


def _replay_rows(backend: _Backend, steps: int, repeat: int) -> list[Result]:
    from runtime.replay import replay
    from bench.engine import _check, linear_sop
    from runtime.eventlog import SqliteEventLog
    from runtime.state import fold

    engine = backend.engine
    model, _, _ = engine.load(linear_sop(steps))
    t0 = time.perf_counter()
    eid = engine.submit(model)
    view = engine.wait(eid, 600)
    run_s = time.perf_counter() - t0
    _check(view, steps)
    events: list[Any] = []

    def fetch() -> None:
        events[:] = engine.history(eid)

    t_fetch = measure(fetch, repeat, warmup=1)
    n_events = len(events)

    reader = SqliteEventLog.open_readonly(backend.state)
    try:
        t_read = measure(lambda: reader.read(eid), repeat, warmup=1)
    finally:
        reader.close()

    t_fold = measure(lambda: fold(events), max(20, repeat * 4), warmup=3)
    reports: list[Any] = []
    t_replay = measure(lambda: reports.append(replay(events)), repeat, warmup=1)
    report = reports[-1]
    ok = (report.deterministic and report.handlers_run == 0)
    per_event_us = t_replay.p50 * 1e3 / n_events
    return [
        Result(f"replay setup: run a {steps:,}-step chain on the SQLite engine",
               {"n": 1, "wall s": run_s, "steps/s": steps / run_s, "events": n_events},
               "submit + wait, one no-op step after another"),
        Result.timing(f"replay: replay(history) of {steps:,} steps, whole", t_replay,
                      f"in-process, no handlers, no Ray; {per_event_us:.0f} us/event; "
                      f"deterministic: {'yes' if ok else 'NO'}, handlers run {report.handlers_run}, "
                      f"replayed events {report.events:,}", events=n_events),
        Result.timing(f"replay: fold history into state ({steps:,} steps)", t_fold,
                      "runtime.state.apply over every event", events=n_events),
        Result.timing(f"replay: read the events from the SQLite file ({steps:,} steps)", t_read,
                      "SqliteEventLog.read in this process (read-only connection)", events=n_events),
        Result.timing(f"replay: engine.history() ({steps:,} steps)", t_fetch,
                      "through the coordinator actor", events=n_events),
    ]


# -- the log alone -------------------------------------------------------------------------


def _commit_rows(state_dir: Path, sample: list[Any], repeat: int) -> list[Result]:
    """One ``append`` (one transaction) of 1 event, and of a whole 5-step execution's events."""
    import dataclasses
    import itertools

    from runtime.eventlog import ExecutionRecord, MemoryEventLog, SqliteEventLog

    ids = itertools.count()
    logs = [("memory", MemoryEventLog()),
            ("sqlite NORMAL", SqliteEventLog(state_dir / "commit-normal.db", synchronous="NORMAL")),
            ("sqlite FULL", SqliteEventLog(state_dir / "commit-full.db", synchronous="FULL"))]
    rows = []
    try:
        for size in (1, len(sample)):
            batch: list[Any] = []

            def setup(size: int = size) -> None:
                eid = f"bench-{next(ids)}"
                evs = [dataclasses.replace(e, execution_id=eid) for e in sample[:size]]
                rec = ExecutionRecord(eid, "bench", "running", evs[0].ts, evs[-1].seq)
                batch[:] = [evs, [rec]]

            for label, log in logs:
                t = measure(lambda log=log: log.append(*batch), repeat, warmup=5, setup=setup)
                rows.append(Result.timing(
                    f"log append, one commit of {size} event{'s' if size > 1 else ''} + record: {label}", t,
                    "in this process, no Ray; events of a real 5-step execution" if size > 1 else
                    "in this process, no Ray", **{"us/event p50": t.p50 * 1e3 / size}))
    finally:
        for _, log in logs:
            log.close()
    return rows


# -- run ----------------------------------------------------------------------------------


def run(quick: bool = False) -> list[Result]:
    import ray

    from bench._util import git_revision

    executions = 100 if quick else 1000
    repeat = 20 if quick else 100
    recover_n = 100 if quick else 1000
    chain = 100 if quick else CHAIN_STEPS
    replay_repeat = 3 if quick else 5
    pause = PAUSE_S / 2 if quick else PAUSE_S
    profile = os.environ.get("SOPFLOW_BENCH_PROFILE") or None
    results: list[Result] = [Result("code measured", {}, git_revision(str(Path(__file__).resolve().parent)))]
    state_dir = Path(tempfile.mkdtemp(prefix="sopflow-bench-durability-"))
    backends: dict[str, _Backend] = {}
    t_start = time.perf_counter()
    _init_ray()
    try:
        from bench.engine import DIAG_CPU, LINEAR_STEPS, STEP_CPU, _check, linear_sop

        t_ray = time.perf_counter()
        backends["sqlite"] = _Backend("sqlite", NS_SQLITE, str(state_dir / "state.db"))
        backends["memory"] = _Backend("memory", NS_MEMORY, "memory://")
        results.append(Result("cluster start", {"n": 1, "p50 ms": (t_ray - t_start) * 1e3},
                              "ray.init(num_cpus=2)"))
        for b in backends.values():  # warm each: workers, imports, first commit
            model, _, _ = b.engine.load(linear_sop())
            for _ in range(3):
                _check(b.engine.wait(b.engine.submit(model), 120), LINEAR_STEPS)
        for b in backends.values():
            b.find_pids(list(backends.values()))
        for label, b in backends.items():
            results.append(Result(f"Engine(...) with a {label} log (cold actors)", {"n": 1, "p50 ms": b.start_ms},
                                  f"pids: coordinator {b.pids['coordinator']}, monitor {b.pids['monitor']}"))

        rows, rates = _throughput_rows(backends, executions, STEP_CPU, pause, profile)
        results += rows
        rows, diag_rates = _throughput_rows(backends, executions, DIAG_CPU, pause, profile, diagnostic=True)
        results += rows
        time.sleep(pause)
        rows, lat = _latency_rows(backends, repeat)
        results += rows
        sample_id = backends["sqlite"].engine.submit(backends["sqlite"].engine.load(linear_sop())[0])
        backends["sqlite"].engine.wait(sample_id, 60)
        results += _commit_rows(state_dir, backends["sqlite"].engine.history(sample_id), repeat * 5)
        results += _replay_rows(backends["sqlite"], chain, replay_repeat)
        results += _recovery_rows(state_dir, recover_n)

        cost = (1 - rates["sqlite"] / rates["memory"]) * 100
        diag_cost = (1 - diag_rates["sqlite"] / diag_rates["memory"]) * 100
        lat_cost = (lat["sqlite"].p50 / lat["memory"].p50 - 1) * 100
        results.append(Result(
            f"GOAL SQLite log costs <= {GOAL_COST_PCT:g}% of throughput",
            {"steps/s": rates["sqlite"], "cost %": cost,
             "goal": "met" if cost <= GOAL_COST_PCT else "MISSED"},
            f"cpu {STEP_CPU:g} steps, pooled ABBA runs: SQLite {rates['sqlite']:.0f} vs memory "
            f"{rates['memory']:.0f} steps/s{' (negative: SQLite was faster)' if cost < 0 else ''}; diagnostic cpu {DIAG_CPU:g} "
            f"steps: {diag_rates['sqlite']:.0f} vs {diag_rates['memory']:.0f} steps/s ({diag_cost:+.0f}%); "
            f"warm 5-step latency p50 {lat['sqlite'].p50:.1f} vs {lat['memory'].p50:.1f} ms ({lat_cost:+.0f}%)"))
    finally:
        for b in backends.values():
            try:
                b.kill()
            except Exception:  # noqa: BLE001 - the cluster goes away below anyway
                pass
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(state_dir, ignore_errors=True)
    return results
