"""Run slots given out in this process: at most ``capacity`` attempts run at once.

Waiting attempts go by their :class:`runtime.seams.Claim`: highest priority first; within a
priority, attempts of executions already under way before the first steps of new ones, then
the oldest execution first, then in the order they asked.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable

from runtime.seams import Claim

CAPACITY_REFRESH_S = 60.0
"""How long a capacity reading is trusted (a cluster grows and shrinks)."""


class LocalAdmission:
    """The :class:`runtime.seams.Admission` of one coordinator: a priority queue in front of a counter.

    Args:
        capacity: How many slots there are; asked again every ``CAPACITY_REFRESH_S`` seconds
            (the Ray front reads the cluster's CPUs; the in-process engine a fixed number).
    """

    def __init__(self, capacity: Callable[[], int]) -> None:
        self._capacity_of = capacity
        self._capacity: int | None = None
        self._capacity_read = 0.0
        self.used = 0
        """Slots taken now."""
        self._queue: list[tuple[tuple[int, bool, float], int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._draining = False

    @property
    def capacity(self) -> int:
        now = time.monotonic()
        if self._capacity is None or now > self._capacity_read + CAPACITY_REFRESH_S:
            self._capacity, self._capacity_read = max(1, int(self._capacity_of())), now
        return self._capacity

    @property
    def queued(self) -> int:
        """Callers waiting for a slot."""
        return len(self._queue)

    def acquire(self, claim: Claim | int, grant: Callable[[], None]) -> bool:
        """Take a slot now, or queue ``grant`` by ``claim`` (a bare int is a priority)."""
        self._drain()  # the capacity may have grown since the queue formed
        if self.used < self.capacity and not self._queue:
            self.used += 1
            return True
        key = (claim if isinstance(claim, Claim) else Claim(claim)).key()
        heapq.heappush(self._queue, (key, next(self._order), grant))
        return False

    def release(self) -> None:
        self.used -= 1
        self._drain()

    def withdraw(self, grant: Callable[[], None]) -> bool:
        """Leave the queue without a slot; False when ``grant`` was not queued (say, granted already)."""
        for i, entry in enumerate(self._queue):
            if entry[2] is grant:
                self._queue[i] = self._queue[-1]
                self._queue.pop()
                heapq.heapify(self._queue)  # O(n): withdrawing is rare (a cancel), acquiring is not
                return True
        return False

    def _drain(self) -> None:
        if self._draining:  # a grant gave its slot straight back: the loop below goes on
            return
        self._draining = True
        try:
            while self._queue and self.used < self.capacity:
                grant = heapq.heappop(self._queue)[2]
                self.used += 1
                grant()
        finally:
            self._draining = False
