"""The autoscaling loop on Ray: reads the cluster's use, feeds the policy, sends its requests to Ray's autoscaler.

Every ``EngineConfig.scale_check_every_s`` the :class:`Scaler` actor (``sopflow-scaler``, on the
head node, created by :class:`actors.Actors` when ``autoscale`` is on) reads what the cluster
holds and has taken (``ray.cluster_resources()``/``available_resources()``) and what the
coordinator's queued attempts need (one call: ``waiting_demands``), hands both to
:class:`runtime.scaling.ScalingPolicy`, and applies its answer with
``ray.autoscaler.sdk.request_resources``. It runs beside the coordinator, never on its hot path.

The seam is :meth:`_Scaler.read`: a ResourceManager that knows leases and queued claims can feed
the same policy instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import ray

from runtime.config import EngineConfig
from runtime.scaling import Action, ScalingPolicy, Usage
from runtime.seams import Demand

log = logging.getLogger(__name__)

NAME = "sopflow-scaler"
KEPT_ACTIONS = 100
"""Requests and withdrawals remembered for :meth:`_Scaler.status` (newest last)."""
CALL_TIMEOUT_S = 30.0


def request_resources(bundles: list[dict[str, float]]) -> None:
    """The standing request to Ray's autoscaler, replacing the previous one (``[]`` withdraws it)."""
    from ray.autoscaler.sdk import request_resources as ask

    ask(bundles=bundles)


class _Scaler:
    """Plain class behind the Scaler actor: one :meth:`tick` reads, decides and applies.

    Args:
        namespace: The engine's Ray namespace (where its coordinator lives).
        config: The engine's configuration (the policy's thresholds and durations).
        clock: Monotonic seconds (the policy's durations are measured on it).
        apply: Sends a request to the autoscaler (tests may pass a recorder).
    """

    def __init__(self, namespace: str, config: EngineConfig | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 apply: Callable[[list[dict[str, float]]], None] = request_resources) -> None:
        self.namespace = namespace
        self.config = config or EngineConfig()
        self.policy = ScalingPolicy.from_config(self.config)
        self.clock = clock
        self.apply = apply
        self.actions: deque[dict[str, Any]] = deque(maxlen=KEPT_ACTIONS)
        self.last: dict[str, Any] | None = None
        """The last observation (``usage``, ``waiting``), for :meth:`status`."""

    def read(self) -> tuple[Usage, list[Demand]] | None:
        """The cluster's use and the waiting attempts' demands; ``None`` when the coordinator cannot be
        asked (then nothing is decided: a queue it could not report must not look like a quiet cluster)."""
        try:
            coordinator = ray.get_actor("sopflow-coordinator", namespace=self.namespace)
            waiting = ray.get(coordinator.waiting_demands.remote(), timeout=CALL_TIMEOUT_S)
        except Exception as e:  # noqa: BLE001 - restarting, or not created yet: ask again next period
            log.info("scaler: the coordinator did not answer (%s); no decision this period", type(e).__name__)
            return None
        return Usage.from_ray(ray.cluster_resources(), ray.available_resources()), waiting

    def tick(self) -> Action | None:
        """One observation: read, decide, and send any new request."""
        seen = self.read()
        if seen is None:
            return None
        usage, waiting = seen
        now = self.clock()
        self.last = {"at": time.time(), "utilisation": usage.fraction(), "waiting": len(waiting)}
        action = self.policy.observe(now, usage, waiting)
        if action is None:
            return None
        try:
            self.apply([dict(b) for b in action.bundles])
        except Exception:  # noqa: BLE001 - the GCS is unreachable: decide again from scratch next period
            log.exception("scaler: could not send the request to the autoscaler")
            self.policy.forget()
            return None
        self.actions.append({"at": time.time(), "withdraw": action.withdraw, "bundles": len(action.bundles),
                             "cpu": sum(b.get("CPU", 0.0) for b in action.bundles), "reason": action.reason})
        log.info("scaler: %s (%s)", "withdrew the request" if action.withdraw
                 else f"asked for {len(action.bundles)} bundle(s)", action.reason)
        return action

    def status(self) -> dict[str, Any]:
        """What the scaler saw last and what it asked for (its last ``KEPT_ACTIONS`` actions)."""
        requested = self.policy.requested
        return {"last": self.last, "actions": list(self.actions),
                "requested": None if requested is None else [dict(b) for b in requested]}


class Scaler(_Scaler):
    """The scaler as a Ray actor: its loop starts as soon as it exists (again after Ray restarts it)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._loop = asyncio.get_running_loop().create_task(self._run())  # Ray runs __init__ in the loop

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.tick)  # Ray calls block: keep the actor's loop free for status
            except Exception:  # noqa: BLE001 - one bad period must not stop scaling for good
                log.exception("scaler: a check failed")
            await asyncio.sleep(self.config.scale_check_every_s)  # the period of the check, not a wait for a condition

    async def status(self) -> dict[str, Any]:  # type: ignore[override]
        return _Scaler.status(self)

    async def withdraw(self) -> None:
        """Withdraw the standing request (the engine's actors are being removed: idle nodes may go)."""
        self._loop.cancel()
        await asyncio.to_thread(self.apply, [])
        self.policy.requested = ()

    def __repr__(self) -> str:
        return f"Scaler(requested={'unknown' if self.policy.requested is None else len(self.policy.requested)})"
