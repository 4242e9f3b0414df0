"""Agent Centric Runs on Ray: sessions in host actors, a host killed mid-run, a replay of a Ray run."""

from __future__ import annotations

import ray

from runtime.events import EventKind
from runtime.status import ExecutionStatus, StepStatus
from tests.agents.agent_sops import agent_sop
from tests.sop_builders import wait_for

K = EventKind


def test_an_agent_run_on_ray_runs_in_a_host_actor(engine) -> None:
    sop = agent_sop([{"id": "a", "run": "echo a"}, {"id": "b", "depends_on": ["a"], "when": "inputs.go",
                                                    "run": "echo b"}],
                    inputs={"go": {"type": "boolean", "default": True}})
    view = engine.wait(engine.submit(sop), timeout=120)
    assert view.status == ExecutionStatus.COMPLETED, view
    assert view.agent["host"].startswith("sopflow-agent-host-")
    assert view.decisions[0]["decision"] == "run"


def test_a_host_killed_mid_run_loses_no_step_and_its_session_resumes_from_the_recording(engine, tmp_path) -> None:
    gate, runs = tmp_path / "gate", tmp_path / "runs"
    sop = agent_sop([
        {"id": "first", "run": f"echo x >> {runs}; while [ ! -e {gate} ]; do sleep 0.05; done; echo first"},
        {"id": "second", "depends_on": ["first"], "run": "echo second"},
    ], name="host-kill")
    eid = engine.submit(sop)
    wait_for(lambda: engine.status(eid).steps["first"].status == StepStatus.RUNNING, 120)
    host = ray.get_actor(engine.status(eid).agent["host"])
    ray.kill(host, no_restart=False)  # the host process dies; Ray starts it again, empty
    wait_for(lambda: (engine.status(eid).agent or {}).get("session", 1) >= 2, 120)
    gate.touch()
    view = engine.wait(eid, timeout=120)
    assert view.status == ExecutionStatus.COMPLETED, view
    assert runs.read_text() == "x\n"  # the step's attempt kept running while its agent was away: it ran once
    assert view.steps["first"].attempts == 1
    history = engine.history(eid)
    lost = [e for e in history if e.kind == K.AGENT_LOST]
    assert len(lost) == 1 and "was lost" in lost[0].data["reason"]
    again = [e for e in history if e.kind == K.AGENT_STARTED][-1]
    assert again.data["session"] == 2 and again.data["recorded"] >= 1
    indices = [e.data["index"] for e in history if e.kind == K.MODEL_CALLED]
    assert indices == sorted(set(indices)), "a model call of the recorded prefix was made (logged) twice"


def test_a_ray_agent_run_replays_offline(engine) -> None:
    from runtime.replay import replay

    sop = agent_sop([{"id": "a", "run": "echo a"}, {"id": "b", "depends_on": ["a"], "run": "echo b"}], name="rp")
    eid = engine.submit(sop)
    engine.wait(eid, timeout=120)
    report = replay(engine.history(eid))
    assert report.deterministic, report.render()


def test_a_silent_session_is_taken_as_lost_and_the_stale_one_changes_nothing(ray_cluster, tmp_path) -> None:
    """A host frozen (SIGSTOP) stops its heartbeats: the session starts again on another host, and when
    the frozen one wakes up its calls are refused (the execution is not run twice)."""
    import os
    import signal

    from tests.sop_builders import own_engine

    gate, runs = tmp_path / "gate", tmp_path / "runs"
    sop = agent_sop([
        {"id": "first", "run": f"echo x >> {runs}; while [ ! -e {gate} ]; do sleep 0.05; done"},
        {"id": "second", "depends_on": ["first"], "run": f"echo y >> {runs}"},
    ], name="silent")
    # a busy CI machine may delay a heartbeat past the silence limit: a spurious loss only restarts the
    # session from its recording, so allow plenty of restarts and look at the one the freeze causes
    with own_engine("agent-silence", tmp_path, agent_heartbeat_s=0.3, agent_silence_s=4.0,
                    agent_restarts=20) as engine:
        eid = engine.submit(sop)
        wait_for(lambda: engine.status(eid).steps["first"].status == StepStatus.RUNNING, 120)
        agent = engine.status(eid).agent
        first_host, frozen_session = agent["host"], agent["session"]
        frozen = ray.get_actor(first_host, namespace="agent-silence")
        pid = ray.get(frozen.ping.remote())["pid"]
        os.kill(pid, signal.SIGSTOP)
        try:
            wait_for(lambda: (engine.status(eid).agent or {}).get("session", 1) > frozen_session, 60)
            assert engine.status(eid).agent["host"] != first_host  # not back onto the frozen host
        finally:
            os.kill(pid, signal.SIGCONT)
        gate.touch()
        view = engine.wait(eid, timeout=120)
        assert view.status == ExecutionStatus.COMPLETED, view
        assert runs.read_text() == "x\ny\n"
        lost = [e for e in engine.history(eid) if e.kind == K.AGENT_LOST]
        assert any("no word from the session" in e.data["reason"] for e in lost)


def test_an_agent_step_of_a_dag_runs_as_a_child_agent_run_in_a_host_actor(engine) -> None:
    sop = """
sop: ray-agent-step
steps:
  - {id: fetch, run: echo fetched}
  - id: think
    uses: agent
    depends_on: [fetch]
    with: {instruction: "Read ${{ steps.fetch.output.stdout }} and report"}
  - {id: use, depends_on: [think], run: "echo ${{ steps.think.status }}"}
"""
    eid = engine.submit(sop)
    view = engine.wait(eid, timeout=120)
    assert view.status == ExecutionStatus.COMPLETED, view
    assert view.outputs["steps"]["think"] == {}  # the offline model does not act on free text: no outputs
    assert view.outputs["steps"]["use"]["stdout"] == "succeeded\n"
    child_id = next(e.data["child"] for e in engine.history(eid) if e.kind == K.CHILD_SUBMITTED)
    child = engine.status(child_id)
    assert (child.sop, child.mode, child.status) == ("ray-agent-step.think", "agent_centric",
                                                     ExecutionStatus.COMPLETED)
    assert child.agent["host"].startswith("sopflow-agent-host-")


def test_an_agent_run_is_one_trace_down_to_the_model_and_tool_calls_without_message_contents(engine) -> None:
    """execution -> agent session (in the host actor) -> ADK's invoke_agent, generate_content and
    execute_tool spans with gen_ai attributes, all in the execution's trace; no prompt text in them."""
    import time

    from tests.conftest import read_spans

    sop = agent_sop([{"id": "a", "run": "echo secret-ish-output"}], name="traced-agent")
    eid = engine.submit(sop)
    view = engine.wait(eid, timeout=120)
    engine.flush()
    trace = view.trace_id
    deadline = time.monotonic() + 30
    while True:
        spans = [s for s in read_spans() if s["context"]["trace_id"].removeprefix("0x") == trace]
        names = {s["name"] for s in spans}
        if {"invoke_agent sopflow_agent", "execute_tool step_a"} <= names or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert "execution traced-agent" in names and "agent session 1" in names, names
    assert "invoke_agent sopflow_agent" in names and "execute_tool step_a" in names, names
    assert any(n.startswith("generate_content") or n == "call_llm" for n in names), names
    by_id = {s["context"]["span_id"]: s for s in spans}
    session = next(s for s in spans if s["name"] == "agent session 1")
    assert by_id[session["parent_id"]]["name"] == "execution traced-agent"  # across the actor boundary
    tool = next(s for s in spans if s["name"] == "execute_tool step_a")
    assert any(k.startswith("gen_ai.") for k in tool["attributes"])
    assert all("Run the SOP now" not in str(s["attributes"]) for s in spans)  # no message contents
