"""Agent Centric Runs on the in-process engine: the agent follows the SOP through the engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime.events import EventKind
from runtime.status import ExecutionStatus, StepStatus
from tests.agents.agent_sops import agent_sop

K = EventKind

CHAIN = agent_sop([
    {"id": "first", "run": "echo hello ${{ inputs.n }}", "description": "Say hello."},
    {"id": "second", "depends_on": ["first"], "when": "inputs.n > 5", "run": "echo big"},
    {"id": "third", "depends_on": ["second"], "run": "echo third"},
], inputs={"n": {"type": "integer", "default": 3}}, outputs={"said": "${{ steps.first.output.stdout }}"})


def test_the_agent_runs_the_steps_through_the_engine_and_decides_at_each_decision_point(inproc) -> None:
    eid = inproc.submit(CHAIN, {"n": 7})
    view = inproc.wait(eid, timeout=60)
    assert view.status == ExecutionStatus.COMPLETED
    assert view.mode == "agent_centric"
    assert view.outputs["outputs"] == {"said": "hello 7\n"}
    assert [s.status for s in view.steps.values()] == [StepStatus.SUCCEEDED] * 3
    assert view.decisions == [{"step": "second", "decision": "run", "rationale": "the condition `inputs.n > 5` holds",
                               "at": view.decisions[0]["at"]}]
    assert view.agent["model"] == "offline" and view.agent["session"] == 1 and view.agent["model_calls"] == 5
    kinds = [e.kind for e in inproc.history(eid)]
    # every step was asked for by the model before the engine started it (the DAG started none itself)
    assert kinds[:7] == [K.SUBMITTED, K.STARTED, K.AGENT_STARTED, K.AGENT_STATUS, K.MODEL_CALLED, K.STEP_STARTED,
                         K.STEP_SUCCEEDED]
    assert kinds[-2:] == [K.AGENT_REPORTED, K.FINISHED]


def test_a_false_condition_is_a_skip_decision_and_what_depends_on_it_is_skipped_too(inproc) -> None:
    eid = inproc.submit(CHAIN, {"n": 3})
    view = inproc.wait(eid, timeout=60)
    assert view.status == ExecutionStatus.COMPLETED
    assert {k: s.status for k, s in view.steps.items()} == {
        "first": StepStatus.SUCCEEDED, "second": StepStatus.SKIPPED, "third": StepStatus.SKIPPED}
    assert [(d["step"], d["decision"]) for d in view.decisions] == [("second", "skip"), ("third", "skip")]
    assert view.decisions[0]["rationale"] == "condition is false: inputs.n > 5"
    assert "dependency 'second' was skipped" in view.decisions[1]["rationale"]


def test_a_failed_step_halts_what_depends_on_it_and_fails_the_run(inproc) -> None:
    sop = agent_sop([
        {"id": "boom", "run": "exit 3", "retry": {"max_attempts": 1}},
        {"id": "after", "depends_on": ["boom"], "run": "echo never"},
    ])
    view = inproc.wait(inproc.submit(sop), timeout=60)
    assert view.status == ExecutionStatus.FAILED
    assert view.steps["boom"].status == StepStatus.FAILED
    assert view.steps["after"].status == StepStatus.UPSTREAM_FAILED
    assert view.decisions[0]["decision"] == "halt" and "boom" in view.decisions[0]["rationale"]


def test_retries_of_a_step_happen_in_the_engine_as_in_a_dag_run(inproc, tmp_path) -> None:
    marker = tmp_path / "once"
    sop = agent_sop([{"id": "flaky", "run": f"test -e {marker} || (touch {marker}; exit 1)",
                      "retry": {"max_attempts": 2, "initial_delay_s": 0}}])
    view = inproc.wait(inproc.submit(sop), timeout=60)
    assert view.status == ExecutionStatus.COMPLETED
    assert view.steps["flaky"].attempts == 2


def test_independent_steps_run_at_once_as_in_a_dag(inproc, tmp_path) -> None:
    """Steps with no dependency between them are asked for together, so they overlap in time."""
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    parties = 3
    steps = [{"id": f"p{i}", "retry": {"max_attempts": 1},
              "run": f"touch {barrier}/p{i}; for t in $(seq 100); do [ $(ls {barrier} | wc -l) -ge {parties} ] "
                     f"&& exit 0; sleep 0.1; done; exit 1"} for i in range(parties)]
    view = inproc.wait(inproc.submit(agent_sop(steps)), timeout=60)
    assert view.status == ExecutionStatus.COMPLETED, view.errors


def test_submit_can_override_the_agent_settings_and_bad_ones_are_refused(inproc) -> None:
    from runtime.errors import SubmissionError

    eid = inproc.submit(CHAIN, {"n": 1}, agent={"max_model_calls": 2})
    view = inproc.wait(eid, timeout=60)
    assert view.status == ExecutionStatus.FAILED  # it needs more than two model calls
    assert "max_llm_calls" in view.agent["message"] or "2" in view.agent["message"]
    with pytest.raises(SubmissionError, match=r"temperature: Input should be less than or equal to 2"):
        inproc.submit(CHAIN, {"n": 1}, agent={"temperature": 5})
    with pytest.raises(SubmissionError, match=r"colour: Extra inputs are not permitted"):
        inproc.submit(CHAIN, {"n": 1}, agent={"colour": "blue"})


def test_a_token_budget_stops_the_run_with_the_reason(inproc) -> None:
    view = inproc.wait(inproc.submit(CHAIN, {"n": 7}, agent={"token_budget": 10}), timeout=60)
    assert view.status == ExecutionStatus.FAILED
    history = inproc.history(view.id)
    assert "token_budget is 10" in history[-1].data["reason"]


def _gated(inproc, tmp_path, steps: int = 2) -> tuple[str, Path]:
    """An agent run whose first step ``wait`` runs until the file ``gate`` exists (then ``after``)."""
    from tests.sop_builders import wait_for

    gate = tmp_path / "gate"
    sop = agent_sop([{"id": "wait", "run": f"while [ ! -e {gate} ]; do sleep 0.05; done"},
                     {"id": "after", "depends_on": ["wait"], "run": "echo after"}][:steps])
    eid = inproc.submit(sop)
    wait_for(lambda: inproc.status(eid).steps["wait"].status == StepStatus.RUNNING, 30)
    return eid, gate


def test_cancelling_an_agent_run_stops_its_session_and_its_steps(inproc, tmp_path) -> None:
    eid, gate = _gated(inproc, tmp_path)
    inproc.cancel(eid, force=True)
    view = inproc.wait(eid, timeout=30)
    gate.touch()
    assert view.status == ExecutionStatus.CANCELLED
    assert view.steps["after"].status == StepStatus.CANCELLED


def test_the_audit_log_holds_the_agents_start_actions_decisions_and_end(inproc) -> None:
    eid = inproc.submit(CHAIN, {"n": 7})
    inproc.wait(eid, timeout=60)
    entries = inproc.logs(execution=eid)
    kinds = [e.kind for e in entries]
    assert kinds[0] == "start" and kinds[-1] == "end"
    assert entries[0].agent == f"agentic/{eid}"
    assert any(e.kind == "decision" and e.status == "run" for e in entries)
    assert sum(e.kind == "agent" and e.status == "model_called" for e in entries) == 5
    assert any(e.kind == "agent" and e.status == "reported" for e in entries)


def test_an_agent_run_replays_offline_identically_and_from_a_step(inproc) -> None:
    from runtime.replay import replay

    eid = inproc.submit(CHAIN, {"n": 7})
    inproc.wait(eid, timeout=60)
    history = inproc.history(eid)
    whole = replay(history)
    assert whole.deterministic, whole.render()
    assert whole.handlers_run == 0
    partial = replay(history, "second")
    assert partial.deterministic and partial.rerun == ["second", "third"]


def test_a_replay_that_meets_another_conversation_reports_the_divergence(inproc) -> None:
    """A recording whose model answers do not fit the run any more is not followed silently."""
    from runtime.events import Event
    from runtime.replay import replay

    eid = inproc.submit(CHAIN, {"n": 7})
    inproc.wait(eid, timeout=60)
    history = inproc.history(eid)
    edited = [Event(e.execution_id, e.seq, e.kind, e.ts, e.step, e.attempt,
                    {**e.data, "request": "0" * 32} if e.kind == K.MODEL_CALLED and e.data["index"] == 1 else e.data,
                    e.schema) for e in history]
    report = replay(edited)
    assert not report.deterministic
    assert report.replayed_status == "failed"


def test_steps_cannot_be_added_to_an_agent_run_and_the_refusal_says_why(inproc, tmp_path) -> None:
    from runtime.errors import ExecutionError

    eid, gate = _gated(inproc, tmp_path, steps=1)
    with pytest.raises(ExecutionError, match="is an Agent Centric Run: its agent was given the whole SOP"):
        inproc.add_steps(eid, [{"id": "more", "run": "echo more"}])
    gate.touch()
    assert inproc.wait(eid, timeout=30).status == ExecutionStatus.COMPLETED


def test_a_paused_agent_run_starts_no_step_until_resumed(inproc, tmp_path) -> None:
    from tests.sop_builders import wait_for

    eid, gate = _gated(inproc, tmp_path)
    inproc.pause(eid)
    gate.touch()
    wait_for(lambda: inproc.status(eid).steps["wait"].status == StepStatus.SUCCEEDED, 30)
    wait_for(lambda: any(e.kind == K.MODEL_CALLED and e.data["index"] == 1 for e in inproc.history(eid)), 30)
    # The model's record rides along with the agent's next engine call (the step), and is logged just
    # before that call is handled: wait for the step to be asked for, then held while paused.
    wait_for(lambda: inproc.status(eid).steps["after"].status == StepStatus.QUEUED, 30)
    assert inproc.status(eid).status == ExecutionStatus.PAUSED
    assert inproc.status(eid).steps["after"].status == StepStatus.QUEUED  # still held: nothing started it
    inproc.resume(eid)
    assert inproc.wait(eid, timeout=30).status == ExecutionStatus.COMPLETED


def test_engine_info_lists_the_agent_hosts_with_their_sessions_and_breakers(inproc) -> None:
    inproc.wait(inproc.submit(CHAIN, {"n": 1}), timeout=60)
    hosts = inproc.info()["agent_hosts"]
    assert [h["name"] for h in hosts] == ["local"]
    assert hosts[0]["sessions"] == 0 and hosts[0]["breakers"] == {}


def test_hostile_agent_calls_are_answered_as_data_cut_to_size_and_a_huge_result_is_stored_once(inproc) -> None:
    """agent_call is reachable by any client of the engine: a step that is not a name, a rationale of a
    megabyte and a result of megabytes change nothing they should not, and nothing big is inlined."""
    from runtime.registry import Registry
    from tests.agents.scripted_model import ScriptedModel
    from tests.sop_builders import wait_for

    registry = Registry()
    registry.register("model", "scripted", {}, ScriptedModel)
    inproc.registry = registry  # the submit-side check of the model name
    inproc._conn.coordinator.machine.agents.host.registry = registry
    sop = agent_sop([{"id": "a", "run": "echo a"}], agent={"model": "scripted", "instruction": "HOLD"})
    eid = inproc.submit(sop)
    wait_for(lambda: (inproc.status(eid).agent or {}).get("session") == 1, 30)

    def call(op: str, args: dict, index: int) -> object:
        return inproc._conn.call("coordinator", "agent_call", str(eid), 1, op, args, index)

    assert "there is no step" in call("decide", {"step": ["a"], "decision": "skip", "rationale": "x"}, 900)["error"]
    assert call("decide", {"step": "a", "decision": "run", "rationale": "r" * 1_000_000}, 901)["recorded"]
    assert call("escalate", {"step": {"a": 1}, "reason": "help"}, 902)["escalated"]
    big = {"blob": "x" * 3_000_000}
    assert call("finish", {"summary": "done", "outputs": big}, 903)["finished"]
    view = inproc.wait(eid, timeout=30)
    assert len(view.decisions[0]["rationale"]) == 4000  # cut, not refused
    assert inproc.result(eid)["outputs"] == big  # stored once as an artifact, read back whole
    assert max(len(json.dumps(e.data)) for e in inproc.history(eid)) < 100_000  # no event carries it inline
