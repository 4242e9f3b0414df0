"""The child SOP an agent step runs (``runtime.runners.agent_child_sop``) and the request that submits it."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.execution import Execution
from runtime.failure import ErrorInfo
from runtime.request import SubmitRequest
from runtime.runners import AgentStepRunner, agent_child_sop
from runtime.seams import AttemptSpec
from sop import Sop

INPUTS = ("alpha", "beta", "gamma", "delta")
SOURCES = ("ledger", "bank", "crm")


@st.composite
def parents(draw: Any) -> tuple[dict[str, Any], list[str], set[str]]:
    """A parent SOP (as data) with data sources reading some inputs, the tools its agent step names,
    and which inputs are secret."""
    secret = set(draw(st.lists(st.sampled_from(INPUTS), unique=True)))
    sources = {}
    for name in draw(st.lists(st.sampled_from(SOURCES), min_size=1, unique=True)):
        read = draw(st.lists(st.sampled_from(INPUTS), unique=True))
        where = draw(st.sampled_from(["env", "headers"]))
        values = {f"V{i}": f"${{{{ inputs.{n} }}}}" for i, n in enumerate(read)}
        sources[name] = ({"command": "ledger-server", "env": values} if where == "env" else
                         {"url": "https://example.com/mcp", "headers": values})
    tools = draw(st.lists(st.sampled_from(list(sources)), unique=True).map(lambda ns: [f"{n}.look_up" for n in ns]))
    doc = {"sop": "parent", "version": "3", "inputs": {n: {"secret": n in secret} for n in INPUTS},
           "data_sources": sources, "agent": {"temperature": 0.5},
           "steps": [{"id": "Think", "uses": "agent", "with": {"instruction": "x", "tools": tools}}]}
    return doc, tools, secret


def _read_by(source: dict[str, Any]) -> set[str]:
    values = {**source.get("env", {}), **source.get("headers", {})}.values()
    return {v.split("inputs.")[1].split()[0] for v in values}


@settings(max_examples=60, deadline=None)
@given(parents())
def test_child_sop_has_exactly_the_data_sources_its_tools_name_and_the_inputs_they_read(case) -> None:
    doc, tools, secret = case
    parent = Sop.model_validate(doc)
    child = agent_child_sop(parent, parent.steps[0], {"instruction": "Reconcile", "tools": tools, "model": "m1"})
    named = {t.split(".")[0] for t in tools}
    assert set(child.data_sources) == named
    read = set().union(*(_read_by(doc["data_sources"][n]) for n in named)) if named else set()
    assert set(child.inputs) == read
    assert {k for k, v in child.inputs.items() if v.secret} == read & secret
    assert (child.sop, child.version, child.mode.value, child.steps) == ("parent.think", "3", "agent_centric", ())
    assert (child.agent.instruction, child.agent.tools, child.agent.model, child.agent.temperature) == (
        "Reconcile", tuple(tools), "m1", 0.5)
    # the request passes on exactly those inputs' values, the secret ones as secrets
    values = {n: f"value-{n}" for n in INPUTS}
    request = SubmitRequest(parent, values, secrets=tuple(sorted(secret)))
    exe = Execution("exe-parent", request)
    built = AgentStepRunner(None).child_request(AttemptSpec(exe, parent.steps[0], 2, None, {
        "instruction": "Reconcile", "tools": tools}))
    assert isinstance(built, SubmitRequest)
    assert built.inputs == {n: values[n] for n in read}
    assert set(built.secrets) == read & secret
    assert (built.mode, built.parent, built.idempotency_key) == ("agent_centric", "exe-parent",
                                                                  "child:exe-parent/Think/2")


def test_the_agent_block_key_input_goes_to_the_child_as_a_secret() -> None:
    parent = Sop.model_validate({
        "sop": "p", "inputs": {"key": {"secret": True}, "other": {}},
        "agent": {"model": "litellm:openai/gpt-4o-mini", "api_key_input": "key", "base_url": "http://127.0.0.1:9"},
        "steps": [{"id": "a", "uses": "agent", "with": {"instruction": "x"}}]})
    child = agent_child_sop(parent, parent.steps[0], {"instruction": "x"})
    assert set(child.inputs) == {"key"} and child.inputs["key"].secret
    assert child.agent.base_url == "http://127.0.0.1:9"
    offline = agent_child_sop(parent, parent.steps[0], {"instruction": "x", "model": "offline"})
    assert offline.agent.base_url is None  # an endpoint only a litellm: model has


@pytest.mark.parametrize(("args", "message"), [
    ({"instruction": " "}, "step 'a': its with: arguments make no agent: with.instruction rendered to empty text, "
                           "so the agent has nothing to do; check the values it reads"),
    ({"instruction": "x", "tools": "ledger.look_up"}, "step 'a': its with: arguments make no agent: with.tools must "
                                                      "be a list of <data source>.<tool> names, got 'ledger.look_up'"),
    ({"instruction": "x", "tools": ["nowhere.t"]}, "step 'a': its with: arguments make no agent: with.tools names "
                                                   "data source 'nowhere', which the SOP does not declare "
                                                   "(data_sources: ledger)"),
    ({"instruction": "x", "tools": ["ledger.drop_table"]}, "step 'a': its with: arguments make no agent: "
     "with.tools names 'ledger.drop_table', but data source 'ledger' declares only look_up"),
])
def test_rendered_arguments_that_make_no_agent_fail_the_step_saying_why(args, message) -> None:
    parent = Sop.model_validate({"sop": "p", "steps": [{"id": "a", "uses": "agent", "with": {"instruction": "x"}}],
                                 "data_sources": {"ledger": {"command": "ledger", "tools": ["look_up"]}}})
    exe = Execution("exe-p", SubmitRequest(parent))
    error = AgentStepRunner(None).child_request(AttemptSpec(exe, parent.steps[0], 1, None, args))
    assert isinstance(error, ErrorInfo)
    assert (error.type, error.message, error.retryable) == ("AgentStepError", message, False)


def test_an_instruction_rendered_to_data_reaches_the_agent_as_json() -> None:
    parent = Sop.model_validate({"sop": "p", "steps": [{"id": "a", "uses": "agent", "with": {"instruction": "x"}}]})
    child = agent_child_sop(parent, parent.steps[0], {"instruction": {"rows": [1, 2]}})
    assert child.agent.instruction == '{"rows": [1, 2]}'
