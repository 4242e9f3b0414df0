"""``sopflow suggest FILE``: resources for each step of an SOP from what its runs actually used."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from sop.errors import SopflowError


def suggestions(sop: Any, known: dict[str, Any]) -> dict[str, Any]:
    """The report for ``sop`` (a :class:`sop.model.Sop`) from ``known`` (``Engine.estimates``' answer).

    Every step of the file is in it, in the SOP's order: ``declared`` (its effective ``cpu``,
    ``memory_mb``, ``timeout_s``), ``samples`` (successful attempts measured), and with history the
    ``suggested`` values and the figures they come from; without, ``suggested`` is None.
    """
    steps_known = known.get("steps") or {}
    out: dict[str, Any] = {}
    for step in (*sop.steps, *sop.rollback):
        res = sop.effective_resources(step)
        found = dict(steps_known.get(step.id) or {"samples": 0, "failures": 0})
        entry: dict[str, Any] = {"declared": {"cpu": res.cpu, "memory_mb": res.memory_mb,
                                              "timeout_s": sop.effective_timeout(step)},
                                 "samples": int(found.pop("samples", 0) or 0), "failures": found.pop("failures", 0)}
        if entry["samples"]:
            entry["suggested"] = {k: found.pop(k, None) for k in ("cpu", "memory_mb", "timeout_s")}
            entry.update(found)
        else:
            entry["suggested"] = None
        out[step.id] = entry
    return {"sop": sop.sop, "completed": int(known.get("completed") or 0), "steps": out}


def estimates_of_state_file(path: str, sop: str) -> dict[str, Any]:
    """What a state file's kept estimates say about ``sop`` (rebuilt from its log if it keeps none)."""
    from runtime import estimates as est
    from runtime.eventlog import SqliteEventLog

    if not Path(path).is_file():
        raise click.ClickException(f"state file {path} does not exist")
    log = SqliteEventLog(path, readonly=True)
    try:
        found = est.load(log) or est.rebuild(log)
    finally:
        log.close()
    return {"sop": sop, "completed": found.completed(sop),
            "steps": {step: found.described(sop, step) for step in found.steps_of(sop)}}


def _num(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        value = f"{value:.3g}" if value < 100 else f"{value:.0f}"
    return f"{value}{unit}"


def _declared(value: Any) -> str:
    return "unset" if value is None else _num(value)


def print_text(report: dict[str, Any], source: str) -> None:
    """Two lines per step (fits a narrow terminal): what its history says, then the suggestion."""
    steps = report["steps"]
    if not any(s["samples"] for s in steps.values()):
        click.echo(f"No history for SOP {report['sop']!r} in {source}: no step of it has succeeded yet, so "
                   "there is nothing to suggest. Run it a few times (sopflow run FILE) and ask again.")
        return
    click.echo(f"Suggested resources for SOP {report['sop']!r} from what its runs used "
               f"({report['completed']} completed executions; {source}):")
    for sid, s in steps.items():
        if not s["samples"]:
            failed = f" ({s['failures']} failed attempts)" if s.get("failures") else ""
            click.echo(f"{sid}: no history (no successful attempt yet){failed}; keep its declared resources")
            continue
        got, was = s["suggested"], s["declared"]
        trend = "" if s.get("trend") is None else f", trend {s['trend']:+.0%}"
        click.echo(f"{sid}: {s['samples']} samples, p50 {_num(s.get('p50_s'), ' s')}, p95 {_num(s.get('p95_s'), ' s')}"
                   f"{trend}")
        click.echo(f"  cpu {_num(got['cpu'])} (now {_declared(was['cpu'])})   memory_mb {_num(got['memory_mb'])} "
                   f"(now {_declared(was['memory_mb'])})   timeout_s {_num(got['timeout_s'])} "
                   f"(now {_declared(was['timeout_s'])})")
    click.echo("cpu and memory_mb: p95 of what successful attempts used, plus 25 %; timeout_s: twice the p95 "
               "duration ('-': not measured). Opt in with resources: {learned: true} to reserve them.")


def register_commands(main: click.Group) -> None:
    from runtime._cli_exec import _ADDRESS_HELP, _client, _fail

    @main.command()
    @click.argument("file", type=click.Path(dir_okay=False))
    @click.option("--state", type=click.Path(dir_okay=False),
                  help="Read this state file directly (no cluster needed) instead of asking the cluster.")
    @click.option("--address", help=_ADDRESS_HELP)
    @click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
    def suggest(file: str, state: str | None, address: str | None, as_json: bool) -> None:
        """Recommend cpu, memory_mb and timeout_s per step from what runs of the SOP actually used."""
        from runtime.registry import Registry
        from sop.validate import check_file

        report = check_file(file, handlers=Registry())
        try:
            sop = report.raise_for_problems()
            if state:
                known, source = estimates_of_state_file(state, sop.sop), f"state file {state}"
            else:
                known, source = _client(address).estimates(sop.sop), "the running engine"
        except SopflowError as e:
            _fail(e)
        found = suggestions(sop, known)
        if as_json:
            click.echo(json.dumps({**found, "source": source}, indent=2, default=str))
        else:
            print_text(found, source)
