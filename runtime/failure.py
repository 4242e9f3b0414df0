"""Classifying step failures and deciding what to do about them: retry, fail or escalate.

Pure functions over plain data, so the policy is testable without Ray; the
FailureHandler actor applies them and runs the escalation hooks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from runtime._pickle import positional_pickle

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


@positional_pickle
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


_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-_]|[\x00-\x08\x0b-\x1f\x7f]")


def clean_message(text: str, limit: int = 500) -> str:
    """``text`` as one readable line: terminal (ANSI) codes and control characters removed, first
    non-empty line only, at most ``limit`` characters."""
    text = _ANSI.sub("", text).strip()
    return text.splitlines()[0].strip()[:limit] if text else ""


def describe_exception(exc: BaseException) -> str:
    """``str(exc)`` cleaned to one line; never raises (``<unprintable T>`` when ``__str__`` fails)."""
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - a user's exception whose __str__ is broken
        return f"<unprintable {_type_name(exc)}>"
    return clean_message(text) if isinstance(text, str) else f"<unprintable {_type_name(exc)}>"


def _type_name(exc: BaseException) -> str:
    try:
        return type(exc).__name__
    except Exception:  # noqa: BLE001 - a metaclass with a broken __getattribute__
        return "Exception"


def error_from_exception(exc: BaseException, *, traceback: str = "") -> ErrorInfo:
    """Turn an exception raised by a handler into :class:`ErrorInfo`; never raises.

    ``SystemExit`` keeps its exit code (``sys.exit(3)`` -> ``exit_code=3``, classified by the
    exit-code rules); a message that cannot be printed is described by the type.
    """
    from runtime.errors import PermanentError, RetryableError

    name = _type_name(exc)
    traceback = _ANSI.sub("", traceback[-4000:]) if isinstance(traceback, str) else ""
    if isinstance(exc, SystemExit):  # sys.exit(n): n, sys.exit(): 0, sys.exit("why"): 1, as Python does
        code = exc.code
        if isinstance(code, int) and not isinstance(code, bool):
            exit_code, said = code, str(code)
        else:
            exit_code, said = (0, "") if code is None else (1, repr(describe_exception(SystemExit(code))[:200]))
        return ErrorInfo("SystemExit", f"the handler called sys.exit({said}): exit code {exit_code}",
                         exit_code=exit_code, traceback=traceback)
    if isinstance(exc, KeyboardInterrupt):
        return ErrorInfo(name, "the handler was interrupted (KeyboardInterrupt)", traceback=traceback)
    retryable: bool | None = None
    if isinstance(exc, RetryableError):
        retryable = True
    elif isinstance(exc, PermanentError):
        retryable = False
    return ErrorInfo(name, describe_exception(exc), retryable, traceback=traceback)


def as_dict(error: ErrorInfo) -> dict[str, Any]:
    return {"type": error.type, "message": error.message, "retryable": error.retryable,
            "exit_code": error.exit_code, "origin": error.origin}
