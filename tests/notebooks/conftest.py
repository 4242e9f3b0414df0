"""Notebooks executed headless in a real kernel against their own local Ray cluster, and a real browser."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.notebooks.outputs import NOTEBOOKS

ROOT = NOTEBOOKS.parent


def notebook_env(state_dir: Path) -> dict[str, str]:
    """The kernel's environment: its own state file and namespace, a cluster of its own, no dashboard,
    and its own file for the example ledger server (``notebooks/agents.ipynb`` hands it to the server)."""
    env = {k: v for k, v in os.environ.items() if k not in ("SOPFLOW_ADDRESS", "RAY_ADDRESS")}
    env.update(SOPFLOW_STATE=str(state_dir / "state.db"), SOPFLOW_NAMESPACE=f"nb-test-{uuid.uuid4().hex[:8]}",
               SOPFLOW_DASHBOARD="0", SOPFLOW_NUM_CPUS="2", SOPFLOW_EXAMPLES=str(ROOT / "examples"),
               LEDGER_DB=str(state_dir / "ledger.sqlite3"))
    return env


def execute(name: str, state_dir: Path):
    """Run every cell of ``notebooks/<name>.ipynb`` in a fresh kernel; a failing cell fails the test."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    client = NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute(env=notebook_env(state_dir))
    return nb


@pytest.fixture(scope="session")
def quickstart() -> Iterator:
    with tempfile.TemporaryDirectory(prefix="sopflow-nb-") as tmp:
        yield execute("quickstart", Path(tmp))


@pytest.fixture(scope="session")
def operations() -> Iterator:
    with tempfile.TemporaryDirectory(prefix="sopflow-nb-") as tmp:
        yield execute("operations", Path(tmp))


@pytest.fixture(scope="session")
def agents() -> Iterator:
    """The agents notebook, executed; ``metadata["ledgers_before"]``: the ledger files that were already in
    the checkout (a ``make demo`` run from its root leaves one there), so a test can tell what it made."""
    before = sorted(str(p) for p in (NOTEBOOKS / "ledger.sqlite3", ROOT / "ledger.sqlite3") if p.exists())
    with tempfile.TemporaryDirectory(prefix="sopflow-nb-") as tmp:
        nb = execute("agents", Path(tmp))
        nb.metadata["ledgers_before"] = before
        yield nb


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed with apt-get when missing (skips only when apt cannot install it)."""
    found = shutil.which("chromium")
    if found:
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env,
                       capture_output=True, timeout=900)
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", b"") or b""
        pytest.skip(f"chromium is not installed and apt-get could not install it: {e} "
                    f"{detail.decode(errors='replace')[-500:]}")
    found = shutil.which("chromium")
    if not found:
        pytest.skip("apt-get installed chromium but no `chromium` is on the PATH")
    return found
