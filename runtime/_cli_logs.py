"""``sopflow logs``: query (and follow) the audit log, from the cluster or straight from a state file."""

from __future__ import annotations

import datetime
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from runtime.errors import SopflowError

FOLLOW_POLL_S = 1.0
"""How often ``--follow`` asks for new entries."""
_AGO = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_WHEN_HELP = ("a time: seconds since the epoch, an ISO date/time (2026-11-30 or 2026-11-30T14:05, local "
              "time unless it says otherwise), or an age such as 30m, 2h, 7d")


def parse_when(text: str | None, now: float | None = None) -> float | None:
    """``text`` (epoch seconds, ISO date/time, or an age like ``15m``) as seconds since the epoch.

    Raises:
        click.BadParameter: ``text`` is none of those.
    """
    if text is None:
        return None
    now = time.time() if now is None else now
    ago = _AGO.match(text)
    if ago:
        return now - float(ago.group(1)) * _UNIT_S[ago.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise click.BadParameter(f"{text!r} is not {_WHEN_HELP}") from None


def _stamp(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _reader(state: str | None, address: str | None) -> tuple[Callable[..., list[Any]], Callable[[], None]]:
    """A function answering queries (keywords of ``Engine.logs``), and one to close what it opened."""
    from runtime.audit import LogQuery

    if state:
        from runtime.eventlog import SqliteEventLog

        if not Path(state).is_file():
            raise click.ClickException(f"state file {state} does not exist")
        log = SqliteEventLog(state, readonly=True)
        return (lambda **kw: log.logs(LogQuery.of(**kw))), log.close
    from runtime._cli_exec import _connect

    engine, _ = _connect(address, start_if_missing=False)
    return (lambda **kw: engine.logs(**kw)), (lambda: None)


def register_commands(main: click.Group) -> None:
    from runtime._cli_exec import _ADDRESS_HELP
    from runtime.audit import DEFAULT_LIMIT, LEVELS, LogKind

    @main.command()
    @click.argument("execution", required=False)
    @click.option("--sop", help="Only entries of executions of this SOP.")
    @click.option("--agent", help="Only entries of this agent.")
    @click.option("--step", help="Only entries about this step.")
    @click.option("--status", help="Only entries recording this status (succeeded, failed, retry, cancel ...).")
    @click.option("--kind", type=click.Choice([k.value for k in LogKind]), help="Only entries of this kind.")
    @click.option("--level", type=click.Choice(list(LEVELS), case_sensitive=False),
                  help="Only entries at this level or above.")
    @click.option("--since", help=f"Only entries at or after {_WHEN_HELP}.")
    @click.option("--until", help=f"Only entries before {_WHEN_HELP}.")
    @click.option("--text", help="Only entries whose message contains this text (literal, case-sensitive).")
    @click.option("--limit", type=click.IntRange(min=0), default=DEFAULT_LIMIT, show_default=True,
                  help="Show the newest this many (at most 10000).")
    @click.option("--follow", "-f", is_flag=True, help="Keep printing new entries as they are written.")
    @click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
                  help="json: one JSON object per line.")
    @click.option("--state", type=click.Path(dir_okay=False),
                  help="Read this state file directly (no cluster needed) instead of asking the cluster.")
    @click.option("--address", help=_ADDRESS_HELP)
    def logs(execution: str | None, sop: str | None, agent: str | None, step: str | None, status: str | None,
             kind: str | None, level: str | None, since: str | None, until: str | None, text: str | None,
             limit: int, follow: bool, fmt: str, state: str | None, address: str | None) -> None:
        """Print audit log entries: starts, attempts, decisions, operator actions, handler lines, ends.

        Every filter given must match. Without --follow it prints the newest --limit matching
        entries, oldest first; with --follow it then prints new ones until interrupted (or until
        the execution given ends).
        """
        filters = {"execution": execution, "sop": sop, "agent": agent, "step": step, "status": status,
                   "kind": kind, "level": level.lower() if level else None,
                   "since": parse_when(since), "until": parse_when(until), "text": text}
        try:
            ask, close = _reader(state, address)
        except SopflowError as e:
            raise click.ClickException(str(e)) from None
        try:
            _print_entries(ask, filters, limit, follow, fmt)
        except SopflowError as e:
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            pass
        finally:
            close()


def _print_entries(ask: Callable[..., list[Any]], filters: dict[str, Any], limit: int, follow: bool,
                   fmt: str) -> None:
    from runtime.audit import MAX_LIMIT

    def show(entry: Any) -> None:
        if fmt == "json":
            click.echo(json.dumps(entry.to_dict(), default=repr, separators=(",", ":")))
        else:
            click.echo(f"{_stamp(entry.ts)}  {entry.describe()}")

    found = ask(**filters, limit=limit)
    for entry in found:
        show(entry)
    if not follow:
        return
    # The newest id seen so far is where following starts (ids grow in the order entries are stored).
    last = max((e.id for e in found), default=0)
    if not limit:  # nothing shown: start after the newest entry of all
        last = max((e.id for e in ask(limit=1)), default=0)
    while True:
        new = ask(**filters, after=last, limit=MAX_LIMIT)
        for entry in new:
            show(entry)
            last = entry.id
            if filters["execution"] and entry.kind == "end":
                return
        if not new:
            time.sleep(FOLLOW_POLL_S)
