"""The agent host: many agent sessions as asyncio tasks in one process, sharing one MCP client pool.

:class:`AgentHost` is plain Python; on Ray it lives inside the ``AgentHost`` actor
(:mod:`agents.fronts`), and in the in-process engine inside the engine's own loop
(:class:`LocalAgentDriver`). Either way the engine starts sessions through the
:class:`runtime.seams.AgentDriver` seam and hears back through ``agent_call``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

from google.adk.models.base_llm import BaseLlm
from google.adk.tools.base_tool import BaseTool

from agents.context import AgentContext
from agents.ratelimit import Limiter, LocalLimiter
from agents.mcp.pool import McpPool
from agents.mcp.source import SourceSpec
from agents.session import run_session
from agents.tools import EnginePort, mcp_tools_for
from runtime.config import EngineConfig
from runtime.seams import AgentSessionSpec
from sop import render

log = logging.getLogger("sopflow.agents")


class AgentHost:
    """Runs agent sessions; see the module docstring.

    Args:
        name: How status and the log name this host.
        config: The engine's configuration (heartbeat).
        registry: Where registered models are found (default: installed ``sopflow.models`` entry points).
    """

    def __init__(self, name: str = "local", config: EngineConfig | None = None, registry: Any = None) -> None:
        self.name = name
        self.config = config or EngineConfig(state="memory://")
        self.registry = registry
        self.limiter: Limiter = LocalLimiter(self.config.model_rate_limit_map)
        """Requests and tokens per minute per model provider (shared by every host on Ray)."""
        self.sessions: dict[tuple[str, int], asyncio.Task] = {}
        self._pool: McpPool | None = None
        # ADK puts prompts and answers into its spans unless told not to: only when configured
        os.environ.setdefault("ADK_CAPTURE_MESSAGE_CONTENT_IN_SPANS", str(self.config.agent_trace_content).lower())

    async def run(self, spec: AgentSessionSpec, port: EnginePort) -> dict[str, Any]:
        """Run a session to its end (see :func:`agents.session.run_session`)."""
        key = (spec.execution_id, spec.session)
        task = asyncio.current_task()
        if task is not None:
            self.sessions[key] = task
        try:
            ctx = AgentContext.from_spec(spec)
            model = self.model_for(ctx) if not spec.replay else self._replay_model(ctx)
            return await run_session(spec, port, model=model,
                                     mcp_tools=lambda c: self.mcp_tools(c, spec.replay),
                                     idempotent=self._idempotent(ctx), heartbeat_s=self.config.agent_heartbeat_s)
        finally:
            self.sessions.pop(key, None)
            if self._pool is not None and not any(k[0] == spec.execution_id for k in self.sessions):
                await self._pool.release(spec.execution_id)  # its MCP servers stop when no session needs them

    def cancel(self, execution_id: str, session: int) -> bool:
        """Stop a session (its execution was cancelled or moved on); False when it is not here."""
        task = self.sessions.get((execution_id, session))
        if task is None:
            return False
        task.cancel()
        return True

    def model_for(self, ctx: AgentContext) -> BaseLlm:
        """The session's model (see :mod:`agents.models`)."""
        from agents.models import build_model

        return build_model(ctx.settings, api_key=ctx.api_key(), limiter=self.limiter, registry=self.registry)

    def _replay_model(self, ctx: AgentContext) -> BaseLlm:
        """An offline replay's model: every call is answered from the recording, so a model that cannot
        be made here (registered elsewhere, no API key) is not needed; a stand-in that refuses calls."""
        from runtime.errors import SopflowError

        try:
            return self.model_for(ctx)
        except SopflowError as e:
            return _NotInReplay(model=ctx.settings.model, why=str(e))

    @property
    def pool(self) -> McpPool:
        """The host's MCP client pool: one session per server, shared by the sessions using it."""
        if self._pool is None:
            self._pool = McpPool(on_breaker=self.breaker_changed)
        return self._pool

    def breaker_changed(self, source: str, snapshot: dict[str, Any]) -> None:
        """A data source's circuit breaker opened, half-opened or closed: say so (the Ray host also
        exports it as a metric)."""
        level = logging.WARNING if snapshot["state"] != "closed" else logging.INFO
        log.log(level, "circuit breaker of data source %s is %s (%s failures in the last %s calls) on host %s",
                source, snapshot["state"], snapshot["failures"], snapshot["calls"], self.name)

    async def mcp_tools(self, ctx: AgentContext, replay: bool = False) -> list[BaseTool]:
        """The MCP tools the SOP lets the agent call itself, described as their servers list them.

        An offline replay reaches no server: its tools are not described (the recording answers them).
        """
        sources = {name: self._source(ctx, name) for name in {src for src, _ in ctx.tools}}

        async def call(source: str, tool: str, arguments: dict[str, Any]) -> Any:
            idempotent = tool in ctx.data_sources[source].idempotent_tools
            result = await self.pool.call(sources[source], tool, arguments, owner=ctx.execution_id,
                                          idempotent=idempotent)
            return result.data if isinstance(result.data, dict) else {"result": result.data}

        described: dict[tuple[str, str], tuple[str, dict[str, Any] | None]] = {}
        if not replay:
            for name, spec in sources.items():
                for tool in await self.pool.list_tools(spec, owner=ctx.execution_id):
                    described[(name, tool.name)] = (tool.description or "", tool.input_schema)
        return mcp_tools_for(ctx, call, described)

    def _source(self, ctx: AgentContext, name: str) -> SourceSpec:
        """Source ``name`` with its credentials rendered from the run's (secret) inputs, for the call only."""
        context = {"inputs": ctx.inputs}
        return SourceSpec.from_data_source(name, ctx.data_sources[name], lambda v: render(v, context))

    async def close(self) -> None:
        """Stop every session and MCP server this host holds."""
        for task in list(self.sessions.values()):
            task.cancel()
        if self._pool is not None:
            await self._pool.close()

    def _idempotent(self, ctx: AgentContext) -> Callable[[str], bool]:
        from agents.instruction import mcp_tool_name

        safe = {mcp_tool_name(src, tool) for src, tool in ctx.tools
                if tool in ctx.data_sources[src].idempotent_tools}
        return lambda name: name in safe

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "sessions": len(self.sessions), "pid": os.getpid(),
                "breakers": self._pool.breakers() if self._pool is not None else {}}


class _NotInReplay(BaseLlm):
    """Stands in for a model an offline replay cannot make; the recording answers every call before it."""

    why: str = ""

    async def generate_content_async(self, llm_request: Any, stream: bool = False) -> Any:
        raise RuntimeError(f"model {self.model!r} is not available in this replay ({self.why}) and the "
                           "recording has no answer for this call")
        yield  # an async generator, as BaseLlm's is


class _LocalHandle:
    where = "local"

    def __init__(self, task: asyncio.Task) -> None:
        self.task = task

    def cancel(self, lost: bool = False) -> None:
        self.task.cancel()


class LocalAgentDriver:
    """Runs sessions on an :class:`AgentHost` in the engine's own loop (the in-process engine)."""

    def __init__(self, core: Any) -> None:
        self.core = core
        # the in-process engine's own registry: models registered in code are found in this process
        self.host = AgentHost("local", core.config, getattr(core, "registry", None))

    async def info(self) -> list[dict[str, Any]]:
        """The host: its sessions and its MCP sources' circuit breakers."""
        return [self.host.info()]

    def start(self, spec: AgentSessionSpec, ended: Callable[[str | None, bool], None]) -> _LocalHandle:
        async def port(op: str, args: dict[str, Any], call: int | None) -> Any:
            return await self.core.agent_call(spec.execution_id, spec.session, op, args, call)

        task = asyncio.get_running_loop().create_task(self.host.run(spec, port),
                                                      name=f"agent {spec.execution_id}/{spec.session}")
        handle = _LocalHandle(task)

        def done(t: asyncio.Task) -> None:
            if t.cancelled():
                return
            error = t.exception()
            if error is not None:
                log.info("agent session %s/%s failed: %s", spec.execution_id, spec.session, error)
            ended(None if error is None else f"{type(error).__name__}: {error}", False)

        task.add_done_callback(done)
        return handle


def local_driver(core: Any) -> LocalAgentDriver:
    """The ``local`` entry point of ``sopflow.agent_drivers``."""
    return LocalAgentDriver(core)
