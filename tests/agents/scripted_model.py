"""A scripted model for agent step tests: a real ADK ``BaseLlm`` whose moves follow its goal's text.

Registered in a test's registry (``registry.register("model", "scripted", {}, ScriptedModel)``):

- a goal with ``GIVE UP`` answers text and never calls ``finish`` (the agent stops without a result);
- a goal with ``HOLD`` never answers (a session that runs until it is cancelled);
- a goal ``WAIT FOR <path>`` answers once that file exists, then as any other goal;
- a goal ``CALL <tool> <json arguments>`` calls that (MCP) tool, then finishes with its answer as outputs;
- any other goal calls ``finish`` with ``{"answer": 42, "goal": <the goal as the agent read it>}``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncGenerator

from google.adk.models.base_llm import BaseLlm
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from google.genai import types

GOAL = "Your goal: "


class ScriptedModel(BaseLlm):
    """See the module docstring."""

    model: str = "scripted"

    async def generate_content_async(self, llm_request: LlmRequest,
                                     stream: bool = False) -> AsyncGenerator[LlmResponse, None]:
        goal = _goal(llm_request)
        finished = any(p.function_response is not None and p.function_response.name == "finish"
                       for c in llm_request.contents for p in c.parts or ())
        if "HOLD" in goal:
            await asyncio.Event().wait()  # until the session is cancelled
        if goal.startswith("WAIT FOR ") and not finished:
            deadline = time.monotonic() + 120
            while not os.path.exists(goal[len("WAIT FOR "):]) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)  # a file another process makes: polled, nothing to wait on
        if goal.startswith("CALL ") and not finished:
            tool, arguments = goal[len("CALL "):].split(" ", 1)
            answers = [p.function_response.response for c in llm_request.contents for p in c.parts or ()
                       if p.function_response is not None and p.function_response.name == tool]
            call = (types.FunctionCall(name="finish", args={"summary": "called", "outputs": answers[0]}) if answers
                    else types.FunctionCall(name=tool, args=json.loads(arguments)))
            yield LlmResponse(content=types.Content(role="model", parts=[types.Part(function_call=call)]))
            return
        if finished or "GIVE UP" in goal:
            yield LlmResponse(content=types.Content(role="model", parts=[types.Part(text="I stop here.")]))
            return
        call = types.FunctionCall(name="finish", args={"summary": "scripted", "outputs": {"answer": 42, "goal": goal}})
        yield LlmResponse(content=types.Content(role="model", parts=[types.Part(function_call=call)]))


def _goal(llm_request: LlmRequest) -> str:
    si = llm_request.config.system_instruction if llm_request.config else None
    text = si if isinstance(si, str) else "".join(p.text or "" for p in getattr(si, "parts", None) or ())
    for line in text.splitlines():
        if line.startswith(GOAL):
            return line[len(GOAL):]
    return ""
