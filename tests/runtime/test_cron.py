"""Properties of the pure cron arithmetic behind triggers (runtime.cron): no clock, no I/O."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime import cron

ZONES = ["UTC", "Europe/Paris", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata", "America/Santiago"]
EXPRESSIONS = ["* * * * *", "*/7 * * * *", "30 2 * * *", "0 1-3 * * *", "15 */2 * * 1-5", "0 0 1 * *",
               "59 23 31 12 *", "0 2 * * 0", "*/20 1,2,3 * 3,10,11 *"]
# 2020 .. 2030: spans many daylight-saving changes in each zone above.
EPOCH = st.floats(min_value=1_577_836_800, max_value=1_893_456_000, allow_nan=False)

expressions = st.sampled_from(EXPRESSIONS)
zones = st.sampled_from(ZONES)


@settings(max_examples=300, deadline=None)
@given(expressions, zones, EPOCH, st.floats(min_value=0, max_value=3 * 86_400))
def test_next_fire_is_strictly_after_and_monotonic_across_dst(expr: str, zone: str, a: float, gap: float) -> None:
    """For any schedule, zone and times a <= b: next(a) > a, and next(a) <= next(b)."""
    b = a + gap
    na, nb = cron.next_fire(expr, zone, a), cron.next_fire(expr, zone, b)
    assert na is not None and nb is not None
    assert na > a and nb > b
    assert na <= nb


@settings(max_examples=200, deadline=None)
@given(expressions, zones, EPOCH)
def test_every_fire_matches_its_cron_fields_in_local_time(expr: str, zone: str, a: float) -> None:
    """A fire time, read in the trigger's zone, is a real local time whose minute and hour the cron allows."""
    t = cron.next_fire(expr, zone, a)
    local = dt.datetime.fromtimestamp(t, ZoneInfo(zone))
    minute_field, hour_field = expr.split()[:2]
    assert local.second == 0
    assert _allows(minute_field, local.minute, 60) or _dst_shifted(expr, local)
    assert _allows(hour_field, local.hour, 24) or _dst_shifted(expr, local)


def _allows(field: str, value: int, size: int) -> bool:
    for part in field.split(","):
        rng, _, step = part.partition("/")
        lo, hi = (0, size - 1) if rng == "*" else (int(rng.split("-")[0]), int(rng.split("-")[-1]))
        if lo <= value <= hi and (value - lo) % int(step or 1) == 0:
            return True
    return False


def _dst_shifted(expr: str, local: dt.datetime) -> bool:
    """Debian cron runs a job whose local time was skipped by a spring-forward change just after it."""
    return local.utcoffset() != (local - dt.timedelta(hours=3)).utcoffset()


@settings(max_examples=200, deadline=None)
@given(expressions, zones, EPOCH, st.floats(min_value=0, max_value=2 * 86_400), st.integers(1, 50))
def test_due_is_every_fire_in_the_window_up_to_the_limit(expr: str, zone: str, start: float, span: float,
                                                        limit: int) -> None:
    """due(next, now) returns the fires in [next, now] (the latest ``limit``) and the first one after now."""
    first = cron.next_fire(expr, zone, start)
    now = first + span
    due, following = cron.due(expr, zone, first, now, limit)
    brute = [first]
    while (t := cron.next_fire(expr, zone, brute[-1])) <= now:
        brute.append(t)
    assert due == brute[-limit:]
    assert following == cron.next_fire(expr, zone, now)
    assert following > now


@settings(max_examples=500, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), max_size=200, unique=True),
       st.floats(min_value=0, max_value=2e6), st.floats(min_value=0, max_value=1e5), st.integers(1, 300))
def test_catch_up_counts(times: list[float], extra: float, grace: float, limit: int) -> None:
    """skip starts only on-time fires, once starts exactly one if anything was due, all starts every one
    up to the limit; every policy starts a subset of what was due, in order."""
    due = sorted(times)
    now = (due[-1] if due else 0) + extra
    skip = cron.plan(due, now, "skip", grace, limit)
    once = cron.plan(due, now, "once", grace, limit)
    every = cron.plan(due, now, "all", grace, limit)
    assert skip == [t for t in due if now - t <= grace][-limit:]
    assert len(once) == min(1, len(due)) and (not due or once == [due[-1]])
    assert len(every) == min(len(due), limit) and every == due[len(due) - len(every):]
    for planned in (skip, once, every):
        assert set(planned) <= set(due) and planned == sorted(planned)


def test_an_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="catch_up must be skip, once or all"):
        cron.plan([1.0], 2.0, "sometimes", 60, 10)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["a/x", "b/nightly", "c.d/e-f"]), st.lists(EPOCH, min_size=1, max_size=50, unique=True))
def test_fire_keys_are_unique_per_fire_and_stable(trigger_id: str, times: list[float]) -> None:
    """Distinct (whole-second) fire times give distinct keys; the same fire always the same key."""
    whole = {int(t) for t in times}
    keys = {cron.fire_key(trigger_id, float(t)) for t in whole}
    assert len(keys) == len(whole)
    assert all(k.startswith(f"trigger:{trigger_id}:") for k in keys)
    assert all(cron.fire_key(trigger_id, float(t)) == cron.fire_key(trigger_id, float(t)) for t in whole)
    assert cron.fire_key("x/a", 0.0) != cron.fire_key("x/b", 0.0)


def test_spring_forward_never_fires_at_a_time_that_does_not_exist() -> None:
    """Europe/Paris skips 02:00-03:00 on 2026-03-29: a 02:30 job runs once that day, at 03:00 local."""
    before = dt.datetime(2026, 3, 28, 12, tzinfo=ZoneInfo("Europe/Paris")).timestamp()
    t1 = cron.next_fire("30 2 * * *", "Europe/Paris", before)
    t2 = cron.next_fire("30 2 * * *", "Europe/Paris", t1)
    local = [dt.datetime.fromtimestamp(t, ZoneInfo("Europe/Paris")) for t in (t1, t2)]
    assert local[0].date() == dt.date(2026, 3, 29) and (local[0].hour, local[0].minute) == (3, 0)
    assert local[1].date() == dt.date(2026, 3, 30) and (local[1].hour, local[1].minute) == (2, 30)


def test_fall_back_fires_a_repeated_local_time_once() -> None:
    """On 2026-10-25 Paris lives 02:30 twice: the 02:30 job fires once that day."""
    before = dt.datetime(2026, 10, 24, 12, tzinfo=ZoneInfo("Europe/Paris")).timestamp()
    fires = [cron.next_fire("30 2 * * *", "Europe/Paris", before)]
    fires.append(cron.next_fire("30 2 * * *", "Europe/Paris", fires[-1]))
    days = [dt.datetime.fromtimestamp(t, ZoneInfo("Europe/Paris")).date() for t in fires]
    assert days == [dt.date(2026, 10, 25), dt.date(2026, 10, 26)]
