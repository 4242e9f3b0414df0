"""Ray actors of the System Design Run: Coordinator, ExecutionMonitor, FailureHandler, the step task.

Each actor is a plain class (``_Coordinator`` ...) testable without Ray, created
behind a thin front (:class:`Actors`) as a named, detached Ray actor.

The names below are imported on first use: every Ray worker that runs a step
imports :mod:`actors.step_task`, and must not pay for the coordinator (and the
SOP model behind it) to do so.
"""

from __future__ import annotations

from sop._lazy import lazy_exports

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runtime.request import SubmitRequest
    from actors.fronts import NAMESPACE, Actors, call

_LAZY = {
    "Actors": "actors.fronts",
    "NAMESPACE": "actors.fronts",
    "call": "actors.fronts",
    "SubmitRequest": "runtime.request",
}

__all__ = ["Actors", "NAMESPACE", "SubmitRequest", "call"]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals(), __all__)
