"""Semantic checks of an SOP's ``triggers:`` (the schema layer checks their shape).

Every message names the trigger (``trigger 'nightly': ...``) and, through the problem's path,
where it is in the file (``triggers[0].cron``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sop._suggest import did_you_mean
from sop.expressions import TRIGGER_ROOTS, ExpressionError, compile_expression, find_references, \
    strip_braces

TRIGGER_FIELDS = ("name", "type", "fire_time", "payload", "event", "key")
"""What ``trigger.<field>`` offers (see :mod:`runtime.triggers`)."""

Report = Callable[..., None]
"""``problem(path, message, *, code, suggestion=None)`` of the validator."""


def cron_problem(expr: str, timezone: str = "UTC") -> str | None:
    """Why ``expr`` read in ``timezone`` is not a usable five-field cron schedule, or None."""
    from cronsim import CronSim, CronSimError

    fields = expr.split()
    if len(fields) != 5:
        return (f"cron {expr!r} has {len(fields)} fields; it needs five: minute hour day-of-month month "
                "day-of-week (e.g. '0 2 * * *' for 02:00 every day)")
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        return f"timezone {timezone!r} is not an IANA time zone name (e.g. 'UTC', 'Europe/Paris')"
    try:
        CronSim(expr, dt.datetime(2000, 1, 1, tzinfo=zone))
    except (CronSimError, ValueError, IndexError) as e:  # cronsim's own checks miss a few malformed fields
        return f"cron {expr!r} does not parse: {e or 'bad field'}"
    return None


def check_triggers(problem: Report, triggers: Any, inputs: dict) -> None:
    """Report every problem of the raw ``triggers`` list (``inputs``: the SOP's declared inputs)."""
    if not isinstance(triggers, list):
        return  # the schema layer reports a wrong type
    seen: dict[str, int] = {}
    for i, trig in enumerate(triggers):
        if not isinstance(trig, dict):
            continue
        name = trig.get("name")
        label = f"trigger {name!r}" if isinstance(name, str) else f"triggers[{i}]"
        if isinstance(name, str):
            if name in seen:
                problem(("triggers", i, "name"), f"{label} is already defined by triggers[{seen[name]}]",
                        code="duplicate-trigger", suggestion="give every trigger a unique name")
            seen.setdefault(name, i)
        cron, zone = trig.get("cron"), trig.get("timezone", "UTC")
        if isinstance(cron, str) and isinstance(zone, str):
            why = cron_problem(cron, zone)
            if why is not None:
                where = "timezone" if why.startswith("timezone") else "cron"
                problem(("triggers", i, where), f"{label}: {why}", code="bad-cron")
        if isinstance(trig.get("filter"), str):
            _expression(problem, ("triggers", i, "filter"), label, strip_braces(trig["filter"]))
        mapped = trig.get("inputs") if isinstance(trig.get("inputs"), dict) else {}
        for key, value in mapped.items():
            path = ("triggers", i, "inputs", key)
            if key not in inputs:
                problem(path, f"{label} sets input {key!r}, which the SOP does not declare under 'inputs'",
                        code="unknown-input", suggestion=did_you_mean(key, inputs))
            _templates(problem, path, label, value)
        for key, spec in inputs.items():
            if (isinstance(spec, dict) and spec.get("required") and spec.get("default") is None
                    and key not in mapped):
                problem(("triggers", i), f"{label} starts executions without the required input {key!r}",
                        code="missing-trigger-input",
                        suggestion=f"map it: inputs: {{{key}: \"${{{{ trigger.payload.{key} }}}}\"}}")


def _templates(problem: Report, path: tuple, label: str, value: Any) -> None:
    if isinstance(value, str):
        for text in find_references(value):
            _expression(problem, path, label, text)
        if value.count("${{") != len(find_references(value)):
            problem(path, f"{label}: '${{{{' is not closed by '}}}}'", code="bad-expression")
    elif isinstance(value, dict):
        for k, v in value.items():
            _templates(problem, path + (k,), label, v)
    elif isinstance(value, list):
        for k, v in enumerate(value):
            _templates(problem, path + (k,), label, v)


def _expression(problem: Report, path: tuple, label: str, text: str) -> None:
    try:
        expr = compile_expression(text, TRIGGER_ROOTS)
    except ExpressionError as e:
        problem(path, f"{label}: {e}", code="bad-expression", suggestion=e.suggestion)
        return
    for ref in expr.references:
        if ref.name is not None and ref.name not in TRIGGER_FIELDS:
            problem(path, f"{label}: trigger has no field {ref.name!r}; it has {', '.join(TRIGGER_FIELDS)}",
                    code="unknown-name", suggestion=did_you_mean(ref.name, TRIGGER_FIELDS))
