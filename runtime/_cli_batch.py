"""``sopflow batch report NAME``: the one report of a named batch (see :mod:`runtime.batch_report`)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from runtime._console import console

_ADDRESS_HELP = "Ray cluster to use (host:port or ray://host:10001); default $RAY_ADDRESS, else this machine's."


def register_commands(main: click.Group) -> None:
    @main.group()
    def batch() -> None:
        """Named batches of executions (submitted with `sopflow run --batch NAME`)."""

    @batch.command()
    @click.argument("name")
    @click.option("--address", help=_ADDRESS_HELP)
    @click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON.")
    def report(name: str, address: str | None, as_json: bool) -> None:
        """Counts, durations, failures and every execution's result of batch NAME.

        Exits 0 when every execution of it completed, 1 when one did not (or some still run).
        """
        from runtime._cli_exec import _client
        from runtime.batch_report import check_name
        from runtime.errors import ScheduleError
        from sop.errors import SopflowError

        try:
            check_name(name)
        except ScheduleError as e:
            raise click.UsageError(f"NAME: {e.detail}") from None
        engine = _client(address)  # the HTTP API when one answers, else Ray
        try:
            found = engine.batch_report(name)
        except SopflowError as e:
            raise click.ClickException(str(e)) from None
        if as_json:
            click.echo(json.dumps(found, indent=2, default=str))
        else:
            print_report(found)
        done = found["finished"] and found["succeeded"] == found["executions"]
        sys.exit(0 if done else 1)


def print_report(found: dict[str, Any]) -> None:
    """The report as text: a summary line, durations, failures, then one line per execution."""
    out = console()
    state = "finished" if found["finished"] else "still running"
    counts = ", ".join(f"{n} {status}" for status, n in found["counts"].items())
    out.print(f"[bold]batch {escape(found['batch'])}[/bold]  {found['executions']} executions, {state}  ({counts})"
              + (f", {found['preemptions']} preemption(s)" if found["preemptions"] else ""))
    for label, key in (("duration", "duration_s"), ("waited to start", "waited_s")):
        s = found.get(key)
        if s:
            out.print(f"{label}: p50 {s['p50']:.3f} s, p95 {s['p95']:.3f} s, max {s['max']:.3f} s, "
                      f"mean {s['mean']:.3f} s")
    table = Table("execution", "status", "duration", "result", box=None, pad_edge=False, header_style="bold")
    table.columns[3].overflow = "fold"
    for r in found["results"]:
        what = "; ".join(f"{k}: {v}" for k, v in r["errors"].items()) or json.dumps(r["outputs"], default=str)
        duration = "-" if r["duration_s"] is None else f"{r['duration_s']:.3f} s"
        table.add_row(r["id"], r["status"], duration, escape(what[:300]))
    out.print(table)
