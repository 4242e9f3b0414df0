"""Per-provider model rate limits (requests and tokens per minute), local or shared through Ray.

:class:`RateLimiter` is the pure part: it books each model call at the earliest
time that keeps every 60 s window within the provider's limits, first come first
served, on an injectable clock. :class:`LocalLimiter` waits for those bookings in
one process; :class:`RayLimiter` asks one named actor (``sopflow-model-limiter``),
so every agent host of a namespace shares one limit per provider.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from runtime.config import check_model_rate_limits as check_limits

WINDOW_S = 60.0
"""Limits are per minute: no 60 s window admits more than the configured amounts."""

ACTOR_NAME = "sopflow-model-limiter"

log = logging.getLogger(__name__)


class _Booking:
    """One admitted call: when, and how many tokens it is counted for (corrected by ``settle``)."""

    __slots__ = ("at", "tokens", "live")

    def __init__(self, at: float, tokens: int) -> None:
        self.at = at
        self.tokens = tokens
        self.live = True  # still in the provider's log (counted in its running total)


class _Provider:
    def __init__(self, rpm: int, tpm: int) -> None:
        self.rpm, self.tpm = rpm, tpm
        self.log: deque[_Booking] = deque()       # admission times never decrease (first come first served)
        self.unsettled: deque[_Booking] = deque()  # bookings whose real token count is not known yet
        self.tokens = 0                            # the sum over `log`, kept as it changes
        self.blocked_until = float("-inf")


class RateLimiter:
    """Books model calls per provider so no 60 s window exceeds its requests and tokens per minute.

    Bookings are first come first served (a later call is never admitted before an
    earlier one of the same provider), so no caller starves. A call estimated at
    more tokens than a whole minute allows is counted as the whole minute's tokens:
    it is admitted alone in its window rather than never.

    Args:
        limits: ``{provider: (requests/min, tokens/min)}``; 0 means no limit on that
            count, and a provider not listed is not limited (but still obeys ``penalize``).
        clock: Seconds, monotonic (injectable for tests).
    """

    def __init__(self, limits: Mapping[str, tuple[int, int]] | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._providers: dict[str, _Provider] = {}
        self.configure(limits or {})

    def configure(self, limits: Mapping[str, tuple[int, int]]) -> None:
        """Replace the limits; bookings already made stay counted."""
        checked = check_limits(limits)
        for name, (rpm, tpm) in checked.items():
            p = self._providers.setdefault(name, _Provider(rpm, tpm))
            p.rpm, p.tpm = rpm, tpm
        for name, p in self._providers.items():
            if name not in checked:
                p.rpm = p.tpm = 0

    @property
    def limits(self) -> dict[str, tuple[int, int]]:
        return {n: (p.rpm, p.tpm) for n, p in self._providers.items() if p.rpm or p.tpm}

    def _provider(self, name: str) -> _Provider:
        p = self._providers.get(name)
        if p is None:
            p = self._providers[name] = _Provider(0, 0)
        return p

    def reserve(self, provider: str, tokens: int = 0) -> float:
        """Book one call of about ``tokens`` tokens; returns how many seconds to wait before making it."""
        now = self._clock()
        p = self._provider(provider)
        start = max(now, p.blocked_until)
        if not (p.rpm or p.tpm):
            return max(0.0, start - now)
        while p.log and p.log[0].at <= now - WINDOW_S:  # out of every window that can still matter
            gone = p.log.popleft()
            gone.live = False
            p.tokens -= gone.tokens
        tokens = max(0, int(tokens))
        if p.tpm:
            tokens = min(tokens, p.tpm)
        at = max(start, p.log[-1].at if p.log else start)
        at = self._earliest_fit(p, at, tokens)
        booking = _Booking(at, tokens)
        p.log.append(booking)
        p.tokens += tokens
        p.unsettled.append(booking)
        return max(0.0, at - now)

    @staticmethod
    def _earliest_fit(p: _Provider, at: float, tokens: int) -> float:
        # Walk the window forward: whenever the window (at - 60, at] is too full, move `at` to
        # the moment its oldest booking leaves it. Terminates: each move drops one booking.
        # Every booking is at or before `at` (bookings never go back in time), so the window's
        # content is the log's tail: start from the whole log's running totals and drop bookings
        # from the head as the window moves (no copy, no re-summing: constant work per move).
        count, used = len(p.log), p.tokens
        oldest = iter(p.log)
        head = next(oldest, None)
        while True:
            while head is not None and head.at <= at - WINDOW_S:
                count, used = count - 1, used - head.tokens
                head = next(oldest, None)
            over_requests = p.rpm and count + 1 > p.rpm
            over_tokens = p.tpm and used + tokens > p.tpm
            if not (over_requests or over_tokens):
                return at
            assert head is not None  # over a limit means some booking is in the window
            at = head.at + WINDOW_S

    def settle(self, provider: str, actual_tokens: int) -> None:
        """Correct the oldest unsettled booking of ``provider`` to the tokens the call really used.

        More than estimated delays later calls; fewer frees room for them. With no
        booking to correct (the call was not reserved), the tokens are booked now.
        """
        p = self._provider(provider)
        actual = max(0, int(actual_tokens))
        if p.unsettled:
            booking = p.unsettled.popleft()
            if booking.live:
                p.tokens += actual - booking.tokens
            booking.tokens = actual
        elif p.tpm and actual:
            p.log.append(_Booking(max(self._clock(), p.log[-1].at if p.log else float("-inf")), actual))
            p.tokens += actual

    def penalize(self, provider: str, retry_after_s: float) -> None:
        """The provider answered 429 (or 503): admit no call of it for ``retry_after_s`` seconds."""
        p = self._provider(provider)
        p.blocked_until = max(p.blocked_until, self._clock() + max(0.0, float(retry_after_s)))

    def hold(self, provider: str) -> float:
        """Seconds until a penalty on ``provider`` ends (0 when there is none)."""
        p = self._providers.get(provider)
        return 0.0 if p is None else max(0.0, p.blocked_until - self._clock())

    def window(self, provider: str) -> list[tuple[float, int]]:
        """``(admitted at, tokens)`` of the bookings still inside some window (for tests and status)."""
        p = self._providers.get(provider)
        return [] if p is None else [(b.at, b.tokens) for b in p.log]


class Limiter(Protocol):
    """What a model wrapper needs from a limiter (local or shared)."""

    async def acquire(self, provider: str, est_tokens: int) -> None:
        """Wait until a call of about ``est_tokens`` tokens to ``provider`` is allowed."""

    def report(self, provider: str, used_tokens: int) -> None:
        """The call admitted earliest and not reported yet used ``used_tokens`` tokens."""

    def backoff(self, provider: str, seconds: float) -> None:
        """Every user of ``provider`` waits ``seconds`` (after a 429/503)."""


class LocalLimiter:
    """A :class:`Limiter` for one process (the in-process engine, tests)."""

    def __init__(self, limits: Mapping[str, tuple[int, int]] | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
        self.limiter = RateLimiter(limits, clock=clock)
        self._sleep = sleep

    async def acquire(self, provider: str, est_tokens: int) -> None:
        wait = self.limiter.reserve(provider, est_tokens)
        # A penalty that arrives while we wait applies to us too: check again after each wait.
        while wait > 0:
            await self._sleep(wait)
            wait = self.limiter.hold(provider)

    def report(self, provider: str, used_tokens: int) -> None:
        self.limiter.settle(provider, used_tokens)

    def backoff(self, provider: str, seconds: float) -> None:
        self.limiter.penalize(provider, seconds)


class LimiterActor:
    """The shared limiter as a Ray actor: a :class:`RateLimiter` on the actor's own clock."""

    def __init__(self, limits: Mapping[str, tuple[int, int]] | None = None) -> None:
        self.limiter = RateLimiter(limits)

    def configure(self, limits: Mapping[str, tuple[int, int]]) -> None:
        self.limiter.configure(limits)

    def reserve(self, provider: str, tokens: int) -> float:
        return self.limiter.reserve(provider, tokens)

    def settle(self, provider: str, tokens: int) -> None:
        self.limiter.settle(provider, tokens)

    def penalize(self, provider: str, seconds: float) -> None:
        self.limiter.penalize(provider, seconds)

    def hold(self, provider: str) -> float:
        return self.limiter.hold(provider)

    def window(self, provider: str) -> list[tuple[float, int]]:
        return self.limiter.window(provider)


class RayLimiter:
    """A :class:`Limiter` shared by every process of a namespace through one named, detached actor.

    The actor only books; callers sleep on their own event loop for the seconds it
    answers, so a slow call never blocks the actor. Waits are relative, so the
    callers' clocks need not agree with the actor's.

    Args:
        namespace: The sopflow namespace (the actor is ``sopflow-model-limiter`` in it).
        limits: ``EngineConfig.model_rate_limits``; applied to the actor (the last
            configuration wins, and every host of a namespace gets the same one).
        sleep: Injectable for tests.
    """

    def __init__(self, namespace: str, limits: Mapping[str, tuple[int, int]] | None = None, *,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
        import ray  # here: the local limiter must work where Ray is not running

        limits = check_limits(limits or {})
        self.namespace = namespace
        self.actor = ray.remote(LimiterActor).options(
            name=ACTOR_NAME, namespace=namespace, lifetime="detached", get_if_exists=True,
            num_cpus=0, max_restarts=-1, max_task_retries=-1).remote(limits)
        # get_if_exists hands back an actor another host created, with its limits: set ours.
        ray.get(self.actor.configure.remote(limits))
        self._sleep = sleep

    async def acquire(self, provider: str, est_tokens: int) -> None:
        import ray

        try:
            wait = await self.actor.reserve.remote(provider, est_tokens)
            while wait > 0:
                await self._sleep(wait)
                wait = await self.actor.hold.remote(provider)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
            # Ray restarts the actor (max_restarts=-1); meanwhile a model call is worth more than
            # the limit's precision, and the provider's own 429s still make us back off.
            log.warning("the shared model rate limiter is unreachable (%s); calling %s unthrottled",
                        type(e).__name__, provider)

    def report(self, provider: str, used_tokens: int) -> None:
        self.actor.settle.remote(provider, used_tokens)  # fire and forget: nothing waits on it

    def backoff(self, provider: str, seconds: float) -> None:
        self.actor.penalize.remote(provider, seconds)

    def __reduce__(self) -> tuple:  # hosts receive it pickled; rebuild the handle by name there
        return (_reattach, (self.namespace,))


def _reattach(namespace: str) -> RayLimiter:
    import ray

    limiter = RayLimiter.__new__(RayLimiter)
    limiter.namespace = namespace
    limiter.actor = ray.get_actor(ACTOR_NAME, namespace=namespace)
    limiter._sleep = asyncio.sleep
    return limiter
