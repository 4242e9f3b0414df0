"""The Grafana dashboard of sopflow's Prometheus metrics, generated from :data:`runtime.prometheus.METRICS`.

``python -m runtime.grafana`` prints it; ``python -m runtime.grafana --write``
rewrites the committed copy (``deploy/grafana/sopflow-dashboard.json``), which a
test keeps equal to what this module generates. Every query names only metrics
the monitor exports, so the dashboard cannot drift from the metric names.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from runtime.prometheus import BY_NAME

DASHBOARD_PATH = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "sopflow-dashboard.json"
"""Where the committed dashboard lives in the repository."""
UID = "sopflow-overview"
_SOP = 'sop=~"$sop"'


def m(name: str, suffix: str = "") -> str:
    """The exported (scraped) name of metric ``name`` (a KeyError for a name sopflow does not export)."""
    return BY_NAME[name].exported + suffix


def _rate(name: str, by: str, suffix: str = "") -> str:
    return f"sum by ({by}) (rate({m(name, suffix)}{{{_SOP}}}[$__rate_interval]))"


def _quantile(q: float, name: str, by: str) -> str:
    return (f"histogram_quantile({q}, sum by (le, {by}) "
            f"(rate({m(name, '_bucket')}{{{_SOP}}}[$__rate_interval])))")


PANELS: tuple[tuple[str, str, str, tuple[tuple[str, str], ...]], ...] = (
    # (title, unit, kind, ((expr, legend), ...))
    ("Executions running", "short", "stat", ((f"sum({m('sopflow_executions_running')})", "running"),)),
    ("Steps queued (queue depth)", "short", "stat", ((f"sum({m('sopflow_steps_queued')})", "queued"),)),
    ("Success rate", "percentunit", "stat", (
        (f"sum(rate({m('sopflow_executions_total')}{{{_SOP},status=\"completed\"}}[$__rate_interval])) / "
         f"sum(rate({m('sopflow_executions_total')}{{{_SOP}}}[$__rate_interval]))", "completed / finished"),)),
    ("Alerts raised", "short", "stat", (
        (f"sum(increase({m('sopflow_alerts_total')}{{{_SOP}}}[$__range]))", "alerts"),)),
    ("Executions submitted and finished /s", "ops", "timeseries", (
        (_rate("sopflow_executions_submitted_total", "sop"), "submitted {{sop}}"),
        (_rate("sopflow_executions_total", "sop, status"), "{{status}} {{sop}}"))),
    ("Execution duration p50 / p95 / p99 by SOP", "s", "timeseries", tuple(
        (_quantile(q, "sopflow_execution_seconds", "sop"), f"p{int(q * 100)} {{{{sop}}}}") for q in (0.5, 0.95, 0.99))),
    ("Execution duration p95 by mode", "s", "timeseries", (
        (_quantile(0.95, "sopflow_execution_seconds", "mode"), "p95 {{mode}}"),)),
    ("Mean execution duration by SOP", "s", "timeseries", (
        (f"{_rate('sopflow_execution_seconds', 'sop', '_sum')} / {_rate('sopflow_execution_seconds', 'sop', '_count')}",
         "mean {{sop}}"),)),
    ("Step failures /s by class", "ops", "timeseries", (
        (_rate("sopflow_step_failures_total", "classification"), "{{classification}}"),)),
    ("Step error rate by class", "percentunit", "timeseries", (
        (f"{_rate('sopflow_step_failures_total', 'classification')} / ignoring(classification) group_left "
         f"sum(rate({m('sopflow_step_attempts_total')}{{{_SOP}}}[$__rate_interval]))", "{{classification}}"),)),
    ("Step attempts and retries /s", "ops", "timeseries", (
        (_rate("sopflow_step_attempts_total", "outcome"), "{{outcome}}"),
        (f"sum(rate({m('sopflow_step_retries_total')}{{{_SOP}}}[$__rate_interval]))", "retries"))),
    ("Queue wait p95 by SOP", "s", "timeseries", (
        (_quantile(0.95, "sopflow_queue_wait_seconds", "sop"), "p95 {{sop}}"),)),
    ("Step duration p95 by step", "s", "timeseries", (
        (_quantile(0.95, "sopflow_step_seconds", "sop, step"), "{{sop}}/{{step}}"),)),
    ("Alerts /s by rule", "ops", "timeseries", ((_rate("sopflow_alerts_total", "rule"), "{{rule}}"),)),
    ("CPU per node: total, leased, used", "short", "timeseries", (
        (f"max by (node, kind) ({m('sopflow_node_resources')}{{resource=\"cpu\"}})", "{{kind}} {{node}}"),)),
    ("Memory per node: total, leased, used", "mbytes", "timeseries", (
        (f"max by (node, kind) ({m('sopflow_node_resources')}{{resource=\"memory_mb\"}})", "{{kind}} {{node}}"),)),
    ("MCP circuit breakers (0 closed, 1 half-open, 2 open)", "short", "timeseries", (
        (f"max by (source) ({m('sopflow_mcp_breaker_state')})", "{{source}}"),)),
)
"""The dashboard's panels; Ray's own dashboards (``ray metrics``) show node CPU and memory."""


def _panel(index: int, title: str, unit: str, kind: str, targets: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    width, height = (6, 4) if kind == "stat" else (12, 8)
    per_row = 24 // width
    stats_before = sum(1 for p in PANELS[:index] if p[2] == "stat")
    if kind == "stat":
        x, y = (index % per_row) * width, 0
    else:
        series_index = index - stats_before
        x, y = (series_index % per_row) * width, 4 + (series_index // per_row) * height
    return {
        "id": index + 1, "type": kind, "title": title, "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"x": x, "y": y, "w": width, "h": height},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {} if kind == "timeseries" else {"reduceOptions": {"calcs": ["lastNotNull"]}},
        "targets": [{"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend,
                     "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                    for i, (expr, legend) in enumerate(targets)],
    }


def dashboard() -> dict[str, Any]:
    """The dashboard as Grafana's JSON model (import it, or provision it from a file)."""
    sops = f"label_values({m('sopflow_executions_submitted_total')}, sop)"
    return {
        "uid": UID, "title": "sopflow", "tags": ["sopflow", "ray"], "timezone": "browser",
        "schemaVersion": 39, "version": 1, "editable": True, "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "description": "SOP executions on Ray: generated by `python -m runtime.grafana` from runtime/prometheus.py.",
        "templating": {"list": [
            {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0},
            {"name": "sop", "label": "SOP", "type": "query",
             "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": {"query": sops, "refId": "sops"}, "definition": sops, "refresh": 2,
             "includeAll": True, "multi": True, "allValue": ".*", "current": {}, "hide": 0},
        ]},
        "panels": [_panel(i, *p) for i, p in enumerate(PANELS)],
    }


def render() -> str:
    """The dashboard as the committed file's text."""
    return json.dumps(dashboard(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--write"]:
        DASHBOARD_PATH.parent.mkdir(parents=True, exist_ok=True)
        DASHBOARD_PATH.write_text(render())
        print(DASHBOARD_PATH)
        return 0
    if args:
        print("usage: python -m runtime.grafana [--write]", file=sys.stderr)
        return 2
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
