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

Batch claims (:attr:`runtime.seams.Claim.batch`) wait in a lane of their own that
is served only while no other claim waits: batch work runs in capacity real-time
work does not want. When a real-time claim has to queue while batch executions
hold slots, ``on_blocked`` is told (the coordinator preempts one of them).
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from runtime.seams import Claim, Demand

CAPACITY_REFRESH_S = 60.0
"""How long a capacity reading is trusted (a cluster grows and shrinks)."""
DEFAULT_WEIGHTS = (("critical", 8), ("high", 4), ("normal", 2), ("low", 1))

_Entry = tuple[tuple[int, bool, float], int, Callable[[], None], Claim]
BATCH_LANE = "~batch"
"""The queue of batch claims (not a priority class: it is served only when the classes' queues are empty)."""


@dataclass(slots=True)
class Held:
    """What one execution holds now (see :meth:`LocalAdmission.holding`).

    Attributes:
        batch: It is a batch execution.
        priority_class: Its priority class.
        priority: Its priority within the class.
        since: When (``time.monotonic``) it took the first of the slots it holds now.
        demand: What one of its attempts asked for (the last one granted).
        count: How many slots it holds.
    """

    batch: bool
    priority_class: str
    priority: int
    since: float
    demand: Demand
    count: int = 0


class LocalAdmission:
    """The :class:`runtime.seams.Admission` of one coordinator: per-class queues in front of a counter.

    Args:
        capacity: How many slots there are; asked again every ``CAPACITY_REFRESH_S`` seconds
            (the Ray front reads the cluster's CPUs; the in-process engine a fixed number).
        weights: Priority class -> its weight (``EngineConfig.priority_weights``).
        on_blocked: Called with a real-time claim that has to queue while batch claims hold slots.
    """

    def __init__(self, capacity: Callable[[], int],
                 weights: Iterable[tuple[str, int]] = DEFAULT_WEIGHTS,
                 on_blocked: Callable[[Claim], None] | None = None) -> None:
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
        self.on_blocked = on_blocked
        self._batch: list[_Entry] = []
        self._held: dict[str, Held] = {}

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
        claim = claim if isinstance(claim, Claim) else Claim(claim)
        ahead = self._waiting if claim.batch else self._waiting - len(self._batch)
        if self.used < self.capacity and not ahead:
            self.used += 1
            self._hold(claim)
            return True
        if claim.batch:
            heapq.heappush(self._batch, (claim.key(), next(self._order), grant, claim))
            self._waiting += 1
            return False
        cls = claim.priority_class if claim.priority_class in self._queues else "normal"
        queue = self._queues[cls]
        if not queue:  # it was idle: it joins at the current pass, with no credit saved up
            self._pass[cls] = max(self._pass[cls], self._now)
        heapq.heappush(queue, (claim.key(), next(self._order), grant, claim))
        self._waiting += 1
        if self.on_blocked is not None and any(h.batch and h.count for h in self._held.values()):
            self.on_blocked(claim)
        return False

    def holding(self) -> dict[str, Held]:
        """Execution id -> what it holds now (executions holding nothing are absent)."""
        return dict(self._held)

    def waiting_realtime(self) -> int:
        """Claims waiting that are not batch claims."""
        return self._waiting - len(self._batch)

    def _hold(self, claim: Claim) -> None:
        if not claim.execution:
            return
        held = self._held.get(claim.execution)
        if held is None:
            held = self._held[claim.execution] = Held(claim.batch, claim.priority_class, claim.priority,
                                                       time.monotonic(), claim.demand)
        held.count += 1
        held.demand = claim.demand

    def release(self, claim: Claim | None = None) -> None:
        """Give a slot back (``claim``: the one it was taken for, so :meth:`holding` stays true)."""
        self.used -= 1
        held = self._held.get(claim.execution) if claim is not None and claim.execution else None
        if held is not None:
            held.count -= 1
            if held.count <= 0:
                del self._held[claim.execution]
        self._drain()

    def withdraw(self, grant: Callable[[], None]) -> bool:
        """Leave the queue without a slot; False when ``grant`` was not queued (say, granted already)."""
        for queue in (*self._queues.values(), self._batch):
            for i, entry in enumerate(queue):
                if entry[2] is grant:
                    queue[i] = queue[-1]
                    queue.pop()
                    heapq.heapify(queue)  # O(n): withdrawing is rare (a cancel), acquiring is not
                    self._waiting -= 1
                    return True
        return False

    def position(self, execution_id: str) -> int | None:
        """The 1-based place of the execution's first queued attempt in the order grants would go
        (the stride order between classes, replayed on copies, then the batch lane); None when it
        has none queued."""
        queues = {c: sorted(q) for c, q in self._queues.items()}  # a sorted list is a valid heap
        passes, place = dict(self._pass), 0
        while any(queues.values()):
            cls = min((c for c, q in queues.items() if q), key=lambda c: (passes[c], -self.weights[c]))
            claim = heapq.heappop(queues[cls])[3]
            passes[cls] += 1.0 / self.weights[cls]
            place += 1
            if claim.execution == execution_id:
                return place
        for entry in sorted(self._batch):
            place += 1
            if entry[3].execution == execution_id:
                return place
        return None

    def _next_class(self) -> str:
        """The waiting class with the smallest pass (the heavier one on a tie)."""
        waiting = [c for c, q in self._queues.items() if q]
        if not waiting:
            return BATCH_LANE
        return min(waiting, key=lambda c: (self._pass[c], -self.weights[c]))

    def _drain(self) -> None:
        if self._draining:  # a grant gave its slot straight back: the loop below goes on
            return
        self._draining = True
        try:
            while self._waiting and self.used < self.capacity:
                cls = self._next_class()
                _, _, grant, claim = heapq.heappop(self._batch if cls == BATCH_LANE else self._queues[cls])
                self._waiting -= 1
                if cls != BATCH_LANE:
                    self._now = self._pass[cls]
                    self._pass[cls] += 1.0 / self.weights[cls]
                    self.granted[cls] += 1
                self.used += 1
                self._hold(claim)
                grant()
        finally:
            self._draining = False
