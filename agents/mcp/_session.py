"""One live MCP client session, owned by a task of its own.

anyio's cancel scopes must be entered and left by the same task, and the mcp SDK's
transports (``stdio_client``, ``streamable_http_client``) and ``ClientSession`` are
anyio task groups. So each session gets one asyncio task that enters every context,
signals that the session is ready, waits until it is told to stop, and leaves them
again, in order: opening and closing never happen in two different tasks, whichever
task asked for the session first or last. Calls themselves are sent from the callers'
tasks: a ``ClientSession`` multiplexes requests over its streams, so a hung tool holds
up only its own caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import TYPE_CHECKING, Any

import anyio
from mcp import ClientSession, types
from mcp.client.stdio import StdioServerParameters

from agents.mcp._stdio import bounded_stdio_client

if TYPE_CHECKING:
    from agents.mcp.source import SourceSpec


_ENVELOPE = 64 * 1024
"""Bytes allowed over an answer's size for the JSON-RPC envelope around it."""


class _Unchecked(ClientSession):
    """A ``ClientSession`` that leaves output-schema checks to :func:`agents.mcp.results.check_output`,
    which raises :class:`agents.mcp.errors.McpOutputInvalid` instead of a bare ``RuntimeError``."""

    async def validate_tool_result(self, name: str, result: types.CallToolResult) -> None:
        return None


class SpawnError(Exception):
    """The stdio server's command could not be started (missing, not executable)."""


class Session:
    """A session and the task that owns it; see the module docstring.

    Args:
        spec: The source.
        clock: Monotonic time, for idle tracking.
        max_bytes: The largest answer the pool accepts: no message larger than this (and its
            envelope) is kept in memory, over stdio (:mod:`agents.mcp._stdio`) or HTTP.
    """

    def __init__(self, spec: SourceSpec, clock: Any, max_bytes: int) -> None:
        self.spec = spec
        self.max_bytes = max_bytes
        self.clock = clock
        self.client: ClientSession | None = None
        self.tools: dict[str, types.Tool] = {}
        self.last_ok = clock()
        self.broken = False
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._stop = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"mcp-session-{spec.name}")

    @property
    def alive(self) -> bool:
        return not self.broken and not self.task.done()

    @property
    def connection_closed(self) -> bool:
        """The server's end is gone (its process exited, its stream ended) while nothing was in flight.

        Read from the SDK dispatcher's own flag (mcp is pinned): the session is then known dead
        before a call is sent, so the call goes to a new session instead of failing as "may have
        reached the server".
        """
        dispatcher = getattr(self.client, "_dispatcher", None)
        return bool(getattr(dispatcher, "_closed", False))

    async def started(self) -> None:
        """Wait until the session is initialised and its tools are listed.

        Raises:
            SpawnError: the command could not be started.
            TimeoutError: no handshake within ``connect_timeout_s``.
            Exception: whatever else kept the session from starting.
        """
        # The task bounds its own handshake; the margin covers spawning and tearing down.
        await asyncio.wait_for(asyncio.shield(self._ready), self.spec.connect_timeout_s + 15)

    async def close(self) -> None:
        """Stop the session and wait until its task left every context (the child is reaped)."""
        self.broken = True
        self._stop.set()
        with contextlib.suppress(BaseException):
            await asyncio.shield(self.task)

    def mark_broken(self) -> None:
        """The connection failed: close it in the background; the next call starts a new one."""
        self.broken = True
        self._stop.set()

    async def _run(self) -> None:
        try:
            async with contextlib.AsyncExitStack() as stack:
                read, write = await self._transport(stack)
                client = await stack.enter_async_context(_Unchecked(read, write))
                with anyio.fail_after(self.spec.connect_timeout_s):
                    await client.initialize()
                    self.tools = await _list_tools(client)
                self.client = client
                self.last_ok = self.clock()
                self._ready.set_result(None)
                await self._stop.wait()
        except Exception as e:  # noqa: BLE001 - handed to whoever waits for the session
            if not self._ready.done():
                self._ready.set_exception(e)
        finally:
            self.broken = True
            if not self._ready.done():  # cancelled before it was ready (the engine shuts down)
                self._ready.set_exception(ConnectionError("the session was closed while it started"))

    async def _transport(self, stack: contextlib.AsyncExitStack) -> tuple[Any, Any]:
        spec = self.spec
        if spec.command is not None:
            params = StdioServerParameters(command=_command(spec.command), args=list(spec.args), env=dict(spec.env))
            try:
                return await stack.enter_async_context(
                    bounded_stdio_client(params, max_line=self.max_bytes + _ENVELOPE, errlog=sys.stderr))
            except OSError as e:
                raise SpawnError(f"{type(e).__name__}: {e.strerror or e}") from None
        from mcp.client.streamable_http import streamable_http_client
        from mcp.shared._httpx_utils import create_mcp_http_client

        import httpx2

        timeout = httpx2.Timeout(spec.connect_timeout_s, read=spec.timeout_s + 5)
        http = await stack.enter_async_context(create_mcp_http_client(headers=dict(spec.headers), timeout=timeout))
        # The SDK's own 1 MiB cap per event would refuse answers the pool accepts; ours bounds it instead.
        return await stack.enter_async_context(streamable_http_client(
            spec.url, http_client=http, max_sse_event_size=self.max_bytes + _ENVELOPE))  # type: ignore[arg-type]


async def _list_tools(client: ClientSession) -> dict[str, types.Tool]:
    tools: dict[str, types.Tool] = {}
    cursor = None
    while True:
        page = await client.list_tools(params=types.PaginatedRequestParams(cursor=cursor) if cursor else None)
        tools.update((t.name, t) for t in page.tools)
        cursor = page.next_cursor
        if not cursor:
            return tools


def _command(command: str) -> str:
    """``python`` (or ``python3``) means the Python running sopflow, so a source written as
    ``command: python`` finds the packages sopflow runs with whatever ``PATH`` says."""
    return sys.executable if command in ("python", "python3") else command
