"""Running one step attempt's handler, inside whatever process the step landed in.

A handler is resolved from the step's ``uses``: ``python:<module>:<function>``,
a registered name (shipped as an importable reference or the callable itself),
or ``shell``. It receives the step's rendered ``with`` arguments as keyword
arguments, plus a :class:`StepContext` if it declares a ``context`` parameter.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import subprocess
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from runtime.failure import ErrorInfo, error_from_exception
from runtime.registry import import_object

log = logging.getLogger("sopflow.step")


@dataclass(slots=True)
class StepTask:
    """Everything a worker needs to run one attempt; built by the coordinator."""

    execution_id: str
    sop: str
    step: str
    attempt: int
    uses: str
    handler: Any = None
    """For registered handlers: ``module:attr`` or the callable itself."""
    args: dict[str, Any] = field(default_factory=dict)
    run: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    timeout_s: float | None = None
    trace_carrier: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.execution_id}/{self.step}/{self.attempt}"


@dataclass(slots=True)
class StepOutcome:
    """The result of one attempt, as plain data."""

    key: str
    ok: bool
    output: Any = None
    error: ErrorInfo | None = None
    duration_s: float = 0.0
    progress: float | None = None


@dataclass(slots=True)
class StepContext:
    """Given to handlers that declare a ``context`` parameter.

    Attributes:
        execution_id: The execution this attempt belongs to.
        step: The step id.
        attempt: 1 for the first attempt.
        logger: A logger whose records carry the execution and step.
    """

    execution_id: str
    step: str
    attempt: int
    logger: logging.LoggerAdapter
    _progress: float | None = None

    def report_progress(self, fraction: float) -> None:
        """Tell the monitor how far this step is (0.0-1.0); the last value is kept."""
        self._progress = max(0.0, min(1.0, float(fraction)))

    @property
    def idempotency_key(self) -> str:
        return f"{self.execution_id}/{self.step}/{self.attempt}"


_resolved: dict[str, Callable[..., Any]] = {}


def resolve(task: StepTask) -> Callable[..., Any]:
    """The callable for a python or registered handler (imports are cached per process)."""
    if task.uses.startswith("python:"):
        ref = task.uses[len("python:"):]
    elif isinstance(task.handler, str):
        ref = task.handler
    elif callable(task.handler):
        return task.handler
    else:
        raise LookupError(f"step {task.step!r}: handler {task.uses!r} was not shipped with the task")
    fn = _resolved.get(ref)
    if fn is None:
        fn = import_object(ref)
        if not callable(fn):
            raise TypeError(f"{ref} is not callable")
        _resolved[ref] = fn
    return fn


def run_task(task: StepTask) -> StepOutcome:
    """Run one attempt and describe how it went; never raises for handler failures."""
    start = time.perf_counter()
    ctx = StepContext(task.execution_id, task.step, task.attempt,
                      logging.LoggerAdapter(log, {"execution_id": task.execution_id, "step": task.step}))
    try:
        if task.uses == "shell":
            output, error = _run_shell(task)
        else:
            output, error = _call(resolve(task), task.args, ctx), None
    except Exception as exc:  # noqa: BLE001 - every handler failure becomes data
        output, error = None, error_from_exception(exc, traceback=traceback.format_exc())
    return StepOutcome(task.key, error is None, output, error, time.perf_counter() - start,
                       ctx._progress)


def _call(fn: Callable[..., Any], args: dict[str, Any], ctx: StepContext) -> Any:
    kwargs = dict(args)
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    if "context" in params:
        kwargs["context"] = ctx
    result = fn(**kwargs)
    if inspect.isawaitable(result):
        result = asyncio.run(_await(result))
    return result


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _run_shell(task: StepTask) -> tuple[Any, ErrorInfo | None]:
    env = {**os.environ, **task.env, "SOPFLOW_EXECUTION_ID": task.execution_id,
           "SOPFLOW_STEP": task.step, "SOPFLOW_ATTEMPT": str(task.attempt)}
    try:
        proc = subprocess.run(["/bin/sh", "-c", task.run or ""], capture_output=True, text=True,
                              env=env, timeout=task.timeout_s, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        return None, ErrorInfo("Timeout", f"command ran longer than {e.timeout:g} s", origin="timeout")
    output = {"stdout": proc.stdout, "stderr": proc.stderr, "exit_code": proc.returncode}
    if proc.returncode == 0:
        return output, None
    tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or [""]
    return output, ErrorInfo("ExitCode", f"command exited with status {proc.returncode}: {tail[0][:300]}",
                             exit_code=proc.returncode, origin="shell")
