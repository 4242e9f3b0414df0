"""The agent of an Agent Centric Run as users see it: ``sopflow status`` / ``history`` (text and JSON),
the notebook display, the HTTP API's execution view and its OpenAPI schema.
"""

from __future__ import annotations

import dataclasses
import json
import xml.etree.ElementTree as ET

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime._wire import view_from_dict, view_to_dict
from runtime.display import execution_html
from runtime.status import ExecutionStatus, ExecutionView, StepStatus, StepView
from sop.svg import clean

CHECKLIST = """
sop: agent-views
version: "1"
inputs:
  n: {type: integer, default: 3}
steps:
  - id: fetch
    run: "echo fetched"
  - id: escalate_big
    when: ${{ inputs.n > 5 }}
    run: "echo big"
  - id: report
    run: "echo done"
    depends_on: [fetch]
outputs:
  got: ${{ steps.fetch.output.stdout | trim }}
"""
HTML_TAGS = {"div", "span", "b", "code", "table", "thead", "tbody", "tr", "th", "td", "pre", "details", "summary"}


@pytest.fixture
def cli(monkeypatch):
    """``sopflow`` with its read commands answered by ``engine`` (the test's in-process engine)."""
    import runtime._cli_exec
    import runtime._cli_log

    def run(engine, *args: str):
        monkeypatch.setattr(runtime._cli_exec, "_client", lambda address: engine)
        monkeypatch.setattr(runtime._cli_log, "_client", lambda address: engine)
        monkeypatch.setenv("COLUMNS", "200")
        from runtime.cli import main

        result = CliRunner().invoke(main, list(args))
        assert "Traceback" not in result.output and result.exception is None or \
            isinstance(result.exception, SystemExit), result.output
        return result

    return run


@pytest.fixture
def agent_run(inproc) -> str:
    eid = inproc.submit(CHECKLIST, {"n": 3}, mode="agent_centric")
    assert inproc.wait(eid, timeout=60).status == ExecutionStatus.COMPLETED
    return eid


def test_status_shows_the_agent_its_spending_and_its_decisions_with_rationales(cli, inproc, agent_run) -> None:
    view = inproc.status(agent_run)
    result = cli(inproc, "status", agent_run)
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"agent agent-views/{agent_run}  model offline  session 1 on local" in out
    agent = view.agent
    assert f"  {agent['model_calls']} model calls, 0 tool calls, {agent['tokens']} tokens" in out
    assert agent["model_calls"] >= 2 and agent["tokens"] > 0
    assert f"  status: {agent['message']}" in out
    rows = [line.split(None, 2) for line in out.splitlines() if line.startswith("escalate_big")]
    assert ["escalate_big", "skip", "condition is false: ${{ inputs.n > 5 }}"] in rows
    assert "summary: Followed SOP agent-views step by step." in out


def test_status_as_json_carries_the_agent_and_a_dag_run_says_it_has_none(cli, inproc, agent_run) -> None:
    doc = json.loads(cli(inproc, "status", agent_run, "--format", "json").stdout)
    assert doc["agent"]["decisions"] == inproc.status(agent_run).decisions
    assert doc["agent"]["model"] == "offline" and doc["agent"]["outputs"] == {"got": "fetched"}
    dag = inproc.submit(CHECKLIST, {"n": 3}, mode="system_design")
    inproc.wait(dag, timeout=60)
    assert json.loads(cli(inproc, "status", dag, "--format", "json").stdout)["agent"] is None
    text = cli(inproc, "status", dag).output
    assert "agent" not in text.replace("agent-views", "") and "decisions" not in text


def test_history_tells_the_agents_story_in_order(cli, inproc, agent_run) -> None:
    result = cli(inproc, "history", agent_run)
    assert result.exit_code == 0, result.output
    lines = [line.split("  ", 1)[1] for line in result.output.splitlines()]
    kinds = [line.split()[1].rstrip(":") for line in lines]
    assert kinds[:3] == ["execution_submitted", "execution_started", "agent_started"]
    assert lines[2].endswith(f"agent_started: session 1 of agent-views/{agent_run} with model offline on local")
    first_call = next(line for line in lines if "model_called" in line)
    assert first_call.split(" ", 1)[1] == "model_called: call 0: step_fetch, record_decision"
    assert any(line.endswith("agent_decided escalate_big: skip: condition is false: ${{ inputs.n > 5 }}")
               for line in lines)
    assert any(line.endswith("step_skipped escalate_big: the agent decided: condition is false: "
                             "${{ inputs.n > 5 }}") for line in lines)
    assert kinds[-2:] == ["agent_reported", "execution_finished"]
    assert lines[-1].endswith("execution_finished: completed")
    events = [json.loads(line) for line in cli(inproc, "history", agent_run, "--format", "json").output.splitlines()]
    decided = [e for e in events if e["kind"] == "agent_decided"]
    assert decided[0]["step"] == "escalate_big" and decided[0]["data"]["rationale"].startswith("condition is false")


# -- the notebook display -----------------------------------------------------------------------------

ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=30) | st.sampled_from(
    ["<script>alert(1)</script>", "</td></tr></table><b>x", "&lt;", "\"'><img src=x onerror=y>", "]]>"])


def agent_view(decisions: list[dict], **agent) -> ExecutionView:
    data = {"session": 1, "agent": "s/exe-0123456789ab-cdef0123", "model": "offline", "host": "local",
            "message": "report: run", "progress": None, "seen": 1.8e9, "decisions": decisions, "model_calls": 3,
            "tool_calls": 1, "tokens": 2342, "lost": 0, "summary": "done", "outputs": {}, "waiting": None, **agent}
    return ExecutionView(id="exe-0123456789ab-cdef0123", sop="s", version="1", mode="agent_centric",
                         status=ExecutionStatus.COMPLETED, progress=1.0,
                         steps={"a": StepView("a", StepStatus.SKIPPED)}, submitted_at=1.8e9, agent=data)


def decision_rows(root: ET.Element) -> list[list[str]]:
    table = next(t for t in root.iter("table") if t.get("class") == "sopflow-decisions")
    return [["".join(td.itertext()) for td in tr.findall("td")] for tr in table.iter("tr") if tr.findall("td")]


def test_the_notebook_shows_the_agents_decisions_table(agent_run, inproc) -> None:
    view = inproc.status(agent_run)
    root = ET.fromstring(execution_html(view))
    rows = decision_rows(root)
    assert [r[:3] for r in rows] == [[d["step"], d["decision"], d["rationale"]] for d in view.decisions]
    text = "".join(root.itertext())
    assert f"{view.agent['model_calls']} model calls" in text and "model offline" in text
    dag = dataclasses.replace(view, mode="system_design", agent=None)
    assert "sopflow-decisions" not in execution_html(dag) and "model calls" not in execution_html(dag)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.fixed_dictionaries({"step": st.none() | ANY_TEXT, "decision": ANY_TEXT, "rationale": ANY_TEXT,
                                       "at": st.floats(1.7e9, 1.9e9)}), max_size=4), ANY_TEXT, ANY_TEXT)
def test_for_any_decisions_and_agent_texts_the_html_is_well_formed_and_escapes_them(decisions, message,
                                                                                   model) -> None:
    root = ET.fromstring(execution_html(agent_view(decisions, message=message, model=model)))
    assert all(element.tag in HTML_TAGS and not any(n.startswith("on") for n in element.attrib)
               for element in root.iter())
    if decisions:
        assert [r[:3] for r in decision_rows(root)] == [
            [clean(d["step"] or "-"), clean(d["decision"]), clean(d["rationale"])] for d in decisions]
    text = "".join(root.itertext())
    assert clean(message or "(nothing yet)") in text and clean(model) in text


# -- the HTTP API's view --------------------------------------------------------------------------------


def test_the_wire_view_carries_the_agent_both_ways() -> None:
    view = agent_view([{"step": "a", "decision": "skip", "rationale": "condition is false", "at": 1.8e9}])
    doc = json.loads(json.dumps(view_to_dict(view)))
    assert doc["agent"]["decisions"][0]["rationale"] == "condition is false"
    assert view_from_dict(doc) == view
    dag = view_from_dict({**doc, "agent": None})
    assert dag.agent is None and dag.decisions == []


def test_the_openapi_schema_documents_the_agent_and_its_decisions() -> None:
    from openapi_spec_validator import validate

    from actors._api_openapi import openapi_document

    doc = openapi_document()
    validate(doc)
    schemas = doc["components"]["schemas"]
    assert schemas["ExecutionView"]["properties"]["agent"]["oneOf"][0] == {"$ref": "#/components/schemas/Agent"}
    from runtime.state import agent_view as view_of, new_agent_state

    assert set(schemas["Agent"]["properties"]) == set(view_of(new_agent_state()))  # what status really carries
    assert set(schemas["Decision"]["properties"]) == {"step", "decision", "rationale", "at"}


@pytest.mark.ray
def test_the_api_actor_answers_an_agent_runs_view_with_its_agent(engine) -> None:
    import ray

    from actors._api import ray_auth_token
    from runtime._api_client import ApiClient
    from runtime._api_discovery import Endpoint

    eid = engine.submit(CHECKLIST, {"n": 7}, mode="agent_centric")
    view = engine.wait(eid, timeout=120)
    assert view.status == ExecutionStatus.COMPLETED and view.agent["host"] != "local"
    info = ray.get(engine._conn.actors.api.ready.remote(), timeout=60)
    token = ray_auth_token()
    if info["error"] is not None or token is None:
        pytest.skip(f"no API with a token here ({info['error']})")
    answered = ApiClient(Endpoint(info["url"], token)).status(eid)
    assert answered.agent == engine.status(eid).agent
    assert [(d["step"], d["decision"]) for d in answered.decisions] == [("escalate_big", "run")]


def test_a_lost_session_says_which_one_in_history() -> None:
    from runtime import events as ev

    assert ev.AgentLost(session=2, reason="host agent-host-0 died").summary() == "session 2: host agent-host-0 died"
