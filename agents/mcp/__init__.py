"""MCP data sources: a pool of client sessions with retries and a circuit breaker per source.

- :mod:`agents.mcp.pool` — :class:`McpPool`, one session per server shared by its owners.
- :mod:`agents.mcp.breaker` — :class:`CircuitBreaker`, pure and clock-injectable.
- :mod:`agents.mcp.results` — a tool's answer as data, its size, its shape checked.
- :mod:`agents.mcp.runner` — :class:`McpStepRunner` for ``mcp:<source>/<tool>`` steps.
- :mod:`agents.mcp.errors` — the errors a call can raise, each saying whether it is transient.
"""

from agents.mcp.breaker import CircuitBreaker
from agents.mcp.errors import (McpBreakerOpen, McpError, McpNotAllowed, McpOutputInvalid, McpResultTooLarge,
                               McpSourceError, McpToolError, McpUnavailable)
from agents.mcp.pool import CallRecord, McpPool, SourceSpec
from agents.mcp.results import ToolResult

__all__ = ["CallRecord", "CircuitBreaker", "McpBreakerOpen", "McpError", "McpNotAllowed", "McpOutputInvalid",
           "McpPool", "McpResultTooLarge", "McpSourceError", "McpToolError", "McpUnavailable", "SourceSpec",
           "ToolResult"]
