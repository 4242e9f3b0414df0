"""When to ask the cluster's autoscaler for more capacity, and when to let it go (pure policy, no Ray).

:class:`ScalingPolicy` is fed an observation at a time — the cluster's :class:`Usage` and the
:class:`runtime.seams.Demand` of every attempt waiting for capacity — and answers with an
:class:`Action` when the standing request to the autoscaler should change:

- **Up**: while attempts wait for capacity, or utilisation stays above
  ``EngineConfig.scale_up_utilisation`` (80%), for ``scale_up_after_s``: ask for what runs now
  plus what waits (shaped like the waiting demands), with headroom that brings the busiest
  resource back to the middle of the band when the trigger was utilisation.
- **Down**: utilisation below ``scale_down_utilisation`` (30%) with nothing waiting for more than
  ``scale_down_after_s`` (5 minutes): withdraw the request. That only lets the autoscaler remove
  *idle* nodes (it never stops a node with work on it), so scaling down never interrupts a step.

Hysteresis: the thresholds leave a dead band between them; both directions need their
condition to hold without a break for their duration (one observation outside resets it); and
a request is sent again only when it would ask for more than the one standing, so the policy
neither flaps nor repeats itself. The clock is the caller's (monotonic seconds), so tests can
drive hundreds of load traces without waiting.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from runtime.seams import Demand

if TYPE_CHECKING:
    from runtime.config import EngineConfig
    from runtime.resources import Node

MAX_BUNDLES = 1000
"""The most bundles one request carries: past this many the autoscaler is at its ``max_workers``
anyway, and a huge queue must not make every request (a GCS write) huge."""

MEMORY_UNIT_MB = 1024
"""Memory in use is asked for in units of this many MiB (one GiB fits on any node)."""

Bundle = dict[str, float]
"""One resource shape, as Ray's ``request_resources(bundles=...)`` takes it: it must fit on one node."""


@dataclass(frozen=True, slots=True)
class Usage:
    """The cluster's capacity and how much of it is taken (leased by running work), per resource.

    Attributes:
        cpu_total: CPUs of all alive nodes.
        cpu_used: CPUs taken.
        memory_mb_total: Schedulable memory of all nodes, MiB.
        memory_mb_used: Memory reserved by running work, MiB.
        gpu_total: GPUs of all nodes.
        gpu_used: GPUs taken.
    """

    cpu_total: float = 0.0
    cpu_used: float = 0.0
    memory_mb_total: float = 0.0
    memory_mb_used: float = 0.0
    gpu_total: float = 0.0
    gpu_used: float = 0.0

    def fraction(self) -> float:
        """The busiest resource's share in use (0 to 1; 0 when the cluster has no capacity).

        The dominant share: a cluster whose CPUs are all taken is full however much memory is free,
        and one is idle only when every resource is.
        """
        shares = [min(1.0, max(0.0, used / total)) for used, total in (
            (self.cpu_used, self.cpu_total), (self.memory_mb_used, self.memory_mb_total),
            (self.gpu_used, self.gpu_total)) if total > 0]
        return max(shares, default=0.0)

    @classmethod
    def from_ray(cls, total: Mapping[str, float], available: Mapping[str, float]) -> Usage:
        """From ``ray.cluster_resources()`` and ``ray.available_resources()`` (memory in bytes)."""
        def used(name: str) -> float:
            return max(0.0, float(total.get(name, 0.0)) - float(available.get(name, 0.0)))

        mib = 1024 * 1024
        return cls(float(total.get("CPU", 0.0)), used("CPU"), float(total.get("memory", 0.0)) / mib,
                   used("memory") / mib, float(total.get("GPU", 0.0)), used("GPU"))


@dataclass(frozen=True, slots=True)
class Action:
    """A new standing request for the autoscaler.

    Attributes:
        bundles: Resource shapes the cluster should be able to hold at once (empty: withdraw the
            request, so idle nodes may go).
        reason: Why, in words (for the log and ``sopflow`` status).
    """

    bundles: tuple[Bundle, ...]
    reason: str

    @property
    def withdraw(self) -> bool:
        """The request is withdrawn (no bundles)."""
        return not self.bundles


@dataclass(slots=True)
class ScalingPolicy:
    """Decides, one observation at a time, when the standing autoscaler request changes.

    Args:
        up_utilisation: Above this share (sustained) ask for more.
        down_utilisation: Below this share (with nothing waiting, sustained) withdraw the request.
        up_after_s: How long the pressure must last before asking.
        down_after_s: How long the quiet must last before withdrawing (strictly more than this).

    Attributes:
        requested: The standing request as last sent; ``None`` while unknown (at start: a previous
            life may have left one, so the first quiet period withdraws it).
    """

    up_utilisation: float = 0.8
    down_utilisation: float = 0.3
    up_after_s: float = 30.0
    down_after_s: float = 300.0
    requested: tuple[Bundle, ...] | None = None
    _busy_since: float | None = field(default=None, init=False, repr=False)
    _quiet_since: float | None = field(default=None, init=False, repr=False)
    _last: float | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.down_utilisation < self.up_utilisation <= 1:
            raise ValueError(f"utilisation thresholds must satisfy 0 < down ({self.down_utilisation}) < up "
                             f"({self.up_utilisation}) <= 1, or scaling would flap")
        if not (0 <= self.up_after_s < float("inf") and 0 <= self.down_after_s < float("inf")):
            raise ValueError(f"durations must be seconds >= 0, got up_after_s={self.up_after_s}, "
                             f"down_after_s={self.down_after_s}")

    @classmethod
    def from_config(cls, config: EngineConfig) -> ScalingPolicy:
        """The policy with the thresholds and durations of ``config``."""
        return cls(config.scale_up_utilisation, config.scale_down_utilisation, config.scale_up_after_s,
                   config.scale_down_after_s)

    def observe(self, now: float, usage: Usage, unmet: Sequence[Demand]) -> Action | None:
        """Take one observation; return the new request when it should change, else ``None``.

        Args:
            now: Monotonic seconds. A clock that went back restarts both durations (no credit).
            usage: The cluster's capacity and use now.
            unmet: What each attempt waiting for capacity needs.
        """
        if self._last is not None and now < self._last:
            self._busy_since = self._quiet_since = None
        self._last = now
        share = usage.fraction()
        busy = bool(unmet) or share > self.up_utilisation
        quiet = not unmet and share < self.down_utilisation
        self._busy_since = (self._busy_since if self._busy_since is not None else now) if busy else None
        self._quiet_since = (self._quiet_since if self._quiet_since is not None else now) if quiet else None
        if busy and now - self._busy_since >= self.up_after_s:
            headroom = share > self.up_utilisation
            target = request_for(usage, unmet, (self.up_utilisation + self.down_utilisation) / 2 if headroom
                                 else 1.0)
            if target and (self.requested is None or asks_more(target, self.requested)):
                self.requested = target
                why = [f"{len(unmet)} attempt(s) waiting for capacity"] if unmet else []
                why += [f"utilisation {share:.0%} above {self.up_utilisation:.0%}"] if headroom else []
                return Action(target, " and ".join(why) + f" for {now - self._busy_since:.0f} s")
            return None  # the standing request covers it: its nodes are on their way
        if quiet and now - self._quiet_since > self.down_after_s and self.requested != ():
            self.requested = ()
            return Action((), f"utilisation {share:.0%} below {self.down_utilisation:.0%} with nothing "
                              f"waiting for {now - self._quiet_since:.0f} s")
        return None

    def forget(self) -> None:
        """The last request may not have reached the autoscaler: treat the standing one as unknown."""
        self.requested = None


def totals(bundles: Sequence[Bundle]) -> dict[str, float]:
    """What ``bundles`` add up to, per resource."""
    out: dict[str, float] = {}
    for bundle in bundles:
        for name, amount in bundle.items():
            out[name] = out.get(name, 0.0) + amount
    return out


def asks_more(new: Sequence[Bundle], old: Sequence[Bundle]) -> bool:
    """``new`` asks for more of some resource (a capability included) than ``old``."""
    before = totals(old)
    return any(amount > before.get(name, 0.0) + 1e-9 for name, amount in totals(new).items())


def request_for(usage: Usage, unmet: Sequence[Demand], target_share: float = 1.0) -> tuple[Bundle, ...]:
    """The request that holds what runs now (grown so it would fill ``target_share``) plus what waits.

    The autoscaler fits a request against the cluster's *total* capacity (running work is not
    subtracted), so it must include what runs: as units of 1 CPU, 1 GPU and 1 GiB of memory,
    because the running work's own shapes are not known here and a unit fits on any node.
    """
    units: list[Bundle] = []
    for name, used, unit in (("CPU", usage.cpu_used, 1.0), ("GPU", usage.gpu_used, 1.0),
                             ("memory", usage.memory_mb_used / MEMORY_UNIT_MB, float(MEMORY_UNIT_MB * 2**20))):
        units += [{name: unit} for _ in range(math.ceil(round(used / target_share, 6)))]
    return tuple((units + bundles_for(unmet))[:MAX_BUNDLES])


def bundle_of(demand: Demand) -> Bundle:
    """``demand`` as a Ray resource shape (capabilities are Ray resources ``capability:<name>``)."""
    bundle: Bundle = {}
    if demand.cpu > 0:
        bundle["CPU"] = float(demand.cpu)
    if demand.gpu > 0:
        bundle["GPU"] = float(demand.gpu)
    if demand.memory_mb > 0:
        bundle["memory"] = float(demand.memory_mb * 1024 * 1024)
    for capability in demand.capabilities:
        bundle[f"capability:{capability}"] = 0.001  # the amount a step asks for (actors/_ray_runner.py)
    return bundle


def bundles_for(unmet: Sequence[Demand]) -> list[Bundle]:
    """The waiting demands as bundles, small CPU-only ones packed together up to one CPU.

    Packing keeps a queue of ten thousand 0.1-CPU steps a request of a thousand bundles, not
    ten thousand; demands with a GPU or of a CPU or more keep their own shape (they must fit
    on one node as they are).
    """
    out: list[Bundle] = []
    open_bins: dict[tuple[str, ...], Bundle] = {}
    for demand in unmet:
        bundle = bundle_of(demand)
        if not bundle:
            continue
        if demand.gpu > 0 or demand.cpu >= 1.0 or demand.cpu <= 0:
            out.append(bundle)
            continue
        key = demand.capabilities
        bin_ = open_bins.get(key)
        if bin_ is None or bin_["CPU"] + demand.cpu > 1.0 + 1e-9:
            bin_ = open_bins[key] = dict(bundle)  # next fit: the full bin stays in ``out`` as it is
            out.append(bin_)
            continue
        bin_["CPU"] += demand.cpu
        if "memory" in bundle:
            bin_["memory"] = bin_.get("memory", 0.0) + bundle["memory"]
    return out


AUTOSCALER_CONFIG = "~/ray_bootstrap_config.yaml"
"""Where ``ray up`` leaves the cluster's autoscaling config on the head node (see cluster.yaml)."""


def scalable_shapes(path: str = AUTOSCALER_CONFIG) -> list[Node]:
    """The node shapes Ray's autoscaler may add, from its config's ``available_node_types``.

    A step that fits one of them is not refused at submit as impossible: it waits, and the scaler
    asks for it. No config (a cluster without an autoscaler) or an unreadable one means no shapes.
    """
    import os

    import yaml

    from runtime.resources import Capacity, Node

    try:
        with open(os.path.expanduser(path), encoding="utf-8") as f:
            config = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return []
    types = config.get("available_node_types") if isinstance(config, dict) else None
    shapes = []
    for name, spec in (types or {}).items():
        res = spec.get("resources") if isinstance(spec, dict) else None
        if not isinstance(res, dict) or not spec.get("max_workers", 1):
            continue
        try:
            # a type that does not declare its memory gets what its machine has: unknown here, so unbounded
            memory_mb = float(res["memory"]) / 2**20 if "memory" in res else math.inf
            total = Capacity(float(res.get("CPU", 0)), memory_mb, float(res.get("GPU", 0)))
        except (TypeError, ValueError):
            continue
        caps = frozenset(k.split(":", 1)[1] for k in res if isinstance(k, str) and k.startswith("capability:"))
        shapes.append(Node(f"autoscaler:{name}", total, caps))
    return shapes
