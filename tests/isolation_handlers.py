"""Step handlers for the isolation tests (run in Ray workers and in test threads)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def leave_things(name: str, ok: bool, write: bool, context: Any) -> dict:
    """Look at this attempt's directory, maybe write into it, succeed or fail."""
    workdir = Path(context.workdir)
    seen = sorted(p.name for p in workdir.iterdir())
    if write:
        (workdir / "result.txt").write_text(name)
    if not ok:
        raise RuntimeError(f"{name} failed on purpose")
    return {"workdir": str(workdir), "seen": seen, "cwd": os.getcwd()}


def leak_env(name: str, value: str) -> str:
    """Misbehave: change the worker process's environment (shared with later attempts)."""
    os.environ[name] = value
    return value


def allocate(mb: int, context: Any) -> dict:
    """Hold ``mb`` MiB of real (touched) memory for a moment, in Python code the watchdog can stop."""
    import time

    held = b"\x01" * (mb * 1024 * 1024)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:  # a handler at work, holding its memory
        time.sleep(0.01)
    return {"attempt": context.attempt, "held_mb": len(held) // (1024 * 1024)}
