"""``sopflow metrics``: execution metrics over a time window, from the cluster or a state file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from sop.errors import SopflowError

_MODES = ("system_design", "agent_centric")


def metrics_of_state_file(path: str, window: str | None, sop: str | None, mode: str | None) -> dict[str, Any]:
    """The metrics of a state file, read directly (no cluster; no resource figures)."""
    from runtime.eventlog import SqliteEventLog
    from runtime.metrics import compute, from_log, parse_window

    if not Path(path).is_file():
        raise click.ClickException(f"state file {path} does not exist")
    window_s = parse_window(window)
    log = SqliteEventLog(path, readonly=True)
    try:
        found = from_log(log, window_s=window_s, sop=sop, mode=mode)
    finally:
        log.close()
    return compute(found, window_s=window_s, sop=sop, mode=mode,
                   resources={"source": "not measured: read from a state file, not a running cluster"},
                   source=f"state file {path}")


def _fmt(value: Any, unit: str = "s") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}{' ' + unit if unit else ''}"
    return str(value)


def _stats_line(s: dict[str, Any]) -> str:
    return (f"n={s['count']}  mean {_fmt(s['mean'])}  p95 {_fmt(s['p95'])}  p99 {_fmt(s['p99'])}  "
            f"max {_fmt(s['max'])}")


def print_text(m: dict[str, Any]) -> None:
    w, e, st, q = m["window"], m["executions"], m["steps"], m["queue"]
    span = ("all executions" if w["seconds"] is None
            else f"executions submitted in the last {w['seconds']:g} s, and unfinished ones")
    filters = "".join(f", {k} {w[k]}" for k in ("sop", "mode") if w.get(k))
    click.echo(f"{span}{filters}  ({m['source']})")
    rate = "-" if e["success_rate"] is None else f"{e['success_rate']:.1%}"
    click.echo(f"  total {e['total']}  running {e['running']}  completed {e['completed']}  "
               f"partially_completed {e['partially_completed']}  failed {e['failed']}  "
               f"cancelled {e['cancelled']}  success rate {rate}")
    click.echo(f"duration      {_stats_line(m['duration_s'])}")
    for key, label in (("duration_by_sop", "sop"), ("duration_by_mode", "mode")):
        for name, s in m[key].items():
            click.echo(f"  {label} {name}: {_stats_line(s)}")
    rates = "  ".join(f"{cls} {n} ({st['error_rate'][cls]:.1%})" for cls, n in st["errors"].items())
    click.echo(f"step attempts {st['attempts']}  failed {st['failed']}  retries {st['retries']}")
    click.echo(f"  errors by class: {rates}")
    click.echo(f"queue depth   {q['depth']}  wait {_stats_line(q['wait_s'])}")
    for sop, steps in m["step_duration_s"].items():
        for step, s in steps.items():
            click.echo(f"  step {sop}/{step}: {_stats_line(s)}")
    click.echo(f"alerts        {m['alerts']}")
    res = m["resources"]
    shown = "  ".join(f"{k} {_fmt(v, '')}" for k, v in res.items() if k != "source")
    click.echo(f"resources     {shown or '-'}  ({res.get('source', 'not measured')})")


def register_commands(main: click.Group) -> None:
    from runtime._cli_exec import _ADDRESS_HELP, _client, _fail

    @main.command()
    @click.option("--window", default="1h", show_default=True,
                  help="Executions submitted in this window (90, 30m, 1h, 7d, all) plus unfinished ones.")
    @click.option("--sop", default=None, help="Only executions of this SOP.")
    @click.option("--mode", default=None, type=click.Choice(_MODES), help="Only executions run in this mode.")
    @click.option("--state", type=click.Path(dir_okay=False),
                  help="Read this state file directly (no cluster needed) instead of asking the cluster.")
    @click.option("--address", help=_ADDRESS_HELP)
    @click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
    def metrics(window: str, sop: str | None, mode: str | None, state: str | None, address: str | None,
                fmt: str) -> None:
        """Execution metrics: counts, success rate, p95/p99 durations, errors by class, queue, resources."""
        try:
            if state:
                found = metrics_of_state_file(state, window, sop, mode)
            else:
                found = _client(address).metrics(window, sop=sop, mode=mode)
        except SopflowError as e:
            _fail(e)
        if fmt == "json":
            click.echo(json.dumps(found, indent=2, default=str))
        else:
            print_text(found)
