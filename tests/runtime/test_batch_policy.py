"""Batch policy without an engine: schedules, windows, packing and the preemption victim (properties 37-39)."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest
from hypothesis import given, settings, strategies as st

from runtime.batch import (DailyWindow, Job, Schedule, choose_victim, parse_schedule, peak, plan)
from runtime.errors import ScheduleError, SopflowError

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc).timestamp()


# -- parsing: every bad value is refused, naming its field ---------------------------------------

@pytest.mark.parametrize("raw, field, words", [
    ({"dead_line": "2027-01-01T00:00Z"}, "dead_line", "unknown field"),
    ({}, "", "at least one"),
    ({"batch": "a b"}, "batch", "letters"),
    ({"batch": "x" * 101}, "batch", "at most 100"),
    ({"batch": 7}, "batch", "name"),
    ({"not_before": "tomorrow"}, "not_before", "ISO 8601"),
    ({"not_before": "2026-12-01T22:00"}, "not_before", "no timezone"),
    ({"not_before": datetime(2026, 12, 1)}, "not_before", "no timezone"),
    ({"not_before": -1}, "not_before", ">= 0"),
    ({"not_before": float("nan")}, "not_before", ">= 0"),
    ({"not_before": True}, "not_before", "must be a time"),
    ({"not_before": [1]}, "not_before", "datetime"),
    ({"deadline": "2020-01-01T00:00Z"}, "deadline", "already past"),
    ({"not_before": "2027-01-02T00:00Z", "deadline": "2027-01-01T00:00Z"}, "deadline", "not after"),
    ({"window": "22-06"}, "window", "HH:MM-HH:MM"),
    ({"window": "25:00-06:00"}, "window.start", "00:00-23:59"),
    ({"window": "22:00-22:00"}, "window", "never be open"),
    ({"window": "22:00-06:00 Mars/Olympus"}, "window.tz", "unknown timezone"),
    ({"window": "22:00-06:00 ../../etc/passwd"}, "window.tz", "timezone"),
    ({"window": {"start": "22:00", "end": "06:00", "zone": "UTC"}}, "window.zone", "unknown field"),
    ({"window": 5}, "window", "mapping"),
    ("nightly", "", "mapping"),
])
def test_bad_schedules_are_refused_naming_the_field(raw, field, words):
    with pytest.raises(ScheduleError) as e:
        parse_schedule(raw, NOW)
    assert e.value.field == field and words in str(e.value)
    assert isinstance(e.value, SopflowError) and str(e.value).startswith(f"schedule.{field}")


def test_good_schedules_round_trip_through_their_data():
    sched = parse_schedule({"batch": "nightly", "not_before": "2026-12-01T22:00:00+01:00",
                            "deadline": datetime(2026, 12, 2, 6, tzinfo=timezone.utc),
                            "window": "22:00-06:00 Europe/Paris"}, NOW)
    assert sched.not_before == datetime(2026, 12, 1, 21, tzinfo=timezone.utc).timestamp()
    assert sched.window == DailyWindow("22:00", "06:00", "Europe/Paris")
    assert Schedule.from_data(sched.to_data()) == sched
    assert parse_schedule(None, NOW) is None
    assert parse_schedule({"batch": "b"}, NOW).to_data() == {"batch": "b"}


# -- property 37: batch_window --------------------------------------------------------------------

hhmm = st.builds(lambda h, m: f"{h:02d}:{m:02d}", st.integers(0, 23), st.sampled_from([0, 15, 30, 45]))
zones = st.sampled_from(["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"])


@settings(max_examples=400, deadline=None)
@given(start=hhmm, end=hhmm, tz=zones, offset=st.floats(0, 3 * 86400), nb=st.none() | st.floats(0, 2 * 86400),
       duration=st.floats(0, 3600))
def test_batch_window(start, end, tz, offset, nb, duration):
    """Property 37: for any daily window and not_before, the earliest start lies inside the window, after
    not_before, with no earlier moment that was open (the gate starts it inside its window, not later)."""
    if start == end:
        return
    now = NOW + offset
    sched = Schedule(None, None if nb is None else now + nb, None, DailyWindow(start, end, tz))
    t = sched.earliest(now, duration)
    assert t >= now and (sched.not_before is None or t >= sched.not_before)
    assert sched.open_at(t)
    opens, closes = sched.window.occurrence(t)
    assert opens <= t < closes
    if closes - opens >= duration:
        assert t + duration <= closes + 1e-6  # it fits in the occurrence it starts in
    latest = sched.latest(t, duration)
    assert t <= latest and (latest == t or latest + duration <= closes + 1e-6)


@settings(max_examples=200, deadline=None)
@given(nb=st.floats(-3600, 86400), dl=st.floats(1, 86400), duration=st.floats(0, 7200))
def test_batch_window_deadline(nb, dl, duration):
    """Property 37 (not_before/deadline): it starts no earlier than not_before and its latest start
    still ends by the deadline whenever the window is long enough."""
    sched = Schedule("b", NOW + nb, NOW + max(nb, 0) + dl, None)
    t = sched.earliest(NOW, duration)
    assert t == max(NOW, NOW + nb)
    latest = sched.latest(t, duration)
    if sched.deadline - t >= duration:
        assert latest + duration <= sched.deadline + 1e-6 and latest >= t


# -- property 38: batch_packing ---------------------------------------------------------------------

jobs_st = st.lists(st.builds(lambda e, slack, d, c: (e, slack, d, c), st.floats(0, 1000), st.floats(0, 3000),
                             st.floats(1, 600), st.sampled_from([0.25, 0.5, 1.0, 2.0])), min_size=1, max_size=30)


@settings(max_examples=300, deadline=None)
@given(raw=jobs_st, running=st.lists(st.tuples(st.floats(0, 900), st.sampled_from([0.5, 1.0])), max_size=4))
def test_batch_packing(raw, running):
    """Property 38: for any set of batch executions, each is planned inside its window (it ends by its
    deadline) and the plan's peak demand is never above starting each as early as it may."""
    jobs = {f"e{i}": Job(f"e{i}", e, e + slack, d, c) for i, (e, slack, d, c) in enumerate(raw)}
    starts = plan(jobs.values(), running)
    assert set(starts) == set(jobs)
    for i, s in starts.items():
        job = jobs[i]
        assert job.earliest <= s <= job.latest + 1e-9
        assert s + job.duration <= job.latest + job.duration + 1e-9  # inside the window
    base = [(0.0, end, d) for end, d in running if end > 0]
    eager = {i: j.earliest for i, j in jobs.items()}
    assert peak(base, starts, jobs) <= peak(base, eager, jobs) + 1e-9


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 40), k=st.integers(1, 8), d=st.integers(1, 100))
def test_batch_packing_spreads_a_batch_to_the_lowest_peak(n, k, d):
    """n identical executions whose window fits k runs one after another: the peak is ceil(n / k)."""
    jobs = {f"e{i}": Job(f"e{i}", 0.0, (k - 1) * d, d) for i in range(n)}
    starts = plan(jobs.values())
    assert peak([], starts, jobs) == math.ceil(n / k)


# -- property 39 (the choice): realtime_preempts_batch -------------------------------------------

held_st = st.dictionaries(st.from_regex(r"e[0-9]{1,3}", fullmatch=True), st.builds(
    lambda b, c, p, s, n: SimpleNamespace(batch=b, priority_class=c, priority=p, since=s, count=n),
    st.booleans(), st.sampled_from(["low", "normal", "high", "critical"]), st.integers(-2, 2),
    st.floats(0, 100), st.integers(0, 3)), max_size=12)


@settings(max_examples=500, deadline=None)
@given(held=held_st)
def test_realtime_preempts_batch_victim(held):
    """Property 39 (policy): the victim is a batch execution holding capacity, of the lowest priority
    class, then the lowest priority, then the youngest; real-time executions are never chosen."""
    victim = choose_victim(held)
    batch = {i: h for i, h in held.items() if h.batch and h.count > 0}
    if not batch:
        assert victim is None
        return
    assert victim in batch
    rank = {"low": 0, "normal": 1, "high": 2, "critical": 3}
    key = lambda h: (rank[h.priority_class], h.priority, -h.since)  # noqa: E731
    assert all(key(batch[victim]) <= key(h) for h in batch.values())
    assert choose_victim(held, exclude=[victim]) != victim


def test_batch_packing_beyond_max_planned_still_ends_inside_every_window():
    """More executions than are packed at once: the rest are held to their latest start, never later."""
    from runtime.batch import MAX_PLANNED

    jobs = {f"e{i}": Job(f"e{i}", 0.0, 100.0 + i, 10.0) for i in range(MAX_PLANNED + 40)}
    starts = plan(jobs.values())
    assert all(jobs[i].earliest <= s <= jobs[i].latest for i, s in starts.items())
    assert sum(1 for i in starts if starts[i] == jobs[i].latest) >= 40
