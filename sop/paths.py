"""Where a ``uses: sop:<file>`` step may read its sub-SOP from.

The rule: a sub-SOP file must be inside the directory of the SOP that uses it
(or one of its subdirectories), after following symlinks. Absolute paths, ``..``
that climbs out, and symlinks that point out are refused, so an SOP cannot make
sopflow read an arbitrary file such as ``sop:../../../etc/passwd``.
"""

from __future__ import annotations

from pathlib import Path

from sop.errors import SopflowError


class SubSopPathError(SopflowError):
    """Raised when a ``sop:`` path points outside the directory of the SOP that uses it."""

    def __init__(self, message: str, ref: str, allowed: Path) -> None:
        super().__init__(message)
        self.ref = ref
        self.allowed = allowed

    def __reduce__(self) -> tuple:  # survive pickling across Ray with the original arguments
        return (type(self), (str(self), self.ref, self.allowed))

    @property
    def suggestion(self) -> str:
        return (f"move the file into {self.allowed} (or a subdirectory of it) and refer to it by a "
                "path relative to the SOP, e.g. uses: sop:subsops/child.yaml")


def resolve_sub_sop(base_dir: str | Path, ref: str) -> Path:
    """The file ``uses: sop:<ref>`` names, when it is inside ``base_dir`` (symlinks followed).

    Raises:
        SubSopPathError: ``ref`` is absolute, or resolves outside ``base_dir``.
    """
    allowed = Path(base_dir).resolve()
    if Path(ref).is_absolute():
        raise SubSopPathError(f"sub-SOP path {ref!r} is absolute; a sub-SOP must be a file inside the SOP's "
                              f"directory {allowed}", ref, allowed)
    target = (allowed / ref).resolve()
    if not target.is_relative_to(allowed):
        raise SubSopPathError(f"sub-SOP path {ref!r} leads outside the SOP's directory {allowed} (it resolves "
                              f"to {target}, following '..' and symlinks); a sub-SOP must be a file inside "
                              "that directory", ref, allowed)
    return target
