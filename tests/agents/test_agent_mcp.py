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


def test_a_call_in_flight_when_its_session_was_lost_waits_for_an_operator_and_is_not_repeated(tmp_path) -> None:
    """The engine stops while the agent's call to a tool that is not idempotent hangs; the resumed session
    does not call it again: the run waits for a decision (``call:<index>``), which answers the agent."""
    import yaml

    from runtime import Engine, Registry
    from runtime.events import EventKind
    from runtime.status import ExecutionStatus
    from tests.agents.scripted_model import ScriptedModel
    from tests.sop_builders import wait_for

    registry = Registry()
    registry.register("model", "scripted", {}, ScriptedModel)
    sop = yaml.safe_dump({"sop": "inflight", "mode": "agent_centric", "steps": [],
                          "data_sources": {"slow": {"command": "python",
                                                    "args": ["-m", "tests.agents.mcp.servers.hanging"],
                                                    "tools": ["hang", "quick"]}},
                          "agent": {"model": "scripted", "instruction": "CALL slow__hang {}", "tools": ["slow.hang"]}})
    state = str(tmp_path / "state.db")
    first = Engine.in_process(state=state, registry=registry)
    try:
        eid = first.submit(sop)
        wait_for(lambda: any(e.kind == EventKind.TOOL_STARTED for e in first.history(eid)), 60)
    finally:
        first.shutdown()  # the engine goes away with the call in flight
    second = Engine.in_process(state=state, registry=registry)
    try:
        wait_for(lambda: second.status(eid).status == ExecutionStatus.NEEDS_DECISION, 60)
        waiting = second.status(eid).agent["waiting"]
        assert waiting["call"] == "call:0" and "may or may not have taken effect" in waiting["reason"]
        second.decide(eid, "call:0", "succeed", reason="checked by hand", output={"done": True})
        view = second.wait(eid, timeout=60)
        assert view.status == ExecutionStatus.COMPLETED
        assert view.outputs["outputs"] == {"done": True}  # the operator's answer reached the agent
        history = second.history(eid)
        assert sum(e.kind == EventKind.TOOL_STARTED for e in history) == 1  # never called again
        with pytest.raises(Exception, match="no call of execution .* waits for a decision as 'call:0'"):
            second.decide(eid, "call:0", "skip")
    finally:
        second.shutdown()
