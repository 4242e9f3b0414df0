"""Agent Centric Run benchmarks: sopflow's agent hosts against the same ADK agent run in-process.

One local Ray cluster (2 CPUs) runs everything; the model is the offline model in
both columns, so the figures are the runtime's cost, not a model's.

- **Turn overhead.** An SOP of ``TURNS`` no-op steps (``python:bench.engine:noop``,
  0.01 CPU) run agent-centric: every turn is one model call and one step tool call.
  The baseline is the same ADK agent (same instruction, model and tool names) in an
  in-process ``Runner`` in the driver, whose step tools run the same no-op as a bare
  Ray task and answer at once: no host actor, no coordinator, no event log. Runs
  alternate (sopflow, baseline, ...) so drift in load hits both; the overhead per turn
  is (sopflow run - baseline run) / turns. Goal: <= 5 ms per turn.
- **Many sessions in one host.** ``SESSIONS`` executions of a 2-step agent SOP submitted
  at once with ``agent_hosts=1``: time until all completed; the host actor's resident
  memory at rest and at its peak (sampled every 0.2 s), per live session; and
  ``engine.status`` latency sampled from another thread meanwhile. Goal: host under 1 GiB.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench._util import Result, start_local_ray, summarise

NAMESPACE = "sopflow-bench-agents"
NUM_CPUS = 2
TURNS = 10
SESSIONS = 1000
GOAL_TURN_MS = 5.0
GOAL_HOST_MIB = 1024.0


def _sop(steps: int, name: str) -> str:
    lines = [f"sop: {name}", "mode: agent_centric", "defaults:", "  resources: {cpu: 0.01}", "steps:"]
    for i in range(steps):
        lines += [f"  - id: s{i}", "    uses: python:bench.engine:noop"]
        if i:
            lines.append(f"    depends_on: [s{i - 1}]")
    return "\n".join(lines) + "\n"


def _baseline(sop_text: str) -> Any:
    """A callable running the same agent in an in-process ADK Runner, its tools bare Ray tasks."""
    import ray
    from google.adk.apps import App
    from google.adk.runners import Runner
    from google.adk.sessions import InMemorySessionService
    from google.genai import types

    from agents.context import AgentContext
    from agents.offline import OfflineModel
    from agents.session import KICKOFF, build_agent
    from agents.tools import FinishTool, StepTool
    from runtime.seams import AgentSessionSpec
    from sop import loads

    noop = ray.remote(num_cpus=0.01)(lambda: None)
    sop = loads(sop_text)
    ctx = AgentContext.from_spec(AgentSessionSpec("bench", 1, sop, {}, (), {"models": [], "tools": {}}))

    async def port(op: str, args: dict[str, Any], call: int | None) -> Any:
        if op == "step":
            await noop.remote()
            return {"step": args["step"], "status": "succeeded", "attempts": 1, "output": None}
        return {"finished": True, "status": "completed"}

    class _NoIndex:
        def index_of(self, _: Any) -> None:
            return None

    tools = [StepTool(s.id, s.id, port, _NoIndex()) for s in sop.steps] + [FinishTool("finish", "end", port, _NoIndex())]
    agent = build_agent(ctx, OfflineModel(), tools)
    runner = Runner(app=App(name="baseline", root_agent=agent), session_service=InMemorySessionService(),
                    auto_create_session=True)
    counter = iter(range(10 ** 9))

    async def once() -> None:
        message = types.Content(role="user", parts=[types.Part(text=KICKOFF)])
        async for _ in runner.run_async(user_id="b", session_id=f"s{next(counter)}", new_message=message):
            pass

    return lambda: asyncio.run(once())


def _turns(engine: Any, sop_text: str, repeat: int) -> list[Result]:
    baseline = _baseline(sop_text)
    for _ in range(2):  # warm: workers, the host actor, imports
        engine.wait(engine.submit(sop_text), timeout=120)
        baseline()
    ours, theirs = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        view = engine.wait(engine.submit(sop_text), timeout=120)
        ours.append((time.perf_counter() - t0) * 1000)
        if view.status.value != "completed":
            raise AssertionError(f"agent run {view.id} ended {view.status.value}")
        t0 = time.perf_counter()
        baseline()
        theirs.append((time.perf_counter() - t0) * 1000)
    a, b = summarise(ours), summarise(theirs)
    per_turn = (a.p50 - b.p50) / TURNS
    return [
        Result.timing(f"{TURNS}-turn agent run: sopflow (host actor, events, coordinator)", a),
        Result.timing(f"{TURNS}-turn agent run: same ADK agent in-process, tools as bare Ray tasks", b),
        Result(f"GOAL overhead per agent turn <= {GOAL_TURN_MS:g} ms (p50)",
               {"ms per turn": per_turn, "ratio": a.p50 / b.p50, "met": per_turn <= GOAL_TURN_MS}),
    ]


def _host_rss_mib() -> float:
    """Resident memory of the (single) agent host actor's process, MiB."""
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or ())
        if cmd.startswith("ray::AgentHost"):
            return proc.memory_info().rss / 2 ** 20
    return float("nan")


def _many(engine: Any, sessions: int) -> list[Result]:
    text = _sop(2, "bench-agent-many")
    engine.wait(engine.submit(text), timeout=120)  # the host is up and warm
    rest = _host_rss_mib()
    peak = [rest]
    status_ms: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak.append(_host_rss_mib())
            time.sleep(0.2)

    t0 = time.perf_counter()
    ids = engine.submit_many(text, [{} for _ in range(sessions)])

    def poll() -> None:
        i = 0
        while not done.is_set():
            s = time.perf_counter()
            engine.status(ids[i % len(ids)])
            status_ms.append((time.perf_counter() - s) * 1000)
            i += 7

    threads = [threading.Thread(target=sample, daemon=True), threading.Thread(target=poll, daemon=True)]
    for t in threads:
        t.start()
    failed = 0
    for eid in ids:
        failed += engine.wait(eid, timeout=1800).status.value != "completed"
    elapsed = time.perf_counter() - t0
    done.set()
    for t in threads:
        t.join()
    high = max(peak)
    st = summarise(status_ms) if status_ms else None
    rows = [
        Result(f"{sessions} agent sessions in one host actor (2-step SOP, offline model)",
               {"sessions": sessions, "completed in s": elapsed, "sessions/s": sessions / elapsed,
                "failed": failed}),
        Result("host actor memory", {"at rest MiB": rest, "peak MiB": high,
                                     "per session KiB": (high - rest) * 1024 / sessions}),
    ]
    if st is not None:
        rows.append(Result.timing("engine.status while they run", st))
    rows.append(Result(f"GOAL host under {GOAL_HOST_MIB:g} MiB with {sessions} sessions",
                       {"peak MiB": high, "met": high < GOAL_HOST_MIB}))
    return rows


def run(quick: bool = False) -> list[Result]:
    import ray

    from runtime import Engine
    from runtime.config import EngineConfig

    start_local_ray(NAMESPACE, NUM_CPUS, 0.01)
    state = Path(tempfile.mkdtemp(prefix="sopflow-bench-agents-")) / "state.db"
    engine = Engine(namespace=NAMESPACE, config=EngineConfig(state=str(state), agent_hosts=1))
    try:
        results = _turns(engine, _sop(TURNS, "bench-agent-turns"), 5 if quick else 20)
        results += _many(engine, 100 if quick else SESSIONS)
    finally:
        engine._conn.actors.kill()
        ray.shutdown()
    return results
