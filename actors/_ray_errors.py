"""What a failed step task means, in the user's terms rather than Ray's.

The step's own exceptions never get here (the worker turns them into data, see
``runtime.handlers.run_task``); what does is Ray failing around it.
"""

from __future__ import annotations

import dataclasses
import re

import ray

from runtime.failure import ErrorInfo, clean_message, describe_exception, error_from_exception


def ray_error(exc: BaseException, step: str) -> ErrorInfo:
    """What a failed Ray task of step ``step`` means for the failure handler.

    The task's argument or result could not be (de)serialised: permanent (the same bytes fail
    again), reported as the user's exception where Ray kept it. The worker process died: a crash;
    Ray 2.60's WorkerCrashedError carries no exit code, so the message says so. Cancels and the
    memory monitor's kills keep their own verdicts.
    """
    if isinstance(exc, ray.exceptions.TaskCancelledError):
        return ErrorInfo("Cancelled", "the attempt was cancelled", retryable=False, origin="cancel")
    if isinstance(exc, ray.exceptions.OutOfMemoryError):
        return ErrorInfo("OutOfMemoryError", f"step {step!r}: Ray's memory monitor killed the worker "
                         f"({_first_line(exc)})", origin="oom")
    if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(getattr(exc, "cause", None), BaseException):
        info = error_from_exception(exc.cause)  # the original exception, not Ray's wrapper of it
        if isinstance(exc.cause, ray.exceptions.RaySystemError):
            info = _raised_in(exc.cause) or info
        return dataclasses.replace(info, message=f"step {step!r}: the step's task failed outside the "
                                   f"handler (sending its arguments or result between processes): "
                                   f"{info.message or info.type}", retryable=False)
    if isinstance(exc, ray.exceptions.RaySystemError) or _is_serialisation(exc):
        return ErrorInfo(type(exc).__name__, f"step {step!r}: the step's arguments or result could not be "
                         f"(de)serialised: {_first_line(exc)}", retryable=False)
    if isinstance(exc, ray.exceptions.WorkerCrashedError | ray.exceptions.ActorDiedError
                  | ray.exceptions.LocalRayletDiedError | ray.exceptions.NodeDiedError):
        return ErrorInfo("WorkerCrashed", f"the worker process running step {step!r} died ({type(exc).__name__}: "
                         "os._exit, a signal, or the OOM killer); Ray does not report its exit code, see the "
                         "worker's log on its node (python-core-worker-*.log)", origin="crash")
    return ErrorInfo(type(exc).__name__, f"step {step!r}: {_first_line(exc)}", origin="crash")


_RAISED = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning)): (.+)$")


def _raised_in(exc: BaseException) -> ErrorInfo | None:
    """The user's exception at the end of the traceback a RaySystemError carries only as text
    (an argument that could not be rebuilt in the worker)."""
    lines = [clean_message(line) for line in _text(exc).splitlines() if line.strip()]
    for line in reversed(lines):
        m = _RAISED.match(line)
        if m:
            return ErrorInfo(m.group(1).rsplit(".", 1)[-1], m.group(2), retryable=False)
    return None


def _text(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # noqa: BLE001 - never let describing an error raise
        return ""


def _is_serialisation(exc: BaseException) -> bool:
    name = type(exc).__name__
    return "Pickl" in name or "Serializ" in name or "Serialis" in name


def _first_line(e: BaseException) -> str:
    return describe_exception(e)[:300] or type(e).__name__
