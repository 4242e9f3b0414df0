"""The whole LiteLLM path against a real local OpenAI-compatible HTTP server, driven by ADK's Runner."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest
from google.adk.agents import LlmAgent
from google.adk.runners import Runner
from google.adk.sessions import InMemorySessionService
from google.genai import types

from agents.models import LimitedModel, ModelNotFound, ModelRequestRefused, ModelUnavailable, build_model
from agents.ratelimit import LocalLimiter
from sop.model import AgentSpec
from tests.agents import fake_openai as fo

pytest.importorskip("litellm")  # the `litellm` extra; the `test` extra installs it

KEY = "sk-test-0123456789abcdef"


class Sleeps:
    """An injectable sleep that records what it was asked to wait, and does not wait."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def spec(server: fo.FakeOpenAI, **fields: Any) -> AgentSpec:
    return AgentSpec(model="litellm:openai/fake", base_url=server.url, **fields)


async def run_agent(model: Any, tools: list, prompt: str = "add 2 and 3") -> list:
    agent = LlmAgent(name="adder", model=model, instruction="Use the tools, then answer.", tools=tools)
    runner = Runner(app_name="models-test", agent=agent, session_service=InMemorySessionService(),
                    auto_create_session=True)
    events = []
    try:
        async for event in runner.run_async(user_id="u", session_id="s", new_message=types.Content(
                role="user", parts=[types.Part(text=prompt)])):
            events.append(event)
    finally:
        await runner.close()
    return events


def final_text(events: list) -> str:
    return "".join(p.text or "" for e in events if e.content for p in e.content.parts or ())


def test_scripted_tool_call_runs_the_tool_and_the_final_text_arrives() -> None:
    calls: list[tuple[int, int]] = []

    def add(a: int, b: int) -> int:
        """Add two whole numbers."""
        calls.append((a, b))
        return a + b

    with fo.serve() as server:
        server.push(fo.tool_call("add", {"a": 2, "b": 3}), fo.text("the sum is 5"))
        model = build_model(spec(server), api_key=KEY, limiter=None)
        events = asyncio.run(run_agent(model, [add]))
        assert calls == [(2, 3)]
        assert final_text(events) == "the sum is 5"
        assert server.count == 2
        # The tool's result went back to the model as a tool message of the same call id.
        second = server.requests[1].body["messages"]
        assert any(m.get("role") == "tool" and m.get("tool_call_id") == "call_1" and "5" in str(m.get("content"))
                   for m in second)
        assert server.requests[0].body["tools"][0]["function"]["name"] == "add"
        assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in server.requests)


def test_temperature_and_max_tokens_from_the_agent_block_reach_the_request_body() -> None:
    with fo.serve() as server:
        server.push(fo.text("ok"))
        model = build_model(spec(server, temperature=0.25, max_tokens=77), api_key=KEY, limiter=None)
        asyncio.run(run_agent(model, []))
        body = server.requests[0].body
        assert body["temperature"] == 0.25
        assert body.get("max_completion_tokens", body.get("max_tokens")) == 77
        assert body.get("stream") in (None, False)  # ADK calls non-streaming unless asked


def test_a_429_storm_is_survived_honouring_retry_after_with_one_request_per_attempt() -> None:
    sleeps = Sleeps()
    with fo.serve() as server:
        server.push(fo.error(429, retry_after="1"), fo.error(429, retry_after="0"), fo.error(429, retry_after="3"),
                    fo.text("made it"))
        model = build_model(spec(server), api_key=KEY, limiter=None, sleep=sleeps, max_attempts=5)
        events = asyncio.run(run_agent(model, []))
        assert final_text(events) == "made it"
        # ONE retry layer: 3 refused attempts + 1 good one = exactly 4 HTTP requests (no SDK retries).
        assert server.count == 4
        assert sleeps.waits == [1.0, 0.0, 3.0]


def test_retry_after_is_capped_and_absent_retry_after_backs_off_1_2_4_8() -> None:
    sleeps = Sleeps()
    with fo.serve() as server:
        server.push(fo.error(429, retry_after="3600"), fo.error(503), fo.error(503), fo.error(503), fo.error(503),
                    fo.text("done"))
        model = build_model(spec(server), api_key=KEY, limiter=None, sleep=sleeps, max_attempts=6,
                            max_retry_after_s=60)
        assert final_text(asyncio.run(run_agent(model, []))) == "done"
        assert server.count == 6
        assert sleeps.waits == [60.0, 2.0, 4.0, 8.0, 8.0]


@pytest.mark.parametrize(("status", "attempts"), [(500, 3), (429, 3), (503, 1)])
def test_a_persistent_error_fails_with_a_clear_error_after_n_attempts(status: int, attempts: int) -> None:
    sleeps = Sleeps()
    with fo.serve() as server:
        server.push(*[fo.error(status, retry_after="0") for _ in range(10)])
        model = build_model(spec(server), api_key=KEY, limiter=None, sleep=sleeps, max_attempts=attempts)
        with pytest.raises(ModelUnavailable) as info:
            asyncio.run(run_agent(model, []))
        assert server.count == attempts  # one HTTP request per attempt: the SDK retried none
        assert info.value.attempts == attempts and info.value.status == status and info.value.transient
        assert f"{status} after {attempts} attempts" in str(info.value) and "openai/fake" in str(info.value)
        assert len(sleeps.waits) == attempts - 1


def test_a_refused_request_is_not_retried() -> None:
    with fo.serve() as server:
        server.push(fo.error(401), fo.text("never"))
        model = build_model(spec(server), api_key=KEY, limiter=None, sleep=Sleeps())
        with pytest.raises(ModelRequestRefused) as info:
            asyncio.run(run_agent(model, []))
        assert server.count == 1
        assert "401" in str(info.value) and KEY not in str(info.value)


def test_a_429_makes_every_user_of_the_provider_back_off_through_the_limiter() -> None:
    now = [0.0]

    class Clocked(Sleeps):  # waiting moves the limiter's clock on: no real time passes
        async def __call__(self, seconds: float) -> None:
            self.waits.append(seconds)
            now[0] += seconds

    limiter_sleeps, model_sleeps = Clocked(), Clocked()
    limiter = LocalLimiter({"openai": (100, 0)}, clock=lambda: now[0], sleep=limiter_sleeps)
    with fo.serve() as server:
        server.push(fo.error(429, retry_after="7"), fo.text("ok"))
        model = build_model(spec(server), api_key=KEY, limiter=limiter, sleep=model_sleeps)
        asyncio.run(run_agent(model, []))
        assert server.count == 2 and model_sleeps.waits == [7.0]
        # The tokens the responses reported settle the bookings: 0 for the refused call, 15 for the answer.
        assert [t for _, t in limiter.limiter.window("openai")] == [0, 15]
    # Another caller of the same provider, within the 429's Retry-After, waits for the rest of it.
    limiter.backoff("openai", 5.0)
    now[0] += 2.0
    asyncio.run(limiter.acquire("openai", 10))
    assert limiter_sleeps.waits[-1] == pytest.approx(3.0)


def test_missing_litellm_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    # As if the package were not installed: importing it raises ImportError.
    monkeypatch.setitem(sys.modules, "litellm", None)
    with pytest.raises(ModelNotFound, match=r"pip install 'sopflow\[litellm\]'"):
        build_model(AgentSpec(model="litellm:openai/gpt-4o-mini"), api_key=None, limiter=None)


def test_the_wrapper_is_the_only_retry_layer_it_builds() -> None:
    model = build_model(AgentSpec(model="litellm:openai/x", base_url="http://127.0.0.1:9/v1"),
                        api_key=KEY, limiter=None)
    assert isinstance(model, LimitedModel) and model.provider == "openai"
    args = model.inner._additional_args
    assert args["num_retries"] == 0 and args["max_retries"] == 0
