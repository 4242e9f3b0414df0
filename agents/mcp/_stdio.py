"""The stdio transport with a bound on one message's size.

The mcp SDK's ``stdio_client`` gathers a server's output line by line with no limit,
so a server answering 2 GiB would make this process hold 2 GiB (and several times
that once parsed) before anyone could refuse it. This is that transport with one
change in its reader: a line growing past ``max_line`` stops being kept. Its head
still names the JSON-RPC request it answers, so that request is answered here with
a :data:`TOO_LARGE` error (the session goes on); the rest of the line is read and
dropped. Spawning, the pipe writer and the shutdown sequence (close stdin, wait,
kill the process group) are the SDK's own helpers, unchanged (mcp is pinned).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TextIO

import anyio
import anyio.lowlevel
import mcp_types as types
from anyio.streams.text import TextReceiveStream
from mcp.client import stdio as sdk
from mcp.shared.message import SessionMessage

TOO_LARGE = -32090
"""The JSON-RPC error code of an answer refused for its size (in the implementation-defined range)."""

_ID = re.compile(r'"id"\s*:\s*("(?:[^"\\]|\\.)*"|-?\d+)')
_HEAD = 512  # a response's id comes right after "jsonrpc": within its first bytes


@asynccontextmanager
async def bounded_stdio_client(server: sdk.StdioServerParameters, *, max_line: int,
                               errlog: TextIO = sys.stderr) -> AsyncIterator[tuple[Any, Any]]:
    """Like ``mcp.client.stdio.stdio_client``, refusing lines over ``max_line`` characters (see above)."""
    command = await sdk._get_executable_command(server.command)
    process = await sdk._create_platform_compatible_process(
        command=command, args=server.args, env=sdk.get_default_environment() | (server.env or {}),
        errlog=errlog, cwd=server.cwd)
    # No awaits until the task group is entered: a cancellation in the gap would leak the process.
    read_stream_writer, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_stream, write_stream_reader = anyio.create_memory_object_stream[SessionMessage](0)
    writer_done = anyio.Event()
    shutting_down = False

    async def refuse(head: str) -> None:
        found = _ID.search(head[:_HEAD])
        if found is None:  # not a response to a request: nothing waits for it
            return
        error = types.ErrorData(code=TOO_LARGE, message=f"the answer is over {max_line} bytes")
        await read_stream_writer.send(SessionMessage(types.JSONRPCError(jsonrpc="2.0", id=json.loads(found.group(1)),
                                                                        error=error)))

    async def stdout_reader() -> None:
        stdout = TextReceiveStream(process.stdout, encoding=server.encoding, errors=server.encoding_error_handler)
        try:
            async with read_stream_writer:
                try:
                    buffer, dropping = "", False
                    async for chunk in stdout:
                        if dropping:  # inside a refused line: skip to its end
                            end = chunk.find("\n")
                            if end < 0:
                                continue
                            chunk, dropping = chunk[end + 1:], False
                        lines = (buffer + chunk).split("\n")
                        buffer = lines.pop()
                        for line in lines:
                            await read_stream_writer.send(sdk._parse_line(line))
                        if len(buffer) > max_line:
                            await refuse(buffer)
                            buffer, dropping = "", True
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    return  # the session is gone
                finally:
                    await sdk._drain_stdout(process)
        except anyio.ClosedResourceError:
            pass
        except (anyio.BrokenResourceError, ConnectionError):
            if not shutting_down:
                sdk.logger.exception("Reading from the MCP server's stdout failed mid-session")

    async def stdin_writer() -> None:
        try:
            async with write_stream_reader:
                async for message in write_stream_reader:
                    data = message.message.model_dump_json(by_alias=True, exclude_unset=True) + "\n"
                    await process.stdin.send(data.encode(server.encoding, server.encoding_error_handler))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            await read_stream_writer.aclose()  # the session sees the connection end, not a hang
        finally:
            writer_done.set()

    async def shutdown() -> None:
        read_stream.close()
        write_stream.close()
        with anyio.move_on_after(sdk._WRITER_FLUSH_TIMEOUT):
            await writer_done.wait()
        await sdk._stop_server_process(process)
        await sdk._aclose_all(read_stream, write_stream, read_stream_writer, write_stream_reader)
        await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(stdout_reader)
        tg.start_soon(stdin_writer)
        try:
            yield read_stream, write_stream
        finally:
            shutting_down = True
            with anyio.CancelScope(shield=True):  # the server must be stopped even when the caller is cancelled
                await shutdown()
            tg.cancel_scope.cancel()
    await anyio.lowlevel.cancel_shielded_checkpoint()
