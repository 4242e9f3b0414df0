"""A well-behaved test server: echoes data, reports the credential it was given, answers big on request.

``python -m tests.agents.mcp.servers.echo`` serves stdio; ``--http PORT`` streamable HTTP on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import os
import sys

from mcp import types
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from typing_extensions import TypedDict

server = MCPServer("echo", log_level="WARNING")  # no INFO line per request in the test logs
calls = {"n": 0}


class Echoed(TypedDict):
    text: str
    length: int


def _digest(value: str | None) -> str | None:
    return None if value is None else hashlib.sha256(value.encode()).hexdigest()


@server.tool()
def echo(text: str) -> Echoed:
    """The text back, untouched, with its length."""
    calls["n"] += 1
    return {"text": text, "length": len(text)}


@server.tool()
def count() -> dict[str, int]:
    """How many echo calls this process has answered."""
    return {"echo_calls": calls["n"]}


@server.tool()
def credential(ctx: Context) -> dict[str, str | None]:
    """Digests of the credential in the environment (API_TOKEN) and in the Authorization header."""
    headers = ctx.headers or {}
    return {"env": _digest(os.environ.get("API_TOKEN")), "header": _digest(headers.get("authorization"))}


@server.tool()
def big(mib: float) -> str:
    """A text of ``mib`` MiB."""
    return "x" * int(mib * 2**20)


@server.tool()
def wrong_shape() -> Echoed:
    """Declares the Echoed schema but answers something else."""
    return types.CallToolResult(content=[types.TextContent(type="text", text="{}")],  # type: ignore[return-value]
                                structured_content={"text": 5, "length": 1})


@server.tool()
def fails() -> str:
    """Always raises: the tool answers an error."""
    raise ToolError("the ledger is locked")  # a ToolError: its message reaches the client


# Publish wrong_shape's schema without the server checking it, as a buggy server would.
server._tool_manager.get_tool("wrong_shape").fn_metadata.output_model = None  # type: ignore[union-attr]

if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--http":
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()
