"""The Prometheus metrics (runtime.prometheus): bounded labels, counts that match the events, and the
Grafana dashboard and scrape config committed under deploy/, which cannot drift from the names."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime import events as ev
from runtime.events import new_event
from runtime.grafana import DASHBOARD_PATH, dashboard, render
from runtime.prometheus import ALL_METRICS, BY_NAME, METRICS, OTHER, MetricsFold
from runtime.state import ExecutionState, apply
from tests.runtime.gen_histories import CLASSES, Planned, executions

ROOT = Path(__file__).resolve().parents[2]


class Recorder:
    def __init__(self) -> None:
        self.updates: list[tuple[str, str, float, dict[str, str]]] = []

    def __call__(self, name: str, op: str, value: float, labels: dict[str, str]) -> None:
        spec = BY_NAME[name]  # only metrics sopflow exports
        assert set(labels) == set(spec.labels), (name, labels)
        assert op == {"counter": "inc", "gauge": "set", "histogram": "observe"}[spec.kind]
        self.updates.append((name, op, value, labels))

    def total(self, name: str, **match: str) -> float:
        return sum(v for n, _, v, labels in self.updates
                   if n == name and all(labels.get(k) == x for k, x in match.items()))

    def last(self, name: str) -> float | None:
        values = [v for n, _, v, _ in self.updates if n == name]
        return values[-1] if values else None


def _feed(fold_: MetricsFold, planned: list[Planned]) -> None:
    states: dict[str, ExecutionState] = {}
    running = 0
    # interleave executions by event time, as the monitor sees them
    for event in sorted((e for p in planned for e in p.events), key=lambda e: (e.ts, e.execution_id, e.seq)):
        state = states.setdefault(event.execution_id, ExecutionState(event.execution_id))
        apply(state, event)
        running += {"execution_submitted": 1, "execution_finished": -1}.get(event.kind.value, 0)
        fold_.record(state, event, running)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(executions())
def test_the_metrics_count_what_the_events_say(planned: list[Planned]) -> None:
    sink = Recorder()
    _feed(MetricsFold(sink), planned)
    assert sink.total("sopflow_executions_submitted_total") == len(planned)
    assert sink.total("sopflow_executions_total") == sum(1 for p in planned if p.finished)
    for status in ("completed", "failed", "cancelled"):
        assert sink.total("sopflow_executions_total", status=status) == sum(1 for p in planned if p.status == status)
    assert sink.total("sopflow_step_retries_total") == sum(p.retries for p in planned)
    for cls in CLASSES:
        assert sink.total("sopflow_step_failures_total", classification=cls) == sum(
            p.failures.get(cls, 0) for p in planned)
    assert sink.total("sopflow_step_attempts_total") == sum(p.attempts for p in planned)
    observed_waits = [v for n, _, v, _ in sink.updates if n == "sopflow_queue_wait_seconds"]
    assert len(observed_waits) == sum(len(p.waits) for p in planned)
    if planned:
        assert sink.last("sopflow_executions_running") == sum(1 for p in planned if not p.finished)
        assert (sink.last("sopflow_steps_queued") or 0) == sum(p.queued_now for p in planned if not p.finished)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(alphabet="abcxyz_.0", min_size=1, max_size=8), min_size=1, max_size=300),
       st.integers(1, 20))
def test_sop_labels_are_capped_and_no_execution_id_is_ever_a_label(sops: list[str], cap: int) -> None:
    sink = Recorder()
    fold_ = MetricsFold(sink, sop_labels=cap)
    for i, sop in enumerate(sops):
        eid = f"exe-{i:012x}-deadbeef"
        state = ExecutionState(eid)
        for seq, (payload, step) in enumerate([(ev.Submitted(sop=sop, mode="system_design", steps=["a"]), None),
                                               (ev.StepQueued(), "a"), (ev.StepStarted(), "a"),
                                               (ev.StepFailed(classification="transient", final=True), "a"),
                                               (ev.Alerted(rule="overdue"), None),
                                               (ev.Finished(status="failed"), None)], start=1):
            event = new_event(eid, seq, payload, step, 1 if step else None, ts=1000.0 + seq)
            apply(state, event)
            fold_.record(state, event, 0)
    labels = [labels for _, _, _, labels in sink.updates]
    assert len({lab["sop"] for lab in labels if "sop" in lab} - {OTHER}) <= cap
    assert all("exe-" not in value for lab in labels for value in lab.values())
    distinct = list(dict.fromkeys(sops))
    first = set(distinct[:cap])
    for _, _, _, lab in sink.updates:
        if "sop" in lab and lab["sop"] != OTHER:
            assert lab["sop"] in first  # the first SOPs seen keep their names; later ones fold into other


def test_step_labels_are_capped_too() -> None:
    from runtime.prometheus import STEP_LABELS

    sink = Recorder()
    fold_ = MetricsFold(sink)
    state = ExecutionState("exe-000000000001-00000001")
    steps = [f"s{i}" for i in range(STEP_LABELS + 10)]
    planned: list[tuple[ev.Payload, str | None]] = [(ev.Submitted(sop="wide", steps=steps), None)]
    for sid in steps:
        planned += [(ev.StepStarted(), sid), (ev.StepSucceeded(), sid)]
    for seq, (payload, step) in enumerate(planned, start=1):
        event = new_event(state.id, seq, payload, step, 1 if step else None, ts=float(seq))
        apply(state, event)
        fold_.record(state, event, 1)
    step_labels = {lab["step"] for n, _, _, lab in sink.updates if n == "sopflow_step_seconds"}
    assert len(step_labels) == STEP_LABELS + 1 and OTHER in step_labels


# -- the dashboard and the scrape config ----------------------------------------------------------------

_NAME = re.compile(r"\bray_sopflow_\w+")


def _queries(doc: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for panel in doc["panels"] for t in panel["targets"]]
    return exprs + [v["definition"] for v in doc["templating"]["list"] if v.get("definition")]


def test_every_dashboard_query_refers_to_an_exported_metric_and_every_metric_is_shown() -> None:
    exported = {name for spec in ALL_METRICS for name in spec.series_names()}
    used = set()
    for expr in _queries(dashboard()):
        names = _NAME.findall(expr)
        assert names, f"a query names no sopflow metric: {expr}"
        assert set(names) <= exported, f"{expr} names {set(names) - exported}, which sopflow does not export"
        used.update(names)
    shown = {spec.name for spec in ALL_METRICS if set(spec.series_names()) & used}
    assert shown == set(BY_NAME), f"not on the dashboard: {set(BY_NAME) - shown}"


def test_the_committed_dashboard_is_what_the_code_generates() -> None:
    assert DASHBOARD_PATH.is_file(), "run `python -m runtime.grafana --write` and commit the file"
    assert DASHBOARD_PATH.read_text() == render(), "the dashboard is stale: run `python -m runtime.grafana --write`"
    doc = json.loads(DASHBOARD_PATH.read_text())
    assert doc["uid"] and len({p["id"] for p in doc["panels"]}) == len(doc["panels"])


def test_the_scrape_config_reads_rays_service_discovery_file() -> None:
    from ray._private.ray_constants import PROMETHEUS_SERVICE_DISCOVERY_FILE

    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "ray"
    assert job["file_sd_configs"][0]["files"] == [f"/tmp/ray/{PROMETHEUS_SERVICE_DISCOVERY_FILE}"]


def test_the_readme_documents_every_metric_with_its_labels() -> None:
    readme = (ROOT / "README.md").read_text()
    for spec in ALL_METRICS:
        line = next((ln for ln in readme.splitlines() if ln.startswith(f"| `{spec.exported}` |")), None)
        assert line is not None, f"README does not document {spec.exported}"
        assert line.split("|")[2].strip() == spec.kind, line
        for label in spec.labels:
            assert label in line.split("|")[3], f"README's line for {spec.exported} does not name its label {label}"
