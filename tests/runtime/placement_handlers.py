"""Handlers for the multi-node placement test: report the Ray node an attempt ran on."""

from __future__ import annotations

import time
from pathlib import Path


def node_after_gate(gate: str, timeout_s: float = 120.0) -> dict:
    """Wait (bounded) for the file ``gate``, so the steps run at once; return this worker's node id."""
    import ray

    deadline = time.monotonic() + timeout_s
    while not Path(gate).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{gate} did not appear within {timeout_s} s")
        time.sleep(0.05)  # polling a file another process writes
    return {"node": ray.get_runtime_context().get_node_id()}
