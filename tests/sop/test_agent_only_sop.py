"""Agent-only SOPs (``steps: []``): their procedure is the agent's instruction; only agent_centric runs them."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sop import check_text
from sop.modes import mode_fit

AGENT_ONLY = "sop: triage\nmode: agent_centric\nagent: {instruction: Sort the open tickets}\nsteps: []\n"


def test_an_agent_centric_sop_with_an_instruction_may_have_no_steps() -> None:
    report = check_text(AGENT_ONLY)
    assert report.ok, report.problems
    assert report.mode.value == "agent_centric" and report.sop.steps == ()
    assert report.mode_reason == "declared agent_centric; no steps: the agent follows agent.instruction"


@pytest.mark.parametrize(("text", "message", "line"), [
    ("sop: a\nsteps: []\n", "steps is empty, but only an SOP with mode: agent_centric may have no steps (its agent "
                            "follows agent.instruction); add a step, or declare mode: agent_centric (mode is auto)", 2),
    ("sop: a\nmode: system_design\nsteps: []\n", "steps is empty, but only an SOP with mode: agent_centric may have "
     "no steps (its agent follows agent.instruction); add a step, or declare mode: agent_centric (mode is "
     "system_design)", 3),
    ("sop: a\nmode: agent_centric\nsteps: []\n", "steps is empty, so agent.instruction must say what the agent does "
                                                 "(it is the whole procedure); add agent.instruction, or add steps", 3),
])
def test_an_sop_without_steps_is_refused_saying_what_would_make_it_valid(text, message, line) -> None:
    report = check_text(text)
    assert [(p.path, p.message, p.line) for p in report.problems] == [("steps", message, line)]


def test_a_missing_steps_field_is_still_reported_missing() -> None:
    assert [p.message for p in check_text("sop: a\nmode: agent_centric\n").problems] == [
        "required field 'steps' is missing"]


def test_system_design_does_not_fit_an_sop_without_steps() -> None:
    fit = mode_fit("system_design", {}, {})
    assert fit.mode is None and "has no steps" in fit.reason
    report = check_text(AGENT_ONLY, mode="system_design")
    assert [p.message for p in report.problems] == [
        "cannot run this SOP in mode system_design: the SOP has no steps, so there is no DAG to run: its agent "
        "follows agent.instruction; run it in mode agent_centric"]


def test_submitting_an_agent_only_sop_as_a_dag_is_refused_and_as_an_agent_run_completes(inproc) -> None:
    from runtime.errors import SubmissionError

    with pytest.raises(SubmissionError, match="the SOP has no steps, so there is no DAG to run"):
        inproc.submit(AGENT_ONLY, mode="system_design")
    view = inproc.wait(inproc.submit(AGENT_ONLY), timeout=60)
    assert view.status.value == "completed" and view.steps == {}
    assert view.agent["summary"] == ("SOP triage has no steps; the offline model does not act on a free-text "
                                     "instruction, so it finished with no outputs.")


@given(mode=st.sampled_from(["auto", "system_design", "agent_centric", None]),
       instruction=st.sampled_from([None, "", "  \n", "Sort the tickets"]))
def test_property_no_steps_only_for_an_agent_centric_sop_with_an_instruction(mode, instruction) -> None:
    """For any mode and agent instruction, ``steps: []`` is valid exactly when the mode is agent_centric
    and the instruction is not blank."""
    doc: dict = {"sop": "a", "steps": []}
    if mode:
        doc["mode"] = mode
    if instruction is not None:
        doc["agent"] = {"instruction": instruction}
    report = check_text(json.dumps(doc))
    assert report.ok is (mode == "agent_centric" and bool((instruction or "").strip())), report.problems
    assert all(p.path == "steps" for p in report.problems)
