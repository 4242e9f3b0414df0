"""A test server with a tool that never answers (``hang``) next to one that does (``quick``)."""

from __future__ import annotations

import anyio
from mcp.server.mcpserver import MCPServer

server = MCPServer("hanging", log_level="WARNING")


@server.tool()
async def hang() -> str:
    """Never returns."""
    await anyio.sleep_forever()
    return "unreachable"


@server.tool()
def quick() -> dict[str, bool]:
    """Answers at once."""
    return {"ok": True}


if __name__ == "__main__":
    server.run()
