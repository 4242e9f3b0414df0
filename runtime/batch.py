"""Batch executions as pure policy: their windows, a packing plan, and who is preempted.

A batch execution is one submitted with a ``schedule`` (see :func:`parse_schedule`):
it may start no earlier than ``not_before``, should end by ``deadline``, and may be
limited to a daily ``window`` in a timezone (``"22:00-06:00 Europe/Paris"``). A
real-time execution (no schedule) never waits for any of this.

:func:`plan` spreads the batch executions that wait over their windows so that the
peak of their summed demand stays low while each one still ends inside its window;
:func:`choose_victim` names the batch execution to preempt when real-time work
cannot get capacity. Nothing here reads a clock: callers pass ``now``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time as dtime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from runtime.errors import ScheduleError

FIELDS = ("batch", "not_before", "deadline", "window")
"""What a schedule may say; any of them (at least one) makes the execution a batch execution."""
MAX_BATCH_NAME = 100
MAX_PLANNED = 64
"""At most this many waiting executions are packed at a time (those with the earliest latest start:
packing is cubic in their number, ~40 ms for 64). The others are held to their latest start, which
still ends inside their window; they are packed as the first ones start and leave the plan."""
CLASS_RANK = {"low": 0, "normal": 1, "high": 2, "critical": 3}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
_WINDOW = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*(?:\s(\S+))?\s*$")


@dataclass(frozen=True, slots=True)
class DailyWindow:
    """A window that opens every day at ``start`` and closes at ``end`` (the next day when ``end <= start``).

    Attributes:
        start: Opening time ``HH:MM`` in ``tz``.
        end: Closing time ``HH:MM`` in ``tz``.
        tz: An IANA timezone name (``UTC``, ``Europe/Paris``).
    """

    start: str
    end: str
    tz: str = "UTC"

    def occurrence(self, t: float) -> tuple[float, float]:
        """The first opening ``(opens, closes)`` of the window that closes after ``t`` (epoch seconds)."""
        zone = ZoneInfo(self.tz)
        day = datetime.fromtimestamp(t, zone).date() - timedelta(days=1)
        for _ in range(4):  # yesterday's window may still be open; one of the next three days opens
            opens, closes = self._on(day, zone)
            if closes > t:
                return opens, closes
            day += timedelta(days=1)
        raise AssertionError("a daily window always opens within three days")  # pragma: no cover

    def _on(self, day: date, zone: ZoneInfo) -> tuple[float, float]:
        start, end = _hhmm(self.start), _hhmm(self.end)
        opens = datetime.combine(day, start, zone).timestamp()
        closes = datetime.combine(day + timedelta(days=1) if end <= start else day, end, zone).timestamp()
        return opens, closes


@dataclass(frozen=True, slots=True)
class Schedule:
    """A batch execution's schedule, validated (times as epoch seconds).

    Attributes:
        batch: The named batch it belongs to (one report per batch), if any.
        not_before: It starts no earlier than this.
        deadline: It should have ended by this.
        window: It runs inside this daily window.
    """

    batch: str | None = None
    not_before: float | None = None
    deadline: float | None = None
    window: DailyWindow | None = None

    def to_data(self) -> dict[str, Any]:
        """As the ``execution_submitted`` event records it (only what was given)."""
        data: dict[str, Any] = {"batch": self.batch, "not_before": self.not_before, "deadline": self.deadline,
                                "window": None if self.window is None else
                                {"start": self.window.start, "end": self.window.end, "tz": self.window.tz}}
        return {k: v for k, v in data.items() if v is not None}

    @classmethod
    def from_data(cls, data: Mapping[str, Any] | None) -> Schedule:
        """The inverse of :meth:`to_data` (trusted data, read back from the log)."""
        data = data or {}
        window = data.get("window")
        return cls(data.get("batch"), data.get("not_before"), data.get("deadline"),
                   DailyWindow(**window) if window else None)

    def earliest(self, now: float, duration: float = 0.0) -> float:
        """The earliest time at or after ``now`` that it may start."""
        t = max(now, self.not_before or now)
        if self.window is not None:
            opens, closes = self.window.occurrence(t)
            t = max(t, opens)
            if t + duration > closes and closes - opens >= duration:  # it would not fit in what is left
                t = self.window.occurrence(closes)[0]
        return t

    def latest(self, earliest: float, duration: float) -> float:
        """The latest start that still ends inside its window and by its deadline (never before ``earliest``)."""
        latest = math.inf
        if self.deadline is not None:
            latest = self.deadline - duration
        if self.window is not None:
            latest = min(latest, self.window.occurrence(earliest)[1] - duration)
        return earliest if latest == math.inf else max(earliest, latest)

    def open_at(self, t: float) -> bool:
        """Whether it may start at ``t`` (after not_before and inside its daily window)."""
        if self.not_before is not None and t < self.not_before:
            return False
        return self.window is None or self.window.occurrence(t)[0] <= t


def parse_schedule(raw: Mapping[str, Any] | None, now: float) -> Schedule | None:
    """Validate a submission's schedule; ``None`` (or no schedule) means real-time.

    Times may be ``datetime`` objects with a timezone, ISO 8601 strings with an offset
    (``2026-12-01T22:00:00+01:00``, ``...Z``) or epoch seconds. A time without a timezone
    is refused rather than guessed. ``window`` is ``"HH:MM-HH:MM [TZ]"`` or
    ``{"start", "end", "tz"}``.

    Raises:
        ScheduleError: naming the field, what was wrong and what to give instead.
    """
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ScheduleError("", f"must be a mapping with any of {', '.join(FIELDS)}, got {type(raw).__name__}")
    unknown = sorted(str(k) for k in raw if k not in FIELDS)
    if unknown:
        raise ScheduleError(unknown[0], f"unknown field; a schedule takes {', '.join(FIELDS)}")
    if not any(raw.get(k) is not None for k in FIELDS):
        raise ScheduleError("", f"is empty; give at least one of {', '.join(FIELDS)} (or no schedule: real-time)")
    batch = raw.get("batch")
    if batch is not None:
        check_batch_name(batch)
    not_before, deadline = _when("not_before", raw.get("not_before")), _when("deadline", raw.get("deadline"))
    if deadline is not None and deadline <= now:
        raise ScheduleError("deadline", f"{_iso(deadline)} is already past (now {_iso(now)}); give a later one")
    if deadline is not None and not_before is not None and deadline <= not_before:
        raise ScheduleError("deadline", f"{_iso(deadline)} is not after not_before {_iso(not_before)}")
    window = _window(raw.get("window"))
    return Schedule(batch, not_before, deadline, window)


def check_batch_name(name: Any) -> str:
    """Raise unless ``name`` could be a batch's name (it goes into a store key and in front of users).

    Raises:
        ScheduleError: naming the rule.
    """
    if not isinstance(name, str) or len(name) > MAX_BATCH_NAME or not NAME_PATTERN.match(name):
        raise ScheduleError("batch", f"must be a name of letters, digits, '_', '.', ':' or '-' (at most "
                                     f"{MAX_BATCH_NAME} characters), got {str(name)[:MAX_BATCH_NAME]!r}")
    return name


def _when(field: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise ScheduleError(field, f"must be a time, got {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value < 0:
            raise ScheduleError(field, f"must be epoch seconds >= 0, got {value!r}")
        return float(value)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise ScheduleError(field, f"{value[:60]!r} is not an ISO 8601 time; give e.g. "
                                       "'2026-12-01T22:00:00+01:00'") from None
    if not isinstance(value, datetime):
        raise ScheduleError(field, f"must be a datetime, an ISO 8601 string or epoch seconds, "
                                   f"got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ScheduleError(field, f"{value.isoformat()} has no timezone; add one (e.g. "
                                   f"'{value.isoformat()}+00:00' or 'Z') so it is not guessed")
    return value.timestamp()


def _window(value: Any) -> DailyWindow | None:
    if value is None:
        return None
    if isinstance(value, str):
        m = _WINDOW.match(value)
        if m is None:
            raise ScheduleError("window", f"{value[:60]!r} is not 'HH:MM-HH:MM [TZ]' "
                                          "(e.g. '22:00-06:00 Europe/Paris')")
        start, end, tz = f"{m[1]}:{m[2]}", f"{m[3]}:{m[4]}", m[5] or "UTC"
    elif isinstance(value, Mapping):
        extra = sorted(set(value) - {"start", "end", "tz"})
        if extra:
            raise ScheduleError(f"window.{extra[0]}", "unknown field; a window takes start, end, tz")
        start, end, tz = value.get("start"), value.get("end"), value.get("tz", "UTC")
    else:
        raise ScheduleError("window", f"must be 'HH:MM-HH:MM [TZ]' or a mapping, got {type(value).__name__}")
    for name, hhmm in (("start", start), ("end", end)):
        if not isinstance(hhmm, str) or _hhmm_or_none(hhmm) is None:
            raise ScheduleError(f"window.{name}", f"must be a time of day 'HH:MM' (00:00-23:59), got {hhmm!r}")
    if not isinstance(tz, str) or not tz or len(tz) > 64:
        raise ScheduleError("window.tz", f"must be an IANA timezone name like 'Europe/Paris', got {tz!r}")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError("window.tz", f"unknown timezone {tz!r}; give an IANA name like 'Europe/Paris'") from None
    start_t, end_t = _hhmm(start), _hhmm(end)
    if start_t == end_t:
        raise ScheduleError("window", f"opens and closes at {start}: it would never be open")
    return DailyWindow(start_t.strftime("%H:%M"), end_t.strftime("%H:%M"), tz)


def _hhmm_or_none(text: str) -> dtime | None:
    m = re.fullmatch(r"(\d{1,2}):(\d{2})", text.strip())
    if m is None or int(m[1]) > 23 or int(m[2]) > 59:
        return None
    return dtime(int(m[1]), int(m[2]))


def _hhmm(text: str) -> dtime:
    found = _hhmm_or_none(text)
    assert found is not None
    return found


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds")


# -- packing ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Job:
    """A waiting batch execution as the packing sees it.

    Attributes:
        id: The execution.
        earliest: Its earliest start.
        latest: Its latest start that still ends inside its window (``>= earliest``).
        duration: Its expected duration in seconds.
        demand: What it uses while it runs (CPUs).
    """

    id: str
    earliest: float
    latest: float
    duration: float
    demand: float = 1.0


def plan(jobs: Iterable[Job], running: Iterable[tuple[float, float]] = ()) -> dict[str, float]:
    """A start time for every job: each inside ``[earliest, latest]``, the peak of summed demand kept low.

    Jobs are placed tightest first (earliest latest start); beyond :data:`MAX_PLANNED` of them,
    a job is planned at its latest start. Each planned job goes to the start, among
    its earliest, its latest and the ends of jobs placed before it, where the highest
    demand over its run is lowest (ties: earliest). Should that come out above simply
    starting every job as early as it may, that plan is returned instead, so packing
    never raises the peak.

    Args:
        jobs: The waiting batch executions.
        running: ``(ends, demand)`` of what runs already (from now on).

    Returns:
        Execution id -> planned start.
    """
    jobs = sorted(jobs, key=lambda j: (j.latest, j.earliest, j.id))
    planned, rest = jobs[:MAX_PLANNED], jobs[MAX_PLANNED:]
    start = min((j.earliest for j in jobs), default=0.0)
    base = [(start, end, d) for end, d in running if end > start]
    placed = list(base)
    packed: dict[str, float] = {}
    for job in planned:
        candidates = {job.earliest, job.latest}
        candidates.update(e for _, e, _ in placed if job.earliest < e < job.latest)
        best = min(candidates, key=lambda s: (_peak_over(placed, s, s + job.duration) + job.demand, s))
        packed[job.id] = best
        placed.append((best, best + job.duration, job.demand))
    eager = {j.id: j.earliest for j in planned}
    by_id = {j.id: j for j in planned}
    if peak(base, packed, by_id) > peak(base, eager, by_id):
        packed = eager
    packed.update((j.id, j.latest) for j in rest)
    return packed


def peak(base: Iterable[tuple[float, float, float]], starts: Mapping[str, float],
         jobs: Mapping[str, Job]) -> float:
    """The highest summed demand at any moment when each job starts at ``starts[id]``."""
    intervals = [*base, *((s, s + jobs[i].duration, jobs[i].demand) for i, s in starts.items())]
    return _peak_over(intervals, -math.inf, math.inf)


def _peak_over(intervals: list[tuple[float, float, float]], lo: float, hi: float) -> float:
    """The highest summed demand of ``intervals`` (half-open ``[start, end)``) at any moment in ``[lo, hi)``."""
    # The sum is a step function that only rises where an interval starts: look there (and at lo).
    points = {s for s, _, _ in intervals if lo <= s < hi}
    if lo > -math.inf:
        points.add(lo)
    best = 0.0
    for t in points:
        best = max(best, sum(d for s, e, d in intervals if s <= t < e))
    return best


# -- preemption -------------------------------------------------------------------------------


def choose_victim(holding: Mapping[str, Any], exclude: Iterable[str] = ()) -> str | None:
    """The batch execution to preempt: the lowest priority class, then the lowest priority, then the youngest.

    Args:
        holding: Execution id -> what it holds (``batch``, ``priority_class``, ``priority``, ``since``,
            as :class:`runtime.admission.Held`).
        exclude: Executions that may not be preempted (agent runs, ones already being preempted).

    Returns:
        Its id, or None when no batch execution holds anything.
    """
    skip = set(exclude)
    batch = [(i, h) for i, h in holding.items() if h.batch and i not in skip and h.count > 0]
    if not batch:
        return None
    # The youngest loses the least work; the id makes the choice deterministic on a tie.
    return min(batch, key=lambda ih: (CLASS_RANK.get(ih[1].priority_class, 1), ih[1].priority,
                                      -ih[1].since, ih[0]))[0]
