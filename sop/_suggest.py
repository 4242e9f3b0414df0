"""'Did you mean ...?' suggestions for misspelt names."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def close_names(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Candidates that look like ``name``, best first."""
    pool = [c for c in candidates if isinstance(c, str)]
    return difflib.get_close_matches(name, pool, n=n, cutoff=0.6)


def did_you_mean(name: object, candidates: Iterable[str]) -> str | None:
    """``"did you mean 'fetch'?"``, or ``None`` when nothing is close."""
    if not isinstance(name, str):
        return None
    close = close_names(name, candidates)
    if not close:
        return None
    return "did you mean " + " or ".join(repr(c) for c in close) + "?"
