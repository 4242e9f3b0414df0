"""The step runner of ``mcp:<source>/<tool>`` steps in System Design Runs.

An attempt renders the source's ``env`` and ``headers`` (credentials from secret
inputs) for the call only, calls the tool with the step's rendered ``with:``
arguments through a pool, and settles with the tool's answer as data
(:mod:`agents.mcp.results`): a tool answering ``{"count": 3}`` gives
``steps.<id>.output.count``. The call is audited in the attempt's event as one log
line (source, tool, arguments, outcome, size, duration) with secrets masked; secrets
never reach events because the rendered values stay in the call.

:func:`mcp_runner` is the ``sopflow.step_runners`` entry point: given the execution
host (the in-process engine's core or the Coordinator actor), it returns a runner whose
pool lives on the host's event loop, in the host's process. A pool's sessions for an
execution are released when that execution's end is durable: the runner waits on the
execution's ``done`` event (set by the host's ``finished``), so no hook shows up among
the user's hooks and no host method is wrapped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from agents.mcp.errors import McpError
from agents.mcp.pool import McpPool, SourceSpec
from agents.mcp.results import ToolResult
from runtime.failure import ErrorInfo
from runtime.handlers import StepOutcome
from runtime.outputs import DEFAULT_INLINE_OUTPUT_BYTES, settle_output
from runtime.seams import AttemptReport, AttemptSpec
from sop import render

log = logging.getLogger("sopflow.mcp")

Call = Callable[[SourceSpec, str, dict, str, "bool | None"], Awaitable[ToolResult]]
"""``call(source, tool, arguments, owner, idempotent)``: one tool call through a pool."""


class McpStepRunner:
    """Runs ``mcp:`` steps through ``call`` (see the module docstring).

    Args:
        call: Calls a tool through a pool (a local :class:`McpPool`, or an agent host's).
        release: Called with an execution's id once it has ended and its sessions may close.
    """

    needs_slot = False  # the work happens in the server; waiting on it costs this host nothing

    def __init__(self, call: Call, release: Callable[[str], Awaitable[None]] | None = None) -> None:
        self.call = call
        self.release = release
        self._watched: set[str] = set()
        self._watchers: set[asyncio.Task] = set()  # held: the loop keeps only weak references to tasks

    def start(self, spec: AttemptSpec, report: AttemptReport) -> _McpAttempt:
        attempt = _McpAttempt(report)
        attempt.task = asyncio.get_running_loop().create_task(self._run(spec, attempt))
        exe = spec.execution
        if self.release is not None and exe.id not in self._watched:
            self._watched.add(exe.id)
            watcher = asyncio.get_running_loop().create_task(self._release_when_done(exe))
            self._watchers.add(watcher)
            watcher.add_done_callback(self._watchers.discard)
        return attempt

    async def _run(self, spec: AttemptSpec, attempt: _McpAttempt) -> None:
        exe, step = spec.execution, spec.step
        key = f"{exe.id}/{step.id}/{spec.attempt}"
        started = time.monotonic()
        name, _, tool = step.handler[len("mcp:"):].partition("/")
        ds = exe.sop.data_sources.get(name)
        if ds is None:  # validation refuses this at submit; a step added later might still name one
            attempt.done(None, ErrorInfo("McpSourceError", f"step {step.id!r}: data source {name!r} is not "
                                         "defined under 'data_sources'", retryable=False))
            return
        try:
            context = exe.expression_context()
            source = SourceSpec.from_data_source(name, ds, lambda v: render(v, context))
            result = await self.call(source, tool, dict(spec.args), exe.id, None)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - every failure of the call is the attempt's, as data
            transient = e.transient if isinstance(e, McpError) else None
            error = ErrorInfo(type(e).__name__, str(e), retryable=transient)
            attempt.done(StepOutcome(key, False, None, error, time.monotonic() - started,
                                     logs=(_line(exe, name, tool, spec.args, type(e).__name__, None, started),)), None)
            return
        cap = spec.task.output_cap if spec.task is not None else DEFAULT_INLINE_OUTPUT_BYTES
        output, error, spilled = settle_output(step.id, result.data, None, cap)
        line = _line(exe, name, tool, spec.args, "ok", result.size_bytes, started)
        if error is not None:
            attempt.done(StepOutcome(key, False, None, error, time.monotonic() - started, logs=(line,)), None)
            return
        attempt.done(StepOutcome(key, True, output, None, time.monotonic() - started, spilled=spilled, logs=(line,)),
                     None)

    async def _release_when_done(self, exe: Any) -> None:
        try:
            await exe.done.wait()
        finally:
            self._watched.discard(exe.id)
        try:
            await self.release(exe.id)  # type: ignore[misc]
        except Exception:  # noqa: BLE001 - a session that will not close must not break the host
            log.exception("closing the MCP sessions of execution %s failed", exe.id)


class _McpAttempt:
    __slots__ = ("report", "task", "over")

    def __init__(self, report: AttemptReport) -> None:
        self.report = report
        self.task: asyncio.Task | None = None
        self.over = False

    def done(self, outcome: StepOutcome | None, error: ErrorInfo | None) -> None:
        if not self.over:
            self.over = True
            self.report.settle(outcome, error)

    def cancel(self, force: bool) -> None:
        """A forced cancel (a timeout, a forced execution cancel) stops the call; a graceful one lets it end."""
        if force and not self.over:
            if self.task is not None:
                self.task.cancel()
            self.done(None, ErrorInfo("Cancelled", "the attempt was cancelled", retryable=False, origin="cancel"))


def _line(exe: Any, source: str, tool: str, args: Any, outcome: str, size: int | None, started: float) -> list[Any]:
    """One audit-log line ``[ts, level, source, text]`` for the call, secrets masked."""
    text = json.dumps({"mcp": f"{source}/{tool}", "arguments": exe.redact(args), "outcome": outcome,
                       "result_bytes": size, "duration_s": round(time.monotonic() - started, 6)},
                      default=repr, sort_keys=True)
    return [time.time(), "INFO" if outcome == "ok" else "WARNING", "mcp", text[:4000]]


def mcp_runner(host: Any) -> McpStepRunner:
    """The ``sopflow.step_runners`` entry point ``mcp`` (see :func:`local_mcp_runner`); on Ray, the
    Coordinator actor's steps call through the agent hosts' pools (:func:`agents.fronts.ray_mcp_runner`)."""
    if getattr(host, "on_ray", False):
        from agents.fronts import ray_mcp_runner

        return ray_mcp_runner(host)
    return local_mcp_runner(host)


def local_mcp_runner(host: Any) -> McpStepRunner:
    """The ``sopflow.step_runners`` entry point ``mcp``: a runner with a pool on ``host``'s loop.

    The pool is made on first use (the host may be built before its loop runs calls), and
    its sessions for an execution close when the execution ends; the host's process stopping
    cancels the sessions' tasks, which stop their servers on the way out.
    """
    holder: dict[str, McpPool] = {}

    def pool() -> McpPool:
        if "pool" not in holder:
            holder["pool"] = McpPool()
        return holder["pool"]

    async def call(source: SourceSpec, tool: str, arguments: dict, owner: str, idempotent: bool | None) -> ToolResult:
        return await pool().call(source, tool, arguments, owner=owner, idempotent=idempotent)

    async def release(owner: str) -> None:
        if "pool" in holder:
            await holder["pool"].release(owner)

    runner = McpStepRunner(call, release)
    runner.pool = pool  # type: ignore[attr-defined]  # for status and tests: the live pool
    return runner



