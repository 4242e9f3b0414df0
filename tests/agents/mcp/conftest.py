"""Helpers for the MCP pool tests: real servers as subprocesses, and counting this process's children."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from agents.mcp import SourceSpec

ROOT = Path(__file__).resolve().parents[3]


def stdio(name: str, module: str, **kw) -> SourceSpec:
    """A source running ``python -m module`` over stdio."""
    return SourceSpec(name, command=sys.executable, args=("-m", module), **kw)


def children() -> set[int]:
    """Pids of this process's live children (zombies are not alive: they are only not yet reaped)."""
    out = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                out.add(p.pid)
        except psutil.NoSuchProcess:
            pass
    return out


def wait_for(check: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    """Poll ``check`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0
    wait_for(up, timeout, f"a server on port {port}")


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Start ``python -m module --http PORT`` (env extras allowed); returns its MCP URL. Stopped after the test."""
    procs: list[subprocess.Popen] = []

    def start(module: str, **env: str) -> str:
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", module, "--http", str(port)], cwd=ROOT,
                                env={**os.environ, "LEDGER_DB": str(tmp_path / "ledger.sqlite3"), **env},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        wait_listening(port, proc)
        return f"http://127.0.0.1:{port}/mcp"

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
