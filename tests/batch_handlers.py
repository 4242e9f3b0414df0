"""Step handlers for the batch and preemption tests: each run leaves a mark in a file (its side effect)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def mark(path: str, name: str, gate: str | None = None, fail: bool = False, timeout_s: float = 60.0) -> str:
    """Append ``<name> start``, wait (bounded) for the file ``gate`` if given, then append ``<name> done``.

    The marks prove how often a step really ran: an attempt stopped while it waits leaves only ``start``.
    """
    with open(path, "a") as f:
        f.write(f"{name} start\n")
    with open(f"{path}.pids", "a") as f:
        f.write(f"{name} {os.getpid()}\n")
    if gate is not None:
        deadline = time.monotonic() + timeout_s
        while not Path(gate).exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{gate} did not appear within {timeout_s} s")
            time.sleep(0.01)  # polling interval of a bounded wait for a file
    if fail:
        raise ValueError(f"{name} was asked to fail")
    with open(path, "a") as f:
        f.write(f"{name} done\n")
    return name


def marks(path: str) -> list[str]:
    """The marks written so far."""
    p = Path(path)
    return p.read_text().splitlines() if p.exists() else []


def pids(path: str, name: str) -> list[int]:
    """The processes that ran ``name`` (one per attempt that started), in order."""
    p = Path(f"{path}.pids")
    lines = p.read_text().splitlines() if p.exists() else []
    return [int(pid) for n, pid in (line.split() for line in lines) if n == name]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def count(path: str, line: str) -> int:
    return sum(1 for m in marks(path) if m == line)


def noop(**_: Any) -> str:
    return "ok"
