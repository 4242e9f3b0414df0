"""MCP pool: tool calls per second through one pooled session versus a fresh session per call.

Against the example ledger server (``examples/mcp/ledger.py``, SQLite file in a temporary
directory) over stdio: ``bank_statement`` for one account, called one after the other.
"Pooled" sends every call through one :class:`agents.mcp.McpPool` session (the server
started once); "fresh" opens a new pool per call (spawn the server, handshake, list tools,
call, stop and reap it), which is what a client without a pool pays (Temporal's ADK plugin,
one subprocess per call). Also over streamable HTTP, pooled, and with 8 calls in flight
at once through the one pooled stdio session.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._util import Result, summarise

ROOT = Path(__file__).resolve().parent.parent


def _source(db: Path, **kw):
    from agents.mcp import SourceSpec

    return SourceSpec("ledger", command=sys.executable, args=("-m", "examples.mcp.ledger"),
                      env={"LEDGER_DB": str(db)}, **kw)


async def _timed_calls(call, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - t0) * 1000.0)
    return samples


def _row(name: str, samples: list[float], notes: str = "") -> Result:
    t = summarise(samples)
    return Result(name, {**t.figures(), "calls/s": 1000.0 / t.mean}, notes)


async def _measure(db: Path, url: str, quick: bool) -> list[Result]:
    from agents.mcp import McpPool, SourceSpec

    pooled_n, fresh_n = (50, 3) if quick else (500, 15)
    args = {"account": "ACME-001"}
    pool = McpPool()
    source = _source(db)
    await pool.call(source, "bank_statement", args, owner="bench")  # start the server once (not timed)
    pooled = await _timed_calls(lambda: pool.call(source, "bank_statement", args, owner="bench"), pooled_n)

    t0 = time.perf_counter()
    burst = 8 * (pooled_n // 8)
    for _ in range(burst // 8):
        await asyncio.gather(*(pool.call(source, "bank_statement", args, owner="bench") for _ in range(8)))
    concurrent_s = time.perf_counter() - t0
    await pool.close()

    async def fresh_call() -> None:
        one = McpPool()
        try:
            await one.call(source, "bank_statement", args, owner="bench")
        finally:
            await one.close()

    fresh = await _timed_calls(fresh_call, fresh_n)

    http = McpPool()
    over_http = SourceSpec("ledger", url=url)
    await http.call(over_http, "bank_statement", args, owner="bench")
    http_samples = await _timed_calls(lambda: http.call(over_http, "bank_statement", args, owner="bench"), pooled_n)
    await http.close()

    pooled_row = _row("stdio, one pooled session", pooled)
    fresh_row = _row("stdio, a fresh session (and server) per call", fresh)
    speedup = pooled_row.figures["calls/s"] / fresh_row.figures["calls/s"]
    fresh_row.notes = f"the pooled session is {speedup:,.0f}x faster"
    return [pooled_row, fresh_row,
            Result("stdio, one pooled session, 8 calls in flight", {"n": burst, "calls/s": burst / concurrent_s}),
            _row("streamable HTTP, one pooled session", http_samples)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the ledger server exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the ledger server is not listening on port {port} after {timeout:g} s")
        time.sleep(0.05)


def run(quick: bool = False) -> list[Result]:
    workdir = Path(tempfile.mkdtemp(prefix="sopflow-bench-mcp-"))
    db = workdir / "ledger.sqlite3"
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "examples.mcp.ledger", "--http", str(port)], cwd=ROOT,
                              env={**os.environ, "LEDGER_DB": str(db)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_listening(port, server)
        return asyncio.run(_measure(db, f"http://127.0.0.1:{port}/mcp", quick))
    finally:
        server.terminate()
        server.wait(10)
