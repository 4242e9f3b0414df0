"""Run slots given out in this process: at most ``capacity`` attempts run at once.

Waiting attempts queue by priority class (``critical``, ``high``, ``normal``,
``low``). While several classes wait, slots go to them in proportion to their
weights (stride scheduling: each grant advances the class's pass by 1/weight,
and the waiting class with the smallest pass goes next), so ``low`` is slowed,
never starved. A class that had nothing waiting starts from the current pass,
not from credit saved while it was idle. Within a class, attempts go by their
:class:`runtime.seams.Claim`: higher priority first, then attempts of
executions already under way, then the oldest execution, then in the order
they asked.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable, Iterable

from runtime.seams import Claim

CAPACITY_REFRESH_S = 60.0
"""How long a capacity reading is trusted (a cluster grows and shrinks)."""
DEFAULT_WEIGHTS = (("critical", 8), ("high", 4), ("normal", 2), ("low", 1))

_Entry = tuple[tuple[int, bool, float], int, Callable[[], None]]


class LocalAdmission:
    """The :class:`runtime.seams.Admission` of one coordinator: per-class queues in front of a counter.

    Args:
        capacity: How many slots there are; asked again every ``CAPACITY_REFRESH_S`` seconds
            (the Ray front reads the cluster's CPUs; the in-process engine a fixed number).
        weights: Priority class -> its weight (``EngineConfig.priority_weights``).
    """

    def __init__(self, capacity: Callable[[], int],
                 weights: Iterable[tuple[str, int]] = DEFAULT_WEIGHTS) -> None:
        self._capacity_of = capacity
        self._capacity: int | None = None
        self._capacity_read = 0.0
        self.used = 0
        """Slots taken now."""
        self.weights = dict(weights)
        self._queues: dict[str, list[_Entry]] = {c: [] for c in self.weights}
        self._pass: dict[str, float] = {c: 0.0 for c in self.weights}
        self._now = 0.0
        """The pass of the last grant: a class that starts waiting starts here."""
        self._waiting = 0
        self._order = itertools.count()
        self._draining = False
        self.granted: dict[str, int] = {c: 0 for c in self.weights}
        """Slots granted from the queue so far, by class."""
        self._who: dict[int, str] = {}
        """Queue entry (its order number) -> the execution that asked: for :meth:`position`."""

    @property
    def capacity(self) -> int:
        now = time.monotonic()
        if self._capacity is None or now > self._capacity_read + CAPACITY_REFRESH_S:
            self._capacity, self._capacity_read = max(1, int(self._capacity_of())), now
        return self._capacity

    @property
    def queued(self) -> int:
        """Callers waiting for a slot."""
        return self._waiting

    def acquire(self, claim: Claim | int, grant: Callable[[], None]) -> bool:
        """Take a slot now, or queue ``grant`` by ``claim`` (a bare int is a priority in ``normal``)."""
        self._drain()  # the capacity may have grown since the queue formed
        if self.used < self.capacity and not self._waiting:
            self.used += 1
            return True
        claim = claim if isinstance(claim, Claim) else Claim(claim)
        cls = claim.priority_class if claim.priority_class in self._queues else "normal"
        queue = self._queues[cls]
        if not queue:  # it was idle: it joins at the current pass, with no credit saved up
            self._pass[cls] = max(self._pass[cls], self._now)
        order = next(self._order)
        heapq.heappush(queue, (claim.key(), order, grant))
        if claim.execution:
            self._who[order] = claim.execution
        self._waiting += 1
        return False

    def release(self) -> None:
        self.used -= 1
        self._drain()

    def withdraw(self, grant: Callable[[], None]) -> bool:
        """Leave the queue without a slot; False when ``grant`` was not queued (say, granted already)."""
        for queue in self._queues.values():
            for i, entry in enumerate(queue):
                if entry[2] is grant:
                    self._who.pop(entry[1], None)
                    queue[i] = queue[-1]
                    queue.pop()
                    heapq.heapify(queue)  # O(n): withdrawing is rare (a cancel), acquiring is not
                    self._waiting -= 1
                    return True
        return False

    def position(self, execution_id: str) -> int | None:
        """The 1-based place of the execution's first queued attempt in the order grants would go
        (the stride order between classes, replayed on copies); None when it has none queued."""
        if execution_id not in self._who.values():
            return None
        queues = {c: sorted(q) for c, q in self._queues.items()}  # a sorted list is a valid heap
        passes, place = dict(self._pass), 0
        while any(queues.values()):
            cls = min((c for c, q in queues.items() if q), key=lambda c: (passes[c], -self.weights[c]))
            _, order, _ = heapq.heappop(queues[cls])
            passes[cls] += 1.0 / self.weights[cls]
            place += 1
            if self._who.get(order) == execution_id:
                return place
        return None

    def _next_class(self) -> str:
        """The waiting class with the smallest pass (the heavier one on a tie)."""
        return min((c for c, q in self._queues.items() if q), key=lambda c: (self._pass[c], -self.weights[c]))

    def _drain(self) -> None:
        if self._draining:  # a grant gave its slot straight back: the loop below goes on
            return
        self._draining = True
        try:
            while self._waiting and self.used < self.capacity:
                cls = self._next_class()
                _, order, grant = heapq.heappop(self._queues[cls])
                self._who.pop(order, None)
                self._waiting -= 1
                self._now = self._pass[cls]
                self._pass[cls] += 1.0 / self.weights[cls]
                self.granted[cls] += 1
                self.used += 1
                grant()
        finally:
            self._draining = False
