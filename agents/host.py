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
from agents.session import run_session
from agents.tools import EnginePort
from runtime.config import EngineConfig
from runtime.seams import AgentSessionSpec

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
        self.sessions: dict[tuple[str, int], asyncio.Task] = {}

    async def run(self, spec: AgentSessionSpec, port: EnginePort) -> dict[str, Any]:
        """Run a session to its end (see :func:`agents.session.run_session`)."""
        key = (spec.execution_id, spec.session)
        task = asyncio.current_task()
        if task is not None:
            self.sessions[key] = task
        try:
            ctx = AgentContext.from_spec(spec)
            return await run_session(spec, port, model=self.model_for(ctx), mcp_tools=self.mcp_tools,
                                     idempotent=self._idempotent(ctx), heartbeat_s=self.config.agent_heartbeat_s)
        finally:
            self.sessions.pop(key, None)

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

        return build_model(ctx.settings, api_key=ctx.api_key(), limiter=None, registry=self.registry)

    async def mcp_tools(self, ctx: AgentContext) -> list[BaseTool]:
        """The MCP tools the SOP lets the agent call itself (none until a pool is attached)."""
        return []

    def _idempotent(self, ctx: AgentContext) -> Callable[[str], bool]:
        from agents.instruction import mcp_tool_name

        safe = {mcp_tool_name(src, tool) for src, tool in ctx.tools
                if tool in ctx.data_sources[src].idempotent_tools}
        return lambda name: name in safe

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "sessions": len(self.sessions), "pid": os.getpid()}


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
