"""``sopflow deploy|undeploy|emit|triggers``: put SOPs' triggers in place, emit events, operate triggers.

They talk to a running cluster (a trigger on a temporary cluster would vanish with it, so none
is started for them): ``emit`` and ``triggers`` through sopflow's HTTP API when one answers,
like ``status``, else over a Ray driver connection; ``deploy`` and ``undeploy`` always over Ray.
"""

from __future__ import annotations

import json
import time
from typing import Any

import click
from rich.table import Table

from runtime._cli_exec import _ADDRESS_HELP, _client, _connect, _fail
from runtime._console import console
from sop.errors import SopflowError


def _engine(address: str | None) -> Any:
    engine, _ = _connect(address, start_if_missing=False)
    return engine


def _payload(data: str | None) -> Any:
    if data is None:
        return None
    try:
        return json.loads(data)
    except json.JSONDecodeError as e:
        raise click.BadParameter(f"not JSON ({e.msg} at line {e.lineno} column {e.colno}); e.g. "
                                 "--data '{\"path\": \"/in/a.csv\"}'", param_hint="--data") from None


def _when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(t))


def register_commands(main: click.Group) -> None:
    """Add the trigger commands to the ``sopflow`` group."""

    @main.command()
    @click.argument("file", type=click.Path(dir_okay=False))
    @click.option("--address", help=_ADDRESS_HELP)
    def deploy(file: str, address: str | None) -> None:
        """Deploy an SOP: its triggers start executions from now on (a new version replaces the old one's)."""
        engine = _engine(address)
        try:
            ids = engine.deploy(file)
        except SopflowError as e:
            _fail(e)
        click.echo(f"deployed {len(ids)} trigger(s): {', '.join(ids)}")

    @main.command()
    @click.argument("sop")
    @click.option("--address", help=_ADDRESS_HELP)
    def undeploy(sop: str, address: str | None) -> None:
        """Remove the triggers of the SOP named SOP (running executions go on)."""
        engine = _engine(address)
        try:
            ids = engine.undeploy(sop)
        except SopflowError as e:
            _fail(e)
        click.echo(f"removed {len(ids)} trigger(s): {', '.join(ids)}")

    @main.command()
    @click.argument("name")
    @click.option("--data", default=None, help="The event's payload, as JSON.")
    @click.option("--key", default=None, help="Deduplication key: the same key starts one execution per trigger.")
    @click.option("--address", help=_ADDRESS_HELP)
    def emit(name: str, data: str | None, key: str | None, address: str | None) -> None:
        """Emit the event NAME: deployed triggers on it whose filter passes start executions."""
        payload = _payload(data)
        engine = _client(address)
        try:
            result = engine.emit(name, payload, key=key)
        except SopflowError as e:
            _fail(e)
        _echo_fires(result["fired"])
        for miss in result["not_fired"]:
            click.echo(f"{miss['trigger']}: not fired ({miss['reason']})")
        if not result["fired"] and not result["not_fired"]:
            click.echo(f"no deployed trigger listens to event {name!r}")

    @main.group()
    def triggers() -> None:
        """List, pause, resume or fire deployed triggers."""

    @triggers.command(name="list")
    @click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
    @click.option("--address", help=_ADDRESS_HELP)
    def list_(fmt: str, address: str | None) -> None:
        """Every deployed trigger with its schedule or event, next fire and runs."""
        engine = _client(address)
        try:
            rows = engine.triggers()
        except SopflowError as e:
            _fail(e)
        if fmt == "json":
            click.echo(json.dumps(rows, indent=2))
            return
        table = Table("trigger", "on", "next fire", "state", "waiting", "running", "fired", "last execution",
                      box=None)
        for r in rows:
            on = f"cron {r['schedule']} ({r['timezone']})" if r["kind"] == "cron" else f"event {r['event']}"
            table.add_row(r["id"], on, _when(r["next_fire"]), "paused" if r["paused"] else "active",
                          str(r["waiting"]), str(r["running"]), str(r["fired"]), r["last_execution"] or "-")
        console().print(table)

    for verb in ("pause", "resume"):
        def control(name: str, address: str | None, _verb: str = verb) -> None:
            engine = _client(address)
            try:
                view = getattr(engine, f"{_verb}_trigger")(name)
            except SopflowError as e:
                _fail(e)
            click.echo(f"{view['id']}: {'paused' if view['paused'] else 'active'}")

        control.__doc__ = {"pause": "Pause a trigger (<sop>/<name>, or <name> when unique): it fires nothing.",
                           "resume": "Resume a paused trigger (a cron trigger fires next at its next time)."}[verb]
        triggers.command(name=verb)(click.option("--address", help=_ADDRESS_HELP)(
            click.argument("name")(control)))

    @triggers.command()
    @click.argument("name")
    @click.option("--data", default=None, help="A payload, as JSON (what trigger.payload reads).")
    @click.option("--key", default=None, help="Deduplication key for this manual fire.")
    @click.option("--address", help=_ADDRESS_HELP)
    def fire(name: str, data: str | None, key: str | None, address: str | None) -> None:
        """Fire a trigger now, by hand."""
        payload = _payload(data)
        engine = _client(address)
        try:
            result = engine.fire_trigger(name, payload, key=key)
        except SopflowError as e:
            _fail(e)
        _echo_fires([result])


def _echo_fires(fires: list[dict[str, Any]]) -> None:
    for f in fires:
        started = f["execution"] or "waiting for a slot (max_concurrent)"
        click.echo(f"{f['trigger']}: {started}")
