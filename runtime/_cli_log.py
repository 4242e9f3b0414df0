"""Commands over the event log: ``history``, ``export``, ``import``, ``replay``, ``recover``, ``decide``.

``history``, ``export``, ``import`` and ``replay`` also work without a cluster:
give ``--state PATH`` to read the SQLite file directly, and ``replay`` takes an
exported ``.json`` file as well as an execution id.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from runtime._cli_exec import _ADDRESS_HELP, _client, _connect, _fail, _print_view
from runtime.events import Event
from sop import SopflowError

_STATE_HELP = "Read this state file directly (no cluster needed) instead of asking the cluster."


def _open_state(path: str, *, readonly: bool = True) -> Any:
    from runtime.eventlog import SqliteEventLog

    if readonly and not Path(path).is_file():
        raise click.ClickException(f"state file {path} does not exist")
    return SqliteEventLog(path, readonly=readonly)


def _events(execution_id: str, state: str | None, address: str | None) -> list[Event]:
    if state:
        log = _open_state(state)
        try:
            events = log.read(execution_id)
        finally:
            log.close()
        if not events:
            raise click.ClickException(f"no execution {execution_id!r} in {state}")
        return events
    return _client(address).history(execution_id)


def _export(execution_id: str, state: str | None, address: str | None) -> dict[str, Any]:
    """The execution's exported history (with its artifacts), from a state file or the cluster."""
    from runtime.history import export_history

    if state:
        log = _open_state(state)
        try:
            return export_history(log, execution_id)
        finally:
            log.close()
    engine, _ = _connect(address, start_if_missing=False)
    return engine.export(execution_id)


def register_commands(main: click.Group) -> None:
    @main.command()
    @click.argument("execution_id")
    @click.option("--state", type=click.Path(dir_okay=False), help=_STATE_HELP)
    @click.option("--address", help=_ADDRESS_HELP)
    @click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
    def history(execution_id: str, state: str | None, address: str | None, fmt: str) -> None:
        """Print an execution's events from the durable log, in order."""
        try:
            events = _events(execution_id, state, address)
        except SopflowError as e:
            _fail(e)
        if fmt == "json":
            for event in events:
                click.echo(json.dumps(event.to_dict(), default=repr, separators=(",", ":")))
            return
        for event in events:
            click.echo(f"{_clock(event.ts)}  {event.describe()}")

    @main.command()
    @click.argument("execution_id")
    @click.option("--state", type=click.Path(dir_okay=False), help=_STATE_HELP)
    @click.option("--address", help=_ADDRESS_HELP)
    def export(execution_id: str, state: str | None, address: str | None) -> None:
        """Write an execution's full history as JSON to stdout (`sopflow export ID > run.json`)."""
        from runtime.history import dumps_history

        try:
            click.echo(dumps_history(_export(execution_id, state, address)))
        except SopflowError as e:
            _fail(e)

    @main.command(name="import")
    @click.argument("file", type=click.Path(exists=True, dir_okay=False))
    @click.option("--replace", is_flag=True, help="Overwrite an execution with the same id.")
    @click.option("--state", type=click.Path(dir_okay=False), help="Write into this state file directly.")
    @click.option("--address", help=_ADDRESS_HELP)
    def import_(file: str, replace: bool, state: str | None, address: str | None) -> None:
        """Store an exported history (from `sopflow export`) here; prints its execution id."""
        from runtime.history import import_history, read_history_file

        try:
            doc = read_history_file(file)
            if state:
                log = _open_state(state, readonly=False)
                try:
                    execution_id = import_history(log, doc, replace=replace, require_finished=True)
                finally:
                    log.close()
            else:
                engine, _ = _connect(address, start_if_missing=False)
                execution_id = engine.import_history(doc, replace=replace)
        except SopflowError as e:
            _fail(Exception(f"{file}: {e}"))  # the field path in the message is a path inside this file
        click.echo(execution_id)

    @main.command()
    @click.argument("execution")
    @click.option("--from", "from_step", default=None, metavar="STEP",
                  help="Run this step and everything downstream of it again; earlier steps use the log.")
    @click.option("--state", type=click.Path(dir_okay=False), help=_STATE_HELP)
    @click.option("--address", help=_ADDRESS_HELP)
    @click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
    def replay(execution: str, from_step: str | None, state: str | None, address: str | None,
               fmt: str) -> None:
        """Replay a finished execution (an id, or an exported .json file) and report any divergence.

        Exits 0 when the replay matches the recording, 1 when it diverged, 2 when it could not run.
        """
        from runtime.replay import replay as run_replay
        from runtime.history import artifacts_from_doc, events_from_doc, read_history_file

        try:
            artifacts = {}
            if Path(execution).suffix == ".json":
                doc = read_history_file(execution)
                events, artifacts = events_from_doc(doc), artifacts_from_doc(doc)
                if state:
                    raise click.UsageError("give an exported .json file or --state, not both")
            else:  # the events, and the big outputs (artifacts) a step run again may read
                doc = _export(execution, state, address)
                events, artifacts = events_from_doc(doc), artifacts_from_doc(doc)
            report = run_replay(events, from_step, artifacts=artifacts)
        except SopflowError as e:
            raise _ReplayError(str(e)) from None
        if fmt == "json":
            click.echo(json.dumps(report.to_dict(), indent=1, default=repr))
        else:
            click.echo(report.render())
        sys.exit(0 if report.deterministic else 1)

    @main.command()
    @click.option("--address", help=_ADDRESS_HELP)
    def recover(address: str | None) -> None:
        """Resume every unfinished execution in the state file, and say what was resumed.

        Without a running cluster this starts a temporary local one and follows the
        resumed executions until they end.
        """
        engine, temporary = _connect(address, start_if_missing=True)
        try:
            done = engine.recover()
        except SopflowError as e:
            _fail(e)
        info = engine.info()
        click.echo(f"state {info['state']}: {done.get('executions', 0)} execution(s) resumed, "
                   f"{done.get('redispatched', 0)} attempt(s) dispatched again, "
                   f"{done.get('awaiting_decision', 0)} step(s) awaiting a decision, "
                   f"{done.get('retries', 0)} retry(ies) rescheduled")
        for execution_id, why in (done.get("failed") or {}).items():
            click.echo(f"  could not resume {execution_id}: {why}", err=True)
        problems = done.get("store_problems") or []
        if problems:
            click.echo(f"warning: the state file is inconsistent ({len(problems)} problem(s)); "
                       f"run `sopflow check --state {info['state']}`:", err=True)
            for problem in problems:
                click.echo(f"  {problem}", err=True)
        if temporary:
            for view in engine.list():
                if not view.status.terminal and view.status.value != "needs_decision":
                    end = engine.wait(view.id)
                    click.echo(f"{view.id}: {end.status.value}")

    @main.command()
    @click.argument("execution_id")
    @click.argument("step")
    @click.option("--rerun", "decision", flag_value="rerun", help="Run the step again.")
    @click.option("--succeed", "decision", flag_value="succeed", help="Mark it succeeded (see --output).")
    @click.option("--fail", "decision", flag_value="fail", help="Mark it failed.")
    @click.option("--skip", "decision", flag_value="skip", help="Mark it skipped.")
    @click.option("--output", default=None, help="JSON output for --succeed.")
    @click.option("--reason", default="", help="Recorded with the decision.")
    @click.option("--address", help=_ADDRESS_HELP)
    def decide(execution_id: str, step: str, decision: str | None, output: str | None, reason: str,
               address: str | None) -> None:
        """Settle a step whose interrupted attempt waits for an operator (status needs_decision)."""
        if decision is None:
            raise click.UsageError("say what to do: --rerun, --succeed, --fail or --skip")
        try:
            value = json.loads(output) if output is not None else None
        except json.JSONDecodeError as e:
            raise click.UsageError(f"--output must be JSON: {e.msg} at column {e.colno}") from None
        engine = _client(address)
        try:
            view = engine.decide(execution_id, step, decision, reason=reason, output=value)
        except SopflowError as e:
            _fail(e)
        _print_view(view, "text")


class _ReplayError(click.ClickException):
    """A replay that could not run: exit 2, so scripts tell it from a divergence (exit 1)."""

    exit_code = 2


def _clock(ts: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(ts).strftime("%H:%M:%S.%f")[:-3]

