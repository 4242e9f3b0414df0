"""Building small test SOPs and reading their events, shared by the engine tests."""

from __future__ import annotations

import re
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

H = "python:tests.handlers_for_tests"
DEFAULTS = """\
defaults:
  retry: {max_attempts: 3, initial_delay_s: 0.05, backoff: 2.0}
  timeout_s: 60
  resources: {cpu: 0.25}
"""


def sop_text(body: str, name: str = "t", inputs: str = "", version: str = "1",
             mode: str | None = "system_design") -> str:
    """An SOP with the test defaults (steps run in parallel on the 4 logical CPUs).

    It runs as a System Design Run unless the body says ``mode:`` (or ``mode=None`` leaves it to
    ``auto``): an SOP whose steps declare no dependency would otherwise run agent-centric
    (property 33), and most tests are about the DAG.
    """
    body = textwrap.dedent(body)
    declared = "" if mode is None or re.search(r"^mode:", body, re.M) else f"mode: {mode}\n"
    return f"sop: {name}\nversion: \"{version}\"\n{declared}{textwrap.dedent(inputs)}{DEFAULTS}{body}"


def events_of(engine, execution_id: str) -> list:
    return list(engine.events(execution_id, follow=False))


def wait_for(predicate: Any, timeout_s: float = 120.0) -> Any:
    """Poll ``predicate`` until it returns something truthy (and return that), or fail."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)  # polling interval of a bounded wait for a condition
    raise AssertionError("condition not reached in time")


@contextmanager
def own_engine(namespace: str, state_dir: Path, **config: Any) -> Iterator[Any]:
    """An engine with actors and a state file of its own, so a test may kill or tune them."""
    from runtime import Engine, Registry
    from runtime.config import EngineConfig

    engine = Engine(namespace=namespace, registry=Registry(),
                    config=EngineConfig(state=str(state_dir / "state.db"), **config))
    try:
        yield engine
    finally:
        engine._conn.actors.kill()


def gated(engine, tmp_path: Path, name: str = "gated") -> tuple[str, Path]:
    """A running execution whose only step waits for the file ``gate``."""
    gate = tmp_path / "gate"
    eid = engine.submit(sop_text(f"""\
        steps:
          - id: hold
            uses: {H}:wait_for_file
            with: {{path: "{gate}", timeout_s: 60}}
        """, name=name))
    wait_for(lambda: engine.status(eid).steps["hold"].status.value == "running")
    return eid, gate
