"""Properties 1, 2, 10, 11 (pure: the context, the agent built from it) and 3, 12, 13, 14 (agent runs
on the in-process engine) of ../shared/PROPERTIES.md."""

from __future__ import annotations

import asyncio
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.context import AgentContext
from agents.instruction import mcp_tool_name, read_plan, render_instruction, step_tool_name
from agents.offline import OfflineModel
from agents.session import build_agent
from agents.tools import engine_tools, mcp_tools_for
from runtime.agentic import session_spec
from runtime.engine import _with_agent_settings
from runtime.events import EventKind
from runtime.execution import Execution
from runtime.request import SubmitRequest
from sop import loads as load_text
from sop.expressions import compile_expression, strip_braces
from tests.agents.agent_sops import linear_sops

K = EventKind
ENGINE_TOOLS = {"record_decision", "report_status", "escalate", "finish"}

names = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)


@st.composite
def agent_sops(draw: Any) -> tuple[str, dict[str, Any]]:
    """An agent-centric SOP with data sources, agent tools and agent settings; and overrides at submit."""
    sources = draw(st.dictionaries(names, st.lists(names, min_size=1, max_size=3, unique=True), max_size=3))
    tools = [f"{s}.{t}" for s, ts in sources.items() for t in ts if draw(st.booleans())]
    agent = {"instruction": draw(st.text(st.characters(codec="ascii", exclude_categories=("Cc",)), max_size=40)),
             "tools": tools, "max_model_calls": draw(st.integers(1, 500))}
    for key, strategy in (("temperature", st.floats(0, 2)), ("max_tokens", st.integers(1, 8000)),
                          ("token_budget", st.integers(1, 10 ** 6))):
        if draw(st.booleans()):
            agent[key] = draw(strategy)
    steps = [{"id": f"s{i}", "run": f"echo {i}", "description": draw(st.sampled_from(["", f"guide {i}"])),
              **({"depends_on": [f"s{i - 1}"]} if i else {}),
              **({"when": f"inputs.n > {i}"} if draw(st.booleans()) else {})}
             for i in range(draw(st.integers(1, 5)))]
    doc = {"sop": "prop", "mode": "agent_centric", "inputs": {"n": {"type": "integer", "default": 0}},
           "data_sources": {s: {"command": "python", "args": ["-m", "x"], "tools": ts} for s, ts in sources.items()},
           "agent": agent, "steps": steps, "outputs": {"first": "${{ steps.s0.status }}"}}
    overrides = draw(st.fixed_dictionaries({}, optional={"temperature": st.floats(0, 2),
                                                         "max_model_calls": st.integers(1, 50)}))
    return yaml.safe_dump(doc, sort_keys=False), overrides


def _context(text: str, overrides: dict[str, Any]) -> tuple[Any, AgentContext]:
    sop = _with_agent_settings(load_text(text), overrides, "<string>") if overrides else load_text(text)
    exe = Execution("exe-1", SubmitRequest(sop, {"n": 1}, "agent_centric"))
    return sop, AgentContext.from_spec(session_spec(exe, 1, {"models": [], "tools": {}}))


@settings(max_examples=200, deadline=None)
@given(agent_sops())
def test_property_01_context_creation(case: tuple[str, dict[str, Any]]) -> None:
    """The execution context holds the SOP, every data source it names, and the agent settings it asks
    for (with the overrides given at submit)."""
    text, overrides = case
    sop, ctx = _context(text, overrides)
    assert ctx.sop == sop
    assert ctx.data_sources == dict(sop.data_sources)
    assert ctx.settings == sop.agent
    for key, value in overrides.items():
        assert getattr(ctx.settings, key) == value
    assert ctx.tools == tuple(tuple(t.split(".", 1)) for t in sop.agent.tools)
    assert ctx.steps == sop.steps


async def _no_call(*_: Any) -> Any:
    raise AssertionError("no tool is called while the agent is built")


@settings(max_examples=200, deadline=None)
@given(agent_sops())
def test_property_02_agent_from_context(case: tuple[str, dict[str, Any]]) -> None:
    """The agent built from a context has exactly its model, temperature, token limit, tools and MCP access."""
    _, ctx = _context(*case)
    model = OfflineModel()
    tools = engine_tools(ctx, _no_call, _Calls()) + mcp_tools_for(ctx, _no_call)
    agent = build_agent(ctx, model, tools)
    assert agent.model is model
    assert agent.generate_content_config.temperature == ctx.settings.temperature
    assert agent.generate_content_config.max_output_tokens == ctx.settings.max_tokens
    names_ = {t.name for t in agent.tools}
    assert names_ == {step_tool_name(s.id) for s in ctx.steps} | ENGINE_TOOLS | {
        mcp_tool_name(s, t) for s, t in ctx.tools}
    mcp = {(t.source, t.tool) for t in agent.tools if hasattr(t, "source")}
    assert mcp == set(ctx.tools)  # MCP access: exactly the tools the SOP allows


class _Calls:
    def index_of(self, function_call_id: str | None) -> int | None:
        return None


@settings(max_examples=200, deadline=None)
@given(agent_sops())
def test_property_10_whole_sop_to_agent(case: tuple[str, dict[str, Any]]) -> None:
    """The agent receives every step, decision point and piece of guidance of the SOP."""
    sop, ctx = _context(*case)
    text = render_instruction(ctx)
    plan = read_plan(text)
    assert plan is not None
    assert [s["id"] for s in plan["steps"]] == [s.id for s in sop.steps]
    for step, planned in zip(sop.steps, plan["steps"], strict=True):
        assert step.id in text and step_tool_name(step.id) in text
        assert planned["when"] == step.when and planned["depends_on"] == list(step.depends_on)
        if step.when:
            assert f"`{step.when}`" in text  # the decision point, in the prose too
        if step.description:
            assert f"Guidance: {step.description}" in text
    if sop.agent.instruction.strip():
        assert sop.agent.instruction in text
    assert plan["outputs"] == dict(sop.outputs)


@settings(max_examples=200, deadline=None)
@given(agent_sops())
def test_property_11_agent_capabilities(case: tuple[str, dict[str, Any]]) -> None:
    """The deployed agent has decision tools, the SOP, its MCP data sources and a way to report status."""
    _, ctx = _context(*case)
    agent = build_agent(ctx, OfflineModel(), engine_tools(ctx, _no_call, _Calls()) + mcp_tools_for(ctx, _no_call))
    tool_names = {t.name for t in agent.tools}
    assert {"record_decision", "escalate"} <= tool_names  # decide, or hand a decision on
    assert {"report_status", "finish"} <= tool_names  # report status and the result
    assert read_plan(agent.instruction(None)) is not None  # the SOP itself
    assert {mcp_tool_name(s, t) for s, t in ctx.tools} <= tool_names  # its data sources


# -- agent runs --------------------------------------------------------------------------------------


def _condition(when: str, n: int) -> bool:
    return bool(compile_expression(strip_braces(when)).evaluate({"inputs": {"n": n}}))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(linear_sops())
def test_property_13_decision_with_rationale(inproc, case: tuple[str, dict[str, int], list[dict[str, Any]]]) -> None:
    """At every decision point the agent decides from the SOP and logs the decision with its rationale."""
    text, inputs, steps = case
    view = inproc.wait(inproc.submit(text, inputs), timeout=60)
    decided = {d["step"]: d for d in view.decisions}
    blocked = False  # a skipped step skips everything after it (all_success)
    for step in steps:
        sid = step["id"]
        if blocked:
            assert decided[sid]["decision"] == "skip" and "dependency" in decided[sid]["rationale"]
            continue
        if "when" in step:
            holds = _condition(step["when"], inputs["n"])
            assert decided[sid]["decision"] == ("run" if holds else "skip")
            assert step["when"] in decided[sid]["rationale"]  # the rationale names the SOP's condition
            blocked = not holds
        else:
            assert sid not in decided
    assert all(d["rationale"].strip() for d in view.decisions)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(linear_sops())
def test_property_14_direct_result(inproc, case: tuple[str, dict[str, int], list[dict[str, Any]]]) -> None:
    """A finished agent run reports its result to the engine itself: the agent's report ends the run,
    and no step was started by the DAG orchestrator (each was asked for by the model first)."""
    text, inputs, _ = case
    eid = inproc.submit(text, inputs)
    inproc.wait(eid, timeout=60)
    history = inproc.history(eid)
    kinds = [e.kind for e in history]
    assert kinds[-2:] == [K.AGENT_REPORTED, K.FINISHED]
    asked: set[str] = set()
    for e in history:
        if e.kind == K.MODEL_CALLED:
            for part in e.data["response"]["content"]["parts"]:
                asked.add(part["function_call"]["name"])
        elif e.kind == K.STEP_STARTED:
            assert step_tool_name(e.step) in asked, f"{e.step} started without the agent asking for it"
    assert history[-2].data.get("outputs") == history[-1].data["outputs"]["outputs"]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(linear_sops())
def test_property_03_audit_trail(inproc, case: tuple[str, dict[str, int], list[dict[str, Any]]]) -> None:
    """The log holds a start entry (execution, SOP version, agent, mode, time), every agent action and
    decision in between, and an end entry (results, duration, final status)."""
    text, inputs, _ = case
    eid = inproc.submit(text, inputs)
    view = inproc.wait(eid, timeout=60)
    entries = inproc.logs(execution=eid)
    start, end = entries[0], entries[-1]
    assert start.kind == "start" and start.execution_id == eid and start.agent == f"agentic/{eid}"
    assert start.data["mode"] == "agent_centric" and start.data["version"] == "1" and start.ts > 0
    assert end.kind == "end" and end.status == view.status.value and end.data["duration_s"] >= 0
    history = inproc.history(eid)
    decisions = [e for e in entries if e.kind == "decision" and (e.data or {}).get("by") == "agent"]
    assert len(decisions) == sum(e.kind == K.AGENT_DECIDED for e in history)
    assert sum(e.kind == "agent" and e.status == "model_called" for e in entries) == sum(
        e.kind == K.MODEL_CALLED for e in history)
    assert any(e.kind == "agent" and e.status == "reported" for e in entries)


def test_property_12_agent_heartbeat(tmp_path) -> None:
    """A status update reaches the monitor at every significant event (each decision) and at least every
    heartbeat while a long step runs (the heartbeat is 0.2 s here, 30 s by default)."""
    from runtime import Engine, Registry
    from runtime.config import EngineConfig

    engine = Engine.in_process(registry=Registry(), config=EngineConfig(agent_heartbeat_s=0.2,
                                                                       agent_silence_s=5.0))
    try:
        text = yaml.safe_dump({"sop": "beat", "mode": "agent_centric", "steps": [
            {"id": "slow", "run": "sleep 1.5"},
            {"id": "maybe", "depends_on": ["slow"], "when": "steps.slow.status == 'succeeded'", "run": "true"}]})
        eid = engine.submit(text)
        engine.wait(eid, timeout=60)
        history = engine.history(eid)
    finally:
        engine.shutdown()
    for i, e in enumerate(history):
        if e.kind == K.AGENT_DECIDED:
            assert history[i + 1].kind == K.AGENT_STATUS
    slow = [e for e in history if e.step == "slow" and e.kind in (K.STEP_STARTED, K.STEP_SUCCEEDED)]
    beats = [e.ts for e in history if e.kind == K.AGENT_STATUS and slow[0].ts <= e.ts <= slow[1].ts]
    gaps = [b - a for a, b in zip([slow[0].ts, *beats], [*beats, slow[1].ts])]
    assert len(beats) >= 3 and max(gaps) < 1.0, gaps  # 0.2 s apart, with room for a slow machine
