"""Metrics and alerts on the real Ray cluster: the same numbers after the monitor restarts, the
Prometheus endpoint of Ray's agent serving sopflow's metrics, and an overdue execution's alert."""

from __future__ import annotations

import re
import urllib.request
import uuid
from pathlib import Path

import pytest

from runtime._cli_metrics import metrics_of_state_file
from runtime.prometheus import ALL_METRICS
from tests.conftest import STATE_FILE
from tests.runtime.test_engine_failures import webhook_server  # noqa: F401 - a fixture used below
from tests.sop_builders import H, sop_text, wait_for

pytestmark = pytest.mark.ray

COMPARED = ("executions", "duration_s", "duration_by_sop", "duration_by_mode", "steps", "queue",
            "step_duration_s", "alerts")


def _runs(engine, tmp_path: Path, name: str) -> list[str]:
    good = sop_text(f"steps:\n  - id: a\n    uses: {H}:echo\n    with: {{value: 1}}\n", name=name)
    flaky = sop_text(f"""
steps:
  - id: f
    uses: {H}:flaky
    with: {{fail_times: 1, counter_dir: "{tmp_path / 'flaky'}"}}
""", name=name)
    bad = sop_text(f"steps:\n  - id: b\n    uses: {H}:outcome\n    with: {{ok: false, name: b}}\n", name=name)
    ids = [engine.submit(text) for text in (good, flaky, bad)]
    for eid in ids:
        engine.wait(eid, 120)
    engine.flush()
    return ids


def _monitor_pid(engine) -> int | None:
    """The monitor actor's process id; None while Ray restarts it."""
    import ray

    try:
        return ray.get(engine._conn.actors.monitor.__ray_call__.remote(lambda self: __import__("os").getpid()),
                       timeout=30)
    except (ray.exceptions.ActorUnavailableError, ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        return None


def test_metrics_are_the_same_after_the_monitor_restarts(engine, tmp_path: Path) -> None:
    import ray

    name = f"restart-{uuid.uuid4().hex[:8]}"
    _runs(engine, tmp_path, name)
    before = engine.metrics("1h", sop=name)
    assert before["executions"]["total"] == 3 and before["executions"]["completed"] == 2
    assert before["steps"]["retries"] == 1 and before["steps"]["errors"]["permanent"] == 1
    assert before["source"] == "monitor + state store"
    assert "ray.cluster_resources" in before["resources"]["source"]
    assert before["resources"]["cluster_cpu_total"] >= 1 and before["resources"]["node_memory_total_bytes"] > 0
    old_pid = _monitor_pid(engine)
    assert old_pid is not None
    ray.kill(engine._conn.actors.monitor, no_restart=False)  # Ray restarts it (max_restarts=-1)
    wait_for(lambda: _monitor_pid(engine) not in (None, old_pid), 120)  # a new process: its view is from the log
    after = wait_for(lambda: _answer_after_restart(engine, name), 120)
    for key in COMPARED:
        assert after[key] == before[key], key
    from_file = metrics_of_state_file(str(STATE_FILE), "1h", name, None)  # no cluster involved
    for key in COMPARED:
        assert from_file[key] == before[key], key


def _answer_after_restart(engine, name: str) -> dict | None:
    from runtime.errors import EngineUnavailable

    try:
        return engine.metrics("1h", sop=name)
    except EngineUnavailable:
        return None


def _scrape() -> str:
    import ray

    texts = []
    for node in ray.nodes():
        port = node.get("MetricsExportPort")
        if node.get("Alive") and port:
            with urllib.request.urlopen(f"http://{node['NodeManagerAddress']}:{port}/metrics", timeout=10) as r:
                texts.append(r.read().decode())
    return "\n".join(texts)


def test_rays_prometheus_endpoint_serves_sopflow_metrics_with_bounded_labels(engine, tmp_path: Path) -> None:
    name = f"prom-{uuid.uuid4().hex[:8]}"
    _runs(engine, tmp_path, name)
    wanted = ("ray_sopflow_executions_submitted_total", "ray_sopflow_executions_total",
              "ray_sopflow_execution_seconds_bucket", "ray_sopflow_step_attempts_total",
              "ray_sopflow_step_failures_total", "ray_sopflow_step_retries_total", "ray_sopflow_step_seconds_bucket",
              "ray_sopflow_executions_running",
              'ray_sopflow_node_resources{')  # the ResourceManager's utilisation per node
    # Ray's agent exports what the actor reported every few seconds: wait for this test's SOP to show up
    failed = re.compile(rf'ray_sopflow_executions_total\{{(?=[^}}]*sop="{name}")(?=[^}}]*status="failed")[^}}]*\}} 1')

    def scraped() -> str | None:
        text = _scrape()
        return text if failed.search(text) and all(w in text for w in wanted) else None

    text = wait_for(scraped, 120)
    exported = {s.exported for s in ALL_METRICS}
    for line in text.splitlines():
        if not line.startswith("ray_sopflow_"):
            continue
        metric = re.match(r"(ray_sopflow_\w+?)(_bucket|_sum|_count)?[{ ]", line)
        assert metric and metric.group(1) in exported, line
        assert "exe-" not in line, f"an execution id is a label: {line}"


def test_an_overdue_execution_raises_an_alert_on_ray(engine, tmp_path: Path, webhook_server) -> None:
    """The coordinator actor's timer (every 5 s by default) finds the execution past 2 x 0.5 s; the alert
    reaches a webhook escalation hook."""
    url, received = webhook_server
    name = f"overdue-{uuid.uuid4().hex[:8]}"
    gate = tmp_path / "gate"
    engine.add_escalation_hook(name, url=url)
    try:
        eid = _overdue(engine, name, gate)
        engine.drain_hooks()
    finally:
        engine.remove_escalation_hook(name)
    mine = [r["body"] for r in received if r["body"].get("sop") == name]
    assert len(mine) == 1 and mine[0]["notification"] == "alert" and mine[0]["rule"] == "overdue"
    assert mine[0]["execution_id"] == eid


def _overdue(engine, name: str, gate: Path) -> str:
    eid = engine.submit(sop_text(f"""
expected_duration_s: 0.5
steps:
  - id: hold
    uses: {H}:wait_for_file
    with: {{path: "{gate}", timeout_s: 90}}
""", name=name))
    alerted = wait_for(lambda: [e for e in engine.history(eid) if e.kind.value == "alert_raised"], 60)
    assert len(alerted) == 1 and alerted[0].data["rule"] == "overdue" and alerted[0].step is None
    assert alerted[0].data["threshold_s"] == pytest.approx(1.0) and alerted[0].data["elapsed_s"] >= 1.0
    status = wait_for(lambda: next((s for s in [engine.status(eid)] if s.alerting), None), 30)
    assert status.status.value == "running" and status.alerts[0]["rule"] == "overdue"
    gate.write_text("go")
    final = engine.wait(eid, 120)
    assert final.status.value == "completed" and final.alerting
    assert [e.kind.value for e in engine.history(eid)].count("alert_raised") == 1  # once, however many checks
    assert engine.metrics("1h", sop=name)["alerts"] == 1
    return eid
