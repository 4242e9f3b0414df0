"""A test server that dies mid-run: the process exits, without answering, on call number ``DIE_AT``
of ``work`` (counted per process; ``DIE_AT`` from the environment, default 2)."""

from __future__ import annotations

import os

from mcp.server.mcpserver import MCPServer

server = MCPServer("dying", log_level="WARNING")
calls = {"n": 0}


@server.tool()
def work(item: str) -> dict[str, object]:
    """Answers ``{"item", "call", "pid"}`` until the call that kills the process."""
    calls["n"] += 1
    if calls["n"] == int(os.environ.get("DIE_AT", "2")):
        os._exit(3)  # gone mid-call: the client sees its connection close with the request unanswered
    return {"item": item, "call": calls["n"], "pid": os.getpid()}


if __name__ == "__main__":
    server.run()
