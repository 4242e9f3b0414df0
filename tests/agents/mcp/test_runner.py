"""``mcp:`` steps end to end in the in-process engine, against the example ledger server over stdio."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.agents.mcp.conftest import children, wait_for

pytestmark = pytest.mark.timeout(180)

TOKEN = "tok-Very-Secret-123"

SOP = """
sop: ledger-e2e
version: "1"
inputs:
  account: {type: string, required: true}
  token: {type: string, secret: true}
data_sources:
  ledger:
    command: python
    args: ["-m", "examples.mcp.ledger"]
    env: {LEDGER_DB: "DB", API_TOKEN: "${{ inputs.token }}"}
    tools: [list_transactions, bank_statement]
  echo:
    command: python
    args: ["-m", "tests.agents.mcp.servers.echo"]
    env: {API_TOKEN: "${{ inputs.token }}"}
steps:
  - id: fetch
    uses: mcp:ledger/list_transactions
    with: {account: "${{ inputs.account }}"}
  - id: statement
    uses: mcp:ledger/bank_statement
    with: {account: "${{ inputs.account }}"}
  - id: check
    uses: python:examples.controls:check_totals
    depends_on: [fetch, statement]
    with: {rows: "${{ steps.fetch.output }}", statement: "${{ steps.statement.output }}"}
  - id: cred
    uses: mcp:echo/credential
  - id: said
    uses: mcp:echo/echo
    with: {text: "token=${{ inputs.token }}"}
outputs:
  mismatches: "${{ steps.check.output.mismatches }}"
  first_day: "${{ steps.statement.output.days[0].date }}"
  rows: "${{ steps.fetch.output | length }}"
  said_length: "${{ steps.said.output.length }}"
"""


def test_mcp_steps_output_data_keep_credentials_out_of_events_and_close_their_servers(inproc, sop_file,
                                                                                       tmp_path: Path) -> None:
    import hashlib

    before = children()
    path = sop_file(SOP.replace('"DB"', json.dumps(str(tmp_path / "ledger.sqlite3"))))
    eid = inproc.submit(path, inputs={"account": "ACME-001", "token": TOKEN}, mode="system_design")
    view = inproc.wait(eid, 120)
    assert view.status.value == "completed", view.steps
    out = view.outputs
    assert out["outputs"] == {"mismatches": 1, "first_day": "2026-03-01", "rows": 5,
                              "said_length": len("token=" + TOKEN)}
    assert isinstance(out["steps"]["fetch"], list) and out["steps"]["fetch"][0]["reference"] == "INV-1001"
    assert out["steps"]["cred"]["env"] == hashlib.sha256(TOKEN.encode()).hexdigest()  # rendered for the call
    assert out["steps"]["said"]["text"] == "token=***"  # an answer quoting a secret is masked like any output
    events = inproc.history(eid)
    text = json.dumps([e.data for e in events], default=str)
    assert TOKEN not in text
    audit = [line for e in events if e.step == "said" for line in (e.data.get("logs") or [])]
    assert audit and audit[0][2] == "mcp" and '"mcp": "echo/echo"' in audit[0][3] and "token=***" in audit[0][3]
    wait_for(lambda: not (children() - before), what="the execution's MCP servers to be reaped")


def test_an_unavailable_source_is_retried_by_the_pool_then_by_the_failure_handler(inproc, sop_file) -> None:
    """A server that exits at once: the pool retries after 1, 2, 4 s (recorded, not waited), then hands
    McpUnavailable (transient) to the failure handler, which retries the step by its retry policy."""
    delays: list[float] = []

    async def sleep(delay: float) -> None:
        delays.append(delay)

    runner = inproc._conn.coordinator.machine.runners["mcp"]
    runner.pool().sleep = sleep
    path = sop_file("""
sop: down
version: "1"
data_sources:
  down: {command: python, args: ["-c", "import sys; sys.exit(3)"], connect_timeout_s: 10}
steps:
  - id: ask
    uses: mcp:down/anything
    retry: {max_attempts: 2, initial_delay_s: 0.1}
""")
    view = inproc.wait(inproc.submit(path, mode="system_design"), 120)
    step = view.steps["ask"]
    assert view.status.value == "failed" and step.attempts == 2
    assert "McpUnavailable" in step.error and "gave up after 4 attempts" in step.error
    assert step.classification == "transient"
    assert delays == [1.0, 2.0, 4.0] * 2


@pytest.mark.parametrize(("account", "mismatches", "escalate"), [("ACME-001", 1, "succeeded"),
                                                                 ("CLEAN-001", 0, "skipped")])
def test_the_invoice_reconciliation_example_runs_against_the_example_ledger(inproc, examples_dir: Path, tmp_path: Path,
                                                                             monkeypatch, account: str,
                                                                             mismatches: int, escalate: str) -> None:
    monkeypatch.chdir(tmp_path)  # the ledger's database is ./ledger.sqlite3 of wherever the engine runs
    view = inproc.wait(inproc.submit(str(examples_dir / "invoice-reconciliation.yaml"),
                                     inputs={"account_id": account}, mode="system_design"), 120)
    assert view.status.value == "completed", view.steps
    assert view.outputs["outputs"] == {"mismatches": mismatches}
    assert view.steps["escalate"].status.value == escalate
    assert (tmp_path / "ledger.sqlite3").exists()


def test_stopping_the_engine_mid_call_stops_and_reaps_its_mcp_servers(sop_file) -> None:
    """The host stops while a tool call hangs: the session's task is cancelled and its server is reaped."""
    from runtime import Engine, Registry

    before = children()
    engine = Engine.in_process(registry=Registry())
    try:
        path = sop_file("""
sop: stuck
version: "1"
data_sources:
  slow: {command: python, args: ["-m", "tests.agents.mcp.servers.hanging"], timeout_s: 600}
steps:
  - id: ask
    uses: mcp:slow/hang
    timeout_s: 600
""")
        eid = engine.submit(path, mode="system_design")
        wait_for(lambda: len(children() - before) == 1, what="the hanging server to start")
        assert engine.status(eid).steps["ask"].status.value == "running"
    finally:
        engine.shutdown()
    wait_for(lambda: not (children() - before), what="the hanging server to be reaped at shutdown")


def test_mcp_steps_run_in_the_coordinator_actor_on_ray(engine, sop_file, tmp_path: Path) -> None:
    """On Ray the coordinator's mcp: steps call through an agent host's pool: the server is the host's
    child, not the coordinator's."""
    import psutil
    import ray

    path = sop_file(SOP.replace('"DB"', json.dumps(str(tmp_path / "ledger.sqlite3"))))
    view = engine.wait(engine.submit(path, inputs={"account": "CLEAN-001", "token": TOKEN}, mode="system_design"), 120)
    assert view.status.value == "completed", view.steps
    assert view.outputs["outputs"]["mismatches"] == 0 and view.outputs["outputs"]["rows"] == 2
    hosts = [ray.get_actor(f"sopflow-agent-host-{i}") for i in range(2)]
    host_pids = {ray.get(h.ping.remote())["pid"] for h in hosts}
    assert host_pids and all(psutil.pid_exists(p) for p in host_pids)
