"""The per-provider rate limiter: its window rule as properties, the async fronts, and one limit across Ray."""

from __future__ import annotations

from typing import Any

import asyncio
import time
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.ratelimit import ACTOR_NAME, WINDOW_S, LocalLimiter, RateLimiter, RayLimiter
from runtime.config import EngineConfig


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# Times move in quarter seconds: exact in binary floating point, so window edges compare exactly.
steps = st.lists(st.one_of(
    st.tuples(st.just("reserve"), st.integers(0, 240).map(lambda q: q / 4), st.sampled_from("ab"),
              st.integers(0, 150)),
    st.tuples(st.just("settle"), st.integers(0, 240).map(lambda q: q / 4), st.sampled_from("ab"),
              st.integers(0, 4)),
    st.tuples(st.just("penalize"), st.integers(0, 240).map(lambda q: q / 4), st.sampled_from("ab"),
              st.integers(0, 90)),
), max_size=60)


@settings(max_examples=300, deadline=None)
@given(rpm=st.integers(0, 5), tpm=st.integers(0, 100), ops=steps)
def test_no_60s_window_admits_more_than_the_limits_and_every_reservation_is_admitted(
        rpm: int, tpm: int, ops: list[tuple]) -> None:
    """For any sequence of reservations, settlements and penalties over a controllable clock:
    every 60 s window holds at most rpm requests and tpm tokens per provider (a call estimated
    above tpm counts as tpm: alone in its window), bookings are first come first served, and
    each one is admitted within 60 s of the later of its request, the previous booking and any
    penalty (no starvation)."""
    clock = Clock()
    limiter = RateLimiter({"a": (rpm, tpm), "b": (rpm, tpm)}, clock=clock)
    limited = bool(rpm or tpm)
    admitted: dict[str, list[list[float]]] = {"a": [], "b": []}  # [time, tokens], shared with settle
    unsettled: dict[str, list[list[float]]] = {"a": [], "b": []}
    blocked = {"a": float("-inf"), "b": float("-inf")}
    for op, dt, provider, n in ops:
        clock.now += dt
        if op == "reserve":
            wait = limiter.reserve(provider, n)
            assert 0 <= wait < float("inf")
            at = clock.now + wait
            previous = admitted[provider][-1][0] if admitted[provider] else clock.now
            assert at >= previous or not limited                              # first come, first served
            assert at <= max(clock.now, previous, blocked[provider]) + WINDOW_S  # never starved
            assert at >= blocked[provider]                                    # a penalty is obeyed
            if limited:
                booking = [at, min(n, tpm) if tpm else n]
                admitted[provider].append(booking)
                unsettled[provider].append(booking)
        elif op == "settle" and unsettled[provider]:
            booking = unsettled[provider].pop(0)
            booking[1] = booking[1] * n // 4  # a real count at most the estimate keeps the rule checkable
            limiter.settle(provider, booking[1])
        elif op == "penalize":
            limiter.penalize(provider, n)
            blocked[provider] = max(blocked[provider], clock.now + n)
    for bookings in admitted.values():
        for start, _ in bookings:
            window = [t for at, t in bookings if start <= at < start + WINDOW_S]
            assert not rpm or len(window) <= rpm
            assert not tpm or sum(window) <= tpm


def test_a_call_that_used_more_than_estimated_delays_the_next_one() -> None:
    clock = Clock()
    limiter = RateLimiter({"p": (0, 1000)}, clock=clock)
    assert limiter.reserve("p", 100) == 0
    limiter.settle("p", 1000)  # it really used the whole minute's tokens
    clock.now = 10
    assert limiter.reserve("p", 1) == pytest.approx(50)  # until the first call leaves the window


def test_a_call_that_used_fewer_than_estimated_frees_room() -> None:
    clock = Clock()
    limiter = RateLimiter({"p": (0, 1000)}, clock=clock)
    assert limiter.reserve("p", 900) == 0
    limiter.settle("p", 50)
    assert limiter.reserve("p", 900) == 0       # 50 + 900 fit in the minute
    assert limiter.reserve("p", 900) == pytest.approx(60)


def test_an_unlimited_provider_never_waits_but_obeys_a_penalty() -> None:
    clock = Clock()
    limiter = RateLimiter({}, clock=clock)
    assert [limiter.reserve("x", 10**9) for _ in range(1000)] == [0.0] * 1000
    limiter.penalize("x", 12)
    clock.now = 2
    assert limiter.reserve("x", 1) == pytest.approx(10) == limiter.hold("x")


def test_local_limiter_waits_by_its_injected_sleep() -> None:
    clock, waits = Clock(), []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock.now += seconds

    limiter = LocalLimiter({"p": (2, 0)}, clock=clock, sleep=sleep)

    async def three() -> None:
        for _ in range(3):
            await limiter.acquire("p", 1)

    asyncio.run(three())
    assert waits == [60.0]


def test_engine_config_validates_model_rate_limits() -> None:
    config = EngineConfig(model_rate_limits={"openai": (60, 100_000), "gemini": (10, 0)})
    assert config.model_rate_limit_map == {"gemini": (10, 0), "openai": (60, 100_000)}
    assert hash(config) == hash(EngineConfig(model_rate_limits={"gemini": (10, 0), "openai": (60, 100_000)}))
    assert EngineConfig().model_rate_limit_map == {}
    for bad, message in [({"openai": (60,)}, "requests/min, tokens/min"), ({"": (1, 1)}, "non-empty"),
                         ({"x": (-1, 0)}, ">= 0"), ({"x": (1.5, 0)}, "whole numbers"), (7, "map a provider")]:
        with pytest.raises(ValueError, match=message):
            EngineConfig(model_rate_limits=bad)


def _acquire_in_another_process(limiter: RayLimiter, provider: str, n: int,
                                really_wait: bool = False) -> tuple[int, list[float]]:
    """Runs as a Ray task: acquires n times through the (pickled) shared limiter; returns its pid and waits."""
    import os

    waits: list[float] = []

    async def record(seconds: float) -> None:  # by default no real waiting: the booked waits are what we check
        waits.append(seconds)
        if really_wait:
            await asyncio.sleep(seconds)

    limiter._sleep = record

    async def go() -> None:
        for _ in range(n):
            await limiter.acquire(provider, 10)

    asyncio.run(go())
    return os.getpid(), waits


class _Caller:
    """Acquires against a limiter from its own process."""

    def acquire(self, limiter: Any, provider: str, n: int) -> tuple[int, list[float]]:
        return _acquire_in_another_process(limiter, provider, n)

    def acquire_waiting(self, limiter: Any, provider: str, n: int) -> tuple[int, list[float]]:
        return _acquire_in_another_process(limiter, provider, n, True)


@pytest.mark.ray
def test_the_ray_limiter_is_one_limit_across_processes(ray_cluster: None) -> None:
    import ray

    namespace = f"models-test-{uuid.uuid4().hex[:8]}"
    limiter = RayLimiter(namespace, {"openai": (4, 0)})
    # two actors: two processes for sure (two tasks may share one reused worker)
    callers = [ray.remote(num_cpus=0)(_Caller).remote() for _ in range(2)]
    try:
        (pid_a, waits_a), (pid_b, waits_b) = ray.get([c.acquire.remote(limiter, "openai", 3) for c in callers],
                                                     timeout=120)
        assert pid_a != pid_b  # two processes ...
        waits = waits_a + waits_b
        # ... six calls against one limit of 4 a minute: 4 went at once, 2 were told to wait (for the
        # first bookings to leave the window: 60 s after them, less however late the second task started).
        assert len(waits) == 2 and all(0 < w <= 60 for w in waits), (waits_a, waits_b)
        booked = sorted(at for at, _ in ray.get(limiter.actor.window.remote("openai")))
        assert len(booked) == 6 and booked[4] >= booked[0] + 60 and booked[5] >= booked[1] + 60
        # A 429 seen by one process makes the others back off (here for real: 2 s).
        limiter.backoff("gemini", 2)
        _, waits_c = ray.get(callers[0].acquire_waiting.remote(limiter, "gemini", 1), timeout=60)
        assert 1 < waits_c[0] <= 2 and all(w < 0.5 for w in waits_c[1:]), waits_c
        # Another host of the namespace attaches to the same actor (and sets the same limits).
        again = RayLimiter(namespace, {"openai": (4, 0)})
        assert again.actor._actor_id == limiter.actor._actor_id
    finally:
        ray.kill(ray.get_actor(ACTOR_NAME, namespace=namespace))


@pytest.fixture(params=["local", "ray"])
def make_limiter(request: pytest.FixtureRequest) -> Iterator:
    """Builds a Limiter of each implementation (the contract below holds for both)."""
    made: list = []

    def make(limits: dict, sleep) -> LocalLimiter | RayLimiter:
        if request.param == "local":
            return LocalLimiter(limits, sleep=sleep)
        request.getfixturevalue("ray_cluster")
        limiter = RayLimiter(f"models-contract-{uuid.uuid4().hex[:8]}", limits, sleep=sleep)
        made.append(limiter)
        return limiter

    yield make
    if made:
        import ray

        for limiter in made:
            ray.kill(limiter.actor)


def test_limiter_contract(make_limiter) -> None:
    """Within the limit no wait; past it, the wait until the window frees; a backoff holds every caller."""
    waits: list[float] = []

    async def sleep(seconds: float) -> None:  # really waits only for short holds (the penalty below)
        waits.append(seconds)
        if seconds < 1:
            await asyncio.sleep(seconds)

    limiter = make_limiter({"p": (2, 0)}, sleep)

    async def scenario() -> None:
        await limiter.acquire("p", 5)
        await limiter.acquire("p", 5)
        assert waits == []
        await limiter.acquire("p", 5)
        assert len(waits) == 1 and 55 < waits[0] <= 60
        limiter.report("p", 3)
        limiter.backoff("q", 0.3)
        started = time.monotonic()
        await limiter.acquire("q", 1)
        assert 0.2 < time.monotonic() - started < 5 and 0 < waits[1] <= 0.3

    asyncio.run(scenario())
