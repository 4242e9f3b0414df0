"""``sopflow run`` and the commands that follow and control executions on a cluster."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from runtime._console import console
from runtime.errors import ExecutionError
from runtime.status import ExecutionStatus, ExecutionView, StepStatus
from sop.errors import SopflowError, SopValidationError

# Only `run` needs the SOP model, the registry and the live display: they are imported there,
# so `status`, `list` and the other commands over the HTTP API start fast.

_STEP_STYLE = {StepStatus.SUCCEEDED: "green", StepStatus.FAILED: "red", StepStatus.RUNNING: "cyan",
               StepStatus.QUEUED: "blue", StepStatus.RETRYING: "yellow", StepStatus.SKIPPED: "dim",
               StepStatus.UPSTREAM_FAILED: "red",
               StepStatus.CANCELLED: "magenta", StepStatus.PENDING: "white"}
CLI_NAMESPACE = "sopflow"
"""The namespace the CLI's commands use (``runtime.engine.DEFAULT_NAMESPACE``, not imported: it is heavy)."""
class _PriorityType(click.ParamType):
    """``--priority``: a class name or a whole number; anything else is a usage error."""

    name = "priority"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> int | str:
        text = str(value).strip()
        if text in ("critical", "high", "normal", "low"):
            return text
        try:
            return int(text)
        except ValueError:
            self.fail(f"{value!r} is neither critical, high, normal, low nor a whole number", param, ctx)


_PRIORITY = _PriorityType()
_ADDRESS_HELP = "Ray cluster to use (host:port or ray://host:10001); default $RAY_ADDRESS, else this machine's."


def ray_options(verbose: bool) -> dict[str, Any]:
    """``ray.init`` options for the CLI: Ray's own output only with ``--verbose``."""
    if verbose:
        return {"logging_level": logging.INFO, "log_to_driver": True}
    return {"logging_level": logging.ERROR, "log_to_driver": False}


def quiet_raylet_messages() -> None:
    """Keep raylet messages (``(raylet) A worker died...``, ``N PYTHON worker processes have been
    started...``) out of the user's terminal: they go to the ``sopflow.ray`` logger instead.

    Ray prints them from a driver thread through ``ray._private.worker.print_to_stdstream``
    whatever ``log_to_driver`` says; that (private) function is the only place to catch them.
    If a Ray version renames it, the messages simply show again.
    """
    import ray._private.worker as ray_worker

    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is None or getattr(original, "sopflow_quiet", False):
        return

    def to_log(data: dict[str, Any], ignore_prefix: bool = False) -> None:
        if data.get("pid") == "raylet":
            for line in data.get("lines", ()):
                logging.getLogger("sopflow.ray").info("(raylet) %s", line)
            return
        original(data, ignore_prefix)

    to_log.sopflow_quiet = True  # type: ignore[attr-defined]
    ray_worker.print_to_stdstream = to_log


def _stale_recorded_cluster() -> str | None:
    """The address ``ray start`` last recorded on this machine, when nothing answers there any more.

    A cluster stopped without ``ray stop`` (killed, or the machine rebooted) leaves its address
    in Ray's temp directory; connecting to it "auto"-matically would retry for minutes.
    """
    try:
        from ray._private.services import find_bootstrap_address

        recorded = find_bootstrap_address(None)
    except Exception:  # noqa: BLE001 - another Ray version: let Ray find the cluster itself
        return None
    if not recorded:
        return None
    host, _, port = str(recorded).rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1.0):
            return None
    except (OSError, ValueError):
        return str(recorded)


def _connect(address: str | None, *, start_if_missing: bool, working_dir: str | None = None) -> Any:
    """An Engine on the given/running cluster; optionally start a local one for this command.

    ``working_dir`` is shipped as this job's runtime_env: the steps it submits import from it.
    """
    from runtime.engine import Engine
    from runtime.errors import EngineUnavailable, SubmissionError

    address = address or os.environ.get("RAY_ADDRESS")
    ctx = click.get_current_context(silent=True)
    verbose = bool(ctx and (ctx.find_root().obj or {}).get("verbose"))
    quiet = ray_options(verbose)
    if working_dir is not None:
        quiet["runtime_env"] = {"working_dir": os.path.abspath(working_dir)}
    if not verbose:
        quiet_raylet_messages()
    if not address and (stale := _stale_recorded_cluster()):
        # Ray would keep trying a dead GCS for minutes: say so at once, or start a cluster of our own.
        if not start_if_missing:
            raise click.ClickException(
                f"the Ray cluster last started on this machine ({stale}, recorded by `ray start`) is not "
                "running; start one with `ray start --head --dashboard-host 127.0.0.1` or pass --address")
        try:
            return Engine.local(**quiet), True
        except EngineUnavailable as e:
            raise _StartError(str(e)) from None
    try:
        try:
            return Engine.connect(address or "auto", **quiet), False
        except ConnectionError as e:
            if address or not start_if_missing:
                raise click.ClickException(
                    f"no Ray cluster at {address or 'this machine'} ({e}); start one with "
                    "`ray start --head --dashboard-host 127.0.0.1` or run `sopflow run FILE` to use a "
                    "temporary local cluster") from None
        return Engine.local(**quiet), True
    except EngineUnavailable as e:  # a bad or busy state file, actors that cannot start: nothing ran
        raise _StartError(str(e)) from None
    except SubmissionError as e:  # the working dir cannot travel (missing, shadowing, too big)
        raise click.UsageError(str(e)) from None


def _client(address: str | None) -> Any:
    """What a read or control command talks to: sopflow's HTTP API when one answers for this
    cluster (one loopback round trip), else an Engine over a Ray driver connection.

    ``SOPFLOW_API=off`` always takes Ray; ``SOPFLOW_API=URL`` names the API (a forwarded port).
    """
    from runtime._api_client import ApiClient
    from runtime._api_discovery import API_ENV, OFF

    client = ApiClient.discover(CLI_NAMESPACE, address or os.environ.get("RAY_ADDRESS"))
    if client is not None:
        return client
    named = os.environ.get(API_ENV, "").strip()
    if named and named.lower() not in OFF:  # asked for that API: going through Ray instead would surprise
        raise click.ClickException(f"sopflow's API at {named} (${API_ENV}) does not answer; check the port "
                                   f"forward (ssh -L), or unset {API_ENV} to go through Ray")
    engine, _ = _connect(address, start_if_missing=False)
    return engine


class _StartError(click.ClickException):
    """sopflow could not start (e.g. its state file): exit 2, apart from a failed run (exit 1)."""

    exit_code = 2


def _fail(e: Exception) -> None:
    error = click.ClickException(str(e))
    error.exit_code = getattr(e, "exit_code", 1)  # 2: refused before it ran (a step no node can run)
    raise error


def _steps_table(view: ExecutionView) -> Table:
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    table.add_column("step")
    table.add_column("status")
    table.add_column("attempts", justify="right")
    table.add_column("error", overflow="fold")
    reporting = any(step.progress is not None or step.message for step in view.steps.values())
    if reporting:  # steps that call context.report_progress say how far they are
        table.add_column("progress", overflow="fold")
    for sid, step in view.steps.items():
        style = _STEP_STYLE.get(step.status, "white")
        row = [escape(sid), f"[{style}]{step.status.value}[/{style}]", str(step.attempts), escape(step.error or "")]
        if reporting:
            done = "" if step.progress is None else f"{step.progress:.0%} "
            row.append(escape(done + step.message))
        table.add_row(*row)
    return table


def step_summary(view: ExecutionView) -> str:
    """Steps counted by status, e.g. ``2 running, 5 queued, 1 succeeded`` (queued is not running)."""
    counts: dict[StepStatus, int] = {}
    for step in view.steps.values():
        counts[step.status] = counts.get(step.status, 0) + 1
    return ", ".join(f"{counts[status]} {status.value}" for status in StepStatus if counts.get(status))


def _schedule(batch: str | None, not_before: str | None, deadline: str | None,
              window: str | None) -> dict[str, Any] | None:
    """The schedule the batch options make (None: real-time); a bad value is a usage error naming its option."""
    import time

    from runtime.batch import parse_schedule
    from runtime.errors import ScheduleError

    given = {k: v for k, v in (("batch", batch), ("not_before", not_before), ("deadline", deadline),
                               ("window", window)) if v is not None}
    if not given:
        return None
    try:
        parse_schedule(given, time.time())
    except ScheduleError as e:
        option = "--" + (e.field.split(".")[0] or "batch").replace("_", "-")
        raise click.UsageError(f"{option}: {e.detail}") from None
    return given


def _print_view(view: ExecutionView, fmt: str) -> None:
    if fmt == "json":
        click.echo(json.dumps(_view_dict(view), indent=2, default=str))
        return
    out = console()
    out.print(f"[bold]{view.id}[/bold]  {view.sop} {view.version}  [bold]{view.status.value}[/bold]  "
              f"{view.progress:.0%}  {view.elapsed_s:.2f} s  ({escape(step_summary(view))})")
    if view.trace_id:
        out.print(f"trace {view.trace_id}")
    if view.schedule:  # a batch execution: its schedule, and why it waits (runtime/gate.py)
        out.print("batch " + escape(", ".join(f"{k}={v}" for k, v in view.schedule.items())))
    if view.waiting and not view.status.terminal:
        out.print(f"[bold yellow]waiting[/bold yellow] {escape(str(view.waiting.get('reason')))}")
    forecast = forecast_line(view)
    if forecast:
        out.print(forecast)
    for alert in view.alerts:  # raised by the alert rules (runtime/alerts.py)
        out.print(f"[bold red]alert[/bold red] {escape(str(alert.get('rule')))}: {escape(str(alert.get('reason')))}")
    out.print(_steps_table(view))
    if view.agent is not None:
        _print_agent(out, view.agent)


def forecast_line(view: ExecutionView, now: float | None = None) -> str:
    """``eta 14:03:20 UTC (in 35 s) · expected 60 s · queue position 3``: what is known, or ''."""
    import time

    parts = []
    if view.eta is not None:
        left = view.eta - (time.time() if now is None else now)
        when = time.strftime("%H:%M:%S UTC", time.gmtime(view.eta))
        parts.append(f"eta {when} (in {left:.0f} s)" if left >= 0.5 else f"eta {when} (overdue)")
    if view.expected_duration_s is not None:
        parts.append(f"expected {view.expected_duration_s:.3g} s")
    if view.queue_position is not None:
        parts.append(f"queue position {view.queue_position}")
    return " · ".join(parts)


def _print_agent(out: Any, agent: dict[str, Any]) -> None:
    """The agent of an Agent Centric Run: who it is, what it last said, what it spent, what it decided."""
    lost = f", {agent.get('lost')} session(s) lost" if agent.get("lost") else ""
    out.print(f"[bold]agent[/bold] {escape(str(agent.get('agent') or ''))}  model {escape(str(agent.get('model')))}"
              f"  session {agent.get('session')} on {escape(str(agent.get('host') or '?'))}{lost}")
    done = "" if agent.get("progress") is None else f" ({agent['progress']:.0%})"
    out.print(f"  status: {escape(str(agent.get('message') or '(nothing yet)'))}{done}")
    out.print(f"  {agent.get('model_calls', 0)} model calls, {agent.get('tool_calls', 0)} tool calls, "
              f"{agent.get('tokens', 0)} tokens")
    if agent.get("summary"):
        out.print(f"  summary: {escape(str(agent['summary']))}")
    if agent.get("waiting"):
        out.print(f"  [bold yellow]needs a decision[/bold yellow] about {escape(str(agent['waiting']['call']))}: "
                  f"{escape(str(agent['waiting']['reason']))}")
    decisions = agent.get("decisions") or []
    if decisions:
        table = Table("step", "decision", "rationale", box=None, pad_edge=False, header_style="bold",
                      title="decisions", title_justify="left")
        table.columns[2].overflow = "fold"
        for d in decisions:
            table.add_row(escape(str(d.get("step") or "-")), escape(str(d.get("decision"))),
                          escape(str(d.get("rationale"))))
        out.print(table)


def _view_dict(view: ExecutionView) -> dict[str, Any]:
    return {"id": view.id, "sop": view.sop, "version": view.version, "mode": view.mode,
            "status": view.status.value, "progress": view.progress,
            "submitted_at": view.submitted_at, "ended_at": view.ended_at,
            "steps": {k: {"status": s.status.value, "attempts": s.attempts, "error": s.error,
                          "classification": s.classification,
                          **({"progress": s.progress, "message": s.message} if s.progress is not None or s.message
                             else {})} for k, s in view.steps.items()},
            "outputs": view.outputs, "trace_id": view.trace_id, "alerts": view.alerts, "agent": view.agent,
            "expected_duration_s": view.expected_duration_s, "eta": view.eta, "queue_position": view.queue_position,
            **({"schedule": view.schedule, "waiting": view.waiting} if view.schedule or view.waiting else {})}


def _parse_inputs(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise click.BadParameter(f"expected NAME=VALUE, got {pair!r}", param_hint="--input")
        out[key.strip()] = value
    return out


def _follow(engine: Any, execution_id: str) -> ExecutionView:
    """Live progress bar and step table until the execution ends."""
    from rich.live import Live
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    out = console()
    progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                        TimeElapsedColumn(), console=out, transient=False)
    view = engine.status(execution_id)
    bar = progress.add_task(f"{view.sop} {execution_id}", total=1.0)
    if not out.is_terminal:
        for event in engine.events(execution_id):
            out.print(escape(event.describe()))
        return engine.wait(execution_id)
    with Live(console=out, refresh_per_second=8) as live:
        for _event in engine.events(execution_id):
            view = engine.status(execution_id)
            progress.update(bar, completed=view.progress,
                            description=f"{view.sop} {execution_id} ({escape(step_summary(view))})")
            grid = Table.grid()
            grid.add_row(progress)
            grid.add_row(_steps_table(view))
            live.update(grid)
    return engine.wait(execution_id)


def register_commands(main: click.Group) -> None:
    @main.command()
    @click.argument("file", type=click.Path(dir_okay=False))
    @click.option("--input", "-i", "inputs", multiple=True, metavar="NAME=VALUE", help="An SOP input (repeatable).")
    @click.option("--address", help=_ADDRESS_HELP)
    @click.option("--mode", type=click.Choice(["auto", "system_design", "agent_centric"]), default=None)
    @click.option("--priority", type=_PRIORITY, default=None, metavar="CLASS|N",
                  help="critical, high, normal or low (classes share a busy cluster by weight), or a number "
                       "within normal (higher first). Default: the SOP's priority, else normal.")
    @click.option("--idempotency-key", default=None, help="Submitting the same key again returns the first run.")
    @click.option("--detach", is_flag=True, help="Print the execution id and return; it keeps running.")
    @click.option("--timeout", type=float, default=None, help="Give up waiting after this many seconds.")
    @click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
    @click.option("--working-dir", default=None, metavar="DIR",
                  help="Ship DIR to the cluster: the steps import `python:` handlers from it.")
    @click.option("--batch", "batch_name", default=None, metavar="NAME",
                  help="Run it as batch work in the named batch (`sopflow batch report NAME`).")
    @click.option("--not-before", default=None, metavar="ISO", help="Batch: start no earlier than this "
                  "(ISO 8601 with a timezone, e.g. 2026-12-01T22:00:00+01:00).")
    @click.option("--deadline", default=None, metavar="ISO", help="Batch: end by this (ISO 8601 with a timezone).")
    @click.option("--window", default=None, metavar="HH:MM-HH:MM[ TZ]",
                  help="Batch: run inside this daily window, e.g. '22:00-06:00 Europe/Paris'.")
    def run(file: str, inputs: tuple[str, ...], address: str | None, mode: str | None, priority: int | str | None,
            idempotency_key: str | None, detach: bool, timeout: float | None, fmt: str,
            working_dir: str | None, batch_name: str | None, not_before: str | None, deadline: str | None,
            window: str | None) -> None:
        """Validate an SOP, run it on Ray with live progress, print the result.

        Exits 0 only when the execution completed. With --batch, --not-before, --deadline or
        --window it is batch work: it starts inside its window and may be preempted by real-time work.
        """
        from runtime._cli_sop import print_problems
        from runtime.registry import Registry
        from sop import check_file

        if working_dir is not None:
            from runtime.code_dirs import check_runtime_env
            from runtime.errors import SubmissionError

            try:
                check_runtime_env({"working_dir": working_dir})
            except SubmissionError as e:
                raise click.UsageError(str(e)) from None
            sys.path.insert(0, os.path.abspath(working_dir))  # this client sees what the workers will see
        schedule = _schedule(batch_name, not_before, deadline, window)  # refused before a cluster starts
        report = check_file(file, handlers=Registry())
        if not report.ok:
            print_problems(report, console(stderr=True))
            sys.exit(1)
        if mode is not None and report.sop is not None:  # refuse a mode that does not fit before a cluster starts
            from runtime.compare import mode_problem

            if (problem := mode_problem(report.sop, mode)) is not None:
                raise click.UsageError(f"cannot run {file} in mode {mode}: {problem}")
        engine, temporary = _connect(address, start_if_missing=True, working_dir=working_dir)
        if detach and temporary:
            raise click.ClickException(
                "--detach needs a cluster that outlives this command; start one with "
                "`ray start --head --dashboard-host 127.0.0.1` (or pass --address)")
        try:
            execution_id = engine.submit(file, _parse_inputs(inputs), mode=mode, priority=priority,
                                         idempotency_key=idempotency_key, inputs_from_text=True, schedule=schedule)
        except SopValidationError as e:
            _fail(e)
        except SopflowError as e:
            _fail(e)
        if detach:
            click.echo(execution_id)
            return
        err = console(stderr=True)
        err.print(f"submitted [bold]{execution_id}[/bold]" + (" on a temporary local Ray cluster" if temporary else ""))
        try:
            view = engine.wait(execution_id, timeout) if fmt == "json" else _follow(engine, execution_id)
        except ExecutionError as e:
            _fail(e)
        _print_view(view, fmt)
        if fmt == "text" and view.outputs is not None:
            console().print_json(json.dumps((view.outputs or {}).get("outputs", {}), default=str))
        sys.exit(0 if view.status.value == "completed" else 1)

    @main.command()
    @click.argument("execution_id")
    @click.option("--address", help=_ADDRESS_HELP)
    @click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
    def status(execution_id: str, address: str | None, fmt: str) -> None:
        """Show an execution's status, progress and steps."""
        engine = _client(address)
        try:
            _print_view(engine.status(execution_id), fmt)
        except SopflowError as e:
            _fail(e)

    @main.command()
    @click.argument("execution_id")
    @click.option("--address", help=_ADDRESS_HELP)
    @click.option("--timeout", type=float, default=None)
    @click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
    def wait(execution_id: str, address: str | None, timeout: float | None, fmt: str) -> None:
        """Wait for an execution to end; exit 0 only if it completed."""
        engine = _client(address)
        try:
            view = engine.wait(execution_id, timeout)
        except SopflowError as e:
            _fail(e)
        _print_view(view, fmt)
        sys.exit(0 if view.status.value == "completed" else 1)

    @main.command()
    @click.argument("execution_id")
    @click.option("--address", help=_ADDRESS_HELP)
    def result(execution_id: str, address: str | None) -> None:
        """Print a completed execution's outputs as JSON."""
        engine = _client(address)
        try:
            click.echo(json.dumps(engine.result(execution_id), indent=2, default=str))
        except SopflowError as e:
            _fail(e)

    @main.command()
    @click.argument("execution_id")
    @click.option("--force", is_flag=True, help="Also kill steps that are running.")
    @click.option("--address", help=_ADDRESS_HELP)
    def cancel(execution_id: str, force: bool, address: str | None) -> None:
        """Cancel an execution: start nothing new (and with --force, kill running steps)."""
        engine = _client(address)
        try:
            view = engine.cancel(execution_id, force=force)
        except SopflowError as e:
            _fail(e)
        click.echo(f"{execution_id}: {view.status.value}")

    for verb in ("pause", "resume"):
        def control(execution_id: str, address: str | None, _verb: str = verb) -> None:
            engine = _client(address)
            try:
                view = getattr(engine, _verb)(execution_id)
            except SopflowError as e:
                _fail(e)
            click.echo(f"{execution_id}: {view.status.value}")

        control.__doc__ = {"pause": "Pause an execution: running steps finish, nothing new starts.",
                           "resume": "Resume a paused execution."}[verb]
        main.command(name=verb)(click.option("--address", help=_ADDRESS_HELP)(
            click.argument("execution_id")(control)))

    @main.command(name="list")
    @click.option("--status", "status_", default=None, help="Only executions with this status.",
                  type=click.Choice([status.value for status in ExecutionStatus]))
    @click.option("--sop", default=None, help="Only executions of this SOP.")
    @click.option("--since", type=float, default=None, help="Only those submitted in the last N seconds.")
    @click.option("--address", help=_ADDRESS_HELP)
    @click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
    def list_(status_: str | None, sop: str | None, since: float | None, address: str | None, fmt: str) -> None:
        """List executions, newest first."""
        engine = _client(address)
        try:
            views = engine.list(status=status_, sop=sop, since=time.time() - since if since else None)
        except SopflowError as e:
            _fail(e)
        if fmt == "json":
            click.echo(json.dumps([_view_dict(v) for v in views], indent=2, default=str))
            return
        table = Table("id", "sop", "status", "progress", "elapsed", box=None)
        for v in views:
            table.add_row(v.id, v.sop, v.status.value, f"{v.progress:.0%}", f"{v.elapsed_s:.1f} s")
        console().print(table)
