"""JSON forms of what the HTTP API sends: execution views, events and errors.

Both ends use this module (the API actor and :mod:`runtime._api_client`), so a view
or an error that crosses HTTP comes back as the same Python value the Engine returns:
``view_from_dict(view_to_dict(v)) == v`` for any view whose outputs are JSON data.
"""

from __future__ import annotations

import json
from typing import Any

from runtime import errors
from runtime.events import Event
from runtime.status import ExecutionStatus, ExecutionView, StepStatus, StepView
from sop.errors import SopflowError, SopValidationError

DECISIONS = ("rerun", "succeed", "fail", "skip")
"""What ``decide`` accepts (the coordinator checks again)."""

STATUSES = tuple(s.value for s in ExecutionStatus)
"""What ``list`` accepts as ``status``."""


def dumps(value: Any) -> str:
    """JSON text of a response; values JSON cannot hold are sent as their ``repr`` (as ``history --format json``)."""
    return json.dumps(value, default=repr, separators=(",", ":"))


# -- views ------------------------------------------------------------------------------------------


def step_to_dict(step: StepView) -> dict[str, Any]:
    return {"id": step.id, "status": step.status.value, "attempts": step.attempts, "error": step.error,
            "classification": step.classification, "started_at": step.started_at, "ended_at": step.ended_at,
            "progress": step.progress, "message": step.message}


def step_from_dict(d: dict[str, Any]) -> StepView:
    return StepView(id=d["id"], status=StepStatus(d["status"]), attempts=d.get("attempts", 0),
                    error=d.get("error"), classification=d.get("classification"),
                    started_at=d.get("started_at"), ended_at=d.get("ended_at"), progress=d.get("progress"),
                    message=d.get("message") or "")


def view_to_dict(view: ExecutionView) -> dict[str, Any]:
    """Every field of the view; steps keep their order (the CLI prints them in it)."""
    return {"id": view.id, "sop": view.sop, "version": view.version, "mode": view.mode,
            "status": view.status.value, "progress": view.progress,
            "steps": [step_to_dict(s) for s in view.steps.values()],
            "submitted_at": view.submitted_at, "ended_at": view.ended_at, "outputs": view.outputs,
            "priority": view.priority, "trace_id": view.trace_id, "priority_class": view.priority_class,
            "alerts": view.alerts, "agent": view.agent, "schedule": view.schedule, "waiting": view.waiting,
            "expected_duration_s": view.expected_duration_s, "eta": view.eta, "queue_position": view.queue_position}


def view_from_dict(d: dict[str, Any]) -> ExecutionView:
    steps = [step_from_dict(s) for s in d.get("steps") or ()]
    return ExecutionView(id=d["id"], sop=d["sop"], version=d.get("version", ""), mode=d.get("mode", ""),
                         status=ExecutionStatus(d["status"]), progress=d.get("progress", 0.0),
                         steps={s.id: s for s in steps}, submitted_at=d.get("submitted_at", 0.0),
                         ended_at=d.get("ended_at"), outputs=d.get("outputs"), priority=d.get("priority", 0),
                         trace_id=d.get("trace_id"), priority_class=d.get("priority_class") or "normal",
                         alerts=list(d.get("alerts") or ()), agent=d.get("agent"),
                         schedule=d.get("schedule"), waiting=d.get("waiting"),
                         expected_duration_s=d.get("expected_duration_s"), eta=d.get("eta"),
                         queue_position=d.get("queue_position"))


# -- events ------------------------------------------------------------------------------------------


def event_to_dict(event: Event) -> dict[str, Any]:
    return event.to_dict()


def event_from_dict(d: dict[str, Any]) -> Event:
    return Event.from_dict(d)


# -- errors ------------------------------------------------------------------------------------------

_STRUCTURED: dict[str, tuple[type[Exception], tuple[str, ...]]] = {
    "ExecutionNotFound": (errors.ExecutionNotFound, ("execution_id",)),
    "ExecutionTimeout": (errors.ExecutionTimeout, ("execution_id", "timeout", "status")),
    "ExecutionFailed": (errors.ExecutionFailed, ("execution_id", "status", "errors")),
    "IdempotencyConflict": (errors.IdempotencyConflict, ("key", "execution_id", "differences")),
    "BatchNotFound": (errors.BatchNotFound, ("name",)),
    "ScheduleError": (errors.ScheduleError, ("field", "detail")),
}
"""Errors rebuilt from their attributes, so their message and data are the original ones."""

_BY_MESSAGE: dict[str, type[Exception]] = {
    cls.__name__: cls for cls in (
        errors.ExecutionError, errors.SubmissionError, errors.EngineUnavailable, errors.EngineStartError,
        errors.StateStoreError, errors.StateStoreInUseError, errors.StateStoreLostError, SopflowError,
        errors.TriggerError, errors.TriggerNotFound, errors.TriggerPayloadTooLarge)}

HTTP_STATUS: list[tuple[type[Exception], int]] = [
    (errors.ExecutionNotFound, 404),
    (errors.TriggerNotFound, 404),
    (errors.BatchNotFound, 404),
    (errors.TriggerPayloadTooLarge, 413),
    (errors.ExecutionTimeout, 408),
    (errors.ExecutionFailed, 409),
    (errors.IdempotencyConflict, 409),
    (errors.EngineUnavailable, 503),  # also EngineStartError
    (errors.StateStoreError, 503),
    (errors.SubmissionError, 400),
    (SopValidationError, 400),
    (errors.ExecutionError, 409),  # the execution's state forbids it: finished, not waiting, rolling back
    (SopflowError, 400),
]
"""The HTTP status of each sopflow error, most specific first."""


class ApiError(SopflowError):
    """Raised by the API client for a refusal that is no sopflow error (bad token, bad request)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def http_status(error: BaseException) -> int:
    for cls, status in HTTP_STATUS:
        if isinstance(error, cls):
            return status
    return 500


def error_to_dict(error: BaseException) -> dict[str, Any]:
    """``{"type", "message", ...attributes}`` of a sopflow error (never a traceback)."""
    name = type(error).__name__
    out: dict[str, Any] = {"type": name if name in _STRUCTURED or name in _BY_MESSAGE else _known_base(error),
                           "message": str(error)}
    for field in _STRUCTURED.get(name, (None, ()))[1]:
        out[field] = getattr(error, field, None)
    return out


def _known_base(error: BaseException) -> str:
    for cls in type(error).__mro__:
        if cls.__name__ in _BY_MESSAGE:
            return cls.__name__
    return "SopflowError" if isinstance(error, SopflowError) else "InternalError"


def error_from_dict(status: int, d: Any) -> Exception:
    """The exception a response's ``{"error": {...}}`` stands for: the same class and message it had."""
    body = d.get("error") if isinstance(d, dict) else None
    if not isinstance(body, dict):
        return ApiError(status, f"the sopflow API answered HTTP {status} without an error description")
    name, message = body.get("type"), str(body.get("message", ""))
    if name in _STRUCTURED:
        cls, fields = _STRUCTURED[name]
        try:
            return cls(*(body[f] for f in fields))
        except (KeyError, TypeError):
            return errors.ExecutionError(message)
    if name in _BY_MESSAGE:
        return _BY_MESSAGE[name](message)
    return ApiError(status, message)
