"""The agent's tools: one per SOP step, the MCP tools the SOP allows, and the engine's tools.

- **Step tools** (``step_<id>``) run the step exactly as a System Design Run would —
  the engine starts it through the same runners, with its retries and timeouts —
  and answer its status and output. They take no arguments: the SOP gives them.
- **MCP tools** (``<source>__<tool>``) call a data source through the host's pooled
  client (:mod:`agents.mcp`); only the tools the SOP lists exist for the agent.
- **Engine tools**: ``record_decision``, ``report_status``, ``escalate``, ``finish``.

Every call that reaches the engine carries the session's tool-call index, so a
session resumed from its recording repeats such calls without effect.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from google.adk.tools.base_tool import BaseTool
from google.adk.tools.tool_context import ToolContext
from google.genai import types

from agents.context import AgentContext
from agents.instruction import mcp_tool_name, step_tool_name


class EnginePort(Protocol):
    """How a session reaches the engine: ``await port(op, args, call)`` (see :mod:`runtime.agentic`)."""

    def __call__(self, op: str, args: dict[str, Any], call: int | None) -> Awaitable[Any]: ...


class CallIndex(Protocol):
    """Which tool call of the session a running call is (assigned by :mod:`agents.recording`)."""

    def index_of(self, function_call_id: str | None) -> int | None: ...


def _string(description: str) -> types.Schema:
    return types.Schema(type=types.Type.STRING, description=description)


class _EngineTool(BaseTool):
    """A tool answered by the engine."""

    op = ""
    params: dict[str, types.Schema] = {}
    required: tuple[str, ...] = ()

    def __init__(self, name: str, description: str, port: EnginePort, calls: CallIndex) -> None:
        super().__init__(name=name, description=description)
        self.port, self.calls = port, calls

    def _get_declaration(self) -> types.FunctionDeclaration:
        params = types.Schema(type=types.Type.OBJECT, properties=dict(self.params), required=list(self.required)) \
            if self.params else None
        return types.FunctionDeclaration(name=self.name, description=self.description, parameters=params)

    def _args(self, args: dict[str, Any]) -> dict[str, Any]:
        return {k: args.get(k) for k in self.params}

    async def run_async(self, *, args: dict[str, Any], tool_context: ToolContext) -> Any:
        missing = [k for k in self.required if args.get(k) in (None, "")]
        if missing:
            return {"error": f"{self.name} needs {', '.join(missing)}"}
        return await self.port(self.op, self._args(args), self.calls.index_of(tool_context.function_call_id))


class StepTool(_EngineTool):
    """Runs one SOP step through the engine and answers its end (status, output, error)."""

    op = "step"

    def __init__(self, step_id: str, description: str, port: EnginePort, calls: CallIndex) -> None:
        super().__init__(step_tool_name(step_id), description, port, calls)
        self.step_id = step_id

    def _args(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"step": self.step_id}


class DecisionTool(_EngineTool):
    op = "decide"
    params = {"step": _string("The step the decision is about (empty for the run as a whole)."),
              "decision": _string("run, skip, halt, or your own word."),
              "rationale": _string("Why, from the SOP's guidance and what the steps returned.")}
    required = ("decision", "rationale")


class StatusTool(_EngineTool):
    op = "status"
    params = {"message": _string("What you are doing now."),
              "progress": types.Schema(type=types.Type.NUMBER, description="Fraction done, 0 to 1.")}
    required = ("message",)


class EscalateTool(_EngineTool):
    op = "escalate"
    params = {"reason": _string("What the operators must look at, and why you cannot decide it."),
              "step": _string("The step it is about, if any.")}
    required = ("reason",)


class FinishTool(_EngineTool):
    """Reports the result to the engine; the run ends with it (no model call follows)."""

    op = "finish"
    params = {"summary": _string("What was done and found, in a few sentences."),
              "outputs": types.Schema(type=types.Type.OBJECT, description="Your result as key/value data.")}
    required = ("summary",)

    async def run_async(self, *, args: dict[str, Any], tool_context: ToolContext) -> Any:
        answer = await super().run_async(args=args, tool_context=tool_context)
        if isinstance(answer, dict) and answer.get("finished"):
            tool_context.actions.skip_summarization = True  # the run is over: no summary turn
        return answer


class McpTool(BaseTool):
    """One MCP tool of a data source, called through the host's pool (authorised by the SOP)."""

    def __init__(self, source: str, tool: str, description: str, input_schema: dict[str, Any] | None,
                 call: Callable[[str, str, dict[str, Any]], Awaitable[Any]]) -> None:
        super().__init__(name=mcp_tool_name(source, tool), description=description or f"{tool} of {source}")
        self.source, self.tool, self.schema, self._call = source, tool, input_schema, call

    def _get_declaration(self) -> types.FunctionDeclaration:
        return types.FunctionDeclaration(name=self.name, description=self.description,
                                         parameters_json_schema=self.schema or {"type": "object", "properties": {}})

    async def run_async(self, *, args: dict[str, Any], tool_context: ToolContext) -> Any:
        return await self._call(self.source, self.tool, dict(args))


def engine_tools(ctx: AgentContext, port: EnginePort, calls: CallIndex) -> list[BaseTool]:
    """The step tools in SOP order, then the engine's own tools."""
    tools: list[BaseTool] = []
    for step in ctx.steps:
        what = step.description or step.label
        tools.append(StepTool(step.id, f"Run step {step.id} of the SOP ({what}); answers its status and output.",
                              port, calls))
    tools += [
        DecisionTool("record_decision", "Record a decision about a step with its rationale (skip and halt end "
                     "the step without running it).", port, calls),
        StatusTool("report_status", "Tell the operators what you are doing and how far you are.", port, calls),
        EscalateTool("escalate", "Ask the operators for help; they are notified at once.", port, calls),
        FinishTool("finish", "Report your result to the engine and end the run.", port, calls),
    ]
    return tools


def mcp_tools_for(ctx: AgentContext, call: Callable[[str, str, dict[str, Any]], Awaitable[Any]],
                  described: dict[tuple[str, str], tuple[str, dict[str, Any] | None]] | None = None) -> list[BaseTool]:
    """One tool per MCP tool the SOP lets the agent call (``agent.tools``), and no other.

    Args:
        call: Makes the call (the host's pool).
        described: ``(source, tool) -> (description, input schema)`` as the servers list them;
            without it (an offline replay, which reaches no server) tools take any object.
    """
    described = described or {}
    return [McpTool(source, tool, *described.get((source, tool), ("", None)), call=call) for source, tool in ctx.tools]
