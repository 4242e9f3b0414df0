"""The Agent Centric Run: ADK agents that follow an SOP, hosted in Ray actors, with MCP data sources.

- :class:`AgentHost` runs many agent sessions (:func:`run_session`) as asyncio tasks and holds
  one :class:`McpPool`; on Ray it lives in the ``AgentHost`` actor (:mod:`agents.fronts`).
- :class:`AgentContext` is what one run is given; :func:`build_agent` makes the ADK agent from it.
- :class:`OfflineModel` follows the SOP deterministically; :func:`build_model` makes any other model.
- :class:`SessionRecorder` records model and tool calls as they happen and answers a recording.

The names are imported on first use: importing :mod:`agents.mcp` alone does not load ADK.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sop._lazy import lazy_exports

if TYPE_CHECKING:
    from agents.context import AgentContext
    from agents.host import AgentHost
    from agents.mcp.pool import McpPool
    from agents.models import build_model
    from agents.offline import OfflineModel
    from agents.recording import SessionRecorder
    from agents.session import build_agent, run_session

_LAZY = {
    "AgentContext": "agents.context",
    "AgentHost": "agents.host",
    "McpPool": "agents.mcp.pool",
    "OfflineModel": "agents.offline",
    "SessionRecorder": "agents.recording",
    "build_agent": "agents.session",
    "build_model": "agents.models",
    "run_session": "agents.session",
}

__all__ = ["AgentContext", "AgentHost", "McpPool", "OfflineModel", "SessionRecorder", "build_agent", "build_model",
           "run_session"]

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals(), __all__)
