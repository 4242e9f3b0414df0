"""Engine benchmarks: sopflow's System Design Run against bare Ray doing the same work in the same run.

One local Ray cluster (2 CPUs asked for) runs everything. Every step is the no-op
Python handler ``python:bench.engine:noop`` with ``resources: {cpu: 0.01}``; the
bare-Ray baseline is a no-op ``ray.remote(num_cpus=0.01)`` task, each task taking
the refs of the tasks it depends on as arguments. Latency rows alternate sopflow and
bare Ray call by call (so drift in load hits both alike); an end-to-end sopflow call
is ``engine.submit(sop_object)`` + ``engine.wait(id)`` (the SOP validated once,
before timing; a row with YAML text shows what validating on every submit adds).
The breakdown rows split one execution using the coordinator's step timestamps.
Throughput submits N executions of the 5-step SOP from 16 threads (``submit_many``,
50 per call; a diagnostic row repeats it with one ``submit`` per call), with the
coordinator's SQLite event log on as in production, then waits for all of them, while another thread calls
``engine.status`` in a loop; bare Ray submits the same N chains of 5 tasks from the
driver and ``ray.get``s them. "peak workers" is the most Ray worker processes seen
at once (sampled every 0.5 s): with 0.01-CPU tasks Ray starts a process per
concurrently runnable task, so the diagnostic rows repeat the throughput run with
steps of 0.5 CPU (at most 4 at once, workers reused). Actor CPU figures are the
coordinator's and monitor's process CPU time (/proc) over the steps they ran.

Goals (from the issue, 2-core machine): per-step overhead over bare Ray <= 2 ms at
p50; >= 500 steps/s sustained; status query p99 <= 10 ms under load; a 5-step SOP
< 100 ms end to end once warm.

Set ``SOPFLOW_BENCH_PROFILE=<dir>`` to also record the coordinator and monitor with
py-spy during the cpu-0.01 sopflow throughput run (``<dir>/*.txt``, collapsed stacks).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench._util import Result, measure, measure_pair, start_local_ray, summarise

REPO_ROOT = Path(__file__).resolve().parent.parent
NAMESPACE = "sopflow-bench"
NUM_CPUS = 2
STEP_CPU = 0.01
HANDLER = "python:bench.engine:noop"
LINEAR_STEPS = 5
FANOUT_WIDTH = 5
SUBMIT_THREADS = 16
SUBMIT_BATCH = 50
"""Executions per ``submit_many`` call in the main throughput run (``1`` = one ``submit`` per call)."""
DIAG_CPU = 0.5
"""Step CPU of the diagnostic throughput run: at most 4 steps at once on 2 CPUs, workers reused."""
PAUSE_S = 3.0

GOAL_STEP_OVERHEAD_MS = 2.0
GOAL_STEPS_PER_S = 500.0
GOAL_STATUS_P99_MS = 10.0
GOAL_E2E_MS = 100.0


def noop(**kwargs: Any) -> None:
    """The step handler: does nothing (runs in a Ray worker)."""
    return None


# -- SOPs ---------------------------------------------------------------------------------


def _head(name: str, cpu: float) -> list[str]:
    return [f"sop: {name}", 'version: "1.0"', "defaults:", f"  resources: {{cpu: {cpu:g}}}",
            "  timeout_s: 60", "steps:"]


def linear_sop(n: int = LINEAR_STEPS, cpu: float = STEP_CPU) -> str:
    """``n`` no-op steps in a row, each asking for ``cpu`` cores."""
    out = _head(f"bench-linear-{n}", cpu)
    for i in range(n):
        out += [f"  - id: s{i}", f"    uses: {HANDLER}"]
        if i:
            out.append(f"    depends_on: [s{i - 1}]")
    return "\n".join(out) + "\n"


def fanout_sop(width: int = FANOUT_WIDTH, cpu: float = STEP_CPU) -> str:
    """A root, ``width`` parallel steps after it, and a join: ``width + 2`` no-op steps."""
    out = _head(f"bench-fanout-{width}", cpu)
    out += ["  - id: root", f"    uses: {HANDLER}"]
    for i in range(width):
        out += [f"  - id: b{i}", f"    uses: {HANDLER}", "    depends_on: [root]"]
    out += ["  - id: join", f"    uses: {HANDLER}",
            f"    depends_on: [{', '.join(f'b{i}' for i in range(width))}]"]
    return "\n".join(out) + "\n"


# -- bare Ray -----------------------------------------------------------------------------

_bare_tasks: dict[float, Any] = {}


def _bare(cpu: float = STEP_CPU) -> Any:
    """The bare-Ray no-op task, asking for ``cpu`` cores."""
    task = _bare_tasks.get(cpu)
    if task is None:
        import ray

        def bare_noop(*deps: Any) -> None:
            return None

        task = _bare_tasks[cpu] = ray.remote(num_cpus=cpu, max_retries=0)(bare_noop)
    return task


def bare_chain(n: int = LINEAR_STEPS, cpu: float = STEP_CPU) -> Any:
    """Submit ``n`` chained no-op tasks; returns the last ref (not waited on)."""
    t = _bare(cpu)
    ref = t.remote()
    for _ in range(n - 1):
        ref = t.remote(ref)
    return ref


def bare_fanout(width: int = FANOUT_WIDTH) -> Any:
    t = _bare()
    root = t.remote()
    return t.remote(*[t.remote(root) for _ in range(width)])


# -- the cluster --------------------------------------------------------------------------


def _start() -> Any:
    import tempfile

    from runtime import Engine
    from runtime.config import EngineConfig

    start_local_ray(NAMESPACE, NUM_CPUS, STEP_CPU)

    # The production default: a SQLite event log (in a temporary file, not ~/.sopflow).
    state = Path(tempfile.mkdtemp(prefix="sopflow-bench-")) / "state.db"
    return Engine(namespace=NAMESPACE, config=EngineConfig(state=str(state)))


def _check(view: Any, steps: int) -> None:
    if view.status.value != "completed" or len(view.steps) != steps:
        raise AssertionError(f"execution {view.id} ended {view.status.value}: {view}")


def _descendants() -> list[tuple[int, str]]:
    """(pid, command line) of every descendant of this process, read from /proc (Linux)."""
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
                parent[int(d)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    mine, out = {os.getpid()}, []
    changed = True
    while changed:
        changed = False
        for pid, ppid in parent.items():
            if ppid in mine and pid not in mine:
                mine.add(pid)
                changed = True
    for pid in sorted(mine - {os.getpid()}):
        try:
            out.append((pid, Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()))
        except OSError:
            pass
    return out


CONTROL_PLANE = ("Coordinator", "ExecutionMonitor", "FailureHandler")
"""sopflow's actors, by class name (their process title is ``ray::<class>``): not step workers."""


def _actor_pid(cls_name: str) -> int | None:
    """Pid of this cluster's actor process of class ``cls_name`` (its title is ``ray::<class>...``).

    The state API needs the dashboard, which is off; the actors of the cluster this
    driver started are among its descendants (driver -> raylet -> workers).
    """
    for pid, cmd in _descendants():
        if cmd.startswith(f"ray::{cls_name}"):
            return pid
    return None


class _Profiler:
    """py-spy record of the coordinator and monitor while a block runs (SOPFLOW_BENCH_PROFILE)."""

    def __init__(self, out_dir: str | None, label: str) -> None:
        self.out_dir, self.label, self.procs = out_dir, label, []

    def __enter__(self) -> _Profiler:
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not self.out_dir or not Path(spy).exists():
            return self
        Path(self.out_dir).mkdir(parents=True, exist_ok=True)
        for actor in ("Coordinator", "ExecutionMonitor"):
            pid = _actor_pid(actor)
            if pid:
                out = Path(self.out_dir) / f"{self.label}-{actor}.txt"
                self.procs.append(subprocess.Popen(
                    [spy, "record", "--pid", str(pid), "--rate", "500", "--format", "raw", "--threads",
                     "--nonblocking", "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(0.5)  # let py-spy attach
        return self

    def __exit__(self, *exc: Any) -> None:
        for p in self.procs:
            p.send_signal(2)  # SIGINT: py-spy writes the profile and exits
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


# -- process figures (Linux /proc) ----------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of a process so far (0 when unknown)."""
    if not pid:
        return 0.0
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / _TICK
    except (OSError, ValueError, IndexError):
        return 0.0


class _ActorCpu:
    """CPU seconds the coordinator and monitor processes use while a block runs."""

    def __init__(self) -> None:
        self.pids = {"coordinator": _actor_pid("Coordinator"), "monitor": _actor_pid("ExecutionMonitor")}
        self.used: dict[str, float] = {}

    def __enter__(self) -> _ActorCpu:
        self._start = {k: _cpu_s(p) for k, p in self.pids.items()}
        return self

    def __exit__(self, *exc: Any) -> None:
        self.used = {k: _cpu_s(p) - self._start[k] for k, p in self.pids.items() if p}


def _is_worker(cmd: str) -> bool:
    """A Ray worker process that runs tasks (not one of the actors, not an agent)."""
    if "default_worker.py" in cmd:
        return True
    return cmd.startswith("ray::") and not cmd.startswith(
        ("ray::_", "ray::Dashboard", "ray::RuntimeEnv", *(f"ray::{name}" for name in CONTROL_PLANE)))


class _WorkerCount:
    """Peak number of task worker processes of this cluster while a block runs (sampled every 0.5 s)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="worker-count", daemon=True)

    def _loop(self) -> None:
        while True:
            self.peak = max(self.peak, sum(1 for _, cmd in _descendants() if _is_worker(cmd)))
            if self._stop.wait(0.5):
                return

    def __enter__(self) -> _WorkerCount:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


# -- measurements -------------------------------------------------------------------------


def _latency_rows(label: str, engine: Any, model: Any, steps: int, bare: Any, repeat: int,
                  notes: str) -> tuple[list[Result], float]:
    import ray

    def sop_run() -> None:
        _check(engine.wait(engine.submit(model), 60), steps)

    def bare_run() -> None:
        ray.get(bare(), timeout=60)

    warmup = max(5, repeat // 10)
    with _ActorCpu() as cpu:
        ts, tb = measure_pair(sop_run, bare_run, repeat, warmup=warmup)
    per_step = (ts.p50 - tb.p50) / steps
    runs = repeat + warmup
    cpu_note = (f"; CPU per execution: coordinator {cpu.used['coordinator'] / runs * 1e3:.1f} ms, "
                f"monitor {cpu.used['monitor'] / runs * 1e3:.1f} ms" if "coordinator" in cpu.used else "")
    rows = [
        Result.timing(f"{label}: sopflow submit + wait", ts, notes + cpu_note,
                      **{"vs bare Ray (p50)": ts.p50 / tb.p50, "overhead/step p50 ms": per_step}),
        Result.timing(f"{label}: bare Ray", tb, "same tasks as ray.remote(num_cpus=0.01), refs as "
                      "arguments, one ray.get"),
    ]
    return rows, per_step


def _breakdown(engine: Any, model: Any, repeat: int) -> list[Result]:
    """Where a 5-step execution's time goes, from the client's clocks and the coordinator's
    step timestamps (same machine, so the clocks agree), next to one bare Ray task."""
    import ray

    submit_ms: list[float] = []
    wait_ms: list[float] = []
    to_first: list[float] = []
    step_ms: list[float] = []
    gap_ms: list[float] = []
    tail_ms: list[float] = []
    clock = time.perf_counter
    for i in range(repeat + 5):
        t0 = clock()
        eid = engine.submit(model)
        t1 = clock()
        view = engine.wait(eid, 60)
        t2, wall_end = clock(), time.time()
        _check(view, LINEAR_STEPS)
        if i < 5:
            continue  # warm-up
        st = [view.steps[f"s{k}"] for k in range(LINEAR_STEPS)]
        submit_ms.append((t1 - t0) * 1e3)
        wait_ms.append((t2 - t1) * 1e3)
        to_first.append((st[0].started_at - view.submitted_at) * 1e3)
        step_ms += [(s.ended_at - s.started_at) * 1e3 for s in st]
        gap_ms += [(b.started_at - a.ended_at) * 1e3 for a, b in zip(st, st[1:])]
        tail_ms.append((wall_end - st[-1].ended_at) * 1e3)
    task = _bare()
    one = measure(lambda: ray.get(task.remote(), timeout=60), repeat * LINEAR_STEPS // 2, warmup=5)
    return [
        Result.timing("breakdown: engine.submit() call", summarise(submit_ms),
                      "5-step Sop object; includes the coordinator starting the first step"),
        Result.timing("breakdown: engine.wait() call", summarise(wait_ms), "from submit's return to wait's"),
        Result.timing("breakdown: submitted -> first step started", summarise(to_first),
                      "coordinator timestamps"),
        Result.timing("breakdown: step started -> ended", summarise(step_ms),
                      "coordinator timestamps: Ray task submitted from the coordinator's loop, run, "
                      "result awaited, event emitted"),
        Result.timing("breakdown: step ended -> next step started", summarise(gap_ms),
                      "coordinator: advance() deciding the next step"),
        Result.timing("breakdown: last step ended -> wait() returned", summarise(tail_ms),
                      "finish, flush to the monitor, reply to the client"),
        Result.timing("breakdown: bare Ray, one no-op task submit + get", one,
                      "from the driver: the floor for one step"),
    ]


def _throughput(engine: Any, model: Any, n: int, threads: int, profile: str | None,
                batch: int = 1) -> dict[str, Any]:
    """Submit ``n`` executions from ``threads`` threads (``batch`` per call), wait for all; probe status."""
    ids: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    probe_ms: list[float] = []
    probe_missing = 0

    def submit_one(_: int) -> list[str]:
        eids = [engine.submit(model)] if batch == 1 else engine.submit_many(model, [{}] * batch)
        with lock:
            ids.extend(eids)
        return eids

    def prober() -> None:
        nonlocal probe_missing
        from runtime.errors import ExecutionNotFound

        clock = time.perf_counter
        while not stop.is_set():
            with lock:
                # an execution submitted a little while ago (the monitor lags by ~10 ms), mostly running
                target = ids[max(0, len(ids) - 20)] if ids else None
            if target is None:
                time.sleep(0.001)
                continue
            t0 = clock()
            try:
                engine.status(target)
            except ExecutionNotFound:
                probe_missing += 1
            probe_ms.append((clock() - t0) * 1000.0)

    probe = threading.Thread(target=prober, name="status-probe", daemon=True)
    with _Profiler(profile, "throughput"), _ActorCpu() as cpu, _WorkerCount() as workers, \
            ThreadPoolExecutor(threads) as pool:
        probe.start()
        t0 = time.perf_counter()
        submitted = [eid for eids in pool.map(submit_one, range(n // batch)) for eid in eids]
        t_sub = time.perf_counter() - t0
        views = list(pool.map(lambda eid: engine.wait(eid, 300), submitted))
        wall = time.perf_counter() - t0
        stop.set()
        probe.join()
    failed = [v for v in views if v.status.value != "completed"]
    if len(failed) > len(views) // 10:
        _check(failed[0], LINEAR_STEPS)  # raises with the first failure
    return {"wall": wall, "submit": t_sub, "probe": probe_ms, "missing": probe_missing,
            "failed": len(failed), "cpu": cpu.used, "workers": workers.peak}


def _bare_throughput(n: int, cpu: float = STEP_CPU) -> dict[str, Any]:
    import ray

    with _WorkerCount() as workers:
        t0 = time.perf_counter()
        refs = [bare_chain(cpu=cpu) for _ in range(n)]
        t_sub = time.perf_counter() - t0
        ray.get(refs, timeout=300)
        wall = time.perf_counter() - t0
    return {"wall": wall, "submit": t_sub, "workers": workers.peak}


def _throughput_rows(engine: Any, executions: int, cpu: float, profile: str | None,
                     pause: float = PAUSE_S, batch: int = SUBMIT_BATCH) -> tuple[list[Result], float, Any]:
    """bare Ray, then sopflow, each running ``executions`` 5-step chains at once with steps of ``cpu``."""
    model, _, _ = engine.load(linear_sop(cpu=cpu))
    _check(engine.wait(engine.submit(model), 60), LINEAR_STEPS)
    time.sleep(pause)  # both bursts start from a settled worker pool (Ray reaps idle workers after ~1 s)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    bare = _bare_throughput(executions, cpu)
    time.sleep(pause)
    sop = _throughput(engine, model, executions, SUBMIT_THREADS, profile, batch)
    steps = executions * LINEAR_STEPS
    sop_rate, bare_rate = steps / sop["wall"], steps / bare["wall"]
    label = f"throughput, {executions:,} x {LINEAR_STEPS}-step, cpu {cpu:g}"
    diag = "" if cpu == STEP_CPU and batch == SUBMIT_BATCH else " (diagnostic)"
    how = (f"submit_many, {batch} per call" if batch > 1 else "one submit per call")
    cpu_used = sop["cpu"]
    cpu_note = (f"; actor CPU per step: coordinator {cpu_used['coordinator'] / steps * 1e3:.2f} ms, monitor "
                f"{cpu_used['monitor'] / steps * 1e3:.2f} ms" if "coordinator" in cpu_used else "")
    rows = [
        Result(f"{label}: sopflow, {how}{diag}",
               {"n": executions, "wall s": sop["wall"], "steps/s": sop_rate,
                "vs bare Ray (steps/s)": sop_rate / bare_rate, "peak workers": sop["workers"]},
               f"submitted from {SUBMIT_THREADS} threads in {sop['submit']:.2f} s "
               f"({executions / sop['submit']:,.0f} submits/s), then waited for all{cpu_note}"
               + (f"; {sop['failed']} did not complete" if sop["failed"] else "")
               + f"; 1-min load average before: {load:.1f}"),
        Result(f"{label}: bare Ray{diag}",
               {"n": executions, "wall s": bare["wall"], "steps/s": bare_rate,
                "peak workers": bare["workers"]},
               f"{executions:,} chains of {LINEAR_STEPS} tasks submitted from the driver in "
               f"{bare['submit']:.2f} s, then one ray.get"),
    ]
    return rows, sop_rate, summarise(sop["probe"])


def run(quick: bool = False) -> list[Result]:
    import ray

    repeat = 20 if quick else 200
    executions = 100 if quick else 1000
    pause = PAUSE_S / 2 if quick else PAUSE_S
    profile = os.environ.get("SOPFLOW_BENCH_PROFILE") or None
    results: list[Result] = []
    t_start = time.perf_counter()
    engine = _start()
    try:
        first = time.perf_counter()
        lin_text, fan_text = linear_sop(), fanout_sop()
        lin_model, _, _ = engine.load(lin_text)
        fan_model, _, _ = engine.load(fan_text)
        _check(engine.wait(engine.submit(lin_model), 120), LINEAR_STEPS)
        first_ms = (time.perf_counter() - first) * 1000.0
        results.append(Result("cluster start + Engine", {"n": 1, "p50 ms": (first - t_start) * 1000.0},
                              f"ray.init(num_cpus={NUM_CPUS}) + Engine(namespace={NAMESPACE!r})"))
        results.append(Result("first 5-step execution (cold actors and workers)",
                              {"n": 1, "p50 ms": first_ms},
                              "creates the coordinator/monitor/failure-handler actors, starts workers"))

        fan_steps = FANOUT_WIDTH + 2
        rows, lin_overhead = _latency_rows(
            f"{LINEAR_STEPS}-step linear", engine, lin_model, LINEAR_STEPS, bare_chain, repeat,
            "Sop object validated once; submit + wait are two blocking actor calls")
        results += rows
        rows, fan_overhead = _latency_rows(
            f"{FANOUT_WIDTH}-wide fan-out + join ({fan_steps} steps)", engine, fan_model, fan_steps,
            bare_fanout, repeat, f"root -> {FANOUT_WIDTH} parallel -> join; critical path 3 steps")
        results += rows

        def text_run() -> None:
            _check(engine.wait(engine.submit(lin_text), 60), LINEAR_STEPS)

        results.append(Result.timing(f"{LINEAR_STEPS}-step linear: sopflow submit(YAML text) + wait",
                                     measure(text_run, max(10, repeat // 4), warmup=3),
                                     "check_text on every submit, in the client"))
        results += _breakdown(engine, lin_model, max(10, repeat // 4))

        done_id = engine.submit(lin_model)
        engine.wait(done_id, 60)
        idle = measure(lambda: engine.status(done_id), repeat, warmup=5)

        rows, sop_rate, probe = _throughput_rows(engine, executions, STEP_CPU, profile, pause)
        results += rows
        results.append(Result.timing(
            "engine.status under load (during the sopflow throughput run)", probe,
            "one thread calling engine.status in a loop on an execution submitted shortly before"))
        results.append(Result.timing("engine.status idle", idle, "a finished execution, nothing running"))

        # Diagnostic: the same run submitting one execution per call (the submit path's own cost).
        rows, _, _ = _throughput_rows(engine, executions, STEP_CPU, None, pause, batch=1)
        results += rows

        # Diagnostic: the same throughput run with steps asking for 0.5 CPU, so Ray runs at most
        # 4 at a time on reused workers instead of starting a worker process per concurrent task.
        rows, _, probe_half = _throughput_rows(engine, executions, DIAG_CPU, None, pause)
        results += rows
        results.append(Result.timing(f"engine.status under load (cpu {DIAG_CPU:g} run, diagnostic)",
                                     probe_half, "as above, during the diagnostic throughput run"))

        e2e = next(r for r in results if r.name == f"{LINEAR_STEPS}-step linear: sopflow submit + wait")
        results += _goals(lin_overhead, fan_overhead, fan_steps, sop_rate, probe.p99,
                          e2e.figures["p50 ms"], e2e.figures["p99 ms"])
    finally:
        engine.shutdown()
        if ray.is_initialized():
            ray.shutdown()
    return results


def _goals(lin_overhead: float, fan_overhead: float, fan_steps: int, rate: float, status_p99: float,
           e2e_p50: float, e2e_p99: float) -> list[Result]:
    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    return [
        Result(f"GOAL per-step overhead over bare Ray <= {GOAL_STEP_OVERHEAD_MS:g} ms (p50)",
               {"overhead/step p50 ms": lin_overhead,
                "goal": verdict(lin_overhead <= GOAL_STEP_OVERHEAD_MS)},
               f"5-step linear; the fan-out gives {fan_overhead:.2f} ms/step over {fan_steps} steps"),
        Result(f"GOAL >= {GOAL_STEPS_PER_S:g} no-op steps/s sustained",
               {"steps/s": rate, "goal": verdict(rate >= GOAL_STEPS_PER_S)}),
        Result(f"GOAL status query p99 <= {GOAL_STATUS_P99_MS:g} ms under load",
               {"p99 ms": status_p99, "goal": verdict(status_p99 <= GOAL_STATUS_P99_MS)}),
        Result(f"GOAL 5-step SOP < {GOAL_E2E_MS:g} ms end to end (warm)",
               {"p50 ms": e2e_p50, "p99 ms": e2e_p99,
                "goal": ("met" if e2e_p99 < GOAL_E2E_MS else
                         "met at p50, not p99" if e2e_p50 < GOAL_E2E_MS else "MISSED")},
               "met = p99 under the goal"),
    ]
