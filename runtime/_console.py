"""The rich console every CLI command prints through (a module of its own: cheap to import)."""

from __future__ import annotations

from rich.console import Console


def console(stderr: bool = False) -> Console:
    """Colour on a terminal, plain text in a pipe (rich decides from isatty and NO_COLOR)."""
    return Console(stderr=stderr, highlight=False, soft_wrap=True)
