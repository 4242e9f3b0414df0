"""Agent runs with MCP data sources: the invoice example in both modes against the example ledger server."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.status import ExecutionStatus

EXAMPLE = str(Path(__file__).resolve().parents[2] / "examples" / "invoice-reconciliation.yaml")


@pytest.fixture
def ledger(tmp_path, monkeypatch) -> Path:
    """The example ledger server's SQLite file, fresh for the test: the server (started by the engine in
    this process's working directory) seeds ``./ledger.sqlite3`` on its first start."""
    monkeypatch.chdir(tmp_path)
    return tmp_path / "ledger.sqlite3"


@pytest.mark.parametrize(("account", "mismatches"), [("ACME-001", 1), ("CLEAN-001", 0)])
def test_the_invoice_example_gives_the_same_result_in_both_modes(inproc, ledger, account, mismatches) -> None:
    comparison = inproc.compare(EXAMPLE, {"account_id": account}, timeout=120)
    assert comparison.equivalent, str(comparison)
    agent_run = inproc.status(comparison.agent_centric_id)
    assert agent_run.mode == "agent_centric" and agent_run.status == ExecutionStatus.COMPLETED
    assert inproc.result(agent_run.id)["outputs"]["mismatches"] == mismatches
    assert ledger.exists()


def test_an_agent_run_with_mcp_steps_replays_with_no_server_running(inproc, ledger) -> None:
    eid = inproc.submit(EXAMPLE, {"account_id": "ACME-001"}, mode="agent_centric")
    assert inproc.wait(eid, timeout=120).status == ExecutionStatus.COMPLETED
    ledger.unlink()  # nothing to read from now: a replay that reached the server would see no data
    report = inproc.replay(eid)
    assert report.deterministic, report.render()
    assert not ledger.exists()  # no server was started (it would have created the file again)
