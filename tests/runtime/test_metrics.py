"""Execution metrics (runtime.metrics): properties 22 (status_and_events) and 24 (metrics_complete),
the window rules, the in-process engine's numbers, and ``sopflow metrics --state FILE``."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.errors import MetricsQueryError
from runtime.metrics import ERROR_CLASSES, compute, facts, parse_window, percentile, stats
from runtime.state import fold
from runtime.status import ExecutionStatus
from tests.runtime.gen_histories import MODES, SOPS, Planned, executions
from tests.sop_builders import H, sop_text

ROOT = Path(__file__).resolve().parents[2]
STAT_KEYS = {"count", "mean", "p50", "p95", "p99", "max"}


def _check_stats(s: dict, values: list[float]) -> None:
    assert set(s) == STAT_KEYS
    assert s["count"] == len(values)
    if not values:
        assert s["mean"] is None and s["p99"] is None
        return
    ordered = sorted(values)
    eps = 1e-6  # event times are sums of floats: a duration read back from them differs in the last bits
    assert s["mean"] == pytest.approx(sum(values) / len(values), rel=1e-6, abs=eps)
    assert min(values) - eps <= s["mean"] <= max(values) + eps
    assert s["p50"] <= s["p95"] <= s["p99"] <= s["max"]
    assert s["max"] == pytest.approx(ordered[-1], abs=eps)
    # nearest rank: the q-th percentile is one of the values, with at least q% of them at or below it
    for q in ("p50", "p95", "p99"):
        assert any(abs(s[q] - v) <= eps for v in ordered)
        assert sum(1 for v in ordered if v <= s[q] + eps) >= int(q[1:]) / 100 * len(ordered)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(executions(), st.one_of(st.none(), st.floats(1.0, 20_000.0)), st.sampled_from([None, *SOPS]),
       st.sampled_from([None, *MODES]))
def test_metrics_complete(planned: list[Planned], window_s: float | None, sop: str | None, mode: str | None) -> None:
    """Property 24: for any time window, counts (total, running, completed, failed), success rate, mean,
    p95 and p99 duration, utilisation, error rate and queue depth are all available, and right."""
    now = 20_000.0
    since = None if window_s is None else now - window_s
    m = compute([facts(p.events) for p in planned], now=now, window_s=window_s, sop=sop, mode=mode,
                resources={"source": "test", "cpu_percent": 1.0})
    chosen = [p for p in planned if (sop is None or p.sop == sop) and (mode is None or p.mode == mode)
              and (since is None or p.submitted_at >= since or not p.finished)]
    done = [p for p in chosen if p.finished]
    e = m["executions"]
    assert e["total"] == len(chosen)
    assert e["running"] == len(chosen) - len(done)
    for status in ("completed", "partially_completed", "failed", "cancelled"):
        assert e[status] == sum(1 for p in done if p.status == status)
    assert e["total"] == e["running"] + e["completed"] + e["partially_completed"] + e["failed"] + e["cancelled"]
    if done:
        assert e["success_rate"] == pytest.approx(e["completed"] / len(done))
        assert 0.0 <= e["success_rate"] <= 1.0
    else:
        assert e["success_rate"] is None
    _check_stats(m["duration_s"], [p.ended_at - p.submitted_at for p in done])
    for key, attr in (("duration_by_sop", "sop"), ("duration_by_mode", "mode")):
        groups: dict[str, list[float]] = {}
        for p in done:
            groups.setdefault(getattr(p, attr), []).append(p.ended_at - p.submitted_at)
        assert set(m[key]) == set(groups)
        for name, values in groups.items():
            _check_stats(m[key][name], values)
    steps = m["steps"]
    assert steps["attempts"] == steps["outcomes"] == sum(p.attempts for p in chosen)  # each attempt ended
    assert steps["retries"] == sum(p.retries for p in chosen)
    assert set(ERROR_CLASSES) <= set(steps["errors"]) and set(steps["errors"]) == set(steps["error_rate"])
    for cls in ERROR_CLASSES:
        assert steps["errors"][cls] == sum(p.failures.get(cls, 0) for p in chosen)
        expected_rate = steps["errors"][cls] / steps["outcomes"] if steps["outcomes"] else 0.0
        assert steps["error_rate"][cls] == pytest.approx(expected_rate)
    assert sum(steps["error_rate"].values()) <= 1.0 + 1e-9
    assert m["queue"]["depth"] == sum(p.queued_now for p in chosen)
    _check_stats(m["queue"]["wait_s"], [w for p in chosen for w in p.waits])
    for p in chosen:
        for step, values in p.step_seconds.items():
            assert m["step_duration_s"][p.sop][step]["count"] >= len(values)
    assert m["resources"]["source"] == "test" and "cpu_percent" in m["resources"]
    assert m["window"] == {"seconds": window_s, "since": since, "until": now, "sop": sop, "mode": mode}
    json.dumps(m)  # JSON data all the way down


def _check_status_and_events(events: list) -> None:
    previous = None
    for k in range(1, len(events) + 1):
        state = fold(events[:k])
        view = state.view()
        event = events[k - 1]
        assert isinstance(view.status, ExecutionStatus)
        assert 0.0 <= view.progress <= 1.0
        assert view.elapsed_s >= 0.0 and math.isfinite(view.elapsed_s)
        if previous is not None:
            changed = {sid for sid, s in view.steps.items()
                       if sid not in previous.steps or previous.steps[sid].status != s.status}
            if changed or view.status != previous.status:
                # every status change comes with its event: time and context (execution, step)
                assert event.ts > 0 and event.execution_id == view.id
                assert changed <= {event.step} or event.kind.value in ("execution_submitted", "steps_added")
        previous = view


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(executions(max_size=3))
def test_status_and_events(planned: list[Planned]) -> None:
    """Property 22: status, progress and elapsed time are always known, and every status change
    emits an event with time and context."""
    for p in planned:
        _check_status_and_events(p.events)


def test_status_and_events_of_a_real_run(tmp_path: Path) -> None:
    """The same property over the events of a real (in-process) run with a retry and a failure."""
    from runtime import Engine

    engine = Engine.in_process()
    try:
        sop = sop_text(f"""
steps:
  - id: flaky
    uses: {H}:flaky
    with: {{fail_times: 1, counter_dir: "{tmp_path}"}}
  - id: bad
    uses: {H}:outcome
    with: {{ok: false, name: bad}}
    depends_on: [flaky]
  - id: after
    uses: {H}:echo
    depends_on: [bad]
""")
        eid = engine.submit(sop)
        engine.wait(eid, 60)
        _check_status_and_events(engine.history(eid))
    finally:
        engine.shutdown()


@pytest.mark.parametrize("text,seconds", [("90", 90.0), (90, 90.0), ("30m", 1800.0), ("1h", 3600.0),
                                          ("7d", 604_800.0), ("2w", 1_209_600.0), ("1.5h", 5400.0), ("all", None),
                                          ("", None), (None, None)])
def test_windows(text: object, seconds: float | None) -> None:
    assert parse_window(text) == seconds


@pytest.mark.parametrize("bad", ["-1h", "1y", "h", "1h; drop table", "0", 0, -5, float("nan"),
                                 float("inf"), True, "1e999h"])
def test_a_bad_window_is_refused_naming_the_forms(bad: object) -> None:
    with pytest.raises(MetricsQueryError, match="window must be"):
        parse_window(bad)


def test_percentiles_are_nearest_rank() -> None:
    values = list(range(1, 101))
    assert percentile(values, 95) == 95 and percentile(values, 99) == 99 and percentile(values, 50) == 50
    assert percentile([7.0], 99) == 7.0
    assert stats([])["count"] == 0 and stats([2.0, 4.0])["mean"] == 3.0


def _three_runs(engine, tmp_path: Path) -> list[str]:
    ok = sop_text(f"steps:\n  - id: a\n    uses: {H}:echo\n    with: {{value: 1}}\n", name="good")
    flaky = sop_text(f"""
steps:
  - id: f
    uses: {H}:flaky
    with: {{fail_times: 2, counter_dir: "{tmp_path / 'flaky'}"}}
""", name="good")
    bad = sop_text(f"steps:\n  - id: b\n    uses: {H}:outcome\n    with: {{ok: false, name: b}}\n", name="bad")
    ids = [engine.submit(ok), engine.submit(flaky), engine.submit(bad)]
    for eid in ids:
        engine.wait(eid, 60)
    return ids


def test_engine_metrics_count_what_ran(tmp_path: Path) -> None:
    from runtime import Engine

    engine = Engine.in_process()
    try:
        _three_runs(engine, tmp_path)
        m = engine.metrics("1h")
        assert m["executions"] | {"success_rate": None} == {
            "total": 3, "running": 0, "completed": 2, "partially_completed": 0, "failed": 1, "cancelled": 0,
            "success_rate": None}
        assert m["executions"]["success_rate"] == pytest.approx(2 / 3)
        assert m["steps"]["attempts"] == 5 and m["steps"]["retries"] == 2
        assert m["steps"]["errors"]["transient"] == 2 and m["steps"]["errors"]["permanent"] == 1
        assert m["steps"]["error_rate"]["permanent"] == pytest.approx(1 / 5)
        assert set(m["duration_by_sop"]) == {"good", "bad"} and m["duration_by_sop"]["good"]["count"] == 2
        assert m["duration_by_mode"]["system_design"]["count"] == 3
        assert set(m["step_duration_s"]["good"]) == {"a", "f"} and m["step_duration_s"]["good"]["f"]["count"] == 3
        assert m["resources"]["source"] and m["resources"]["cpu_count"] >= 1
        only_bad = engine.metrics("all", sop="bad")
        assert only_bad["executions"]["total"] == 1 and only_bad["executions"]["failed"] == 1
        assert engine.metrics(sop="nothing-like-it")["executions"]["total"] == 0
        assert engine.metrics(mode="agent_centric")["executions"]["total"] == 0
        with pytest.raises(MetricsQueryError, match="mode must be one of"):
            engine.metrics(mode="fast")
        with pytest.raises(MetricsQueryError, match="window must be"):
            engine.metrics("yesterday")
    finally:
        engine.shutdown()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, env={**__import__("os").environ, "SOPFLOW_API": "off"})


def test_metrics_of_a_state_file_without_a_cluster(tmp_path: Path) -> None:
    """``sopflow metrics --state FILE`` reads the file directly and agrees with the engine that wrote it."""
    from runtime import Engine

    state = tmp_path / "state.db"
    engine = Engine.in_process(state=str(state))
    try:
        _three_runs(engine, tmp_path)
        live = engine.metrics("all")
    finally:
        engine.shutdown()
    done = _cli("metrics", "--state", str(state), "--window", "all", "--format", "json")
    assert done.returncode == 0, done.stderr
    read = json.loads(done.stdout)
    for key in ("executions", "duration_s", "duration_by_sop", "steps", "queue", "step_duration_s", "alerts"):
        assert read[key] == live[key], key
    assert "state file" in read["resources"]["source"] and "state file" in read["source"]
    text = _cli("metrics", "--state", str(state), "--window", "all", "--sop", "bad")
    assert text.returncode == 0, text.stderr
    assert "total 1" in text.stdout and "failed 1" in text.stdout and "p99" in text.stdout


@pytest.mark.parametrize("args,message", [
    (["--window", "soon"], "window must be"),
    (["--window", "-3h"], "window must be"),
    (["--mode", "fast"], "Invalid value for '--mode'"),
])
def test_metrics_cli_refuses_bad_arguments_without_a_traceback(tmp_path: Path, args: list[str],
                                                               message: str) -> None:
    from runtime.eventlog import SqliteEventLog

    state = tmp_path / "state.db"
    SqliteEventLog(str(state)).close()
    done = _cli("metrics", "--state", str(state), *args)
    assert done.returncode != 0 and message in done.stderr and "Traceback" not in done.stderr


def test_metrics_cli_names_a_missing_state_file(tmp_path: Path) -> None:
    done = _cli("metrics", "--state", str(tmp_path / "nope.db"))
    assert done.returncode != 0 and "does not exist" in done.stderr and "Traceback" not in done.stderr


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(executions(), st.one_of(st.none(), st.floats(1.0, 20_000.0)), st.integers(0, 3))
def test_a_restarted_monitor_answers_the_same_from_the_log(planned: list[Planned], window_s: float | None,
                                                          keep: int) -> None:
    """For any histories: a monitor that saw the events live and a fresh one that rebuilt itself from the
    state store (keeping only ``keep`` finished executions in memory, reading the rest from the log)
    report the same metrics."""
    import asyncio
    import tempfile

    from runtime.config import EngineConfig
    from runtime.eventlog import ExecutionRecord, SqliteEventLog
    from runtime.monitor import ExecutionMonitor

    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/state.db"
        log = SqliteEventLog(path)
        for p in planned:
            log.append(p.events, [ExecutionRecord(p.id, p.sop, p.status, p.submitted_at, p.events[-1].seq,
                                                  p.ended_at, p.finished)])
        log.close()
        live = ExecutionMonitor(EngineConfig(state="memory://"))
        restarted = ExecutionMonitor(EngineConfig(state=path, keep_finished=keep))

        async def both() -> tuple[dict, dict]:
            for p in planned:
                await live.apply(p.events)
            return (await live.metrics(window_s, now=20_000.0, with_resources=False),
                    await restarted.metrics(window_s, now=20_000.0, with_resources=False))

        seen, rebuilt = asyncio.run(both())
        if restarted.log is not None:
            restarted.log.close()
    assert rebuilt["source"] == "monitor + state store" and seen["source"] == "monitor"
    for key in ("window", "executions", "duration_s", "duration_by_sop", "duration_by_mode", "steps", "queue",
                "step_duration_s", "alerts"):
        assert rebuilt[key] == seen[key], key
