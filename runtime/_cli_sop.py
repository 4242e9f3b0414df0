"""``sopflow validate``, ``graph`` and ``schema``: answers about SOP files, without Ray."""

from __future__ import annotations

import json
import sys

import click
from rich.console import Console
from rich.markup import escape

from runtime._console import console
from runtime.registry import Registry
from sop import Sop, ValidationReport, check_file
from sop.report import RENDERERS


def print_problems(report: ValidationReport, out: Console) -> None:
    for p in report.problems:
        colour = "red" if p.severity == "error" else "yellow"
        where = f"[bold]{escape(p.location)}[/bold]"
        path = f" [cyan]{escape(p.path)}[/cyan]:" if p.path else ""
        hint = f"\n    [green]hint:[/green] {escape(p.suggestion)}" if p.suggestion else ""
        out.print(f"{where}:{path} [{colour}]{p.severity}[/{colour}] {escape(p.message)}{hint}")


def summary(report: ValidationReport) -> str:
    sop, graph = report.sop, report.graph
    assert sop is not None and graph is not None
    critical = graph.critical_path({s.id: s.expected_duration_s for s in sop.steps})
    return (f"{report.file}: valid: SOP {sop.sop} {sop.version}, {len(sop.steps)} steps in "
            f"{len(graph.stages())} stages, mode {report.mode.value if report.mode else '?'} "
            f"({report.mode_reason}); critical path {' -> '.join(critical.steps)}")


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              help="text for people, json for machines.")
@click.option("--mode", type=click.Choice(["system_design", "agent_centric", "auto"]), default=None,
              help="Check that each SOP fits this mode, as submitting it with this mode would, "
              "instead of the mode the file declares.")
def validate(files: tuple[str, ...], fmt: str, mode: str | None) -> None:
    """Check SOP files and report every problem; exit 1 if any file is invalid."""
    registry = Registry()
    reports = [check_file(f, handlers=registry, mode=mode) for f in files]
    if fmt == "json":
        payload = [{"file": r.file, "valid": r.ok,
                    "mode": r.mode.value if r.mode else None,
                    "problems": [p.to_dict() for p in r.problems]} for r in reports]
        json.dump(payload if len(payload) > 1 else payload[0], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        out = console()
        for r in reports:
            print_problems(r, out)
            if r.ok:
                out.print(f"[green]✓[/green] {escape(summary(r))}")
            else:
                n = sum(p.severity == "error" for p in r.problems)
                out.print(f"[red]✗[/red] {escape(r.file)}: {n} problem{'s' * (n != 1)}")
    sys.exit(0 if all(r.ok for r in reports) else 1)


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(sorted(RENDERERS)), default="text",
              help="text (stages and critical path), mermaid or dot.")
def graph(file: str, fmt: str) -> None:
    """Draw an SOP's dependency graph: stages, conditions and the critical path."""
    report = check_file(file, handlers=Registry())
    if not report.ok:
        print_problems(report, console(stderr=True))
        sys.exit(1)
    assert report.sop is not None and report.graph is not None
    click.echo(RENDERERS[fmt](report.sop, report.graph))


@click.command()
def schema() -> None:
    """Print the JSON Schema of the SOP format (for editor autocompletion)."""
    doc = Sop.model_json_schema(by_alias=True)
    doc["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    doc["title"] = "sopflow SOP"
    json.dump(doc, sys.stdout, indent=2)
    sys.stdout.write("\n")
