"""Thin Ray fronts over the plain actor classes: creation by name, calls, error conversion.

Actors are detached, named, and live in one namespace, so executions outlive the
client that submitted them and any client finds the same actors again.
"""

from __future__ import annotations

import gc
import os
import threading
import time
import uuid
from typing import Any

import ray

from actors._api import _Api
from actors._coordinator import _Coordinator
from actors._triggers import TriggerActor
from actors._metrics import RayMetrics, ray_resources
from actors.scaler import NAME as SCALER, Scaler
from actors.resource_manager import resource_manager
from runtime.config import RESTART_GRACE_S, EngineConfig
from runtime.errors import EngineStartError, EngineUnavailable
from runtime.failure_handler import FailureHandler as _FailureHandler
from runtime.monitor import ExecutionMonitor as _ExecutionMonitor
from sop.errors import SopflowError

NAMESPACE = "sopflow"


def call(ref: Any, timeout: float | None = None) -> Any:
    """``ray.get`` that re-raises our own errors as themselves and Ray's as EngineUnavailable."""
    try:
        return ray.get(ref, timeout=timeout)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, SopflowError):
            raise cause from None
        if isinstance(cause, (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)):
            # An actor called another one that is gone (e.g. the coordinator its monitor): say so.
            raise EngineUnavailable(f"sopflow's actors cannot be reached: {_creation_error(cause)}; "
                                    "check the state file and the Ray logs (`ray status`)") from None
        raise
    except ray.exceptions.ActorDiedError as e:
        if e.actor_init_failed:  # starting again will fail the same way: say why, once
            raise EngineStartError(f"sopflow's actors could not start: {_creation_error(e)}; check the state "
                                   "file (Engine.local(state=...) or $SOPFLOW_STATE) and the Ray logs") from None
        raise EngineUnavailable(f"sopflow's actors cannot be reached: {type(e).__name__}; "
                                "is the Ray cluster up? (`ray status`)") from e
    except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
        raise EngineUnavailable(f"sopflow's actors cannot be reached: {type(e).__name__}; "
                                "is the Ray cluster up? (`ray status`)") from e


def _creation_error(e: BaseException) -> str:
    """The last line of the error the actor's ``__init__`` raised (the cause, not Ray's wrapping)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    ours = [line for line in lines if "Error:" in line and not line.startswith(("ray.", "File "))]
    return (ours or lines or [type(e).__name__])[-1]


def _actor(cls: type, name: str, namespace: str, *args: Any, **options: Any) -> Any:
    return ray.remote(cls).options(
        name=name, namespace=namespace, lifetime="detached", get_if_exists=True,
        num_cpus=0, max_restarts=-1, max_task_retries=0, **options).remote(*args)


class Coordinator(_Coordinator):
    """The coordinator as a Ray actor: recovers from the log as soon as it (re)starts.

    The class name is what the Ray dashboard, ``ray list actors`` and the process title
    (``ray::Coordinator``) show.
    """

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        _control_plane_process()
        # Also runs after Ray restarts a crashed coordinator: nothing else would start its recovery.
        threading.Thread(target=_recover_when_served, args=(ray.get_runtime_context().current_actor,),
                         name="sopflow-recover", daemon=True).start()

    def __repr__(self) -> str:  # Ray prefixes the actor's log lines with it
        # Ray may ask even when __init__ failed half way (a bad state file): never raise here.
        config, executions = getattr(self, "config", None), getattr(self, "executions", None)
        state = config.state if config is not None else "?"
        return f"Coordinator({state}, {len(executions) if executions is not None else 0} executions)"


def _recover_when_served(handle: Any, patience_s: float = 120.0) -> None:
    """Ask the coordinator to recover once Ray serves its calls.

    A call sent from ``__init__`` of a restarted actor may fail with "the actor is
    restarting" (Ray has not marked it alive yet): ask again until it is taken.
    """
    deadline = time.monotonic() + patience_s
    while True:
        try:
            ray.get(handle.recover.remote())
            return
        except (ray.exceptions.ActorUnavailableError, ray.exceptions.RayActorError):
            if time.monotonic() > deadline:
                return  # not served in all that time: the first client call recovers it (ready())
            time.sleep(0.2)  # back-off while Ray marks the actor alive
        except Exception:  # noqa: BLE001 - recovery logs its own failures; a client call retries it
            return


class ExecutionMonitor(_ExecutionMonitor):
    """The monitor as a Ray actor (named so in the dashboard), exporting Ray metrics."""

    def __init__(self, config: EngineConfig | None = None) -> None:
        super().__init__(config, RayMetrics((config or EngineConfig()).metrics_sop_labels))
        self.resources = ray_resources
        _control_plane_process()

    def __repr__(self) -> str:  # Ray prefixes the actor's log lines with it
        return f"ExecutionMonitor({len(getattr(self, 'states', ()))} executions)"


class FailureHandler(_FailureHandler):
    """The failure handler as a Ray actor (named so in the dashboard)."""

    def __repr__(self) -> str:
        return "FailureHandler()"


class HttpApi(_Api):
    """The HTTP API as a Ray actor: it starts serving on the actor's event loop as soon as it exists
    (again after Ray restarts it)."""

    def __init__(self, *args: Any) -> None:
        import asyncio

        super().__init__(*args)
        self._serving = asyncio.get_running_loop().create_task(self.start())  # Ray runs __init__ in the loop

    async def ready(self) -> dict[str, Any]:
        """``info()`` once the server has started (or failed to)."""
        await self._serving
        return await self.info()

    def __repr__(self) -> str:
        return f"HttpApi({getattr(self, 'url', None) or 'not listening'})"


ACTOR_PRIORITY = int(os.environ.get("SOPFLOW_ACTOR_PRIORITY", "5"))
"""How far above normal CPU priority the coordinator and monitor ask to run (``0``: normal)."""


def _control_plane_process() -> None:
    """Every step and every status query goes through these actors: on a saturated node they
    should get the CPU before step handlers do. Raising priority needs the right to (root or
    CAP_SYS_NICE); without it the actor runs at normal priority."""
    _calm_gc()
    if ACTOR_PRIORITY <= 0 or not hasattr(os, "setpriority"):
        return
    try:  # Linux keeps a priority per thread: raise every thread of the process (the loop's too)
        threads = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        threads = [0]
    for tid in threads:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, -ACTOR_PRIORITY)
        except OSError:  # not permitted here: stay at normal priority
            return


def _calm_gc() -> None:
    """Long-lived actors hold many small objects: move what exists now out of the collector's
    way and collect the young generation less often (full collections stalled the loop)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


HEAD_NODE = {"node:__internal_head__": 0.001}
"""The state file lives on the head node; so do the actors that open it."""


class Actors:
    """Handles to the coordinator, monitor and failure handler of one namespace."""

    def __init__(self, namespace: str = NAMESPACE, config: EngineConfig | None = None) -> None:
        self.namespace = namespace
        config = config or EngineConfig()
        placement = {"resources": HEAD_NODE} if config.durable else {}
        self.monitor = _actor(ExecutionMonitor, "sopflow-monitor", namespace, config,
                              max_concurrency=1000, **placement)
        self.failure_handler = _actor(FailureHandler, "sopflow-failure-handler", namespace,
                                      max_concurrency=1000)
        # The owner id of the state file's lease: Ray passes the same arguments to a coordinator
        # it restarts, so a restarted coordinator is the same owner and recovers at once.
        owner = f"{namespace}/{uuid.uuid4().hex}"
        self.coordinator = _actor(Coordinator, "sopflow-coordinator", namespace, self.monitor,
                                  self.failure_handler, config, None, owner, namespace, max_concurrency=100_000,
                                  **placement)
        self.api = _actor(HttpApi, "sopflow-api", namespace, namespace, config, resources=HEAD_NODE)
        # Keeps its records in the coordinator's store, so it needs no placement of its own.
        self.triggers = _actor(TriggerActor, "sopflow-triggers", namespace, self.coordinator, config)
        # On the head: a node that holds an actor is never idle, and the head is never scaled away.
        self.scaler = _actor(Scaler, SCALER, namespace, namespace, config, resources=HEAD_NODE) \
            if config.autoscale else None
        # Created by the coordinator when it first leases; here too, so `kill` always finds it.
        self.resource_manager = resource_manager(namespace, config.resource_lease_ttl_s)

    def kill(self) -> None:
        """Remove the actors; executions resume from the event log when they are created again.

        The coordinator first closes its state file, so another engine may take it at once.
        """
        try:  # first: no fire goes to a coordinator that is closing its store
            ray.kill(self.triggers, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
        try:
            ray.get(self.coordinator.close_store.remote(), timeout=30)
        except Exception:  # noqa: BLE001 - dead or unreachable: its lease expires, or its pid is gone
            pass
        try:  # removes its discovery file
            ray.get(self.api.stop.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - already gone: a stale file names a dead pid, which clients skip
            pass
        scaler = self._scaler()
        if scaler is not None:  # its request would keep nodes up for engines that are gone
            try:
                ray.get(scaler.withdraw.remote(), timeout=30)
            except Exception:  # noqa: BLE001 - unreachable: the request stays until another scaler replaces it
                pass
        for handle in (self.coordinator, self.monitor, self.failure_handler, self.api, self.resource_manager,
                       *self._agent_hosts(), *([scaler] if scaler is not None else [])):
            ray.kill(handle, no_restart=True)

    def _scaler(self) -> Any:
        """The scaler actor of the namespace, if any engine created one (``autoscale`` on)."""
        try:
            return ray.get_actor(SCALER, namespace=self.namespace)
        except ValueError:
            return None

    def _agent_hosts(self) -> list[Any]:
        """The agent host actors the coordinator started (``sopflow-agent-host-<i>``) and their shared
        model rate limiter (``sopflow-model-limiter``), if any."""
        found = []
        try:
            found.append(ray.get_actor("sopflow-model-limiter", namespace=self.namespace))
        except ValueError:
            pass
        for i in range(64):  # EngineConfig.agent_hosts is at most 64
            try:
                found.append(ray.get_actor(f"sopflow-agent-host-{i}", namespace=self.namespace))
            except ValueError:
                break
        return found


class RayConnection:
    """How an :class:`runtime.Engine` reaches sopflow's actors on a Ray cluster (``sopflow.connections``: ``ray``).

    Every call is safe to repeat (submissions carry an idempotency key): one caught in a
    coordinator crash is sent again, while Ray restarts the actor, for ``RESTART_GRACE_S``.
    """

    def __init__(self, namespace: str = NAMESPACE, config: EngineConfig | None = None) -> None:
        if not ray.is_initialized():
            from runtime.errors import SubmissionError

            raise SubmissionError("Ray is not initialised; use Engine.local() or Engine.connect(address)")
        self.actors = Actors(namespace, config)

    def call(self, target: str, method: str, *args: Any, timeout: float | None = None) -> Any:
        handle = getattr(getattr(self.actors, target), method)
        deadline = time.monotonic() + RESTART_GRACE_S
        while True:
            try:
                return call(handle.remote(*args), timeout)
            except EngineStartError:
                raise  # a restart would fail the same way
            except EngineUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)  # back-off between attempts while Ray restarts the actor

    def job_runtime_env(self) -> dict[str, Any] | None:
        """This client's runtime_env (its ``working_dir`` ...): the steps it submits run with it."""
        from actors._packages import job_runtime_env

        return job_runtime_env()

    def close_store(self) -> None:
        """Have the coordinator commit, checkpoint and close the state file (the cluster stops)."""
        if not ray.is_initialized():
            return
        try:
            ray.get(self.actors.coordinator.close_store.remote(), timeout=30)
        except Exception:  # noqa: BLE001 - already gone: the file's lease expires on its own
            pass

    def kill(self) -> None:
        self.actors.kill()

    def close(self) -> None:
        """Disconnect this client; executions keep running on the cluster."""
        ray.shutdown()
