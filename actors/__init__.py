"""Ray actors of the System Design Run: Coordinator, ExecutionMonitor, FailureHandler, the step task.

Each actor is a plain class (``_Coordinator`` ...) testable without Ray, created
behind a thin front (:class:`Actors`) as a named, detached Ray actor.
"""

from actors._execution import SubmitRequest
from actors.fronts import NAMESPACE, Actors, call

__all__ = ["Actors", "NAMESPACE", "SubmitRequest", "call"]
