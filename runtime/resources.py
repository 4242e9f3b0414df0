"""The ResourceManager: the cluster's nodes, capacity leased to coordinators, best-fit placement.

A coordinator (the *holder*) leases capacity per node in one call and renews it in the
background (see :class:`runtime.leases.LeaseKeeper`); its admission then places each
step on a leased node by itself, so no step waits for a call to the ResourceManager.
A lease not renewed within its TTL is reclaimed (its holder died), and a node that
leaves takes its leases with it. Everything here is plain Python: the Ray actor
(:mod:`actors.resource_manager`) feeds it Ray's node list; the in-process engine uses
one fixed local node.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from runtime.errors import ResourceRequestError
from runtime.seams import Demand

EPS = 1e-9
"""Slack for float sums of fractional CPUs (0.1 * 3 is not 0.3)."""
MAX_CPU = 1e6
"""No node has more cores than this: a larger demand is a mistake, refused at once."""
MAX_MEMORY_MB = 2**40
MAX_GPU = 1e4
__all__ = ["Capacity", "Grant", "Node", "ResourceManager", "ResourceRequestError", "best_fit", "check_fits",
           "largest", "local_node", "nodes_from_ray", "validate_demand"]

MAX_UNMET = 100
"""Unmet demands kept per holder (for the autoscaler's view): the first ones are enough to act on."""
DEFAULT_TTL_S = 30.0
"""How long a lease lasts unless renewed (holders renew every third of it)."""


class Capacity(NamedTuple):
    """An amount of CPU, memory and GPU (a node's size, a lease, what is in use).

    A named tuple, not a dataclass: placement makes several per step, and a tuple is the
    cheapest immutable value to build.
    """

    cpu: float = 0.0
    memory_mb: float = 0.0
    gpu: float = 0.0

    @staticmethod
    def of(demand: Demand) -> Capacity:
        """What a demand takes (kept per distinct demand: it is asked on every grant and release)."""
        return _capacity_of(demand)

    def __add__(self, other: Capacity) -> Capacity:  # type: ignore[override]
        return Capacity(self.cpu + other.cpu, self.memory_mb + other.memory_mb, self.gpu + other.gpu)

    def __sub__(self, other: Capacity) -> Capacity:
        return Capacity(self.cpu - other.cpu, self.memory_mb - other.memory_mb, self.gpu - other.gpu)

    def covers(self, other: Capacity) -> bool:
        """Whether ``other`` fits in this amount."""
        return (other.cpu <= self.cpu + EPS and other.memory_mb <= self.memory_mb + EPS
                and other.gpu <= self.gpu + EPS)

    def clamp(self, limit: Capacity) -> Capacity:
        """Each part at least 0 and at most ``limit``'s."""
        return Capacity(min(max(self.cpu, 0.0), limit.cpu), min(max(self.memory_mb, 0.0), limit.memory_mb),
                        min(max(self.gpu, 0.0), limit.gpu))

    def as_dict(self) -> dict[str, float]:
        return {"cpu": round(self.cpu, 6), "memory_mb": round(self.memory_mb, 3), "gpu": round(self.gpu, 6)}


ZERO = Capacity()


@functools.lru_cache(maxsize=4096)
def _capacity_of(demand: Demand) -> Capacity:
    return Capacity(float(demand.cpu), float(demand.memory_mb or 0), float(demand.gpu))


@dataclass(frozen=True, slots=True)
class Node:
    """One node of the cluster as the ResourceManager sees it.

    Attributes:
        node_id: Ray's node id (hex), or ``local`` in the in-process engine.
        total: Its CPU, memory (MiB) and GPU.
        capabilities: What it advertises (Ray resources ``capability:<name>``).
    """

    node_id: str
    total: Capacity
    capabilities: frozenset[str] = frozenset()

    def accepts(self, demand: Demand) -> bool:
        """Whether a step with this demand could ever run here (an empty node)."""
        return self.total.covers(Capacity.of(demand)) and self.capabilities.issuperset(demand.capabilities)


def validate_demand(demand: Demand, where: str = "a step") -> None:
    """Refuse a demand that is negative, not a number, or beyond any machine's size.

    Raises:
        ResourceRequestError: naming the field, its value and the rule.
    """
    for name, value, limit in (("cpu", demand.cpu, MAX_CPU), ("memory_mb", demand.memory_mb or 0, MAX_MEMORY_MB),
                               ("gpu", demand.gpu, MAX_GPU)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value < 0 or value > limit:
            raise ResourceRequestError(f"{where} asks for {name}={value!r}: resources must be numbers "
                                       f"from 0 to {limit:g}; fix the step's resources")


def best_fit(nodes: Sequence[Node], free: Mapping[str, Capacity], demand: Demand) -> str | None:
    """The node where ``demand`` fits leaving the least room (the tightest fit), or None.

    Room is the share of each asked-for part (CPU, memory, GPU) the node would have left,
    summed, so a small step fills a nearly full node before it starts an empty one; a node
    whose GPUs a CPU-only step would sit beside counts as a poor fit (GPUs are kept for the
    steps that need them). Ties go to the node with less CPU left, then to the node id, so
    placement is deterministic.
    """
    want = Capacity.of(demand)
    if len(nodes) == 1:  # one node (the in-process engine, a one-node cluster): nothing to compare
        node = nodes[0]
        room = free.get(node.node_id, ZERO)
        fits = room.covers(want) and node.capabilities.issuperset(demand.capabilities)
        return node.node_id if fits else None
    best, best_key = None, (math.inf, math.inf, "")
    for node in nodes:
        room = free.get(node.node_id, ZERO)
        if not room.covers(want) or not node.capabilities.issuperset(demand.capabilities):
            continue
        left, total = room - want, node.total
        score = (left.cpu / total.cpu if total.cpu else 0.0)
        if want.memory_mb:
            score += left.memory_mb / total.memory_mb
        if want.gpu:
            score += left.gpu / total.gpu
        elif total.gpu:
            score += 1.0
        key = (round(score, 9), round(left.cpu, 9), node.node_id)
        if key < best_key:
            best, best_key = node.node_id, key
    return best


def largest(nodes: Iterable[Node]) -> Capacity:
    """The largest of each part over the nodes (what a single step could at most get)."""
    top = ZERO
    for node in nodes:
        top = Capacity(max(top.cpu, node.total.cpu), max(top.memory_mb, node.total.memory_mb),
                       max(top.gpu, node.total.gpu))
    return top


def check_fits(sop: Any, nodes: Iterable[Node], scalable_shapes: Iterable[Node] = ()) -> None:
    """Refuse an SOP with a step no node can ever run, now or after autoscaling adds a node.

    Args:
        sop: The SOP (:class:`sop.Sop`); sub-SOP, agent and MCP steps take no capacity of their own
            (their work runs elsewhere: a child execution, an agent host, an MCP server).
        nodes: The cluster's nodes now.
        scalable_shapes: Node shapes the autoscaler could add (none by default).

    Raises:
        ResourceRequestError: naming the step, what it asks and the largest node's capacity.
    """
    nodes, shapes = list(nodes), list(scalable_shapes)
    for step in sop.steps:
        if step.handler == "agent" or step.handler.startswith(("sop:", "mcp:")):
            continue
        res = sop.effective_resources(step)
        demand = Demand(res.cpu, res.memory_mb or 0, res.gpu, tuple(res.capabilities))
        validate_demand(demand, f"step {step.id!r} of {sop.sop}")
        if not nodes or any(n.accepts(demand) for n in nodes + shapes):
            continue  # no node known yet (a cluster still starting): admission waits for one
        top = largest(nodes)
        asks = ", ".join(f"{k}={v:g}" for k, v in Capacity.of(demand).as_dict().items() if v) or "nothing"
        caps = f" and capabilities {list(demand.capabilities)}" if demand.capabilities else ""
        have = sorted({c for n in nodes for c in n.capabilities})
        raise ResourceRequestError(
            f"step {step.id!r} of {sop.sop} asks for {asks}{caps}, more than any node has and autoscaling "
            f"can add: the largest node has cpu={top.cpu:g}, memory_mb={top.memory_mb:.0f}, gpu={top.gpu:g}"
            + (f" (capabilities {have})" if demand.capabilities else "")
            + "; lower the step's resources or add a node that big")


def nodes_from_ray(ray_nodes: Iterable[Mapping[str, Any]]) -> list[Node]:
    """The alive nodes of ``ray.nodes()`` (memory in bytes there, MiB here)."""
    found = []
    for raw in ray_nodes:
        if not raw.get("Alive"):
            continue
        res = raw.get("Resources") or {}
        caps = frozenset(k.split(":", 1)[1] for k in res if k.startswith("capability:"))
        found.append(Node(raw["NodeID"], Capacity(float(res.get("CPU", 0.0)), res.get("memory", 0.0) / 2**20,
                                                  float(res.get("GPU", 0.0))), caps))
    return found


def local_node(cpu: float) -> Node:
    """The in-process engine's one node: ``cpu`` cores (its run slots: steps are threads) and this
    machine's memory, no GPU."""
    try:
        memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    except (ValueError, OSError, AttributeError):
        memory_mb = 4096.0
    return Node("local", Capacity(float(cpu), float(memory_mb), 0.0))


@dataclass
class _Holder:
    leases: dict[str, Capacity] = field(default_factory=dict)
    used: dict[str, Capacity] = field(default_factory=dict)
    unmet: tuple[Demand, ...] = ()
    expires: float = 0.0


@dataclass(frozen=True)
class Grant:
    """What a lease call returns: every node (for placement and the impossible-request check),
    this holder's lease per node, and how long it lasts."""

    nodes: tuple[Node, ...]
    lease: dict[str, Capacity]
    ttl_s: float


class ResourceManager:
    """Nodes and the leases of their capacity; see the module docstring.

    Args:
        nodes: The nodes to start with.
        ttl_s: How long a lease lasts unless renewed.
        clock: Monotonic time (tests pass a controllable one).
    """

    def __init__(self, nodes: Iterable[Node] = (), ttl_s: float = DEFAULT_TTL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.nodes: dict[str, Node] = {n.node_id: n for n in nodes}
        self.ttl_s, self.clock = ttl_s, clock
        self.holders: dict[str, _Holder] = {}

    def set_nodes(self, nodes: Iterable[Node]) -> None:
        """The cluster's nodes now: new ones join; leases on nodes that left are dropped."""
        self.nodes = {n.node_id: n for n in nodes}
        for holder in self.holders.values():
            holder.leases = {k: v.clamp(self.nodes[k].total) for k, v in holder.leases.items() if k in self.nodes}

    def free(self, exclude: str | None = None) -> dict[str, Capacity]:
        """Capacity per node that no holder (but ``exclude``) leases."""
        free = {k: n.total for k, n in self.nodes.items()}
        for name, holder in self.holders.items():
            if name != exclude:
                for k, v in holder.leases.items():
                    free[k] = free[k] - v
        return free

    def reclaim(self) -> list[str]:
        """Drop the leases of holders that did not renew in time; returns who lost theirs."""
        now = self.clock()
        gone = [name for name, h in self.holders.items() if h.expires < now]
        for name in gone:
            del self.holders[name]
        return gone

    def lease(self, holder: str, used: Mapping[str, Capacity] | None = None,
              unmet: Iterable[Demand] = ()) -> Grant:
        """Renew ``holder``'s lease, in one call for all its work.

        The holder keeps what it uses; queued demands it could not place are placed (best fit) on
        capacity nobody leases; and while no other holder has unmet demand, it also gets every
        unleased unit as headroom, so its next steps start without asking. With several holders,
        headroom beyond what a holder uses is given back once another holder waits.

        Args:
            holder: Who leases (a coordinator's id).
            used: Per node, what the holder's running steps take now.
            unmet: Demands it has queued that fit none of its leased nodes.
        """
        self.reclaim()
        unmet = list(unmet)
        for d in unmet:
            validate_demand(d, "a leased demand")
        for k, v in (used or {}).items():  # what a holder says it uses becomes its lease: numbers only
            validate_demand(Demand(v[0], v[1], v[2]), f"the use reported on node {k!r}")
        mine = self.holders.setdefault(holder, _Holder())
        mine.used = {k: v.clamp(self.nodes[k].total) for k, v in (used or {}).items() if k in self.nodes}
        mine.unmet = tuple(unmet[:MAX_UNMET])
        others_wait = any(h.unmet for name, h in self.holders.items() if name != holder)
        # Start from what it uses (or, when nobody else waits, all it held): never less than in use.
        keep = dict(mine.used) if others_wait else {
            k: v for k, v in mine.leases.items() if k in self.nodes}
        for k, v in mine.used.items():
            had = keep.get(k, ZERO)
            keep[k] = Capacity(max(had.cpu, v.cpu), max(had.memory_mb, v.memory_mb), max(had.gpu, v.gpu))
        mine.leases = {}
        others = self.free()  # total minus the other holders' leases: ours may not reach into theirs
        mine.leases = {k: v.clamp(others[k].clamp(self.nodes[k].total)) for k, v in keep.items()}
        free = self.free(exclude=None)
        free = {k: v.clamp(self.nodes[k].total) for k, v in free.items()}  # another's over-use is not ours
        nodes = sorted(self.nodes.values(), key=lambda n: n.node_id)
        for demand in sorted(unmet, key=lambda d: (-d.gpu, -d.cpu, -(d.memory_mb or 0))):
            where = best_fit(nodes, free, demand)
            if where is not None:
                want = Capacity.of(demand)
                mine.leases[where] = mine.leases.get(where, ZERO) + want
                free[where] = free[where] - want
        if not others_wait:
            for k, v in free.items():
                if v.cpu > EPS or v.memory_mb > EPS or v.gpu > EPS:
                    mine.leases[k] = mine.leases.get(k, ZERO) + v
        mine.expires = self.clock() + self.ttl_s
        return Grant(tuple(nodes), dict(mine.leases), self.ttl_s)

    def unmet(self) -> list[Demand]:
        """Demands holders have queued that no node has room for (what the autoscaler should add)."""
        return [d for holder in self.holders.values() for d in holder.unmet]

    def release(self, holder: str) -> None:
        """The holder stops (its engine shuts down): its leases go back at once."""
        self.holders.pop(holder, None)

    def utilisation(self) -> dict[str, dict[str, Any]]:
        """Per node: its total, what is leased, and what running steps use (all holders)."""
        out: dict[str, dict[str, Any]] = {}
        for k, node in sorted(self.nodes.items()):
            leased = used = ZERO
            for holder in self.holders.values():
                leased = leased + holder.leases.get(k, ZERO)
                used = used + holder.used.get(k, ZERO)
            out[k] = {"total": node.total.as_dict(), "leased": leased.as_dict(), "used": used.as_dict(),
                      "capabilities": sorted(node.capabilities)}
        return out
