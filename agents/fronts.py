"""Agent hosts on Ray: the ``AgentHost`` actor and the driver the coordinator starts sessions with.

A few host actors (``EngineConfig.agent_hosts``; named ``sopflow-agent-host-<i>``, in
the engine's namespace, detached, restarted by Ray when they die) each run many
sessions as asyncio tasks. The coordinator's :class:`RayAgentDriver` puts a new
session on the host with the fewest, and waits for its end: a host that dies loses
its sessions, which the coordinator starts again — from their recordings — on a host.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from agents.host import AgentHost as _AgentHost
from agents.mcp.results import ToolResult
from agents.mcp.runner import McpStepRunner
from agents.mcp.source import SourceSpec
from agents.ratelimit import RayLimiter
from runtime.config import EngineConfig
from runtime.seams import AgentSessionSpec
from runtime.telemetry import setup_tracing

log = logging.getLogger("sopflow.agents")

HOST_NAME = "sopflow-agent-host-{}"
_BREAKER_LEVEL = {"closed": 0, "half_open": 1, "open": 2}
SUSPECT_S = 300.0
"""How long a host that lost a session is passed over for new ones (while another host is free of doubt)."""


class AgentHost(_AgentHost):
    """The agent host as a Ray actor (the class name is what the dashboard shows)."""

    def __init__(self, name: str, config: EngineConfig, namespace: str) -> None:
        super().__init__(name, config)
        setup_tracing("sopflow-agent-host")  # ADK's spans go through the process's global tracer provider
        # one limit per provider for every host of the namespace (an actor of its own)
        self.limiter = RayLimiter(namespace, config.model_rate_limit_map)
        from ray.util.metrics import Gauge

        from runtime.prometheus import BY_NAME

        spec = BY_NAME["sopflow_mcp_breaker_state"]
        self._breaker_gauge = Gauge(spec.name, spec.help, tag_keys=spec.labels)

    async def run_session(self, spec: AgentSessionSpec, coordinator: Any) -> dict[str, Any]:
        """Run a session to its end, calling the engine through the coordinator actor."""
        async def port(op: str, args: dict[str, Any], call: int | None) -> Any:
            return await coordinator.agent_call.remote(spec.execution_id, spec.session, op, args, call)

        return await self.run(spec, port)

    async def call_tool(self, source: SourceSpec, tool: str, arguments: dict[str, Any], owner: str,
                        idempotent: bool | None) -> ToolResult:
        """One MCP call of an ``mcp:`` step through this host's pool (the same pool its agents use)."""
        return await self.pool.call(source, tool, arguments, owner=owner, idempotent=idempotent)

    async def release(self, owner: str) -> None:
        """An execution ended: close the MCP sessions only it used."""
        await self.pool.release(owner)

    def breaker_changed(self, source: str, snapshot: dict[str, Any]) -> None:
        super().breaker_changed(source, snapshot)
        self._breaker_gauge.set(_BREAKER_LEVEL.get(snapshot["state"], 0), tags={"source": source, "host": self.name})

    async def stop_session(self, execution_id: str, session: int) -> bool:
        return self.cancel(execution_id, session)

    async def ping(self) -> dict[str, Any]:
        return self.info()

    def __repr__(self) -> str:
        return f"AgentHost({getattr(self, 'name', '?')}, {len(getattr(self, 'sessions', ()))} sessions)"


class _RayHandle:
    def __init__(self, driver: RayAgentDriver, where: str, host: Any, spec: AgentSessionSpec,
                 waiter: asyncio.Task) -> None:
        self.driver, self.where, self.host, self.spec, self.waiter = driver, where, host, spec, waiter

    def cancel(self, lost: bool = False) -> None:
        if lost:
            self.driver.suspect[self.where] = time.monotonic()
        self.waiter.cancel()
        try:
            self.host.stop_session.remote(self.spec.execution_id, self.spec.session)
        except Exception:  # noqa: BLE001 - the host is gone: so is the session
            pass


class RayAgentDriver:
    """Starts sessions on the host actors for the coordinator (``sopflow.agent_drivers``: ``ray``)."""

    def __init__(self, core: Any) -> None:
        self.core = core
        self.config: EngineConfig = core.config
        self.hosts: list[Any] = []
        self.load: dict[str, int] = {}
        self.suspect: dict[str, float] = {}
        """Host -> when (``time.monotonic``) a session on it was last lost: new sessions avoid it a while."""

    def _ensure_hosts(self) -> None:
        if not self.hosts:
            self.hosts = host_actors(self.core)
            self.load = {HOST_NAME.format(i): 0 for i in range(len(self.hosts))}

    async def info(self) -> list[dict[str, Any]]:
        """Each host actor started so far: its sessions and its MCP sources' circuit breakers."""
        hosts = getattr(self.core, "_agent_host_actors", None) or []
        answers = await asyncio.gather(*(h.ping.remote() for h in hosts), return_exceptions=True)
        return [a if isinstance(a, dict) else {"name": HOST_NAME.format(i), "error": _first_line(a)}
                for i, a in enumerate(answers)]

    def start(self, spec: AgentSessionSpec, ended: Callable[[str | None, bool], None]) -> _RayHandle:
        self._ensure_hosts()
        now = time.monotonic()
        i = min(range(len(self.hosts)), key=lambda k: (
            now - self.suspect.get(HOST_NAME.format(k), -SUSPECT_S) < SUSPECT_S, self.load[HOST_NAME.format(k)]))
        where, host = HOST_NAME.format(i), self.hosts[i]
        me = ray.get_runtime_context().current_actor
        ref = host.run_session.remote(spec, me)
        self.load[where] += 1

        async def wait() -> None:
            try:
                await ref
            except asyncio.CancelledError:
                raise
            except RayActorError as e:  # the host died (or was killed) with the session on it
                self.suspect[where] = time.monotonic()
                ended(f"its host {where} was lost: {_first_line(e)}", True)
            except RayTaskError as e:
                cause = e.cause if getattr(e, "cause", None) is not None else e
                ended(f"{type(cause).__name__}: {_first_line(cause)}", False)
            except Exception as e:  # noqa: BLE001 - anything else: the session is gone, say why
                ended(f"{type(e).__name__}: {_first_line(e)}", True)
            else:
                ended(None, False)
            finally:
                self.load[where] -= 1

        return _RayHandle(self, where, host, spec, asyncio.get_running_loop().create_task(wait()))


def host_actors(core: Any) -> list[Any]:
    """The engine's agent host actors (created on first use, beside the coordinator), kept on ``core``."""
    hosts = getattr(core, "_agent_host_actors", None)
    if hosts is None:
        namespace = getattr(core, "namespace", None) or ray.get_runtime_context().namespace
        hosts = [ray.remote(AgentHost).options(
            name=HOST_NAME.format(i), namespace=namespace, lifetime="detached", get_if_exists=True, num_cpus=0,
            max_restarts=-1, max_task_retries=0, max_concurrency=100_000).remote(HOST_NAME.format(i), core.config,
                                                                                  namespace)
            for i in range(core.config.agent_hosts)]
        core._agent_host_actors = hosts
    return hosts


def ray_mcp_runner(core: Any) -> McpStepRunner:
    """``mcp:`` steps of the Coordinator actor, called through the agent hosts' pools: MCP servers and
    their I/O stay out of the coordinator's process, and a server's session is shared by every step
    and agent on the same host (a source always goes to the same host, chosen by its key)."""
    def host_for(source: SourceSpec) -> Any:
        hosts = host_actors(core)
        return hosts[int(source.key[:8], 16) % len(hosts)]

    async def call(source: SourceSpec, tool: str, arguments: dict, owner: str, idempotent: bool | None) -> ToolResult:
        try:
            return await host_for(source).call_tool.remote(source, tool, arguments, owner, idempotent)
        except RayTaskError as e:  # the pool's own error (McpUnavailable ...), as if called here
            raise (e.cause if isinstance(getattr(e, "cause", None), Exception) else e) from None

    async def release(owner: str) -> None:
        for host in host_actors(core):
            host.release.remote(owner)

    return McpStepRunner(call, release)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[-1] if text else type(e).__name__


def ray_driver(core: Any) -> RayAgentDriver:
    """The ``ray`` entry point of ``sopflow.agent_drivers``."""
    return RayAgentDriver(core)


def host_names(config: EngineConfig) -> list[str]:
    return [HOST_NAME.format(i) for i in range(config.agent_hosts)]
