"""Commands over the state file itself: ``sopflow backup`` and ``sopflow check``.

Both read the SQLite file directly (``--state``, default ``$SOPFLOW_STATE`` or
``~/.sopflow/state.db``) and work while an engine runs on it.
"""

from __future__ import annotations

import sys

import click

from runtime.config import default_state_path
from runtime.errors import StateStoreError

_STATE_HELP = "The state file (default: $SOPFLOW_STATE, else ~/.sopflow/state.db)."


class _CheckError(click.ClickException):
    """The check could not run at all: exit 2, apart from problems found (exit 1)."""

    exit_code = 2


def register_commands(main: click.Group) -> None:
    @main.command()
    @click.argument("dest", type=click.Path(dir_okay=False))
    @click.option("--state", type=click.Path(dir_okay=False), help=_STATE_HELP)
    @click.option("--force", is_flag=True, help="Overwrite DEST if it exists.")
    def backup(dest: str, state: str | None, force: bool) -> None:
        """Copy the state file to DEST, consistently, even while an engine writes it."""
        from pathlib import Path

        from runtime._store_check import backup as copy

        source = state or default_state_path()
        if Path(dest).exists() and not force:
            raise click.ClickException(f"{dest} exists; give --force to overwrite it")
        try:
            counts = copy(source, dest)
        except StateStoreError as e:
            raise click.ClickException(str(e)) from None
        click.echo(f"backed up {source} to {dest}: {counts['executions']} execution(s), "
                   f"{counts['events']} event(s)")

    @main.command()
    @click.option("--state", type=click.Path(dir_okay=False), help=_STATE_HELP)
    @click.option("--quick", is_flag=True, help="Skip SQLite's page-by-page integrity check.")
    def check(state: str | None, quick: bool) -> None:
        """Check the state file: SQLite integrity, each execution's events against its state row.

        Exits 0 when clean, 1 when problems were found (each listed), 2 when it could not check.
        """
        from runtime.eventlog import SqliteEventLog

        path = state or default_state_path()
        try:
            log = SqliteEventLog(path, readonly=True)
            try:
                found, stats = log.check(deep=not quick), log.stats()
            finally:
                log.close()
        except StateStoreError as e:
            raise _CheckError(str(e)) from None
        if not found:
            click.echo(f"{path}: ok ({stats['executions']} execution(s), {stats['events']} event(s))")
            return
        click.echo(f"{path}: {len(found)} problem(s) found", err=True)
        for problem in found:
            click.echo(f"  {problem}")
        click.echo("Restore a backup (`sopflow backup`) taken before the damage, or export the "
                   "executions you need (`sopflow export --state`).", err=True)
        sys.exit(1)
