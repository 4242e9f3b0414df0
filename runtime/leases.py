"""Keeps a coordinator's lease on the cluster's capacity: renewed in the background, in one call.

The admission places steps on leased capacity by itself; this keeper renews the
lease every third of its TTL, and sooner (at most every ``MIN_INTERVAL_S``) when
queued steps fit none of the leased nodes, so a step never waits on a call to the
ResourceManager and the ResourceManager is asked once for many steps.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any

from runtime.resources import Grant, Node, ResourceManager

log = logging.getLogger("sopflow.leases")

MIN_INTERVAL_S = 0.5
"""Early renewals (for unmet demand) are at least this far apart: one call covers a burst of steps."""
UNMET_RETRY_S = 2.0
"""While queued steps fit no leased node, the lease is renewed at least this often (a node joining,
or another holder giving capacity back, shows up within it)."""
FIRST_LEASE_TIMEOUT_S = 30.0
"""How long a starting coordinator waits for its first lease before it runs on run slots alone."""

LeaseSource = Callable[[str, dict, list], "Grant | Awaitable[Grant]"]
"""``(holder, used per node, unmet demands) -> Grant``: the ResourceManager's ``lease``, direct or over Ray."""


def direct(manager: ResourceManager) -> LeaseSource:
    """A lease source calling a plain ResourceManager in this process (the in-process engine)."""
    return manager.lease


class LeaseKeeper:
    """Renews ``holder``'s lease from ``source`` and hands each grant to the admission.

    Args:
        admission: The coordinator's :class:`runtime.admission.LocalAdmission`.
        source: Where leases come from.
        holder: The coordinator's id (the same across its restarts, so it keeps its lease).
    """

    def __init__(self, admission: Any, source: LeaseSource, holder: str) -> None:
        self.admission, self.source, self.holder = admission, source, holder
        self.nodes: list[Node] | None = None
        """The cluster's nodes as of the last lease (None before the first)."""
        self.renewals = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._ttl_s = 30.0
        admission.wake = self._wake.set

    async def start(self) -> None:
        """Take the first lease (so recovered steps are placed), then keep renewing in the background."""
        if self._task is not None:
            return
        try:
            await asyncio.wait_for(self.sync(), FIRST_LEASE_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - no lease yet: steps run on run slots until one comes
            log.exception("no lease from the ResourceManager yet; steps are admitted by run slots alone")
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def sync(self) -> Grant:
        """Renew now: report what is in use and what waits unplaced; take the new lease."""
        adm = self.admission
        answer = self.source(self.holder, dict(adm.in_use), adm.unmet())
        grant = await answer if inspect.isawaitable(answer) else answer
        self.nodes = list(grant.nodes)
        self._ttl_s = grant.ttl_s
        self.renewals += 1
        adm.set_lease(grant)
        return grant

    async def _run(self) -> None:
        while True:
            try:
                every = self._ttl_s / 3
                if self.admission.unmet():
                    every = min(every, UNMET_RETRY_S)
                await asyncio.wait_for(self._wake.wait(), every)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the lease holds until its TTL; the next try may work
                log.warning("renewing the lease failed; trying again", exc_info=True)
            await asyncio.sleep(MIN_INTERVAL_S)  # a throttle, not a wait for a condition

    def stop(self) -> None:
        """Stop renewing (the lease then expires, or the caller releases it)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None


def local_source(slots: int, ttl_s: float) -> LeaseSource:
    """The in-process engine's ResourceManager: one fixed local node with as many CPUs as run slots
    (or cores, if more: its steps are threads) and this machine's memory."""
    import os

    from runtime.resources import local_node

    return direct(ResourceManager([local_node(max(slots, os.cpu_count() or 1))], ttl_s=ttl_s))


def check_requests(keeper: LeaseKeeper | None, requests: list[Any], scalable_shapes: list[Node]) -> None:
    """Refuse requests with a step no node can run (see :func:`runtime.resources.check_fits`)."""
    if keeper is None:
        return
    from runtime.resources import check_fits

    seen: set[int] = set()
    for request in requests:  # a batch shares one SOP object: check it once
        if id(request.sop) not in seen:
            seen.add(id(request.sop))
            check_fits(request.sop, keeper.nodes or (), scalable_shapes)


def resources_view(admission: Any, keeper: LeaseKeeper | None) -> dict[str, Any]:
    """What ``sopflow resources`` and ``engine.info()`` show: per node total, leased and used; the queue."""
    if keeper is None:
        return {"enabled": False, "nodes": {}, "queued": admission.queued, "running": admission.used}
    return {"enabled": True, "nodes": admission.utilisation(), "queued": admission.queued,
            "running": admission.used, "renewals": keeper.renewals,
            "holding": {k: {"batch": h.batch, "priority_class": h.priority_class, "count": h.count,
                            "cpu": h.demand.cpu, "memory_mb": h.demand.memory_mb, "gpu": h.demand.gpu}
                        for k, h in sorted(admission.holding().items())[:100]}}
