"""build_model: names, registered models, Gemini with the SDK's retries off, and API keys kept secret."""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import AsyncGenerator, Iterator

import pytest
from google.adk.models import BaseLlm
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from google.genai import types

from agents.models import (LimitedModel, ModelKeyMissing, ModelNotFound, ModelRequestRefused, ModelUnavailable, build_model,
                           http_status, retry_after)
from runtime.registry import Registry
from sop.model import AgentSpec
from tests.agents import fake_openai as fo
from tests.agents.models.test_litellm_path import Sleeps, final_text, run_agent

KEY = "sk-very-secret-key-5f1e2d3c"


class Scripted(BaseLlm):
    """A tiny scripted model: always answers with a fixed text (no per-session state)."""

    @classmethod
    def supported_models(cls) -> list[str]:
        return []

    async def generate_content_async(self, llm_request: LlmRequest,
                                     stream: bool = False) -> AsyncGenerator[LlmResponse, None]:
        yield LlmResponse(content=types.Content(role="model", parts=[types.Part(text=f"scripted by {self.model}")]))


def test_unknown_model_names_list_what_is_available() -> None:
    registry = Registry(discover=False)
    registry.register("model", "house-model", {}, Scripted)
    with pytest.raises(ModelNotFound) as info:
        build_model(AgentSpec(model="gpt-4o"), api_key=None, limiter=None, registry=registry)
    message = str(info.value)
    assert "'gpt-4o'" in message and "offline" in message and "gemini-<model>" in message
    assert "litellm:<provider>/<model>" in message and "house-model" in message
    with pytest.raises(ModelNotFound, match="none is registered"):
        build_model(AgentSpec(model="nope"), api_key=None, limiter=None, registry=Registry(discover=False))
    with pytest.raises(ModelNotFound, match="names no LiteLLM model"):
        build_model(AgentSpec(model="litellm:"), api_key=None, limiter=None)


def test_a_registered_model_class_and_factory_are_built_and_limited() -> None:
    registry = Registry(discover=False)
    registry.model("house")(Scripted)
    seen: list[tuple] = []

    @registry.model()
    def house_factory(spec: AgentSpec, api_key: str | None) -> BaseLlm:
        """A factory: gets the agent block and the key."""
        seen.append((spec.model, api_key))
        return Scripted(model="from-factory")

    assert registry.names("model") == ["house", "house-factory"]
    model = build_model(AgentSpec(model="house"), api_key=None, limiter=None, registry=registry)
    assert isinstance(model, LimitedModel) and model.provider == "house" and isinstance(model.inner, Scripted)
    assert final_text(asyncio.run(run_agent(model, []))) == "scripted by house"
    built = build_model(AgentSpec(model="house-factory"), api_key=KEY, limiter=None, registry=registry)
    assert seen == [("house-factory", KEY)] and built.inner.model == "from-factory"

    registry.register("model", "broken", {}, lambda spec, key: "not a model")
    with pytest.raises(ModelNotFound, match="not a google.adk.models.BaseLlm"):
        build_model(AgentSpec(model="broken"), api_key=None, limiter=None, registry=registry)


def test_offline_is_the_leads_offline_model() -> None:
    offline = pytest.importorskip("agents.offline")
    model = build_model(AgentSpec(), api_key=None, limiter=None)
    assert isinstance(model, offline.OfflineModel)


def test_gemini_makes_one_http_request_per_attempt_and_gets_the_key() -> None:
    """google-genai retries nothing by itself here: 2 refused attempts + 1 answer = 3 requests."""
    sleeps = Sleeps()
    with fo.serve() as server:
        server.push(fo.error(429, retry_after="0"), fo.error(503), fo.gemini_text("hello from gemini"))
        model = build_model(AgentSpec(model="gemini-2.5-flash", base_url=server.root, temperature=0.5,
                                      max_tokens=33), api_key=KEY, limiter=None, sleep=sleeps)
        assert model.inner.retry_options is None
        assert final_text(asyncio.run(run_agent(model, []))) == "hello from gemini"
        assert server.count == 3 and sleeps.waits == [0.0, 2.0]
        request = server.requests[-1]
        assert ":generateContent" in request.path and request.headers["x-goog-api-key"] == KEY
        assert request.body["generationConfig"]["temperature"] == 0.5
        assert request.body["generationConfig"]["maxOutputTokens"] == 33


def test_gemini_persistent_429_gives_up_after_n_requests() -> None:
    with fo.serve() as server:
        server.push(*[fo.error(429) for _ in range(5)])
        model = build_model(AgentSpec(model="gemini-2.5-flash", base_url=server.root), api_key=KEY,
                            limiter=None, sleep=Sleeps(), max_attempts=4)
        with pytest.raises(ModelUnavailable, match="429 after 4 attempts"):
            asyncio.run(run_agent(model, []))
        assert server.count == 4


def test_gemini_without_any_key_says_how_to_give_one(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GOOGLE_API_KEY", "GEMINI_API_KEY", "GOOGLE_GENAI_USE_VERTEXAI"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ModelKeyMissing, match="api_key_input .* or api_key_env"):
        build_model(AgentSpec(model="gemini-2.5-flash"), api_key=None, limiter=None)
    monkeypatch.setenv("GOOGLE_API_KEY", "from-env")
    assert build_model(AgentSpec(model="gemini-2.5-flash"), api_key=None, limiter=None).provider == "gemini"


@pytest.fixture
def spans() -> Iterator:
    """Every OTel span ended during the test (ADK traces through the global provider)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # set once per process; reuse one already set
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()


@pytest.fixture
def all_logs() -> Iterator[list[str]]:
    """Every log record of every logger at DEBUG, including those that do not propagate (LiteLLM's)."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Keep(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s %(args)s"))
    loggers = [logging.getLogger()] + [logging.getLogger(n) for n in list(logging.root.manager.loggerDict)]
    saved = [(lg, lg.level) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    yield lines
    for lg, level in saved:
        lg.removeHandler(handler)
        lg.setLevel(level)


@pytest.mark.parametrize("model_name", ["litellm:openai/fake", "gemini-2.5-flash"])
def test_the_api_key_is_in_no_repr_error_log_event_or_span(model_name: str, spans, all_logs, capfd) -> None:
    pytest.importorskip("litellm")
    calls: list[int] = []

    def count(n: int) -> int:
        """Count to n."""
        calls.append(n)
        return n

    with fo.serve() as server:
        base = server.url if model_name.startswith("litellm:") else server.root
        first = (fo.tool_call("count", {"n": 3}) if model_name.startswith("litellm:")
                 else fo.Reply(200, {"candidates": [{"content": {"role": "model", "parts": [
                     {"functionCall": {"name": "count", "args": {"n": 3}}}]}, "finishReason": "STOP"}]}))
        final = fo.text("three") if model_name.startswith("litellm:") else fo.gemini_text("three")
        # A 429 storm, a tool call, the answer; then a provider that echoes the key in its refusal.
        server.push(fo.error(429, retry_after="0"), first, final,
                    fo.error(401, message=f"Incorrect API key provided: {KEY}"))
        model = build_model(AgentSpec(model=model_name, base_url=base), api_key=KEY, limiter=None, sleep=Sleeps())
        events = asyncio.run(run_agent(model, [count]))
        assert calls == [3] and final_text(events) == "three"
        with pytest.raises(ModelRequestRefused) as info:
            asyncio.run(run_agent(model, [count]))
        assert all(r.headers.get("authorization", r.headers.get("x-goog-api-key", "")).endswith(KEY)
                   for r in server.requests)  # the key did reach the provider ...

    # ... and nowhere else.
    texts = [repr(model), str(model), model.model_dump_json(), repr(model.inner), str(model.inner.model_dump()),
             str(info.value), "".join(traceback.format_exception(info.value))]
    texts += [e.model_dump_json() for e in events]
    texts += all_logs
    texts += [str(dict(s.attributes or {})) + str([dict(ev.attributes or {}) for ev in s.events]) + s.name
              for s in spans.get_finished_spans()]
    out = capfd.readouterr()
    texts += [out.out, out.err]
    assert spans.get_finished_spans(), "ADK emitted no spans: the check would prove nothing"
    assert any("generate_content" in s.name or "call_llm" in s.name for s in spans.get_finished_spans())
    assert "***" in str(info.value)
    leaks = [t[:200] for t in texts if KEY in t]
    assert not leaks, leaks


def test_status_and_retry_after_are_read_from_sdk_errors() -> None:
    import httpx
    from google.genai.errors import ClientError

    response = httpx.Response(429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:10 GMT"},
                              request=httpx.Request("POST", "http://x"))
    error = ClientError(429, {"error": {"code": 429, "message": "slow down"}}, response)
    assert http_status(error) == 429
    assert retry_after(error, now=1445412480.0) == pytest.approx(10.0)  # an HTTP date, 10 s ahead
    wrapped = RuntimeError("wrapped")
    wrapped.__cause__ = error
    assert http_status(wrapped) == 429
    assert http_status(ValueError("x")) is None and retry_after(ValueError("x")) is None


class Counted(BaseLlm):
    """Answers two partial responses, the second with usage metadata (a streamed answer)."""

    @classmethod
    def supported_models(cls) -> list[str]:
        return []

    async def generate_content_async(self, llm_request: LlmRequest,
                                     stream: bool = False) -> AsyncGenerator[LlmResponse, None]:
        yield LlmResponse(content=types.Content(role="model", parts=[types.Part(text="a")]), partial=True)
        yield LlmResponse(content=types.Content(role="model", parts=[types.Part(text="b")]),
                          usage_metadata=types.GenerateContentResponseUsageMetadata(total_token_count=42))


def test_every_booking_is_reported_even_when_the_caller_stops_reading_early() -> None:
    from agents.ratelimit import LocalLimiter

    limiter = LocalLimiter({"p": (10, 1000)})
    model = LimitedModel(inner=Counted(model="c"), provider="p", limiter=limiter, max_tokens=100)

    async def read(n: int) -> None:
        stream = model.generate_content_async(LlmRequest(contents=[types.Content(
            role="user", parts=[types.Part(text="x" * 400)])]), stream=True)
        async for _ in stream:
            n -= 1
            if n == 0:
                break
        await stream.aclose()

    asyncio.run(read(2))
    asyncio.run(read(1))
    # Estimated 400/4 + 100 = 200 each; corrected to what was used: 42, then 0 (no usage seen yet).
    assert [t for _, t in limiter.limiter.window("p")] == [42, 0]
