"""Recording and replaying an agent session's model and MCP tool calls (an ADK plugin).

Live, every model answer and every MCP tool call is logged as an event as it
happens (``model_called``, ``tool_started`` for a tool that is not idempotent,
``tool_called``). Given a recording, the plugin answers the recorded prefix
itself — no model call, no tool call — matching each call by a digest of its
request, then lets the session go on live:

- **resume** (a host was lost): the prefix is replayed silently (it is in the log
  already); a tool call that was in flight runs again only if the tool is
  idempotent, else the agent is told it may or may not have happened;
- **offline replay**: everything must come from the recording; the calls are logged
  again (the replayed log then matches the original) and a call the recording does
  not hold is a divergence, raised as :class:`ReplayDivergence`.

Step tools and the engine's own tools are never short-circuited: they reach the
engine, which knows what already happened (a step that ended answers its end; a
decision already logged is not logged again).
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from google.adk.agents.callback_context import CallbackContext
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from google.adk.plugins.base_plugin import BasePlugin
from google.adk.tools.base_tool import BaseTool
from google.adk.tools.tool_context import ToolContext

from agents.tools import EnginePort, McpTool
from runtime.errors import SopflowError


class ReplayDivergence(SopflowError):
    """An offline replay met a call its recording does not hold (the run took another path)."""


class BudgetExceeded(SopflowError):
    """The run used up its token budget (``agent.token_budget``)."""


class ConversationDigest:
    """Digests of what the model is asked, call after call: instruction, conversation and tools (call
    ids left out, since ADK makes them up anew each run).

    The conversation only grows within a session, so each call hashes only the turns added since the
    previous one (hashing it whole every call made a session's cost grow with the square of its length).
    """

    def __init__(self) -> None:
        self._turns = hashlib.sha256()
        self._seen = 0

    def __call__(self, llm_request: LlmRequest) -> str:
        contents = llm_request.contents
        if len(contents) < self._seen:  # not a continuation: start over
            self._turns, self._seen = hashlib.sha256(), 0
        for content in contents[self._seen:]:
            self._turns.update(json.dumps(_plain(content), sort_keys=True, default=str).encode() + b"\n")
        self._seen = len(contents)
        config = llm_request.config
        digest = self._turns.copy()
        digest.update(json.dumps({"instruction": _plain(config.system_instruction if config else None),
                                  "tools": sorted(llm_request.tools_dict)}, sort_keys=True, default=str).encode())
        return digest.hexdigest()[:32]


def tool_digest(name: str, args: dict[str, Any]) -> str:
    return _digest({"tool": name, "args": args})


def _digest(doc: Any) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _plain(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json", exclude_none=True)
    return _without_ids(value)


def _without_ids(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_ids(v) for k, v in value.items() if k not in ("id", "thought_signature")}
    if isinstance(value, list):
        return [_without_ids(v) for v in value]
    return value


class SessionRecorder(BasePlugin):
    """Records a session's calls, and answers a recorded prefix; see the module docstring.

    Args:
        port: The engine (records are sent as ``record`` calls).
        records: The recording: ``{"models": [{"request", "response"}], "tools": {index: {...}}}``.
        replay: An offline replay (strict: nothing live).
        idempotent: Whether an MCP tool (by its agent name) is safe to call again.
        token_budget: The most tokens the run may use (None: no limit).
    """

    def __init__(self, port: EnginePort, records: dict[str, Any], *, replay: bool = False,
                 idempotent: Any = lambda name: False, token_budget: int | None = None) -> None:
        super().__init__(name="sopflow_recorder")
        self.port = port
        self.models: list[dict[str, Any]] = list(records.get("models", ()))
        self.tools: dict[int, dict[str, Any]] = {int(k): v for k, v in (records.get("tools") or {}).items()}
        self.replay = replay
        self.idempotent = idempotent
        self.token_budget = token_budget
        self.digest = ConversationDigest()
        self.model_index = 0
        self.tool_index = 0
        self.live = False
        """The session left its recording (it was used up, or the run took another path)."""
        self.replayed = 0
        self.tokens = 0
        self.activity = "starting"
        """What the session does now, for its heartbeat."""
        self._ids: dict[str, int] = {}
        self._asked: dict[int, tuple[str, float]] = {}
        self._tool_started: dict[int, float] = {}
        self._pending: list[tuple[str, dict[str, Any]]] = []

    def index_of(self, function_call_id: str | None) -> int | None:
        """The session's index of a running tool call (what the engine dedups calls by)."""
        return self._ids.get(function_call_id or "")

    # -- model calls ------------------------------------------------------------------------------

    async def before_model_callback(self, *, callback_context: CallbackContext,
                                    llm_request: LlmRequest) -> LlmResponse | None:
        index, self.model_index = self.model_index, self.model_index + 1
        digest = self.digest(llm_request)
        if not self.live and index < len(self.models):
            recorded = self.models[index]
            if recorded["request"] == digest:
                self.replayed += 1
                response = LlmResponse.model_validate(recorded["response"])
                self.tokens += _tokens(response)
                if self.replay:
                    await self._record("model", _model_data(index, digest, response, 0.0))
                return response
            if self.replay:
                raise ReplayDivergence(f"model call {index} differs from the recording (the conversation took "
                                       "another path)")
            self.live = True  # resumed, but the run went another way: go on live from here
        elif self.replay:
            raise ReplayDivergence(f"model call {index} is not in the recording ({len(self.models)} recorded)")
        self.live = True
        if self.token_budget is not None and self.tokens >= self.token_budget:
            raise BudgetExceeded(f"the run used {self.tokens} tokens, its token_budget is {self.token_budget}")
        self._asked[index] = (digest, time.monotonic())
        self.activity = f"waiting for model call {index}"
        return None

    async def after_model_callback(self, *, callback_context: CallbackContext,
                                   llm_response: LlmResponse) -> LlmResponse | None:
        index = self.model_index - 1
        asked = self._asked.pop(index, None)
        if asked is None or llm_response.partial:
            return None  # a replayed answer (logged already), or a piece of a streamed one
        digest, started = asked
        self.tokens += _tokens(llm_response)
        await self._record("model", _model_data(index, digest, llm_response, time.monotonic() - started))
        self.activity = f"acting on model call {index}"
        return None

    # -- tool calls -------------------------------------------------------------------------------

    async def before_tool_callback(self, *, tool: BaseTool, tool_args: dict[str, Any],
                                   tool_context: ToolContext) -> dict[str, Any] | None:
        index, self.tool_index = self.tool_index, self.tool_index + 1
        self._ids[tool_context.function_call_id or ""] = index
        self.activity = f"calling {tool.name}"
        if not isinstance(tool, McpTool):
            return None  # the engine answers step and engine tools, and knows what already happened
        digest = tool_digest(tool.name, tool_args)
        recorded = self.tools.get(index)
        if recorded is not None and recorded.get("request") == digest:
            if "result" in recorded:
                self.replayed += 1
                if self.replay:
                    await self._record("tool", {"index": index, "tool": tool.name, "request": digest,
                                                "result": recorded["result"], "ok": recorded.get("ok", True)})
                return _as_answer(recorded["result"])
            if not self.idempotent(tool.name):  # it was in flight when the session was lost
                answer = await self._decided(index, tool.name, digest)
                if answer is not None:
                    return answer  # else the operator said: run it again
        elif self.replay:
            raise ReplayDivergence(f"tool call {index} ({tool.name}) is not in the recording")
        if not self.idempotent(tool.name):
            await self._record("tool_started", {"index": index, "tool": tool.name, "request": digest})
        else:
            await self.flush()  # the answer that asked for this call is logged before the call is made
        self._tool_started[index] = time.monotonic()
        return None

    async def _decided(self, index: int, tool: str, digest: str) -> dict[str, Any] | None:
        """Wait for an operator's decision about interrupted call ``index`` (like a step's interrupted
        attempt that is not idempotent): the answer the agent gets, or None to call the tool again."""
        await self.flush()
        self.activity = f"waiting for an operator's decision about call {index} ({tool})"
        decided = await self.port("interrupted", {"index": index, "tool": tool}, index)
        decision = decided.get("decision")
        if decision == "rerun":
            return None  # called again below, announced by a new tool_started
        if decision == "succeed":
            answer = decided.get("output")
            answer = answer if isinstance(answer, dict) else {"result": answer}
        else:
            answer = {"error": f"the call was interrupted when the agent's host was lost; an operator decided "
                               f"to {decision} it: {decided.get('reason') or 'no reason given'}"}
        await self._record("tool", {"index": index, "tool": tool, "request": digest, "result": answer,
                                    "ok": decision == "succeed"})
        return answer

    async def after_tool_callback(self, *, tool: BaseTool, tool_args: dict[str, Any], tool_context: ToolContext,
                                  result: dict[str, Any]) -> dict[str, Any] | None:
        if isinstance(tool, McpTool):
            await self._tool_ended(tool, tool_args, tool_context, result, ok="error" not in result)
        return None

    async def on_tool_error_callback(self, *, tool: BaseTool, tool_args: dict[str, Any], tool_context: ToolContext,
                                     error: Exception) -> dict[str, Any] | None:
        answer = {"error": f"{type(error).__name__}: {error}"}
        if isinstance(tool, McpTool):
            await self._tool_ended(tool, tool_args, tool_context, answer, ok=False)
        return answer  # the agent sees the failure and decides; the run goes on

    async def _tool_ended(self, tool: BaseTool, tool_args: dict[str, Any], tool_context: ToolContext,
                          result: dict[str, Any], ok: bool) -> None:
        index = self.index_of(tool_context.function_call_id)
        if index is None or index not in self._tool_started:
            return
        started = self._tool_started.pop(index)
        await self._record("tool", {"index": index, "tool": tool.name, "request": tool_digest(tool.name, tool_args),
                                    "result": result, "ok": ok, "duration_s": round(time.monotonic() - started, 6),
                                    "source": getattr(tool, "source", None), "arguments": tool_args,
                                    "result_bytes": len(json.dumps(result, default=str))})

    async def _record(self, kind: str, data: dict[str, Any]) -> None:
        """Log a call: a model answer rides along with the next call to the engine (it always comes
        before what the answer asked for); a tool call is sent at once, with whatever waits."""
        self._pending.append((kind, data))
        if kind != "model":
            await self.flush()

    def take(self) -> list[tuple[str, dict[str, Any]]]:
        """The records waiting to ride along with the next call to the engine (handed over once)."""
        pending, self._pending = self._pending, []
        return pending

    async def flush(self) -> None:
        """Send the records that wait, if any (before an MCP call, and when the session ends)."""
        pending = self.take()
        if pending:
            await self.port("record", {"records": pending}, None)


def _model_data(index: int, digest: str, response: LlmResponse, duration_s: float) -> dict[str, Any]:
    usage = response.usage_metadata
    return {"index": index, "request": digest,
            "response": response.model_dump(mode="json", exclude_none=True),
            "prompt_tokens": int(getattr(usage, "prompt_token_count", 0) or 0) if usage else 0,
            "response_tokens": int(getattr(usage, "candidates_token_count", 0) or 0) if usage else 0,
            "duration_s": round(duration_s, 6)}


def _tokens(response: LlmResponse) -> int:
    usage = response.usage_metadata
    return int(getattr(usage, "total_token_count", 0) or 0) if usage else 0


def _as_answer(result: Any) -> dict[str, Any]:
    return result if isinstance(result, dict) else {"result": result}
