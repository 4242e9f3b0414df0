"""One agent session: the ADK agent for one execution, run to its end on an agent host.

The session builds the agent from its :class:`agents.context.AgentContext` (the
SOP rendered as its instruction, its tools, its model and settings), runs it with
ADK's ``Runner`` and the recorder plugin (:mod:`agents.recording`), and keeps a
heartbeat going to the engine. It ends when the agent finished (it reported its
result through ``finish``) or failed; the engine hears of both through the driver.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from google.adk.agents import LlmAgent
from google.adk.agents.run_config import RunConfig
from google.adk.apps import App
from google.adk.models.base_llm import BaseLlm
from google.adk.platform import uuid as platform_uuid
from google.adk.runners import Runner
from google.adk.sessions import InMemorySessionService
from google.adk.tools.base_tool import BaseTool
from google.genai import types
from opentelemetry import context as otel_context
from opentelemetry.propagate import extract

from agents.context import AgentContext
from agents.instruction import render_instruction
from agents.recording import SessionRecorder
from agents.tools import EnginePort, engine_tools
from runtime.seams import AgentSessionSpec
from runtime.telemetry import tracer

log = logging.getLogger("sopflow.agents")

KICKOFF = "Run the SOP now, following the rules in your instruction."
"""The user message that starts every session (fixed: a resumed session must ask the same)."""


def build_agent(ctx: AgentContext, model: BaseLlm, tools: list[BaseTool]) -> LlmAgent:
    """The ADK agent for ``ctx``: exactly its model, settings and tools (property 2)."""
    settings = ctx.settings
    config = types.GenerateContentConfig(temperature=settings.temperature, max_output_tokens=settings.max_tokens)
    text = render_instruction(ctx)
    return LlmAgent(
        name="sopflow_agent", model=model, description=f"Runs SOP {ctx.sop.sop}",
        instruction=lambda _: text,  # a callable: ADK does not template it (the plan holds braces)
        tools=tools, generate_content_config=config)


async def run_session(spec: AgentSessionSpec, port: EnginePort, *, model: BaseLlm,
                      mcp_tools: Callable[[AgentContext], Awaitable[list[BaseTool]]] | None = None,
                      idempotent: Callable[[str], bool] = lambda name: False,
                      heartbeat_s: float = 30.0) -> dict[str, Any]:
    """Run one session to its end; returns what it did (calls made and replayed).

    Raises:
        Exception: the session failed (its model failed, the token budget ran out, an offline
            replay diverged ...); the engine fails the run with the message.
    """
    await port("status", {"message": f"session {spec.session} started"}, None)  # its first word: it is alive
    ctx = AgentContext.from_spec(spec)
    recorder = SessionRecorder(port, spec.records, replay=spec.replay, idempotent=idempotent,
                               token_budget=ctx.settings.token_budget)

    async def engine(op: str, args: dict[str, Any], call: int | None) -> Any:
        records = recorder.take()  # the model answers that led to this call go first, in the same trip
        return await port(op, {**args, "records": records} if records else args, call)

    tools = engine_tools(ctx, engine, recorder) + (await mcp_tools(ctx) if mcp_tools is not None and ctx.tools else [])
    app = App(name="sopflow", root_agent=build_agent(ctx, model, tools), plugins=[recorder])
    runner = Runner(app=app, session_service=InMemorySessionService(), auto_create_session=True)
    counter = itertools.count(1)
    # ids ADK makes up (events, function calls) count up per session: a resumed or replayed session
    # makes the same ones (a context variable: other sessions on this host keep their own)
    platform_uuid.set_id_provider(lambda: f"sopflow-{spec.session}-{next(counter):06d}")
    beat = asyncio.create_task(_heartbeat(engine, recorder, heartbeat_s), name=f"heartbeat {spec.execution_id}")
    parent = otel_context.attach(extract(spec.trace or {}))
    try:
        with tracer().start_as_current_span(f"agent session {spec.session}", attributes={
                "sopflow.execution_id": spec.execution_id, "sopflow.agent": ctx.agent_id,
                "sopflow.session": spec.session, "gen_ai.request.model": ctx.settings.model}):
            message = types.Content(role="user", parts=[types.Part(text=KICKOFF)])
            async for _ in runner.run_async(user_id="sopflow", session_id=f"{spec.execution_id}-{spec.session}",
                                            new_message=message,
                                            run_config=RunConfig(max_llm_calls=ctx.settings.max_model_calls)):
                pass
        await recorder.flush()  # the last answer, if no call to the engine followed it
    finally:
        otel_context.detach(parent)
        beat.cancel()
        await runner.close()
    return {"model_calls": recorder.model_index, "tool_calls": recorder.tool_index, "replayed": recorder.replayed,
            "tokens": recorder.tokens}


async def _heartbeat(port: EnginePort, recorder: SessionRecorder, every_s: float) -> None:
    """Tell the engine the session lives, with what it is doing, every ``every_s`` seconds."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await port("status", {"message": recorder.activity}, None)
        except Exception:  # noqa: BLE001 - the session itself finds out if the engine is gone
            log.debug("a heartbeat did not reach the engine", exc_info=True)
