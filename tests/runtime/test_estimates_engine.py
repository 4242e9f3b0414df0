"""Learned estimates through the engine: what attempts record (in process and on a Ray worker), the
history kept across a restart, the overdue alert from learned durations, ETA and queue position in
status, learned allocations reaching the admission and Ray, and ``sopflow suggest``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from runtime.config import EngineConfig
from runtime.status import ExecutionStatus, StepStatus
from tests.sop_builders import H, wait_for

BURN = "python:tests.runtime.estimates_handlers:burn"
SHELL_BURN = ("python3 -c 'import time; b = bytearray(48 << 20); b[::4096] = bytes(len(b) >> 12); "
              "any(time.process_time() > 0.3 for _ in iter(int, 1))'")


def _sop(name: str = "learns", learned: bool = False) -> str:
    resources = "{cpu: 2, memory_mb: 4096, learned: true}" if learned else "{cpu: 0.5}"
    return f"""\
sop: {name}
version: "1"
mode: system_design
inputs:
  gate: {{type: string, default: ""}}
defaults:
  retry: {{max_attempts: 1}}
  resources: {resources}
steps:
  - id: work
    uses: {BURN}
    with: {{cpu_s: 0.3, mb: 64}}
  - id: hold
    uses: {H}:wait_for_file
    with: {{path: "${{{{ inputs.gate }}}}", timeout_s: 60}}
    when: "inputs.gate != ''"
    depends_on: [work]
  - id: never
    uses: {H}:echo
    when: "false"
    depends_on: [work]
"""


def _measured(engine, eid: str, step: str) -> dict:
    found = [e.data for e in engine.events(eid, follow=False) if e.kind.value == "step_succeeded" and e.step == step]
    assert found, f"no success of {step}"
    return found[0]


def _run(engine, sop: str, n: int) -> None:
    for _ in range(n):
        eid = engine.submit(sop)
        assert engine.wait(eid, 60).status == ExecutionStatus.COMPLETED


def test_an_attempt_records_its_cpu_and_peak_memory_in_process(inproc_file, sop_file, tmp_path: Path) -> None:
    path = sop_file(_sop() + f"""\
  - id: shell
    uses: shell
    run: |
      {SHELL_BURN}
""")
    eid = inproc_file.submit(path)
    assert inproc_file.wait(eid, 60).status == ExecutionStatus.COMPLETED
    work = _measured(inproc_file, eid, "work")
    assert 0.25 <= work["cpu_s"] < 5 and work["peak_mb"] >= 56  # 0.3 s of CPU, 64 MiB touched
    shell = _measured(inproc_file, eid, "shell")
    assert 0.25 <= shell["cpu_s"] < 5 and 40 <= shell["peak_mb"] < 400  # the child's own, not this process's


@pytest.mark.ray
def test_a_ray_worker_measures_its_attempts_and_status_forecasts_from_them(engine, sop_file, tmp_path) -> None:
    path = sop_file(_sop("learns-on-ray"))
    eid = engine.submit(path)
    assert engine.wait(eid, 120).status == ExecutionStatus.COMPLETED
    work = _measured(engine, eid, "work")
    assert 0.25 <= work["cpu_s"] < 5 and work["peak_mb"] >= 56
    assert engine.estimates("learns-on-ray")["steps"]["work"]["samples"] >= 1
    # A worker runs one task at a time: the CPU of every thread of the handler counts.
    threaded = engine.submit(sop_file(_sop("threads-on-ray") + """\
  - id: threads
    uses: python:tests.runtime.estimates_handlers:burn_in_threads
    with: {cpu_s: 0.2, threads: 2}
""", "threads.yaml"))
    assert engine.wait(threaded, 120).status == ExecutionStatus.COMPLETED
    assert _measured(engine, threaded, "threads")["cpu_s"] >= 0.35
    gate = tmp_path / "gate"
    held = engine.submit(path, {"gate": str(gate)})
    try:
        wait_for(lambda: engine.status(held).steps["hold"].status == StepStatus.RUNNING, 120)
        view = engine.status(held)  # through the Coordinator actor's forecast
        assert view.expected_duration_s is not None and view.eta is not None and view.queue_position is None
    finally:
        gate.write_text("go")
    assert engine.wait(held, 120).status == ExecutionStatus.COMPLETED


def test_the_history_is_kept_in_the_state_store_across_a_restart(tmp_path: Path, sop_file) -> None:
    from runtime import Engine, Registry

    state, path = str(tmp_path / "state.db"), sop_file(_sop())
    first = Engine.in_process(state=state, registry=Registry())
    try:
        _run(first, path, 2)
    finally:
        first.shutdown()  # saved when the store closes
    second = Engine.in_process(state=state, registry=Registry())
    try:
        known = second.estimates("learns")
        assert known["completed"] == 2 and known["steps"]["work"]["samples"] == 2
        assert "never" not in known["steps"]  # skipped every time: no history, counted 0 on the critical path
        assert second.estimates("unknown-sop") == {"sop": "unknown-sop", "completed": 0, "steps": {}}
    finally:
        second.shutdown()


def test_a_learned_duration_raises_the_overdue_alert_and_status_shows_eta_and_queue_position(
        tmp_path: Path, sop_file) -> None:
    """No expected_duration_s declared: the history's critical path is the expectation. With one run
    slot held by a first execution, a second one shows queue position 1."""
    from runtime import Engine, Registry

    engine = Engine.in_process(registry=Registry(), config=EngineConfig(alert_check_every_s=3600.0,
                                                                         max_running_steps=1))
    try:
        path = sop_file(_sop())
        _run(engine, path, 3)
        expected = engine.estimates("learns")["steps"]["work"]["p50_s"]
        gate = tmp_path / "gate"
        held = engine.submit(path, {"gate": str(gate)})
        wait_for(lambda: engine.status(held).steps["hold"].status == StepStatus.RUNNING, 60)
        queued = engine.submit(path)
        wait_for(lambda: engine.status(queued).steps["work"].status == StepStatus.QUEUED, 60)
        view = engine.status(held)
        assert view.expected_duration_s == pytest.approx(expected, abs=1e-3)  # rounded to the ms
        assert view.eta is not None and view.queue_position is None
        waiting = engine.status(queued)
        assert waiting.queue_position == 1 and waiting.eta is not None
        coordinator = engine._conn.coordinator
        coordinator.clock = lambda: view.submitted_at + 2 * expected - 0.01
        assert engine._conn.call("coordinator", "check_alerts") == 0
        coordinator.clock = lambda: view.submitted_at + 2 * expected + 0.01
        assert engine._conn.call("coordinator", "check_alerts") >= 1
        engine.flush()
        alerts = engine.status(held).alerts
        assert [a["rule"] for a in alerts] == ["overdue"] and "its expected" in alerts[0]["reason"]
        gate.write_text("go")
        final = engine.wait(held, 60)
        assert final.eta is None and final.queue_position is None  # a finished execution has no forecast
        assert engine.wait(queued, 60).status == ExecutionStatus.COMPLETED
    finally:
        engine.shutdown()


def test_learned_resources_shape_the_claim_and_the_ray_reservation(inproc, sop_file) -> None:
    """resources.learned: after MIN_SAMPLES successes, an execution's claim and its Ray task options
    take the learned CPU and memory (within the declared 2 CPUs / 4096 MiB); without the opt-in, the
    declared ones."""
    from actors._ray_runner import RayTaskRunner
    from runtime.attempts import _claim
    from runtime.estimates import MIN_SAMPLES

    learned, plain = sop_file(_sop("opted", learned=True), "a.yaml"), sop_file(_sop("plain"), "b.yaml")
    first = inproc.submit(learned)
    inproc.wait(first, 60)
    exe = inproc._conn.coordinator.executions[first]
    step = exe.steps_by_id["work"]
    assert exe.learned == {} and _claim(exe, step).demand.cpu == 2.0  # no history yet: as declared
    _run(inproc, learned, MIN_SAMPLES - 1)
    _run(inproc, plain, MIN_SAMPLES)
    later = inproc._conn.coordinator.executions[inproc.submit(learned)]
    demand = _claim(later, step).demand
    suggested = inproc.estimates("opted")["steps"]["work"]
    assert demand.cpu == pytest.approx(min(2.0, suggested["cpu"])) and demand.cpu < 2.0
    assert demand.memory_mb == min(4096, suggested["memory_mb"]) and demand.memory_mb >= 64
    options = RayTaskRunner()._launch(later, step).options
    assert options["num_cpus"] == demand.cpu and options["memory"] == demand.memory_mb * 1024 * 1024
    plain_exe = inproc._conn.coordinator.executions[inproc.submit(plain)]
    assert _claim(plain_exe, plain_exe.steps_by_id["work"]).demand.cpu == 0.5  # not opted in


def test_sopflow_suggest_without_history_says_so(tmp_path: Path, sop_file) -> None:
    from runtime import Engine, Registry
    from runtime.cli import main

    state = str(tmp_path / "state.db")
    Engine.in_process(state=state, registry=Registry()).shutdown()  # an empty store
    result = CliRunner().invoke(main, ["suggest", sop_file(_sop()), "--state", state])
    assert result.exit_code == 0, result.output
    assert "No history for SOP 'learns'" in result.output and "Run it a few times" in result.output
    as_json = json.loads(CliRunner().invoke(main, ["suggest", sop_file(_sop()), "--state", state, "--json"]).output)
    assert all(s["samples"] == 0 and s["suggested"] is None for s in as_json["steps"].values())


def test_sopflow_suggest_prints_cpu_memory_and_timeout_per_step(inproc_file, tmp_path: Path, sop_file) -> None:
    from runtime.cli import main

    path = sop_file(_sop())
    _run(inproc_file, path, 2)
    inproc_file.shutdown()
    state = str(tmp_path / "state.db")
    result = CliRunner().invoke(main, ["suggest", path, "--state", state])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "2 completed executions" in lines[0]
    work = lines.index(next(line for line in lines if line.startswith("work: 2 samples, p50 ")))
    assert "cpu " in lines[work + 1] and "(now 0.5)" in lines[work + 1] and "timeout_s " in lines[work + 1]
    assert "memory_mb " in lines[work + 1] and "(now unset)" in lines[work + 1]
    assert any(line.startswith("hold: no history") for line in lines)
    assert any(line.startswith("never: no history") for line in lines)
    report = json.loads(CliRunner().invoke(main, ["suggest", path, "--state", state, "--json"]).output)
    work = report["steps"]["work"]
    assert work["samples"] == 2 and work["declared"] == {"cpu": 0.5, "memory_mb": None, "timeout_s": None}
    assert set(work["suggested"]) == {"cpu", "memory_mb", "timeout_s"}
    assert work["suggested"]["memory_mb"] >= 64 and work["suggested"]["timeout_s"] >= 1.0
    assert work["suggested"]["cpu"] >= 0.05


def test_sopflow_suggest_names_a_bad_file_or_store_without_a_traceback(tmp_path: Path, sop_file) -> None:
    from runtime.cli import main

    bad = sop_file("sop: x\nsteps: 3\n", "bad.yaml")
    result = CliRunner().invoke(main, ["suggest", bad, "--state", str(tmp_path / "none.db")])
    assert result.exit_code != 0 and "Traceback" not in result.output and "steps" in result.output
    missing = CliRunner().invoke(main, ["suggest", sop_file(_sop()), "--state", str(tmp_path / "none.db")])
    assert missing.exit_code != 0 and "does not exist" in missing.output and "Traceback" not in missing.output
