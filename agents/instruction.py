"""The SOP as the agent reads it: every step, decision point and piece of guidance.

The instruction is prose for a language model followed by the same SOP as a JSON
plan between ``PLAN_START`` and ``PLAN_END`` lines. The offline model reads the plan
(:mod:`agents.offline`); a real model reads both. Secret input values never appear:
they show as ``***``.
"""

from __future__ import annotations

import json
from typing import Any

from agents.context import AgentContext
from sop.model import Step

PLAN_START = "-----BEGIN SOP PLAN-----"
PLAN_END = "-----END SOP PLAN-----"

STEP_TOOL_PREFIX = "step_"
"""Step ``fetch`` is the tool ``step_fetch``."""


def step_tool_name(step_id: str) -> str:
    """The tool that runs a step (tool names allow letters, digits, ``_`` and ``-``)."""
    return STEP_TOOL_PREFIX + step_id.replace(".", "_")


def mcp_tool_name(source: str, tool: str) -> str:
    """The agent's name for an MCP tool: ``<source>__<tool>`` (no two sources' tools collide)."""
    return f"{source}__{tool}".replace(".", "_")


def plan(ctx: AgentContext) -> dict[str, Any]:
    """The SOP as data for the agent: what the offline model follows step by step.

    Nothing in it depends on the execution's id or time, so a replay asks the model the same.
    """
    return {
        "sop": ctx.sop.sop, "version": ctx.sop.version,
        "inputs": ctx.public_inputs,
        "steps": [_step(s) for s in ctx.steps],
        "outputs": dict(ctx.sop.outputs),
        "tools": [mcp_tool_name(src, tool) for src, tool in ctx.tools],
    }


def _step(step: Step) -> dict[str, Any]:
    return {"id": step.id, "tool": step_tool_name(step.id), "name": step.label, "description": step.description,
            "uses": step.handler, "depends_on": list(step.depends_on), "when": step.when,
            "on_failure": step.on_failure.value, "idempotent": step.idempotent,
            "expected_duration_s": step.expected_duration_s}


def render_instruction(ctx: AgentContext) -> str:
    """The agent's whole instruction."""
    sop = ctx.sop
    lines = [
        f"You run the standard operating procedure (SOP) '{sop.sop}' version {sop.version}.",
    ]
    if sop.description:
        lines.append(f"What it is for: {sop.description}")
    if ctx.settings.instruction:
        lines.append(f"Your goal: {ctx.settings.instruction}")
    lines += ["", "Inputs of this execution (secret ones shown as ***):"]
    lines += [f"- {k} = {json.dumps(v, default=str)}" for k, v in ctx.public_inputs.items()] or ["- (none)"]
    if ctx.steps:
        lines += ["", "The steps, in order. Each step is a tool named step_<id> that runs it exactly as the SOP "
                  "defines it (its arguments come from the SOP; call it with no arguments); it answers the step's "
                  "status and output."]
    else:  # an agent-only SOP (an agent step's child): the goal is the whole procedure
        lines += ["", "This SOP has no steps: your goal above is the whole procedure. Do it with the data "
                  "sources' tools listed below, then report the result with finish(summary, outputs), outputs "
                  "being a JSON object of named values (what the SOP that asked you reads)."]
    for i, step in enumerate(ctx.steps, 1):
        lines.append(f"{i}. {step.id}" + (f" — {step.name}" if step.name else "") + f" (tool {step_tool_name(step.id)})")
        if step.description:
            lines.append(f"   Guidance: {step.description}")
        if step.depends_on:
            lines.append(f"   Only after: {', '.join(step.depends_on)}")
        if step.when:
            lines.append(f"   Decision point: run it only if `{step.when}` holds; otherwise skip it. Either way, "
                         "record your decision with record_decision first.")
        if step.on_failure.value != "halt":
            lines.append(f"   If it fails: {step.on_failure.value}")
        if not step.idempotent:
            lines.append("   It is not safe to run twice.")
    if sop.outputs:
        lines += ["", "The result the engine reports when you finish (rendered from the steps' outputs):"]
        lines += [f"- {k}: {v}" for k, v in sop.outputs.items()]
    if ctx.tools:
        lines += ["", "Data sources you may query yourself (MCP tools): "
                  + ", ".join(mcp_tool_name(s, t) for s, t in ctx.tools)]
    lines += [
        "", "Rules:",
        "- Record every decision (to run or skip a step at a decision point, to stop after a failure) with "
        "record_decision(step, decision, rationale): decision is run, skip, halt, or your own word.",
        "- Report what you are doing with report_status(message, progress) as you go.",
        "- If a step fails and the SOP gives no way on, record a halt decision for the steps after it.",
        "- When you cannot decide from the SOP's guidance, call escalate(reason, step).",
        "- When done, call finish(summary, outputs) once; nothing runs after it.",
        "", PLAN_START, json.dumps(plan(ctx), sort_keys=True, default=str), PLAN_END,
    ]
    return "\n".join(lines)


def read_plan(instruction: str) -> dict[str, Any] | None:
    """The JSON plan inside an instruction, or None when it has none."""
    start = instruction.find(PLAN_START)
    end = instruction.find(PLAN_END, start + 1)
    if start < 0 or end < 0:
        return None
    try:
        return json.loads(instruction[start + len(PLAN_START):end])
    except ValueError:
        return None
