"""Ray actors of the System Design Run: Coordinator, ExecutionMonitor, FailureHandler, the step task.

Each actor is a plain class (``_Coordinator`` ...) testable without Ray, created
behind a thin front (:class:`Actors`) as a named, detached Ray actor.

The names below are imported on first use: every Ray worker that runs a step
imports :mod:`actors.step_task`, and must not pay for the coordinator (and the
SOP model behind it) to do so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from actors._execution import SubmitRequest
    from actors.fronts import NAMESPACE, Actors, call

_LAZY = {
    "Actors": "actors.fronts",
    "NAMESPACE": "actors.fronts",
    "call": "actors.fronts",
    "SubmitRequest": "actors._execution",
}

__all__ = ["Actors", "NAMESPACE", "SubmitRequest", "call"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'actors' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
