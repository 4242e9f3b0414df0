"""The MCP pool: one client session per data source, shared by the executions and agents using it.

Rules a caller can count on:

- **Sessions**: one per source (same command, arguments, environment / URL, headers),
  opened on first use, shared by every owner that calls it, closed by :meth:`McpPool.release`
  once no owner uses it (a stdio server's process is stopped and reaped), and by
  :meth:`McpPool.close`. A session idle longer than ``health_after_s`` is pinged before it
  is used again; one that fails the ping, or whose connection broke, is replaced.
- **Timeouts**: starting the server and the MCP handshake get ``connect_timeout_s``; each call
  gets ``timeout_s`` (both from the source).
- **Retries**: a transient failure (the server cannot be started or reached, the connection
  dropped, no answer in time) is retried after 1 s, 2 s and 4 s (``backoff_s``); then
  :class:`McpUnavailable` is raised for the failure handler to judge. A call that may have
  reached the server (a dropped connection, a timeout) is retried only when the tool is
  idempotent (``idempotent_tools`` or ``idempotent=True``): other calls fail at once.
- **Circuit breaker** per source (:mod:`agents.mcp.breaker`): every call that reaches the
  server counts; an error answer, a broken connection, a timeout, an oversized or
  ill-shaped answer is a failure. While it is open, calls raise :class:`McpBreakerOpen`
  without reaching the server.
- **Authorisation and audit**: a tool outside the source's declared ``tools`` is refused
  (:class:`McpNotAllowed`) without being sent; every call, refused or not, is reported once
  to ``on_call`` as a :class:`CallRecord` whose arguments and error went through ``mask``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mcp import types
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT

from agents.mcp._session import Session, SpawnError
from agents.mcp._stdio import TOO_LARGE
from agents.mcp.breaker import CircuitBreaker
from agents.mcp.errors import (McpBreakerOpen, McpError, McpNotAllowed, McpResultTooLarge, McpSourceError,
                               McpToolError, McpUnavailable)
from agents.mcp.results import DEFAULT_MAX_RESULT_BYTES, ToolResult, check_output, size_of, to_result
from agents.mcp.source import SourceSpec

__all__ = ["CallRecord", "McpPool", "SourceSpec"]


@dataclass(frozen=True)
class CallRecord:
    """One audited call (arguments and error already masked).

    Attributes:
        outcome: ``ok``, ``tool_error``, ``unavailable``, ``breaker_open``, ``not_allowed``,
            ``invalid_output``, ``too_large``, ``source_error`` or ``cancelled``.
        attempts: How many times the call was sent (0 when refused before sending).
    """

    source: str
    tool: str
    arguments: Any
    outcome: str
    result_bytes: int
    duration_s: float
    attempts: int
    error: str | None


class _Transient(Exception):
    def __init__(self, message: str, *, reached: bool) -> None:
        super().__init__(message)
        self.reached = reached


_OUTCOMES = {"McpToolError": "tool_error", "McpOutputInvalid": "invalid_output", "McpResultTooLarge": "too_large",
             "McpSourceError": "source_error", "McpNotAllowed": "not_allowed", "McpBreakerOpen": "breaker_open",
             "McpUnavailable": "unavailable"}


class McpPool:
    """See the module docstring.

    Args:
        on_call: Told of every call, once, as a :class:`CallRecord`.
        backoff_s: The delays before each retry of a transient failure (their number is the retries).
        clock: Monotonic time (breakers, idle sessions).
        sleep: How to wait out a backoff (tests record the delays instead).
        breaker: Makes the circuit breaker of a new source, given the clock.
        health_after_s: A session idle this long is pinged before it is used again.
        max_result_bytes: The largest answer accepted (:class:`McpResultTooLarge` beyond).
    """

    def __init__(self, *, on_call: Callable[[CallRecord], None] | None = None,
                 on_breaker: Callable[[str, dict], None] | None = None,
                 backoff_s: tuple[float, ...] = (1.0, 2.0, 4.0), clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Any] = asyncio.sleep,
                 breaker: Callable[[Callable[[], float]], CircuitBreaker] | None = None,
                 health_after_s: float = 30.0, max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES) -> None:
        self.on_call = on_call
        self.on_breaker = on_breaker
        """Called ``(source name, breaker snapshot)`` after a call that changed a breaker's state."""
        self.backoff_s = tuple(backoff_s)
        self.clock, self.sleep = clock, sleep
        self._make_breaker = breaker or (lambda c: CircuitBreaker(clock=c))
        self.health_after_s = health_after_s
        self.max_result_bytes = max_result_bytes
        self._sessions: dict[str, Session] = {}
        self._owners: dict[str, set[str]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._breakers: dict[str, tuple[str, CircuitBreaker]] = {}

    async def call(self, source: SourceSpec, tool: str, arguments: dict[str, Any], *, owner: str,
                   idempotent: bool | None = None, mask: Callable[[Any], Any] = lambda v: v) -> ToolResult:
        """Call ``tool`` of ``source`` for ``owner``; see the module docstring for the rules.

        Raises:
            McpNotAllowed, McpBreakerOpen, McpUnavailable, McpToolError, McpOutputInvalid,
            McpResultTooLarge, McpSourceError: see :mod:`agents.mcp.errors`.
        """
        started = self.clock()
        attempts, size = 0, 0

        def audit(outcome: str, error: str | None = None) -> None:
            if self.on_call is not None:
                self.on_call(CallRecord(source.name, tool, mask(arguments), outcome, size, self.clock() - started,
                                        attempts, None if error is None else mask(error)))

        breaker = self._breaker(source)
        before = breaker.state
        try:
            if source.tools is not None and tool not in source.tools:
                raise McpNotAllowed(f"tool {tool!r} of data source {source.name!r} is not allowed: the SOP allows "
                                    f"{', '.join(source.tools) or 'no tool'}; add it to the source's 'tools'")
            reuse = idempotent if idempotent is not None else tool in source.idempotent_tools
            delays = iter(self.backoff_s)
            while True:
                if not breaker.allow():
                    raise McpBreakerOpen(_open_message(source, breaker))
                attempts += 1
                try:
                    raw, schema = await self._attempt(source, tool, arguments, owner)
                except _Transient as e:
                    breaker.record(False)
                    delay = next(delays, None)
                    if delay is None or (e.reached and not reuse):
                        raise McpUnavailable(_gave_up(source, tool, str(e), attempts, e.reached and not reuse)) from None
                    await self.sleep(delay)
                    continue
                except McpSourceError:
                    breaker.abandon()  # the server never ran: it says nothing about its health
                    raise
                except McpToolError:
                    breaker.record(True)  # the server answered (a refusal is an answer)
                    raise
                except McpResultTooLarge:
                    breaker.record(False)
                    raise
                except BaseException:
                    breaker.abandon()
                    raise
                try:
                    size = size_of(raw)
                    result = to_result(raw, duration_s=self.clock() - started, max_bytes=self.max_result_bytes,
                                       size=size)
                    if result.is_error:
                        raise McpToolError(f"tool {tool!r} of data source {source.name!r} answered an error: "
                                           f"{result.text[:1000] or 'no message'}")
                    check_output(tool, schema, raw)
                except McpError:
                    breaker.record(False)
                    raise
                breaker.record(True)
                audit("ok")
                return result
        except McpError as e:
            audit(_OUTCOMES.get(type(e).__name__, "error"), str(e))
            raise
        except BaseException as e:
            audit("cancelled" if isinstance(e, asyncio.CancelledError) else "error", f"{type(e).__name__}: {e}")
            raise
        finally:
            if self.on_breaker is not None and breaker.state != before:
                self.on_breaker(source.name, breaker.snapshot())

    async def list_tools(self, source: SourceSpec, *, owner: str) -> list[types.Tool]:
        """The tools ``source``'s server lists (those the SOP allows, when it says which).

        Raises:
            McpUnavailable: the server cannot be reached (no retries: listing is cheap to ask again).
            McpSourceError: the source's command cannot be started.
        """
        try:
            session = await self._session(source, owner)
        except _Transient as e:
            raise McpUnavailable(f"data source {source.name!r}: {e}") from None
        allowed = source.tools
        return [t for name, t in session.tools.items() if allowed is None or name in allowed]

    def breakers(self) -> dict[str, dict]:
        """Source name -> its breaker's ``{"state", "failures", "calls", "opened_at"}``."""
        return {name: breaker.snapshot() for name, breaker in self._breakers.values()}

    async def release(self, owner: str) -> None:
        """``owner`` is done: close every session no other owner uses (stdio servers are stopped and reaped)."""
        idle = []
        for key, owners in list(self._owners.items()):
            owners.discard(owner)
            if not owners:
                del self._owners[key]
                if (session := self._sessions.pop(key, None)) is not None:
                    idle.append(session)
        await asyncio.gather(*(s.close() for s in idle))

    async def close(self) -> None:
        """Close every session; later calls start new ones."""
        sessions = list(self._sessions.values())
        self._sessions.clear()
        self._owners.clear()
        await asyncio.gather(*(s.close() for s in sessions))

    @property
    def open_sessions(self) -> int:
        """How many sessions are open now."""
        return sum(s.alive for s in self._sessions.values())

    # -- one attempt ---------------------------------------------------------------------------

    async def _attempt(self, source: SourceSpec, tool: str, arguments: dict[str, Any],
                       owner: str) -> tuple[types.CallToolResult, dict[str, Any] | None]:
        session = await self._session(source, owner)
        if tool not in session.tools:
            raise McpToolError(f"data source {source.name!r} has no tool {tool!r}; it offers "
                               f"{', '.join(sorted(session.tools)) or 'no tools'}")
        assert session.client is not None
        try:
            raw = await session.client.call_tool(tool, arguments, read_timeout_seconds=source.timeout_s)
        except MCPError as e:
            if e.code == TOO_LARGE or (e.code == CONNECTION_CLOSED and "byte limit" in e.error.message):
                # Refused unread by our stdio transport, or over HTTP by the SDK's cap per event (set to ours),
                # which reports the request's stream as closed with this text; the session itself is fine.
                raise McpResultTooLarge(f"the answer of tool {tool!r} of data source {source.name!r} is over the "
                                        f"limit of {self.max_result_bytes} bytes and was not read; ask the tool "
                                        "for less (a narrower query, paging) or raise max_result_bytes") from None
            if e.code == CONNECTION_CLOSED:
                session.mark_broken()
                raise _Transient("the server closed the connection during the call", reached=True) from None
            if e.code == REQUEST_TIMEOUT:
                session.last_ok = float("-inf")  # a hung tool may mean a hung server: ping before reuse
                raise _Transient(f"no answer within {source.timeout_s:g} s (timeout_s)", reached=True) from None
            raise McpToolError(f"data source {source.name!r} refused the call to {tool!r}: {e.error.message}") from None
        except (OSError, EOFError) as e:
            session.mark_broken()
            raise _Transient(f"the connection failed during the call ({type(e).__name__})", reached=True) from None
        session.last_ok = self.clock()
        if not isinstance(raw, types.CallToolResult):
            raise McpToolError(f"tool {tool!r} of data source {source.name!r} asked for input; "
                               "tools that need input cannot run unattended")
        return raw, session.tools[tool].output_schema

    async def _session(self, source: SourceSpec, owner: str) -> Session:
        """The live session for ``source``, started or replaced when needed; ``owner`` is recorded.

        Raises:
            _Transient: the server cannot be started or reached (nothing was sent to it).
            McpSourceError: the command does not exist or cannot be run.
        """
        key = source.key
        self._owners.setdefault(key, set()).add(owner)
        async with self._locks.setdefault(key, asyncio.Lock()):
            session = self._sessions.get(key)
            if session is not None and session.alive and session.connection_closed:
                session.mark_broken()  # the server went away while idle: nothing sent yet, start a new one
            if session is not None and session.alive and self.clock() - session.last_ok > self.health_after_s:
                if not await self._healthy(session):
                    session.mark_broken()
            if session is not None and not session.alive:
                self._sessions.pop(key, None)
                await session.close()  # reap the dead server before starting its successor
                session = None
            if session is None:
                session = Session(source, self.clock, self.max_result_bytes)
                try:
                    await session.started()
                except SpawnError as e:
                    await session.close()
                    raise McpSourceError(f"data source {source.name!r}: cannot start {source.command!r}: {e}; "
                                         "check the source's 'command'") from None
                except (Exception, asyncio.TimeoutError) as e:  # noqa: BLE001 - any start failure is transient
                    await session.close()
                    raise _Transient(f"cannot connect: {_describe(e, source)}", reached=False) from None
                self._sessions[key] = session
            return session

    async def _healthy(self, session: Session) -> bool:
        assert session.client is not None
        try:
            await asyncio.wait_for(session.client.send_ping(), min(5.0, session.spec.timeout_s))
        except Exception:  # noqa: BLE001 - any failure of a ping means "replace the session"
            return False
        session.last_ok = self.clock()
        return True

    def _breaker(self, source: SourceSpec) -> CircuitBreaker:
        found = self._breakers.get(source.server)
        if found is None:
            found = self._breakers[source.server] = (source.name, self._make_breaker(self.clock))
        return found[1]


def _describe(e: BaseException, source: SourceSpec) -> str:
    if isinstance(e, (TimeoutError, asyncio.TimeoutError)):
        return f"no handshake within {source.connect_timeout_s:g} s (connect_timeout_s)"
    if isinstance(e, MCPError):
        return e.error.message
    inner = getattr(e, "exceptions", None)  # an anyio task group's ExceptionGroup: its first cause says more
    if inner:
        return _describe(inner[0], source)
    return f"{type(e).__name__}: {e}"[:300]


def _gave_up(source: SourceSpec, tool: str, why: str, attempts: int, not_idempotent: bool) -> str:
    if not_idempotent:
        return (f"data source {source.name!r}, tool {tool!r}: {why}; not retried because the call may have reached "
                "the server and the tool is not declared idempotent (add it to 'idempotent_tools' if it is)")
    return f"data source {source.name!r}, tool {tool!r}: {why}; gave up after {attempts} attempts"


def _open_message(source: SourceSpec, breaker: CircuitBreaker) -> str:
    snap = breaker.snapshot()
    failing = f"data source {source.name!r} is failing ({snap['failures']} of its last {snap['calls']} calls failed)"
    if snap["state"] == "half_open":
        return f"{failing}: its circuit breaker is half open and a probe call is under way; try again shortly"
    wait = max(0.0, breaker.open_s - (breaker.clock() - (snap["opened_at"] or 0.0)))
    return f"{failing}: its circuit breaker is open; the next call is tried in {wait:.0f} s"
