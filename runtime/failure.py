"""Classifying step failures and deciding what to do about them: retry, fail or escalate.

Pure functions over plain data, so the policy is testable without Ray; the
FailureHandler actor applies them and runs the escalation hooks.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the model pulls in pydantic, which a step's worker never needs
    from sop.model import RetryPolicy


class Classification(StrEnum):
    TRANSIENT = "transient"
    """May pass on another try: network trouble, a flaky dependency, a timeout."""
    PERMANENT = "permanent"
    """No retry can fix it: bad input, a bug, a missing command."""
    RESOURCE = "resource"
    """The node ran out of something (memory); retry, with more if the step allows it."""
    CRASH = "crash"
    """The worker process died; retry on a fresh worker."""


class Action(StrEnum):
    RETRY = "retry"
    FAIL = "fail"
    ESCALATE = "escalate"


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """A step failure as plain data (it crosses process boundaries and lands in events).

    Attributes:
        type: The exception type name, or ``Timeout`` / ``WorkerCrashed`` / ``ExitCode``.
        message: Human-readable, one line where possible.
        retryable: The handler's own verdict (RetryableError/PermanentError), if it gave one.
        exit_code: A shell step's exit status.
        origin: ``handler`` (raised by user code), ``timeout``, ``crash``, ``oom``, ``shell``.
        traceback: The handler's traceback, for logs.
    """

    type: str
    message: str
    retryable: bool | None = None
    exit_code: int | None = None
    origin: str = "handler"
    traceback: str = ""

    def __str__(self) -> str:
        return f"{self.type}: {self.message}" if self.message else self.type


# Python exceptions that signal a bug or bad input rather than bad luck.
_PERMANENT_TYPES = frozenset({
    "ValueError", "TypeError", "KeyError", "IndexError", "AttributeError", "NameError",
    "ImportError", "ModuleNotFoundError", "NotImplementedError", "AssertionError",
    "ZeroDivisionError", "ExpressionError", "RegistryError", "SyntaxError", "UnicodeError",
    "RecursionError", "JSONDecodeError", "ValidationError",
})
# Exit codes from sysexits.h and the shell that mean "do not bother retrying".
_PERMANENT_EXIT_CODES = frozenset({2, 64, 65, 66, 67, 68, 69, 70, 72, 73, 74, 76, 77, 78, 126, 127})


def classify(error: ErrorInfo) -> Classification:
    """Which kind of failure this is."""
    if error.origin == "crash":
        return Classification.CRASH
    if error.origin == "oom" or error.type in ("MemoryError", "OutOfMemoryError"):
        return Classification.RESOURCE
    if error.origin == "timeout":
        return Classification.TRANSIENT
    if error.retryable is not None:
        return Classification.TRANSIENT if error.retryable else Classification.PERMANENT
    if error.exit_code is not None:
        if error.exit_code in (137, -9):  # SIGKILL: almost always the OOM killer
            return Classification.RESOURCE
        return Classification.PERMANENT if error.exit_code in _PERMANENT_EXIT_CODES \
            else Classification.TRANSIENT
    return Classification.PERMANENT if error.type in _PERMANENT_TYPES else Classification.TRANSIENT


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do after a failed attempt."""

    action: Action
    classification: Classification
    reason: str
    delay_s: float = 0.0
    memory_mb: int | None = None
    """Memory for the next attempt, when a resource failure grows it."""


def decide(error: ErrorInfo, attempt: int, policy: RetryPolicy,
           memory_mb: int | None = None) -> Decision:
    """Retry with backoff, fail for good (permanent), or escalate (retries exhausted)."""
    kind = classify(error)
    if kind == Classification.PERMANENT:
        return Decision(Action.FAIL, kind, f"permanent failure, not retried: {error}")
    if attempt >= policy.max_attempts:
        return Decision(Action.ESCALATE, kind,
                        f"{kind.value} failure persisted through {attempt} attempt(s): {error}")
    delay = policy.delay_before(attempt + 1)
    grown = memory_mb
    if kind == Classification.RESOURCE and memory_mb and policy.memory_growth > 1:
        grown = int(memory_mb * policy.memory_growth)
    reason = {Classification.CRASH: "worker crashed; retrying on a fresh worker",
              Classification.RESOURCE: "out of resources; retrying" + (
                  f" with {grown} MiB" if grown != memory_mb else ""),
              Classification.TRANSIENT: "transient failure; retrying"}[kind]
    return Decision(Action.RETRY, kind, reason, delay, grown)


def error_from_exception(exc: BaseException, *, traceback: str = "") -> ErrorInfo:
    """Turn an exception raised by a handler into :class:`ErrorInfo`."""
    from runtime.errors import PermanentError, RetryableError

    retryable: bool | None = None
    if isinstance(exc, RetryableError):
        retryable = True
    elif isinstance(exc, PermanentError):
        retryable = False
    message = str(exc).strip().splitlines()[0][:500] if str(exc).strip() else ""
    return ErrorInfo(type(exc).__name__, message, retryable, traceback=traceback[-4000:])


def as_dict(error: ErrorInfo) -> dict[str, Any]:
    return {"type": error.type, "message": error.message, "retryable": error.retryable,
            "exit_code": error.exit_code, "origin": error.origin}
