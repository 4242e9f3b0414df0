"""Run slots given out in this process: at most ``capacity`` attempts at once, each on a node with room.

Waiting attempts queue by priority class (``critical``, ``high``, ``normal``,
``low``). While several classes wait, slots go to them in proportion to their
weights (stride scheduling: each grant advances the class's pass by 1/weight,
and the waiting class with the smallest pass goes next), so ``low`` is slowed,
never starved. A class that had nothing waiting starts from the current pass,
not from credit saved while it was idle. Within a class, attempts go by their
:class:`runtime.seams.Claim`: higher priority first, then attempts of
executions already under way, then the oldest execution, then in the order
they asked.

Once a lease is set (:meth:`LocalAdmission.set_lease`, from the ResourceManager)
an attempt also needs room for its :class:`runtime.seams.Demand` on a leased
node, and is placed on the one it fits best. A class whose first attempt fits
nowhere waits (its order is kept) while other classes' attempts that fit go
ahead. Batch work (``Claim.batch``) has a lane of its own: it gets capacity only
when no real-time attempt waiting could use it.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from runtime.resources import EPS, ZERO, Capacity, Grant, Node, best_fit
from runtime.seams import Claim, Demand

CAPACITY_REFRESH_S = 60.0
"""How long a capacity reading is trusted (a cluster grows and shrinks)."""
DEFAULT_WEIGHTS = (("critical", 8), ("high", 4), ("normal", 2), ("low", 1))

_Entry = tuple[tuple[int, bool, float], int, Callable[[], None], Claim]


@dataclass(frozen=True, slots=True)
class Held:
    """What one execution holds now.

    Attributes:
        batch: It is batch work (it may be preempted).
        priority_class: Its class.
        priority: Its priority within the class.
        since: When it was submitted.
        demand: The sum of its running attempts' demands (capabilities: all they need).
        count: How many attempts hold a slot.
    """

    batch: bool
    priority_class: str
    priority: int
    since: float
    demand: Demand
    count: int


@dataclass(slots=True, eq=False)
class Slot:
    """One granted slot: the claim it was granted to and the node it was placed on (None: no lease)."""

    claim: Claim
    node: str | None


class LocalAdmission:
    """The :class:`runtime.seams.Admission` of one coordinator: per-class queues in front of the lease.

    Args:
        capacity: How many slots there are; asked again every ``CAPACITY_REFRESH_S`` seconds
            (the Ray front reads the cluster's CPUs; the in-process engine a fixed number).
        weights: Priority class -> its weight (``EngineConfig.priority_weights``).
        on_blocked: Called (on the coordinator's loop) when a real-time claim has to queue while
            batch claims hold capacity: the coordinator may preempt batch work for it.
    """

    def __init__(self, capacity: Callable[[], int], weights: Iterable[tuple[str, int]] = DEFAULT_WEIGHTS,
                 on_blocked: Callable[[Claim], None] | None = None) -> None:
        self._capacity_of = capacity
        self._capacity: int | None = None
        self._capacity_read = 0.0
        self.used = 0
        """Slots taken now."""
        self.weights = dict(weights)
        # Two lanes of per-class queues: real-time (False) before batch (True).
        self._queues: dict[bool, dict[str, list[_Entry]]] = {
            lane: {c: [] for c in self.weights} for lane in (False, True)}
        self._pass: dict[str, float] = {c: 0.0 for c in self.weights}
        self._now = 0.0
        """The pass of the last grant: a class that starts waiting starts here."""
        self._waiting = 0
        self._order = itertools.count()
        self._draining = False
        self.granted: dict[str, int] = {c: 0 for c in self.weights}
        """Slots granted from the queue so far, by class."""
        self.on_blocked = on_blocked
        self.nodes: dict[str, Node] | None = None
        """The cluster's nodes once a lease was set (None: slots only)."""
        self.lease: dict[str, Capacity] = {}
        self._placeable: list[Node] = []
        self._accepts: dict[Demand, bool] = {}
        """Demand -> whether some node could take it (asked for every claim; the nodes change rarely)."""
        """The leased nodes, by id (placement looks at these)."""
        self._free: dict[str, Capacity] = {}
        """Per leased node: leased minus in use, kept as slots are taken and given back."""
        self.in_use: dict[str, Capacity] = {}
        """Per node: what granted slots take."""
        self._slots: dict[Callable[[], None], Slot] = {}
        """Grant callback -> its slot, until released."""
        self._held: dict[str, list[Slot]] = {}
        self._parked: list[_Entry] = []
        """Claims no node of the cluster can take (its node left): they wait for one to join, without
        holding up the claims behind them."""
        self._batch_held = 0
        """Slots held by batch claims."""
        self.wake: Callable[[], None] | None = None
        """Called when a claim queues for want of room on the leased nodes (the lease keeper renews early)."""

    # -- capacity and lease ---------------------------------------------------------------------

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

    def set_lease(self, grant: Grant) -> None:
        """Take a renewed lease (and the node list): queued claims that now fit are granted."""
        self.nodes = {n.node_id: n for n in grant.nodes}
        self.lease = dict(grant.lease)
        self._placeable = [self.nodes[k] for k in sorted(self.lease) if k in self.nodes]
        self._accepts = {}
        self._free = self.free()
        parked, self._parked = self._parked, []
        for entry in parked:  # a node that takes them may have joined
            self._waiting -= 1
            self._push(entry[3], entry[2], entry[1])
        self._drain()

    def free(self) -> dict[str, Capacity]:
        """Per leased node: leased minus in use."""
        return {k: v - self.in_use.get(k, ZERO) for k, v in self.lease.items()}

    def unmet(self) -> list[Demand]:
        """Demands of the first queued claim of each class and lane that fits no leased node now
        (what the next lease call asks the ResourceManager for)."""
        if self.nodes is None:
            return []
        free = self.free()
        heads = [q[0][3].demand for lane in self._queues.values() for q in lane.values()
                 if q and best_fit(self._leased_nodes(), free, q[0][3].demand) is None]
        return heads + [e[3].demand for e in self._parked[:100]]

    def _leased_nodes(self) -> list[Node]:
        return self._placeable

    def _place(self, claim: Claim) -> tuple[bool, str | None]:
        """Whether the claim may have a slot now, and on which node."""
        if self.used >= self.capacity:
            return False, None
        if self.nodes is None:
            return True, None
        where = best_fit(self._placeable, self._free, claim.demand)
        return where is not None, where

    def _take(self, claim: Claim, grant: Callable[[], None], node: str | None) -> None:
        self.used += 1
        slot = Slot(claim, node)
        self._slots[grant] = slot
        if node is not None:
            want = Capacity.of(claim.demand)
            self.in_use[node] = self.in_use.get(node, ZERO) + want
            self._free[node] = self._free[node] - want
        self._held.setdefault(claim.execution, []).append(slot)
        self._batch_held += claim.batch

    # -- the Admission seam ---------------------------------------------------------------------

    def acquire(self, claim: Claim | int, grant: Callable[[], None]) -> bool:
        """Take a slot now, or queue ``grant`` by ``claim`` (a bare int is a priority in ``normal``)."""
        self._drain()  # the capacity may have grown since the queue formed
        claim = claim if isinstance(claim, Claim) else Claim(claim)
        lane = bool(claim.batch)
        cls = claim.priority_class if claim.priority_class in self.weights else "normal"
        queue = self._queues[lane][cls]
        if self.nodes is not None and not self._acceptable(claim):
            self._push(claim, grant)  # parked: no node could ever take it
            self._wake()
            return False
        # After the drain, no queued claim that could run is left: one whose class has nobody
        # waiting before it goes now if it fits (a class's order is kept; others' may not fit).
        if not queue:
            ok, node = self._place(claim)
            if ok:
                self._take(claim, grant, node)
                return True
        self._push(claim, grant)
        if self.used < self.capacity:
            self._wake()
        if not lane and self.on_blocked is not None and self._batch_held:
            self.on_blocked(claim)
        return False

    def placement(self, grant: Callable[[], None]) -> str | None:
        """The node the slot granted to ``grant`` was placed on (None: no lease, or not granted)."""
        slot = self._slots.get(grant)
        return slot.node if slot is not None else None

    def route(self, grant: Callable[[], None]) -> str | None:
        """Where the runner should send the attempt: its node, when the cluster has more than one (on
        one node there is nothing to choose, and Ray's own placement costs nothing extra)."""
        return self.placement(grant) if self.nodes is not None and len(self.nodes) > 1 else None

    def release(self, grant: Callable[[], None] | None = None) -> None:
        """Give back the slot granted to ``grant`` (a caller that kept none gives back one slot)."""
        slot = self._slots.pop(grant, None) if grant is not None else None
        if slot is None and grant is None and self._slots:
            key = next(iter(self._slots))  # the oldest: callers that never say which hold no node's room
            slot = self._slots.pop(key)
        if slot is not None:
            self._batch_held -= slot.claim.batch
            if slot.node is not None:
                want = Capacity.of(slot.claim.demand)
                if slot.node in self._free:
                    self._free[slot.node] = self._free[slot.node] + want
                left = self.in_use.get(slot.node, ZERO) - want
                if left.cpu <= EPS and left.memory_mb <= EPS and left.gpu <= EPS:
                    self.in_use.pop(slot.node, None)
                else:
                    self.in_use[slot.node] = left
            held = self._held.get(slot.claim.execution)
            if held is not None:
                held.remove(slot)
                if not held:
                    del self._held[slot.claim.execution]
        self.used -= 1
        self._drain()

    def withdraw(self, grant: Callable[[], None]) -> bool:
        """Leave the queue without a slot; False when ``grant`` was not queued (say, granted already)."""
        for i, entry in enumerate(self._parked):
            if entry[2] is grant:
                del self._parked[i]
                self._waiting -= 1
                return True
        for lane in self._queues.values():
            for queue in lane.values():
                for i, entry in enumerate(queue):
                    if entry[2] is grant:
                        queue[i] = queue[-1]
                        queue.pop()
                        heapq.heapify(queue)  # O(n): withdrawing is rare (a cancel), acquiring is not
                        self._waiting -= 1
                        return True
        return False

    def _acceptable(self, claim: Claim) -> bool:
        """Whether some node of the cluster could take the claim (when empty)."""
        assert self.nodes is not None
        known = self._accepts.get(claim.demand)
        if known is None:
            known = self._accepts[claim.demand] = any(n.accepts(claim.demand) for n in self.nodes.values())
        return known

    def _push(self, claim: Claim, grant: Callable[[], None], order: int | None = None) -> None:
        """Queue a claim in its lane and class (parked if no node could take it)."""
        entry = (claim.key(), next(self._order) if order is None else order, grant, claim)
        self._waiting += 1
        if self.nodes is not None and not self._acceptable(claim):
            self._parked.append(entry)
            return
        cls = claim.priority_class if claim.priority_class in self.weights else "normal"
        if not any(self._queues[x][cls] for x in (False, True)):  # idle: it joins at the current pass
            self._pass[cls] = max(self._pass[cls], self._now)
        heapq.heappush(self._queues[bool(claim.batch)][cls], entry)

    def _wake(self) -> None:
        if self.wake is not None:
            self.wake()

    def why_queued(self, claim: Claim) -> str:
        """What a queued claim waits for, for its ``step_queued`` event."""
        if self.nodes is not None and not self._acceptable(claim):
            return "waiting for a node big enough to join the cluster (none has room for it even when empty)"
        if self.used >= self.capacity or self.nodes is None:
            return f"waiting for a run slot (max_running_steps={self.capacity})"
        asks = ", ".join(f"{k}={v:g}" for k, v in Capacity.of(claim.demand).as_dict().items() if v)
        caps = f" with {list(claim.demand.capabilities)}" if claim.demand.capabilities else ""
        lane = "; batch work waits while real-time work needs the room" if claim.batch else ""
        return f"waiting for a run slot: no node has room for {asks or 'it'}{caps} now{lane}"

    # -- views ----------------------------------------------------------------------------------

    def holding(self) -> dict[str, Held]:
        """Execution id -> what it holds now."""
        out = {}
        for exe, slots in self._held.items():
            first = slots[0].claim
            total = ZERO
            caps: set[str] = set()
            for s in slots:
                total = total + Capacity.of(s.claim.demand)
                caps.update(s.claim.demand.capabilities)
            out[exe] = Held(first.batch, first.priority_class, first.priority, first.since,
                            Demand(total.cpu, int(total.memory_mb), total.gpu, tuple(sorted(caps))), len(slots))
        return out

    def waiting_realtime(self) -> int:
        """Real-time claims queued that some node could take (after a drain, none of them fits now)."""
        return sum(len(q) for q in self._queues[False].values())

    def position(self, execution_id: str) -> int | None:
        """1-based place of the execution's first queued claim in the order grants would go."""
        if not any(e[3].execution == execution_id for lane in self._queues.values()
                   for q in lane.values() for e in q):
            parked = [e[3].execution for e in self._parked]
            return self._waiting - len(parked) + parked.index(execution_id) + 1 if execution_id in parked else None
        place = 0
        for lane in (False, True):
            queues = {c: sorted(q) for c, q in self._queues[lane].items() if q}
            passes = dict(self._pass)
            while queues:
                cls = min(queues, key=lambda c: (passes[c], -self.weights[c]))
                entry = queues[cls].pop(0)
                place += 1
                if entry[3].execution == execution_id:
                    return place
                passes[cls] += 1.0 / self.weights[cls]
                if not queues[cls]:
                    del queues[cls]
        return None  # pragma: no cover - found above

    def utilisation(self) -> dict[str, dict[str, dict[str, float]]]:
        """Per node: its total, what this coordinator leases there and what its running steps use."""
        if self.nodes is None:
            return {}
        return {k: {"total": n.total.as_dict(), "leased": self.lease.get(k, ZERO).as_dict(),
                    "used": self.in_use.get(k, ZERO).as_dict()} for k, n in sorted(self.nodes.items())}

    # -- granting -------------------------------------------------------------------------------

    def _classes(self, lane: bool) -> list[str]:
        """Waiting classes of a lane, smallest pass first (the heavier one on a tie)."""
        return sorted((c for c, q in self._queues[lane].items() if q),
                      key=lambda c: (self._pass[c], -self.weights[c]))

    def _next(self) -> tuple[bool, str, str | None] | None:
        """The lane and class whose first claim goes next, and its node; None when none can go."""
        for lane in (False, True):  # batch only once no real-time claim that could run waits
            for cls in self._classes(lane):
                head = self._queues[lane][cls][0]
                if self.nodes is not None and not self._acceptable(head[3]):  # its node left: park it
                    heapq.heappop(self._queues[lane][cls])
                    self._parked.append(head)
                    return self._next()
                ok, node = self._place(head[3])
                if ok:
                    return lane, cls, node
                if self.used >= self.capacity:
                    return None
        return None

    def _drain(self) -> None:
        if self._draining:  # a grant gave its slot straight back: the loop below goes on
            return
        self._draining = True
        try:
            while self._waiting and (found := self._next()) is not None:
                lane, cls, node = found
                _, _, grant, claim = heapq.heappop(self._queues[lane][cls])
                self._waiting -= 1
                self._now = self._pass[cls]
                self._pass[cls] += 1.0 / self.weights[cls]
                self.granted[cls] += 1
                self._take(claim, grant, node)
                grant()
        finally:
            self._draining = False
