"""Both notebooks run headless (nbclient, a real kernel, a real local Ray cluster) and show what they promise.

Each notebook runs in its own kernel, which starts its own Ray cluster with a
temporary state file and namespace (set through the environment the notebooks
read), so it cannot collide with the test session's cluster. The checks read
the outputs: the DAG's SVG, the tables' rows and columns, the final statuses.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from tests.notebooks.outputs import NOTEBOOKS, cell, frame_rows, html_outputs, stream, tables

SVG = "{http://www.w3.org/2000/svg}"
REGION_HEALTH_STEPS = {"probe_eu", "probe_us", "probe_ap", "merge", "page", "report"}


def step_boxes(html: str) -> dict[str, ET.Element]:
    root = ET.fromstring(html)
    return {g.get("data-step"): g for g in root.iter(f"{SVG}g") if "step" in (g.get("class") or "").split()}


@pytest.mark.parametrize("name", ["quickstart", "operations"])
def test_the_committed_notebooks_have_their_outputs_cleared(name: str) -> None:
    doc = json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())
    for c in doc["cells"]:
        if c["cell_type"] == "code":
            assert c["outputs"] == [] and c["execution_count"] is None, c["source"][:80]


@pytest.mark.parametrize("name", ["quickstart", "operations"])
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
