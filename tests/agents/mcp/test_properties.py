"""Properties 20 (mcp_lifecycle) and 21 (mcp_backoff) of shared/PROPERTIES.md, against real servers."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.mcp import (CallRecord, CircuitBreaker, McpNotAllowed, McpOutputInvalid, McpPool, McpUnavailable,
                        SourceSpec)
from runtime.masking import redact
from tests.agents.mcp.conftest import ROOT, children, free_port, stdio, wait_for, wait_listening

pytestmark = pytest.mark.timeout(300)

ECHO = "tests.agents.mcp.servers.echo"
TOOLS = ("echo", "credential", "wrong_shape", "count")

secrets = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e), min_size=8, max_size=24)
calls = st.lists(st.tuples(st.sampled_from(TOOLS), st.text(max_size=30), st.sampled_from(["a", "b"])),
                 min_size=1, max_size=6)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(secret=secrets, allowed=st.sets(st.sampled_from(TOOLS)), plan=calls)
def test_property_20_mcp_lifecycle(secret: str, allowed: set[str], plan: list) -> None:
    """For any execution needing data: its credential reaches the server; every call is authorised (a tool
    not allowed is refused unsent) and logged once with secrets masked; answers are checked against their
    declared shape; every connection is closed (and its server reaped) when the execution's owners end."""
    before = children()
    records: list[CallRecord] = []
    source = stdio("echo", ECHO, env={"API_TOKEN": secret}, tools=tuple(sorted(allowed)))

    def mask(value):
        return redact(value, (secret,))

    async def scenario():
        pool = McpPool(on_call=records.append)
        outcomes = []
        for tool, text, owner in plan:
            args = {"text": text + secret} if tool == "echo" else {}
            try:
                result = await pool.call(source, tool, args, owner=owner, mask=mask)
                outcomes.append((tool, "ok", result.data, args))
            except (McpNotAllowed, McpOutputInvalid) as e:
                outcomes.append((tool, type(e).__name__, None, args))
        owners = {owner for _, _, owner in plan}
        for owner in sorted(owners):
            await pool.release(owner)
        return outcomes, pool.open_sessions

    outcomes, still_open = asyncio.run(scenario())
    digest = hashlib.sha256(secret.encode()).hexdigest()
    for tool, outcome, data, args in outcomes:
        if tool not in allowed:
            assert outcome == "McpNotAllowed"
        elif tool == "wrong_shape":
            assert outcome == "McpOutputInvalid"  # its answer does not match the schema it declares
        elif tool == "echo":
            assert data == {"text": args["text"], "length": len(args["text"])}
        elif tool == "credential":
            assert data["env"] == digest
    assert len(records) == len(plan)  # every call logged, once
    assert [r.tool for r in records] == [tool for tool, *_ in plan]
    assert all(r.attempts == 0 for r in records if r.outcome == "not_allowed")
    assert all(secret not in repr(r) for r in records)
    assert still_open == 0
    wait_for(lambda: not (children() - before), what="every server to be reaped")


tool_names = st.text(st.characters(min_codepoint=0x61, max_codepoint=0x7a), min_size=1, max_size=12)


@settings(max_examples=30, deadline=None)
@given(tool=tool_names, idempotent=st.sampled_from([None, True, False]),
       arguments=st.dictionaries(tool_names, st.integers() | st.text(max_size=10), max_size=3))
def test_property_21_mcp_backoff(tool: str, idempotent: bool | None, arguments: dict) -> None:
    """For any call to an unavailable source (nothing listens): retried after 1 s, 2 s and 4 s (3 retries),
    whatever the tool and its idempotence (nothing reached the server), then a transient McpUnavailable is
    handed on to the failure handler, the call logged once with its 4 attempts."""
    delays: list[float] = []
    records: list[CallRecord] = []

    async def sleep(delay: float) -> None:
        delays.append(delay)

    async def scenario():
        # The breaker's minimum is raised so 30 examples sharing one port's breaker never trip it.
        pool = McpPool(on_call=records.append, sleep=sleep, breaker=lambda c: CircuitBreaker(clock=c, min_calls=100))
        source = SourceSpec("down", url=f"http://127.0.0.1:{free_port()}/mcp", connect_timeout_s=5)
        with pytest.raises(McpUnavailable) as caught:
            await pool.call(source, tool, arguments, owner="o", idempotent=idempotent)
        return caught.value

    error = asyncio.run(scenario())
    assert delays == [1.0, 2.0, 4.0]
    assert error.transient and "gave up after 4 attempts" in str(error)
    assert [(r.outcome, r.attempts) for r in records] == [("unavailable", 4)]


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(comes_up_after=st.integers(0, 4))
def test_property_21_mcp_backoff_a_source_that_comes_back(tmp_path_factory, comes_up_after: int) -> None:
    """A source that starts listening after k failed attempts is reached on retry k (k <= 3), after the
    first k delays of 1 s, 2 s, 4 s; one that is still down after the third retry is handed on."""
    port = free_port()
    delays: list[float] = []
    servers: list[subprocess.Popen] = []
    env = {**os.environ, "LEDGER_DB": str(tmp_path_factory.mktemp("ledger") / "ledger.sqlite3")}

    def start() -> None:
        proc = subprocess.Popen([sys.executable, "-m", "examples.mcp.ledger", "--http", str(port)], cwd=ROOT,
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        servers.append(proc)
        wait_listening(port, proc)

    async def sleep(delay: float) -> None:
        delays.append(delay)
        if len(delays) == comes_up_after:  # the server comes up while the pool waits
            await asyncio.to_thread(start)

    async def scenario():
        pool = McpPool(sleep=sleep)
        try:
            return await pool.call(SourceSpec("ledger", url=f"http://127.0.0.1:{port}/mcp"), "bank_statement",
                                   {"account": "CLEAN-001"}, owner="o")
        finally:
            await pool.close()

    try:
        if comes_up_after == 0:
            start()
        if comes_up_after <= 3:
            result = asyncio.run(scenario())
            assert len(result.data["days"]) == 2
            assert delays == [1.0, 2.0, 4.0][:comes_up_after]
        else:
            with pytest.raises(McpUnavailable, match="gave up after 4 attempts"):
                asyncio.run(scenario())
            assert delays == [1.0, 2.0, 4.0]
    finally:
        for proc in servers:
            proc.terminate()
            proc.wait(10)
