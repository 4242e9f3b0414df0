"""The notebooks run headless (nbclient, a real kernel, a real local Ray cluster) and show what they promise.

Each notebook runs in its own kernel, which starts its own Ray cluster with a
temporary state file and namespace (set through the environment the notebooks
read), so it cannot collide with the test session's cluster. The checks read
the outputs: the DAG's SVG, the tables' rows and columns, the final statuses.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.notebooks.outputs import NOTEBOOKS, cell, frame_rows, html_outputs, stream, tables

SVG = "{http://www.w3.org/2000/svg}"
REGION_HEALTH_STEPS = {"probe_eu", "probe_us", "probe_ap", "merge", "page", "report"}
INVOICE_STEPS = {"fetch", "statement", "check", "escalate"}
ESCALATE = ["escalate", "run", "the condition `steps.check.output.mismatches > 0` holds"]


def step_boxes(html: str) -> dict[str, ET.Element]:
    root = ET.fromstring(html)
    return {g.get("data-step"): g for g in root.iter(f"{SVG}g") if "step" in (g.get("class") or "").split()}


@pytest.mark.parametrize("name", ["quickstart", "operations", "agents"])
def test_the_committed_notebooks_have_their_outputs_cleared(name: str) -> None:
    doc = json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())
    for c in doc["cells"]:
        if c["cell_type"] == "code":
            assert c["outputs"] == [] and c["execution_count"] is None, c["source"][:80]


@pytest.mark.parametrize("name", ["quickstart", "operations", "agents"])
def test_each_notebook_ran_on_the_state_file_the_environment_gave_it(name: str, request) -> None:
    # Its own state file (and so its own cluster's engine), never the test session's or ~/.sopflow.
    line = stream(cell(request.getfixturevalue(name), "connect")).strip().splitlines()[-1]
    assert line.startswith("state file: ") and "/sopflow-nb-" in line and line.endswith("/state.db")


def test_quickstart_draws_the_sop_as_a_dag_of_its_steps(quickstart) -> None:
    [result] = [o for o in cell(quickstart, "dag").outputs if o["output_type"] == "execute_result"]
    boxes = step_boxes(result["data"]["text/html"])
    assert set(boxes) == REGION_HEALTH_STEPS
    assert "rule all_done" in [t.text for t in boxes["merge"].iter(f"{SVG}text")]
    assert ET.fromstring(result["data"]["image/svg+xml"]).tag == f"{SVG}svg"
    assert "problems: none" in stream(cell(quickstart, "dag"))


def test_quickstart_live_display_ends_with_every_step_succeeded(quickstart) -> None:
    live = cell(quickstart, "live")
    [html] = html_outputs(live)  # one display, updated in place
    boxes = step_boxes(html)
    assert set(boxes) == REGION_HEALTH_STEPS
    assert {g.get("data-state") for g in boxes.values()} == {"succeeded"}
    assert stream(live).split()[1] == "completed"


def test_quickstart_results_history_replay_and_list_are_tables_with_the_expected_rows(quickstart) -> None:
    results = cell(quickstart, "results")
    assert "'down': ['ap']" in stream(results)
    columns, rows = frame_rows(html_outputs(results)[0])
    assert columns == ["step", "status", "attempts", "seconds", "output"]
    assert {r[0] for r in rows} == REGION_HEALTH_STEPS and {r[1] for r in rows} == {"succeeded"}

    columns, rows = frame_rows(html_outputs(cell(quickstart, "history"))[0])
    assert columns == ["seq", "event", "step", "attempt"]
    assert [r[0] for r in rows] == [str(k) for k in range(1, len(rows) + 1)]
    assert rows[0][1] == "execution_submitted" and rows[-1][1] == "execution_finished"
    assert sum(r[1] == "step_succeeded" for r in rows) == len(REGION_HEALTH_STEPS)

    replay = stream(cell(quickstart, "replay"))
    assert "ran again: merge, page, report" in replay and "identical" in replay

    [listed] = tables(html_outputs(cell(quickstart, "list"))[0])
    assert listed[0] == ["id", "sop", "status", "progress", "submitted", "duration"]
    assert [r[1:4] for r in listed[1:]] == [["region-health", "completed", "100%"]]


def test_operations_steers_executions_and_lists_them_by_status(operations) -> None:
    assert stream(cell(operations, "submit")).startswith("12 submitted; first: exe-")
    control = cell(operations, "control")
    lines = stream(control).splitlines()
    assert lines[1] in ("cancel: cancelling", "cancel: cancelled")  # cancelling while its step is killed
    assert lines[:1] + lines[2:] == ["pause: paused", "cancelled run ends as: cancelled",
                                     "resume: running", "resumed run ends as: completed"]
    [paused] = html_outputs(control)  # the paused execution displayed itself
    assert "paused" in paused and "slow-chain" in paused

    columns, rows = frame_rows(html_outputs(cell(operations, "frame"))[0])
    assert columns == ["id", "status", "progress", "submitted", "duration_s"]
    assert len(rows) == 5 and {r[1] for r in rows} == {"completed"}

    [cancelled] = tables(html_outputs(cell(operations, "cancelled"))[0])
    assert [r[1:3] for r in cancelled[1:]] == [["slow-chain", "cancelled"]]

    columns, rows = frame_rows(html_outputs(cell(operations, "counts"))[0])
    assert columns == ["sop", "status", "executions"]
    assert sorted(rows) == [["hello-linear", "completed", "12"], ["slow-chain", "cancelled", "1"],
                            ["slow-chain", "completed", "1"]]
    assert "'unfinished': 0" in stream(cell(operations, "metrics"))


def test_agents_notebook_watches_the_agent_run_the_invoice_sop_and_escalate(agents) -> None:
    live = cell(agents, "live")
    [html] = html_outputs(live)  # one display, updated in place
    states = {sid: g.get("data-state") for sid, g in step_boxes(html).items()}
    assert states == {**dict.fromkeys(INVOICE_STEPS, "succeeded"), "unlock": "pending"}  # no rollback: it completed
    decisions = next(t for t in tables(html) if t[0] == ["step", "decision", "rationale", "at"])
    assert [r[:3] for r in decisions[1:]] == [ESCALATE]  # the agent's decisions, under its steps
    assert stream(live).split()[1:] == ["completed", "agent_centric", "{'mismatches':", "1}"]


def test_agents_notebook_shows_the_decisions_with_rationales_and_the_agents_counts(agents) -> None:
    columns, rows = frame_rows(html_outputs(cell(agents, "decisions"))[0])
    assert columns == ["step", "decision", "rationale"] and rows == [ESCALATE]
    counts = stream(cell(agents, "counts")).splitlines()
    assert counts[0].startswith("agent invoice-reconciliation/exe-") and counts[0].endswith("(session 1)")
    # The offline model: one call per step it runs, one to decide, one to finish; the mcp: steps are steps.
    assert counts[1].startswith("model offline: 6 model calls, 0 tool calls, ")
    assert counts[2].endswith("escalate: succeeded")


def test_agents_notebook_lists_the_runs_audit_log_in_order(agents) -> None:
    columns, rows = frame_rows(html_outputs(cell(agents, "logs"))[0])
    assert columns == ["kind", "step", "status", "message"]
    assert rows[0][:3] == ["start", "", "submitted"] and rows[-1][:3] == ["end", "", "completed"]
    assert [r[1] for r in rows if r[:1] + r[2:3] == ["attempt", "succeeded"]] == ["fetch", "statement", "check",
                                                                                  "escalate"]
    assert [r[:3] for r in rows if r[0] == "decision"] == [["decision", "escalate", "run"]]
    assert sum(r[2] == "model_called" for r in rows) == 6
    assert ["agent", "", "reported"] in [r[:3] for r in rows]


def test_agents_notebook_compares_both_modes_and_replays_the_agent_run_offline(agents) -> None:
    compared = stream(cell(agents, "compare")).splitlines()
    assert compared[0].startswith("system_design  exe-") and compared[0].endswith("completed")
    assert compared[1].startswith("agent_centric  exe-") and compared[1].endswith("completed")
    assert compared[2:] == ["equivalent"]
    replay = stream(cell(agents, "replay"))
    assert "0 handler run(s)" in replay and "identical" in replay  # nothing ran again: all recorded
    assert replay.splitlines()[-1] == "deterministic: True"


def test_agents_notebook_overrides_the_sops_agent_settings_at_submit(agents) -> None:
    assert "max model calls per run: 50" in stream(cell(agents, "sop"))  # the SOP's block (the default)
    warm, tight, why = stream(cell(agents, "override")).splitlines()
    assert warm.split(" | ")[1:] == ["temperature 0.2", "5 model calls", "[('escalate', 'skip')]"]
    assert warm.split()[1] == "completed"
    assert tight.split(" | ")[1:] == ["max_model_calls 3", "3 model calls"] and tight.split()[1] == "failed"
    assert why.startswith("why: ") and "limit of `3` exceeded" in why


def test_agents_notebook_keeps_the_ledger_file_out_of_the_repository(agents) -> None:
    # The server (started by the agent host and the coordinator, in the cluster's working directory)
    # wrote the file the notebook handed it through the data source's env, and none elsewhere.
    [line] = [s for s in stream(cell(agents, "sop")).splitlines() if s.startswith("ledger file: ")]
    ledger = Path(line.removeprefix("ledger file: "))
    assert "/sopflow-nb-" in str(ledger) and ledger.is_file()
    in_checkout = {str(p) for p in (NOTEBOOKS / "ledger.sqlite3", NOTEBOOKS.parent / "ledger.sqlite3") if p.exists()}
    assert in_checkout <= set(agents.metadata["ledgers_before"])  # the notebook made none there


def test_agents_notebook_lists_every_run_of_the_sop(agents) -> None:
    [listed] = tables(html_outputs(cell(agents, "list"))[0])
    assert listed[0] == ["id", "sop", "status", "progress", "submitted", "duration"]
    # the watched run, the two of compare, the warmer one and the one out of model calls
    assert sorted(r[2] for r in listed[1:]) == ["completed"] * 4 + ["failed"]
    assert {r[1] for r in listed[1:]} == {"invoice-reconciliation"}
