"""``uses: agent`` steps: one agent session as a node of a DAG, run as a child Agent Centric Run."""

from __future__ import annotations

import yaml

from runtime.events import EventKind
from runtime.status import ExecutionStatus, StepStatus
from tests.agents.agent_sops import agent_sop
from tests.agents.scripted_model import ScriptedModel
from tests.sop_builders import wait_for

K = EventKind
ECHO = "python:tests.handlers_for_tests:echo"


def pipeline(instruction: str, *, model: str | None = "scripted", name: str = "pipe") -> str:
    """``fetch -> think (an agent step) -> use``, ``use`` reading the agent's result."""
    think = {"id": "think", "uses": "agent", "depends_on": ["fetch"], "with": {"instruction": instruction}}
    if model:
        think["with"]["model"] = model
    return yaml.safe_dump({"sop": name, "mode": "system_design", "steps": [
        {"id": "fetch", "uses": ECHO, "with": {"value": {"n": 3}}},
        think,
        {"id": "use", "uses": ECHO, "depends_on": ["think"], "with": {"value": "${{ steps.think.output.answer }}"}},
    ], "outputs": {"answer": "${{ steps.use.output }}"}}, sort_keys=False)


def scripted(engine) -> None:
    engine.registry.register("model", "scripted", {"description": "tests"}, ScriptedModel)


def child_of(engine, eid: str, step: str = "think") -> str:
    found = [e.data["child"] for e in engine.history(eid) if e.kind == K.CHILD_SUBMITTED and e.step == step]
    assert found, f"step {step} started no child"
    return found[-1]


def test_an_agent_step_runs_as_a_child_agent_run_and_its_result_feeds_the_steps_after_it(inproc) -> None:
    scripted(inproc)
    eid = inproc.submit(pipeline("Count the ${{ steps.fetch.output.n }} apples"))
    view = inproc.wait(eid, timeout=60)
    assert view.status == ExecutionStatus.COMPLETED, view
    # the step's output is the agent's reported outputs; the instruction reached it rendered
    assert view.outputs["steps"]["think"] == {"answer": 42, "goal": "Count the 3 apples"}
    assert view.outputs["outputs"] == {"answer": 42}
    child = inproc.status(child_of(inproc, eid))
    assert child.status == ExecutionStatus.COMPLETED
    assert (child.sop, child.mode, child.steps) == ("pipe.think", "agent_centric", {})
    assert child.agent["model"] == "scripted" and child.agent["outputs"] == {"answer": 42, "goal": "Count the 3 apples"}
    submitted = inproc.history(child.id)[0]
    assert submitted.data["parent"] == eid
    assert submitted.data["request"]["definition"]["agent"] == {"model": "scripted",
                                                                "instruction": "Count the 3 apples"}
    kinds = [e.kind for e in inproc.history(child.id)]
    assert K.MODEL_CALLED in kinds and kinds[-2:] == [K.AGENT_REPORTED, K.FINISHED]


def test_an_agent_step_with_the_offline_model_succeeds_with_no_outputs(inproc) -> None:
    view = inproc.wait(inproc.submit(pipeline("Look around", model=None)), timeout=60)
    assert view.status == ExecutionStatus.PARTIALLY_COMPLETED  # `use` reads an answer the agent did not give
    assert view.steps["think"].status == StepStatus.SUCCEEDED
    assert view.outputs["steps"]["think"] == {}
    assert "has no attribute 'answer'" in view.steps["use"].error


def test_an_agent_that_stops_without_finishing_fails_its_step_and_halts_what_depends_on_it(inproc) -> None:
    scripted(inproc)
    eid = inproc.submit(pipeline("GIVE UP at once"))
    view = inproc.wait(eid, timeout=60)
    assert view.status == ExecutionStatus.PARTIALLY_COMPLETED
    think = view.steps["think"]
    assert think.status == StepStatus.FAILED and think.attempts == 1
    assert think.error.startswith(f"AgentStepFailed: agent step's execution {child_of(inproc, eid)} ended failed: "
                                  "the agent stopped without reporting a result")
    assert view.steps["use"].status == StepStatus.UPSTREAM_FAILED
    assert inproc.status(child_of(inproc, eid)).status == ExecutionStatus.FAILED


def test_cancelling_the_parent_cancels_the_agent_child(inproc) -> None:
    scripted(inproc)
    eid = inproc.submit(pipeline("HOLD until cancelled"))
    child = wait_for(lambda: [e.data["child"] for e in inproc.history(eid) if e.kind == K.CHILD_SUBMITTED], 60)[0]
    wait_for(lambda: any(e.kind == K.AGENT_STARTED for e in inproc.history(child)), 60)
    inproc.cancel(eid)
    view = inproc.wait(eid, timeout=60)
    assert view.status == ExecutionStatus.CANCELLED
    assert view.steps["think"].status == StepStatus.CANCELLED
    assert view.steps["use"].status == StepStatus.CANCELLED
    assert inproc.wait(child, timeout=60).status == ExecutionStatus.CANCELLED
    assert [e.data["by"] for e in inproc.history(child) if e.kind == K.CANCEL_REQUESTED] == ["its parent execution"]


def test_an_agent_step_in_an_agent_centric_run_runs_through_its_step_tool(inproc) -> None:
    from runtime.replay import replay

    scripted(inproc)
    sop = agent_sop([
        {"id": "fetch", "uses": ECHO, "with": {"value": {"n": 5}}},
        {"id": "think", "uses": "agent", "depends_on": ["fetch"],
         "with": {"instruction": "Weigh ${{ steps.fetch.output.n }} pears", "model": "scripted"}},
        {"id": "use", "uses": ECHO, "depends_on": ["think"], "with": {"value": "${{ steps.think.output.goal }}"}},
    ], name="outer", outputs={"said": "${{ steps.use.output }}"})
    eid = inproc.submit(sop)
    view = inproc.wait(eid, timeout=60)
    assert view.status == ExecutionStatus.COMPLETED, view
    assert view.mode == "agent_centric" and view.agent["model"] == "offline"
    assert view.outputs["outputs"] == {"said": "Weigh 5 pears"}
    history = inproc.history(eid)
    calls = [part["function_call"]["name"] for e in history if e.kind == K.MODEL_CALLED
             for part in e.data["response"]["content"]["parts"] if "function_call" in part]
    assert calls[:3] == ["step_fetch", "step_think", "step_use"]  # the parent's agent ran it through its tool
    child = inproc.status(child_of(inproc, eid))
    assert (child.sop, child.status, child.agent["model"]) == ("outer.think", ExecutionStatus.COMPLETED, "scripted")
    report = replay(history)
    assert report.deterministic, report.render()


def test_a_replay_of_a_parent_with_an_agent_step_is_exact_and_runs_nothing_live(inproc) -> None:
    from runtime.replay import replay

    scripted(inproc)
    eid = inproc.submit(pipeline("Count the ${{ steps.fetch.output.n }} apples"))
    inproc.wait(eid, timeout=60)
    # The replay's engine knows no 'scripted' model: a child run live would fail, and so would the replay.
    report = replay(inproc.history(eid))
    assert report.deterministic, report.render()
    assert report.handlers_run == 0 and report.replayed_status == "completed"


def test_a_replay_from_an_agent_step_runs_its_agent_again_live(inproc) -> None:
    from runtime.replay import replay

    eid = inproc.submit(pipeline("Look around", model=None))
    inproc.wait(eid, timeout=60)
    report = replay(inproc.history(eid), "think")
    assert report.rerun == ["think", "use"]
    assert report.deterministic, report.render()


def test_an_agent_step_follows_its_child_after_a_restart_and_runs_one_child(tmp_path) -> None:
    from runtime import Engine, Registry

    registry, gate, state = Registry(), tmp_path / "gate", str(tmp_path / "state.db")
    registry.register("model", "scripted", {}, ScriptedModel)
    first = Engine.in_process(state=state, registry=registry)
    try:
        eid = first.submit(pipeline(f"WAIT FOR {gate}"))
        child = wait_for(lambda: [e.data["child"] for e in first.history(eid) if e.kind == K.CHILD_SUBMITTED], 60)[0]
        wait_for(lambda: any(e.kind == K.MODEL_CALLED or e.kind == K.AGENT_STARTED for e in first.history(child)), 60)
    finally:
        first.shutdown()  # the engine stops with the agent step's child running
    second = Engine.in_process(state=state, registry=registry)
    try:
        gate.touch()
        view = second.wait(eid, timeout=60)
        assert view.status == ExecutionStatus.COMPLETED, view
        assert view.steps["think"].attempts == 1
        assert view.outputs["steps"]["think"] == {"answer": 42, "goal": f"WAIT FOR {gate}"}
        history = second.history(eid)
        assert [e.data["child"] for e in history if e.kind == K.CHILD_SUBMITTED] == [child]
        assert any(e.kind == K.RECOVERED for e in history)
        assert [e.data["session"] for e in second.history(child) if e.kind == K.AGENT_STARTED] == [1, 2]
    finally:
        second.shutdown()


def test_an_agent_step_calls_the_mcp_tools_it_names_with_credentials_from_a_secret_input(inproc, tmp_path,
                                                                                          monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # the example ledger server seeds ./ledger.sqlite3
    scripted(inproc)
    token = "tok-3c1f9a7e-very-secret"
    sop = yaml.safe_dump({
        "sop": "books", "mode": "system_design",
        "inputs": {"token": {"type": "string", "secret": True}, "account": {"type": "string"}},
        "data_sources": {
            "ledger": {"command": "python", "args": ["-m", "examples.mcp.ledger"],
                       "env": {"LEDGER_TOKEN": "${{ inputs.token }}"}, "tools": ["bank_statement"]},
            "unused": {"command": "python", "args": ["-m", "nowhere"], "tools": ["t"]}},
        "steps": [{"id": "think", "uses": "agent", "with": {
            "instruction": 'CALL ledger__bank_statement {"account": "${{ inputs.account }}"}',
            "tools": ["ledger.bank_statement"], "model": "scripted"}}],
        "outputs": {"days": "${{ steps.think.output.days | length }}"}}, sort_keys=False)
    eid = inproc.submit(sop, {"token": token, "account": "ACME-001"})
    view = inproc.wait(eid, timeout=120)
    assert view.status == ExecutionStatus.COMPLETED, view
    assert view.outputs["steps"]["think"]["account"] == "ACME-001"
    assert view.outputs["outputs"]["days"] == len(view.outputs["steps"]["think"]["days"]) > 0
    child = child_of(inproc, eid)
    submitted = inproc.history(child)[0].data
    assert submitted["inputs"] == {"token": "***"}  # only what its data source reads; the secret stays secret
    assert submitted["request"]["secrets"] == ["token"]
    assert list(submitted["request"]["definition"]["data_sources"]) == ["ledger"]
    calls = [e.data for e in inproc.history(child) if e.kind == K.TOOL_CALLED]
    assert [(c["source"], c["tool"], c["ok"]) for c in calls] == [("ledger", "ledger__bank_statement", True)]
    everything = repr([e.data for e in inproc.history(eid)] + [e.data for e in inproc.history(child)])
    assert token not in everything
    # both replay offline: the parent from the child's recorded end, the child from its own recording
    (tmp_path / "ledger.sqlite3").unlink()
    assert inproc.replay(eid).deterministic
    report = inproc.replay(child)
    assert report.deterministic, report.render()
    assert not (tmp_path / "ledger.sqlite3").exists()  # no server was started


def test_an_agent_step_over_its_timeout_fails_and_its_child_is_cancelled(inproc) -> None:
    scripted(inproc)
    doc = yaml.safe_load(pipeline("HOLD past the timeout"))
    doc["steps"][1].update({"timeout_s": 1, "retry": {"max_attempts": 1}})
    eid = inproc.submit(yaml.safe_dump(doc))
    view = inproc.wait(eid, timeout=60)
    think = view.steps["think"]
    assert (think.status, think.error) == (StepStatus.FAILED, "Timeout: agent step ran longer than timeout_s=1")
    assert view.steps["use"].status == StepStatus.UPSTREAM_FAILED
    assert inproc.wait(child_of(inproc, eid), timeout=60).status == ExecutionStatus.CANCELLED


def test_an_upstream_output_reaches_the_agent_as_text_never_rendered_again(inproc) -> None:
    """Hostile data: an upstream output that looks like an expression reading a secret is given to the
    agent as it is; the secret is neither rendered into the instruction nor sent to the child."""
    scripted(inproc)
    token = "tok-b7e2-never-leak"
    doc = yaml.safe_load(pipeline("Summarise ${{ steps.fetch.output.note }}"))
    doc["inputs"] = {"token": {"type": "string", "secret": True}, "note": {"type": "string"}}
    doc["steps"][0]["with"] = {"value": {"note": "${{ inputs.note }}"}}
    eid = inproc.submit(yaml.safe_dump(doc), {"token": token, "note": "${{ inputs.token }}"})
    view = inproc.wait(eid, timeout=60)
    assert view.outputs["steps"]["think"]["goal"] == "Summarise ${{ inputs.token }}"
    child = child_of(inproc, eid)
    assert inproc.history(child)[0].data["inputs"] == {}
    assert token not in repr([e.data for e in inproc.history(eid)] + [e.data for e in inproc.history(child)])
