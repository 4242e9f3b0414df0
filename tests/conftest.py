"""Shared fixtures. One local Ray cluster serves the whole test run, started on first use."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
NAMESPACE = "sopflow-tests"

# Every process of the test cluster (driver, actors, workers) inherits these before
# ray.init starts it, so spans from all of them land in one JSON-lines file.
TRACE_FILE = Path(tempfile.mkdtemp(prefix="sopflow-traces-")) / "spans.jsonl"
os.environ.setdefault("OTEL_TRACES_EXPORTER", "console")
os.environ.setdefault("SOPFLOW_TRACE_FILE", str(TRACE_FILE))
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    return EXAMPLES


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """A real local Ray cluster for the whole run (fresh: address="local")."""
    import ray

    ray.init(address="local", num_cpus=4, namespace=NAMESPACE, include_dashboard=False,
             log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    yield
    ray.shutdown()


STATE_FILE = Path(tempfile.mkdtemp(prefix="sopflow-state-")) / "state.db"


@pytest.fixture(scope="session")
def engine(ray_cluster: None):
    """The sopflow engine on the shared cluster (its actors are created once), state in a temp file."""
    from runtime import Engine, Registry
    from runtime.config import EngineConfig

    return Engine(namespace=NAMESPACE, registry=Registry(), config=EngineConfig(state=str(STATE_FILE)))


@pytest.fixture
def sop_file(tmp_path: Path):
    """Write an SOP (YAML text) to a file and return its path."""

    def write(text: str, name: str = "sop.yaml") -> str:
        path = tmp_path / name
        path.write_text(text)
        return str(path)

    return write


def read_spans() -> list[dict]:
    """Every span exported so far by any process of the test cluster."""
    if not TRACE_FILE.exists():
        return []
    return [json.loads(line) for line in TRACE_FILE.read_text().splitlines() if line.strip()]


@pytest.fixture
def inproc():
    """A fresh in-process engine (``Engine.in_process()``: no Ray, state in memory), shut down after the test.

    The state machine runs on a private event loop of this process and handlers in its
    threads, so ``python:tests.handlers_for_tests`` must (and does) import here. Limits: a
    force-cancelled or timed-out handler thread runs on to its end (only its result is
    dropped), and memory limits are not enforced; tests of those stay on Ray.
    """
    from runtime import Engine, Registry

    engine = Engine.in_process(registry=Registry())
    try:
        yield engine
    finally:
        engine.shutdown()


@pytest.fixture
def inproc_file(tmp_path: Path):
    """Like ``inproc``, with the state in a SQLite file (``tmp_path / "state.db"``: read it in the test)."""
    from runtime import Engine, Registry

    engine = Engine.in_process(state=str(tmp_path / "state.db"), registry=Registry())
    try:
        yield engine
    finally:
        engine.shutdown()
