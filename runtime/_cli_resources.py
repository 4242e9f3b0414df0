"""``sopflow resources``: per node, the CPU, memory and GPU there are, leased and used by running steps."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from sop.errors import SopflowError


def render(view: dict[str, Any]) -> str:
    """The resources view as a table (one row per node) and a summary line."""
    if not view.get("enabled"):
        return (f"the ResourceManager is off (EngineConfig.resource_manager=False): steps are admitted by run "
                f"slots alone; {view.get('running', 0)} running, {view.get('queued', 0)} queued")
    lines = [f"{'node':<14} {'cpu used/leased/total':>24} {'memory_mb used/leased/total':>30} "
             f"{'gpu used/leased/total':>22}"]
    for node, row in view.get("nodes", {}).items():
        cells = []
        for part, width in (("cpu", 24), ("memory_mb", 30), ("gpu", 22)):
            used, leased, total = (row[k][part] for k in ("used", "leased", "total"))
            cells.append(f"{used:g}/{leased:g}/{total:g}".rjust(width))
        lines.append(f"{node[:14]:<14} " + " ".join(cells))
    lines.append(f"{view.get('running', 0)} step(s) running, {view.get('queued', 0)} queued")
    return "\n".join(lines)


def register_commands(main: click.Group) -> None:
    @main.command()
    @click.option("--address", help="Ray address of the cluster (default: $RAY_ADDRESS, else a local one).")
    @click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
    def resources(address: str | None, fmt: str) -> None:
        """Show per node the CPU, memory and GPU there are, leased to the coordinator and used by steps."""
        from runtime._cli_exec import _client, _fail

        engine = _client(address)  # the HTTP API when one answers, else Ray
        try:
            view = engine.resources()
        except SopflowError as e:
            _fail(e)
        if fmt == "json":
            json.dump(view, sys.stdout, indent=2, default=str)
            sys.stdout.write("\n")
        else:
            click.echo(render(view))
