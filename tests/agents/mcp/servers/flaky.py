"""A test server that fails half its calls: call 1, 3, 5 ... of ``work`` answer an error, the others succeed."""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("flaky", log_level="WARNING")
calls = {"n": 0}


@server.tool()
def work() -> dict[str, int]:
    """Fails on odd calls (counted per process), succeeds on even ones."""
    calls["n"] += 1
    if calls["n"] % 2:
        raise ToolError(f"call {calls['n']} failed on purpose")
    return {"call": calls["n"]}


if __name__ == "__main__":
    server.run()
