"""Cron schedule arithmetic for triggers: next fire times, missed fires, catch-up and fire keys.

Pure functions over epoch seconds (no clock, no I/O), so the trigger actor, its tests and
the hypothesis properties share them. Cron fields are read in the trigger's IANA time zone
by ``cronsim`` (which follows Debian cron across daylight-saving changes); every result is
converted back to epoch seconds, where time only moves forward: a wall-clock time that does
not exist (skipped by a spring-forward change) is never returned, and one that exists twice
(fall-back) fires once.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from zoneinfo import ZoneInfo

from cronsim import CronSim

_SEARCH_LIMIT = 10_000
"""Candidates looked at for one next fire: a schedule that matches nothing real (``0 0 30 2 *``,
30 February) would otherwise loop forever; cronsim refuses most of those at parse time."""


def _zone(timezone: str) -> dt.tzinfo:
    return dt.timezone.utc if timezone in ("UTC", "Etc/UTC") else ZoneInfo(timezone)


def _real(when: dt.datetime) -> bool:
    """Whether the aware local time exists (a spring-forward gap's times do not)."""
    back = when.astimezone(dt.timezone.utc).astimezone(when.tzinfo)
    return back.replace(tzinfo=None) == when.replace(tzinfo=None)


def fires_after(expr: str, timezone: str, after: float) -> Iterator[float]:
    """Every fire time strictly after ``after`` (epoch seconds), in increasing order.

    Raises:
        ValueError: the schedule or time zone is invalid (validation refuses those first).
    """
    zone = _zone(timezone)
    start = dt.datetime.fromtimestamp(after, zone)
    last, misses = after, 0
    for candidate in CronSim(expr, start):
        t = candidate.timestamp()
        if t <= last or not _real(candidate):  # a repeated or non-existent wall-clock time
            misses += 1
            if misses > _SEARCH_LIMIT:
                return
            continue
        misses = 0
        last = t
        yield t


def next_fire(expr: str, timezone: str, after: float) -> float | None:
    """The first fire time strictly after ``after``, or None if the schedule never fires."""
    return next(fires_after(expr, timezone, after), None)


def due(expr: str, timezone: str, next_at: float, now: float, limit: int) -> tuple[list[float], float | None]:
    """The fire times in ``[next_at, now]`` (at most the latest ``limit``) and the first one after ``now``.

    ``next_at`` is the first fire not yet handled (kept in the state store). Returns
    ``(due_times, following)``; ``due_times`` is empty when ``next_at > now``.
    """
    if next_at > now:
        return [], next_at
    times = [next_at]
    following = None
    for t in fires_after(expr, timezone, next_at):
        if t > now:
            following = t
            break
        times.append(t)
        if len(times) > limit:  # keep a window, not every minute of a month of downtime
            del times[0]
    return times, following


def plan(due_times: list[float], now: float, policy: str, grace_s: float, limit: int) -> list[float]:
    """Which due fire times start an execution under the ``catch_up`` policy.

    A fire is *on time* when ``now`` is at most ``grace_s`` after it (the actor was up);
    older ones were missed (sopflow was down). ``skip`` keeps on-time fires only; ``once``
    turns everything due into one fire (the latest); ``all`` keeps every due fire, up to
    the latest ``limit``.
    """
    if not due_times:
        return []
    if policy == "skip":
        return [t for t in due_times if now - t <= grace_s][-limit:]
    if policy == "once":
        return [due_times[-1]]
    if policy == "all":
        return list(due_times[-limit:])
    raise ValueError(f"catch_up must be skip, once or all, got {policy!r}")


def iso(t: float, timezone: str = "UTC") -> str:
    """Epoch seconds as ISO 8601 in ``timezone`` (``2026-12-01T02:00:00+01:00``)."""
    return dt.datetime.fromtimestamp(t, _zone(timezone)).isoformat()


def fire_key(trigger_id: str, fire_time: float) -> str:
    """The idempotency key of a cron fire: ``trigger:<sop>/<name>:<UTC fire time>``.

    Deterministic, so a fire delivered again after a crash starts no second execution.
    """
    stamp = dt.datetime.fromtimestamp(fire_time, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"trigger:{trigger_id}:{stamp}"


def event_key(trigger_id: str, key: str) -> str:
    """The idempotency key of an event fire with the emitter's ``key`` (one per trigger it fires)."""
    return f"trigger:{trigger_id}:event:{key}"
