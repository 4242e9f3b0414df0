"""The MCP pool against real servers as subprocesses: the example ledger, mcp-server-time from PyPI, and
fault servers (one dies mid-run, one hangs, one fails half its calls). No mocks, no sleeps as sync."""

from __future__ import annotations

import asyncio
import hashlib
import sys
from pathlib import Path

import pytest

from agents.mcp import (CallRecord, CircuitBreaker, McpBreakerOpen, McpNotAllowed, McpOutputInvalid, McpPool,
                        McpResultTooLarge, McpSourceError, McpToolError, McpUnavailable, SourceSpec)
from tests.agents.mcp.conftest import children, free_port, stdio, wait_for

pytestmark = pytest.mark.timeout(120)

LEDGER = "examples.mcp.ledger"
ECHO = "tests.agents.mcp.servers.echo"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Sleeps:
    """An injected sleep that records the delays instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def ledger(tmp_path: Path, **kw) -> SourceSpec:
    return stdio("ledger", LEDGER, env={"LEDGER_DB": str(tmp_path / "ledger.sqlite3")}, **kw)


def test_ledger_over_stdio_gives_data_and_one_session_serves_every_owner(tmp_path: Path) -> None:
    records: list[CallRecord] = []
    before = children()

    async def scenario():
        pool = McpPool(on_call=records.append)
        rows = await pool.call(ledger(tmp_path), "list_transactions", {"account": "ACME-001"}, owner="exe-a")
        statement = await pool.call(ledger(tmp_path), "bank_statement", {"account": "ACME-001"}, owner="exe-b")
        clean = await pool.call(ledger(tmp_path), "bank_statement", {"account": "CLEAN-001"}, owner="exe-b")
        shared = children() - before
        await pool.release("exe-a")
        after_a = (pool.open_sessions, children() - before)
        await pool.release("exe-b")
        return rows, statement, clean, shared, after_a, pool.open_sessions

    rows, statement, clean, shared, after_a, open_at_end = asyncio.run(scenario())
    assert isinstance(rows.data, list) and rows.data[0] == {"date": "2026-03-01", "amount": 120.0,
                                                            "reference": "INV-1001"}
    assert statement.data["days"][-1] == {"date": "2026-03-03", "total": 450.0}  # structured content
    assert [d["total"] for d in clean.data["days"]] == [25.0, 70.0]
    assert len(shared) == 1  # one server process for both owners
    assert after_a == (1, shared)  # exe-b still uses it
    assert open_at_end == 0
    wait_for(lambda: not (children() - before), what="the ledger server to be reaped")
    assert [r.outcome for r in records] == ["ok"] * 3 and all(r.attempts == 1 and r.result_bytes > 0 for r in records)


def test_ledger_over_streamable_http(tmp_path: Path, http_server) -> None:
    url = http_server(LEDGER)

    async def scenario():
        pool = McpPool()
        try:
            return await pool.call(SourceSpec("ledger", url=url), "bank_statement", {"account": "ACME-001"}, owner="x")
        finally:
            await pool.close()

    result = asyncio.run(scenario())
    assert len(result.data["days"]) == 3


def test_third_party_server_from_pypi_mcp_server_time() -> None:
    """mcp-server-time (installed from the package index by the test extra) answers through the pool."""
    before = children()

    async def scenario():
        pool = McpPool()
        source = SourceSpec("time", command=sys.executable, args=("-m", "mcp_server_time", "--local-timezone", "UTC"))
        tools = {t.name for t in await pool.list_tools(source, owner="t")}
        result = await pool.call(source, "get_current_time", {"timezone": "Europe/Paris"}, owner="t")
        await pool.close()
        return tools, result

    tools, result = asyncio.run(scenario())
    assert {"get_current_time", "convert_time"} <= tools
    assert result.data["timezone"] == "Europe/Paris" and "datetime" in result.data
    wait_for(lambda: not (children() - before), what="mcp-server-time to be reaped")


def test_a_server_that_dies_mid_run_is_reconnected_for_an_idempotent_tool_and_reaped(tmp_path: Path) -> None:
    before = children()
    sleeps = Sleeps()

    async def scenario():
        pool = McpPool(sleep=sleeps)
        dying = stdio("dying", "tests.agents.mcp.servers.dying", env={"DIE_AT": "2"}, idempotent_tools=("work",))
        first = await pool.call(dying, "work", {"item": "a"}, owner="o")
        second = await pool.call(dying, "work", {"item": "b"}, owner="o")  # kills the first server mid-call
        alive = children() - before
        await pool.release("o")
        return first, second, alive

    first, second, alive = asyncio.run(scenario())
    assert first.data["call"] == 1 and second.data["call"] == 1  # answered by a new process
    assert first.data["pid"] != second.data["pid"]
    assert sleeps.delays == [1.0] and len(alive) == 1  # the dead server was reaped before its successor ran
    wait_for(lambda: not (children() - before), what="every server to be reaped")


def test_a_call_that_may_have_reached_a_dead_server_is_not_retried_unless_idempotent() -> None:
    records: list[CallRecord] = []
    sleeps = Sleeps()

    async def scenario():
        pool = McpPool(on_call=records.append, sleep=sleeps)
        dying = stdio("dying", "tests.agents.mcp.servers.dying", env={"DIE_AT": "1"})
        try:
            with pytest.raises(McpUnavailable) as caught:
                await pool.call(dying, "work", {"item": "a"}, owner="o")
            return caught.value
        finally:
            await pool.close()

    error = asyncio.run(scenario())
    assert error.transient and "not declared idempotent" in str(error) and "idempotent_tools" in str(error)
    assert sleeps.delays == [] and records[-1].attempts == 1 and records[-1].outcome == "unavailable"


def test_a_hanging_tool_times_out_and_the_session_still_serves_other_calls() -> None:
    before = children()

    async def scenario():
        pool = McpPool(sleep=Sleeps())
        hanging = stdio("hanging", "tests.agents.mcp.servers.hanging", timeout_s=1.0)
        with pytest.raises(McpUnavailable, match=r"no answer within 1 s \(timeout_s\)"):
            await pool.call(hanging, "hang", {}, owner="o")
        quick = await pool.call(hanging, "quick", {}, owner="o")  # pinged first (it hung), then reused
        servers = children() - before
        await pool.close()
        return quick, servers

    quick, servers = asyncio.run(scenario())
    assert quick.data == {"ok": True} and len(servers) == 1
    wait_for(lambda: not (children() - before), what="the hanging server to be reaped")


def test_a_server_failing_half_its_calls_opens_the_breaker_and_a_probe_after_the_open_period_closes_it() -> None:
    clock = Clock()
    records: list[CallRecord] = []
    changes: list[tuple[str, str]] = []

    async def scenario():
        pool = McpPool(on_call=records.append, clock=clock, sleep=Sleeps(),
                       on_breaker=lambda source, snap: changes.append((source, snap["state"])))
        flaky = stdio("flaky", "tests.agents.mcp.servers.flaky")
        outcomes = []
        try:
            for _ in range(11):  # fail, ok, fail, ... : 6 of 11 failed after the 11th
                try:
                    await pool.call(flaky, "work", {}, owner="o")
                    outcomes.append("ok")
                except McpToolError:
                    outcomes.append("failed")
            opened = pool.breakers()["flaky"]
            with pytest.raises(McpBreakerOpen, match="circuit breaker is open"):
                await pool.call(flaky, "work", {}, owner="o")
            clock.now += 30.0  # the open period passes (on the injected clock)
            probe = await pool.call(flaky, "work", {}, owner="o")  # call 12 of the server: succeeds
            return outcomes, opened, probe, pool.breakers()["flaky"]
        finally:
            await pool.close()

    outcomes, opened, probe, closed = asyncio.run(scenario())
    assert outcomes == ["failed", "ok"] * 5 + ["failed"]
    assert opened["state"] == "open" and opened["failures"] == 6 and opened["calls"] == 11
    assert probe.data == {"call": 12}
    assert closed == {"state": "closed", "failures": 0, "calls": 0, "opened_at": None}
    assert records[11].outcome == "breaker_open" and records[11].attempts == 0
    assert changes == [("flaky", "open"), ("flaky", "closed")]  # each change reported once, as it happened


def test_a_tool_not_allowed_is_refused_without_reaching_the_server(tmp_path: Path) -> None:
    records: list[CallRecord] = []

    async def scenario():
        pool = McpPool(on_call=records.append)
        source = ledger(tmp_path, tools=("bank_statement",))
        try:
            with pytest.raises(McpNotAllowed, match="'list_transactions' of data source 'ledger' is not allowed"):
                await pool.call(source, "list_transactions", {"account": "ACME-001"}, owner="o")
            return pool.open_sessions
        finally:
            await pool.close()

    assert asyncio.run(scenario()) == 0  # nothing was even started
    assert records == [CallRecord("ledger", "list_transactions", {"account": "ACME-001"}, "not_allowed", 0,
                                  records[0].duration_s, 0, records[0].error)]


def test_answers_are_checked_against_the_declared_output_schema_and_tool_errors_are_named() -> None:
    async def scenario():
        pool = McpPool(sleep=Sleeps())
        echo = stdio("echo", ECHO)
        try:
            with pytest.raises(McpOutputInvalid, match=r"does not match its output schema at text: 5 is not of type"):
                await pool.call(echo, "wrong_shape", {}, owner="o")
            with pytest.raises(McpToolError, match="answered an error: .*the ledger is locked"):
                await pool.call(echo, "fails", {}, owner="o")
            with pytest.raises(McpToolError, match="has no tool 'nope'; it offers big, count, credential"):
                await pool.call(echo, "nope", {}, owner="o")
        finally:
            await pool.close()

    asyncio.run(scenario())


# -- hostile ------------------------------------------------------------------------------------------


def test_shell_metacharacters_reach_the_tool_as_data(tmp_path: Path) -> None:
    hostile = "$(touch pwned); `id` | rm -rf / && echo '\"; DROP TABLE ledger; --\n\x00"
    marker = tmp_path / "pwned"

    async def scenario():
        pool = McpPool()
        try:
            echoed = await pool.call(stdio("echo", ECHO), "echo", {"text": hostile}, owner="o")
            rows = await pool.call(ledger(tmp_path), "list_transactions", {"account": hostile}, owner="o")
            after = await pool.call(ledger(tmp_path), "list_transactions", {"account": "ACME-001"}, owner="o")
            return echoed, rows, after
        finally:
            await pool.close()

    echoed, rows, after = asyncio.run(scenario())
    assert echoed.data == {"text": hostile, "length": len(hostile)}
    assert rows.data == [] and len(after.data) == 5  # no such account; the table is still there
    assert not marker.exists() and not Path("pwned").exists()


def test_a_credential_in_env_or_headers_reaches_the_server_but_never_a_call_record(http_server) -> None:
    token = "tok-" + "s3cr3t-value-42"
    records: list[CallRecord] = []
    url = http_server(ECHO)

    def mask(value):
        return repr(value).replace(token, "***") if token in repr(value) else value

    async def scenario():
        pool = McpPool(on_call=records.append)
        try:
            via_env = await pool.call(stdio("echo", ECHO, env={"API_TOKEN": token}), "credential", {}, owner="o",
                                      mask=mask)
            via_header = await pool.call(SourceSpec("echo-http", url=url, headers={"Authorization": token}),
                                         "credential", {"note": token}, owner="o", mask=mask)
            return via_env, via_header
        finally:
            await pool.close()

    digest = hashlib.sha256(token.encode()).hexdigest()
    via_env, via_header = asyncio.run(scenario())
    assert via_env.data["env"] == digest and via_header.data["header"] == digest
    assert records and all(token not in repr(r) for r in records)
    assert token not in repr(stdio("echo", ECHO, env={"API_TOKEN": token}))  # nor in a spec's repr


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_an_oversized_answer_is_refused_unread_with_a_clear_error(transport: str, http_server) -> None:
    """A 20 MiB answer against a 1 MiB limit: refused while it streams in (this process never holds it),
    the session goes on serving."""
    import tracemalloc

    records: list[CallRecord] = []
    source = stdio("echo", ECHO) if transport == "stdio" else SourceSpec("echo", url=http_server(ECHO))

    async def scenario():
        pool = McpPool(on_call=records.append, max_result_bytes=2**20)
        try:
            ok = await pool.call(source, "big", {"mib": 0.25}, owner="o")
            tracemalloc.start()
            try:
                with pytest.raises(McpResultTooLarge, match=r"over the limit of 1048576 bytes.*ask the tool for less"):
                    await pool.call(source, "big", {"mib": 20}, owner="o")
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            after = await pool.call(source, "echo", {"text": "still here"}, owner="o")
            return ok, peak, after
        finally:
            await pool.close()

    ok, peak, after = asyncio.run(scenario())
    assert len(ok.data["result"]) == 2**18  # a str answer comes as {"result": ...} structured content
    assert peak < 8 * 2**20, f"{peak} bytes held while refusing a 40 MiB message"
    assert after.data["text"] == "still here"
    assert [r.outcome for r in records] == ["ok", "too_large", "ok"]


def test_a_missing_command_is_a_source_error_not_retried() -> None:
    sleeps = Sleeps()

    async def scenario():
        pool = McpPool(sleep=sleeps)
        with pytest.raises(McpSourceError, match=r"cannot start '/no/such/server'.*check the source's 'command'") as e:
            await pool.call(SourceSpec("gone", command="/no/such/server"), "x", {}, owner="o")
        return e.value, pool.breakers()

    error, breakers = asyncio.run(scenario())
    assert not error.transient and sleeps.delays == [] and breakers["gone"]["calls"] == 0


def test_connection_refused_over_http_is_retried_after_1_2_4_s_then_handed_on() -> None:
    sleeps = Sleeps()
    records: list[CallRecord] = []

    async def scenario():
        pool = McpPool(on_call=records.append, sleep=sleeps,
                       breaker=lambda c: CircuitBreaker(clock=c, min_calls=100))
        with pytest.raises(McpUnavailable, match="gave up after 4 attempts") as e:
            await pool.call(SourceSpec("down", url=f"http://127.0.0.1:{free_port()}/mcp", connect_timeout_s=5),
                            "anything", {}, owner="o")
        return e.value

    assert asyncio.run(scenario()).transient
    assert sleeps.delays == [1.0, 2.0, 4.0] and records[-1].attempts == 4 and records[-1].outcome == "unavailable"


async def _until(check, timeout: float = 15.0) -> None:
    """Wait (yielding to the loop) until ``check()`` holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "timed out waiting for a condition"
        await asyncio.sleep(0.02)


def test_an_idle_session_is_pinged_before_reuse_and_one_whose_server_died_is_replaced_unretried() -> None:
    import psutil

    clock = Clock()
    sleeps = Sleeps()
    records: list[CallRecord] = []
    before = children()

    async def scenario():
        pool = McpPool(on_call=records.append, clock=clock, sleep=sleeps, health_after_s=30.0)
        echo = stdio("echo", ECHO)  # echo is not idempotent: a retry would be refused
        await pool.call(echo, "echo", {"text": "one"}, owner="o")
        first = children() - before
        clock.now += 31  # idle past health_after_s: pinged, alive, reused
        await pool.call(echo, "echo", {"text": "two"}, owner="o")
        reused = children() - before
        for pid in first:
            psutil.Process(pid).kill()  # the server dies while idle
        session = pool._sessions[echo.key]
        await _until(lambda: session.connection_closed or not session.alive)
        answer = await pool.call(echo, "echo", {"text": "three"}, owner="o")
        replaced = children() - before
        await pool.close()
        return first, reused, replaced, answer

    first, reused, replaced, answer = asyncio.run(scenario())
    assert len(first) == 1 and reused == first
    assert answer.data["text"] == "three" and len(replaced) == 1 and replaced != first
    assert sleeps.delays == [] and [r.outcome for r in records] == ["ok"] * 3
    wait_for(lambda: not (children() - before), what="every server to be reaped")


def test_a_hung_call_holds_up_only_itself_on_a_shared_session() -> None:
    async def scenario():
        pool = McpPool(sleep=Sleeps())
        hanging = stdio("hanging", "tests.agents.mcp.servers.hanging", timeout_s=20.0)
        try:
            await pool.call(hanging, "quick", {}, owner="o")  # the session is up
            hung = asyncio.ensure_future(pool.call(hanging, "hang", {}, owner="o"))
            quick = await asyncio.wait_for(pool.call(hanging, "quick", {}, owner="p"), 10)
            still_waiting = not hung.done()
            hung.cancel()
            return quick, still_waiting, await asyncio.gather(hung, return_exceptions=True)
        finally:
            await pool.close()

    quick, still_waiting, (hung,) = asyncio.run(scenario())
    assert quick.data == {"ok": True} and still_waiting and isinstance(hung, asyncio.CancelledError)
