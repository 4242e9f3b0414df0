"""The root of sopflow's errors and the SOP-validation subtree.

Every error sopflow raises for a user mistake derives from :class:`SopflowError`
and carries enough data (file, path, what was expected, a fix) to be printed as
is; nothing a user does wrong should surface as a ``KeyError`` or a traceback
from deep inside Ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Severity = Literal["error", "warning"]


class SopflowError(Exception):
    """Raised for any sopflow failure; the root of the error tree."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with an SOP, located as precisely as the input allows.

    Attributes:
        message: What is wrong, naming both sides ("depends on 'pack', which is
            not defined").
        path: Where inside the document, e.g. ``steps[2].depends_on[0]``; empty
            for the document as a whole.
        file: The file the SOP came from, or ``<string>``.
        line: 1-based line, or ``None`` when the input carries no positions.
        column: 1-based column, or ``None``.
        code: A stable machine-readable kind, e.g. ``unknown-dependency``.
        suggestion: A fix, when one is known ("did you mean 'fetch'?").
        severity: ``error`` makes the SOP invalid; ``warning`` does not.
    """

    message: str
    path: str = ""
    file: str = "<string>"
    line: int | None = None
    column: int | None = None
    code: str = "invalid"
    suggestion: str | None = None
    severity: Severity = "error"

    @property
    def location(self) -> str:
        """``file:line:column``, as far as it is known."""
        loc = self.file
        if self.line is not None:
            loc += f":{self.line}"
            if self.column is not None:
                loc += f":{self.column}"
        return loc

    def __str__(self) -> str:
        where = f"{self.location}: " + (f"{self.path}: " if self.path else "")
        hint = f"; {self.suggestion}" if self.suggestion else ""
        return f"{where}{self.message}{hint}"

    def to_dict(self) -> dict[str, object]:
        return {
            "severity": self.severity,
            "code": self.code,
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "path": self.path,
            "message": self.message,
            "suggestion": self.suggestion,
        }


@dataclass(slots=True)
class SopValidationError(SopflowError):
    """Raised when an SOP (or a change to one) is invalid; holds every problem found."""

    problems: list[Problem] = field(default_factory=list)

    def __post_init__(self) -> None:
        Exception.__init__(self, self._summary())

    def __reduce__(self) -> tuple:  # survive pickling across Ray with the original arguments
        return (type(self), (self.problems,))

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def _summary(self) -> str:
        errors = self.errors
        head = f"{len(errors)} problem{'s' if len(errors) != 1 else ''} in SOP"
        return head + ":\n" + "\n".join(f"  {p}" for p in errors)

    def __str__(self) -> str:
        return self._summary()


class ModeError(SopflowError):
    """Raised when an SOP is asked to run in (or change to) a mode that does not fit it.

    Attributes:
        sop: The SOP's name.
        mode: The mode that was asked for.
        reason: What is in the way, and which mode to use instead.
        step: The step in the way, when one is.
        suggestion: A fix for a misspelt mode, when one is close.
    """

    def __init__(self, sop: str, mode: str, reason: str, *, step: str | None = None,
                 suggestion: str | None = None) -> None:
        self.sop, self.mode, self.reason, self.step, self.suggestion = sop, mode, reason, step, suggestion
        hint = f"; {suggestion}" if suggestion else ""
        super().__init__(f"cannot change SOP {sop!r} to mode {mode}: {reason}{hint}")

    def __reduce__(self) -> tuple:  # survive pickling across Ray with the original arguments
        return (_mode_error, (self.sop, self.mode, self.reason, self.step, self.suggestion))


def _mode_error(sop: str, mode: str, reason: str, step: str | None, suggestion: str | None) -> ModeError:
    return ModeError(sop, mode, reason, step=step, suggestion=suggestion)
