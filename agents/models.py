"""The agent's model: from an SOP's ``agent.model`` name to an ADK ``BaseLlm``, rate limited.

Names: ``offline`` (the deterministic model, no network), ``gemini-…``
(google-genai), ``litellm:<provider>/<model>`` (any LiteLLM model; the
``litellm`` extra), or a model registered under the registry kind ``model``.

Every networked model is wrapped in :class:`LimitedModel`, the one retry layer:
it waits for the shared per-provider limiter before each call and, on a 429 or
5xx, backs off (honouring ``Retry-After``) and tries again a bounded number of
times. The SDKs' own retries are off, so a failing call costs exactly as many
HTTP requests as :class:`LimitedModel` makes attempts.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import time
from collections.abc import AsyncGenerator
from typing import Any

from google.adk.models import BaseLlm
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from google.genai import types
from pydantic import Field

from agents.ratelimit import Limiter
from runtime.registry import Registry, RegistryError
from sop.errors import SopflowError
from sop.model import AgentSpec

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
"""HTTP answers worth another attempt: rate limits, overload and server faults."""

LITELLM_PREFIX = "litellm:"
INSTALL_LITELLM = "pip install 'sopflow[litellm]'"


class ModelError(SopflowError):
    """A model could not be built or called. ``transient``: trying again later may succeed."""

    transient = False


class ModelNotFound(ModelError):
    """``agent.model`` names no model sopflow knows (nor a registered one)."""


class ModelKeyMissing(ModelError):
    """The model needs an API key and none was given or found in its SDK's environment variables."""


class ModelUnavailable(ModelError):
    """The provider kept answering 429/5xx until the attempts were used up."""

    transient = True

    def __init__(self, message: str, *, status: int | None = None, attempts: int = 0) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts

    def __reduce__(self) -> tuple:  # survive pickling across Ray with its fields
        return (_unavailable, (str(self), self.status, self.attempts))


def _unavailable(message: str, status: int | None, attempts: int) -> ModelUnavailable:
    return ModelUnavailable(message, status=status, attempts=attempts)


class ModelRequestRefused(ModelError):
    """The provider refused the request (a 4xx other than 408/429: bad key, bad model, bad input)."""


def build_model(settings: AgentSpec, *, api_key: str | None, limiter: Limiter | None,
                registry: Registry | None = None, **limited: Any) -> BaseLlm:
    """The ``BaseLlm`` for an SOP's ``agent:`` block.

    Args:
        settings: The agent block (model name, base URL, temperature, max tokens).
        api_key: The key, already resolved from a secret input or the environment by the
            caller; None lets the SDK find its own (e.g. ``$GOOGLE_API_KEY``).
        limiter: The shared rate limiter; None: no limits (retries still happen).
        registry: Where registered models are looked up (default: entry points only).
        **limited: Overrides of :class:`LimitedModel` fields (``max_attempts``, ``sleep``...).

    Raises:
        ModelNotFound: the name is none of the known forms, or litellm is not installed.
        ModelKeyMissing: a Gemini model with no key given and none in the environment.
    """
    name = settings.model.strip()
    if name == "offline":
        from agents.offline import OfflineModel  # the lead's module; imported only when used

        return OfflineModel()
    if name.startswith(LITELLM_PREFIX):
        inner, provider = _litellm(name, settings, api_key), _litellm_provider(name)
    elif (registration := _registered(name, registry)) is not None:
        inner, provider = _build_registered(name, registration.load(), settings, api_key), name
    elif name.startswith("gemini-"):
        inner, provider = _gemini(name, settings, api_key), "gemini"
    else:
        known = (registry or Registry()).names("model")
        raise ModelNotFound(
            f"unknown model {name!r}: use 'offline', 'gemini-<model>' (e.g. gemini-2.5-flash), "
            f"'litellm:<provider>/<model>' (e.g. litellm:openai/gpt-4o-mini) or a registered model"
            + (f" ({', '.join(known)})" if known else " (none is registered)"))
    return LimitedModel(inner=inner, provider=provider, limiter=limiter, temperature=settings.temperature,
                        max_tokens=settings.max_tokens, secrets=(api_key,) if api_key else (), **limited)


def _litellm_provider(name: str) -> str:
    route = name[len(LITELLM_PREFIX):]
    provider, slash, _ = route.partition("/")
    return provider if slash and provider else "litellm"


def _litellm(name: str, settings: AgentSpec, api_key: str | None) -> BaseLlm:
    route = name[len(LITELLM_PREFIX):].strip()
    if not route:
        raise ModelNotFound(f"model {name!r} names no LiteLLM model: write litellm:<provider>/<model>, "
                            "e.g. litellm:openai/gpt-4o-mini")
    # LiteLLM fetches a price list from GitHub on import unless told not to: no network at import.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        import litellm
        from google.adk.models.lite_llm import LiteLlm
    except ImportError:
        raise ModelNotFound(f"model {name!r} needs LiteLLM, which is not installed: {INSTALL_LITELLM}") from None
    # Our errors say what failed; LiteLLM's "Give Feedback / Get Help" banner on stdout only adds noise.
    litellm.suppress_debug_info = True
    kwargs: dict[str, Any] = {
        # One retry layer (LimitedModel): LiteLLM's own retries and the OpenAI client's
        # (max_retries, 2 by default) are both off.
        "num_retries": 0,
        "max_retries": 0,
    }
    if settings.base_url:
        kwargs["api_base"] = settings.base_url
    if api_key:
        kwargs["api_key"] = api_key  # kept in LiteLlm's private arguments: not in its repr or dumps
    return LiteLlm(model=route, **kwargs)


def _gemini(name: str, settings: AgentSpec, api_key: str | None) -> BaseLlm:
    from google.adk.models import Gemini

    vertex = os.environ.get("GOOGLE_GENAI_USE_VERTEXAI", "").strip().lower() in ("1", "true", "yes")
    if not (api_key or vertex or os.environ.get("GOOGLE_API_KEY") or os.environ.get("GEMINI_API_KEY")):
        # Said now, not as a stack trace from inside the SDK at the first model call.
        raise ModelKeyMissing(f"model {name!r} needs an API key: give the agent block api_key_input (a secret "
                              "input) or api_key_env (an environment variable), or set $GOOGLE_API_KEY where "
                              "agents run ($GOOGLE_GENAI_USE_VERTEXAI=true for Vertex AI)")
    # retry_options=None: google-genai then makes exactly one attempt per call (it retries
    # only when given HttpRetryOptions); the key goes to the client, which never prints it.
    return Gemini(model=name, retry_options=None, base_url=settings.base_url,
                  client_kwargs={"api_key": api_key} if api_key else None)


def _registered(name: str, registry: Registry | None) -> Any:
    if ":" in name:
        return None
    try:
        return (registry or Registry()).lookup("model", name)
    except RegistryError:
        return None


def _build_registered(name: str, impl: Any, settings: AgentSpec, api_key: str | None) -> BaseLlm:
    if isinstance(impl, type) and issubclass(impl, BaseLlm):
        model = impl(model=name)
    elif callable(impl):
        model = impl(settings, api_key)
    else:
        model = impl
    if not isinstance(model, BaseLlm):
        raise ModelNotFound(f"the model registered as {name!r} gave {type(model).__name__}, not a "
                            "google.adk.models.BaseLlm: register a BaseLlm subclass or a factory "
                            "(spec, api_key) -> BaseLlm")
    return model


class LimitedModel(BaseLlm):
    """Another ``BaseLlm`` behind the rate limiter, with the one retry layer of model calls.

    Before each attempt it acquires from the limiter (one request, estimated tokens);
    after it, it reports the tokens the response's usage metadata counts. On a 429 or
    5xx it tells every user of the provider to back off for ``Retry-After`` seconds
    (capped at ``max_retry_after_s``; ``backoff_s`` when the answer gives none) and
    tries again, at most ``max_attempts`` times in all, then raises
    :class:`ModelUnavailable`. A response already partly streamed is never retried.

    Attributes:
        inner: The model that does the calls (its SDK's own retries off).
        provider: What limits apply to (``openai``, ``gemini``, a registered name).
        limiter: The shared limiter, or None.
        temperature: Sampling temperature set on requests that set none.
        max_tokens: Most tokens of one response, set on requests that set none.
        max_attempts: Attempts per call, the first included.
        max_retry_after_s: The longest ``Retry-After`` honoured.
        backoff_s: Waits before the 2nd, 3rd ... attempt when the answer says nothing.
        sleep: Awaitable sleep (injectable: tests do not wait).
        secrets: Text (the API key) never to repeat in an error message.
    """

    inner: BaseLlm
    provider: str
    limiter: Any = Field(default=None, exclude=True, repr=False)
    temperature: float | None = None
    max_tokens: int | None = None
    max_attempts: int = Field(default=5, ge=1)
    max_retry_after_s: float = Field(default=60.0, ge=0)
    backoff_s: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    sleep: Any = Field(default=asyncio.sleep, exclude=True, repr=False)
    secrets: tuple[str, ...] = Field(default=(), exclude=True, repr=False)

    def __init__(self, **data: Any) -> None:
        data.setdefault("model", data["inner"].model)
        super().__init__(**data)

    @property
    def capabilities(self) -> Any:
        return self.inner.capabilities

    async def generate_content_async(self, llm_request: LlmRequest,
                                     stream: bool = False) -> AsyncGenerator[LlmResponse, None]:
        self._apply_defaults(llm_request)
        estimate = estimate_tokens(llm_request)
        for attempt in range(1, self.max_attempts + 1):
            if self.limiter is not None:
                await self.limiter.acquire(self.provider, estimate)
            yielded, used, reported = False, 0, False
            try:
                async for response in self.inner.generate_content_async(llm_request, stream):
                    used = _tokens_of(response) or used
                    yielded = True
                    yield response
            except Exception as e:  # noqa: BLE001 - sorted below: ours to retry, or the caller's
                reported = self._report(used)
                status = http_status(e)
                if yielded or status not in RETRYABLE_STATUS:
                    raise self._refused(e, status) from None
                if attempt == self.max_attempts:
                    raise ModelUnavailable(
                        f"model {self.model!r} ({self.provider}) still answered {status} after {attempt} "
                        f"attempts: {self._describe(e)}; try again later, or raise its rate limits",
                        status=status, attempts=attempt) from None
                wait = self._wait(e, attempt)
                if status in (429, 503) and self.limiter is not None:
                    self.limiter.backoff(self.provider, wait)  # everyone backs off, not just this call
                log.info("model %s answered %s (attempt %d of %d); next attempt in %.3g s",
                         self.model, status, attempt, self.max_attempts, wait)
                await self.sleep(wait)
                continue
            finally:
                # Also when the caller stops reading early (GeneratorExit): every booking gets its
                # report, or the limiter would pair later reports with the wrong bookings.
                if not reported:
                    self._report(used)
            return

    def _report(self, used: int) -> bool:
        if self.limiter is not None:
            self.limiter.report(self.provider, used)
        return True

    def _apply_defaults(self, llm_request: LlmRequest) -> None:
        if llm_request.config is None:
            llm_request.config = types.GenerateContentConfig()
        config = llm_request.config
        if self.temperature is not None and config.temperature is None:
            config.temperature = self.temperature
        if self.max_tokens is not None and config.max_output_tokens is None:
            config.max_output_tokens = self.max_tokens

    def _wait(self, error: BaseException, attempt: int) -> float:
        after = retry_after(error)
        if after is not None:
            return min(after, self.max_retry_after_s)
        if not self.backoff_s:
            return 0.0
        return min(self.backoff_s[min(attempt, len(self.backoff_s)) - 1], self.max_retry_after_s)

    def _describe(self, error: BaseException) -> str:
        text = f"{type(error).__name__}: {str(error).strip()[:300]}"
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def _refused(self, error: BaseException, status: int | None) -> ModelError:
        if isinstance(error, ModelError):
            return error
        if status is None:
            return ModelError(f"model {self.model!r} failed: {self._describe(error)}")
        return ModelRequestRefused(f"model {self.model!r} ({self.provider}) refused the request with {status}: "
                                   f"{self._describe(error)}; check the model name, its API key and base_url")


def http_status(error: BaseException) -> int | None:
    """The HTTP status of an SDK error (LiteLLM/OpenAI ``status_code``, google-genai ``code``), if any."""
    seen = 0
    current: BaseException | None = error
    while current is not None and seen < 5:
        for attr in ("status_code", "code"):
            value = getattr(current, attr, None)
            if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
                return value
        current, seen = current.__cause__ or current.__context__, seen + 1
    return None


def retry_after(error: BaseException, *, now: float | None = None) -> float | None:
    """Seconds the answer's ``Retry-After`` header asks for (a number or an HTTP date), if it has one."""
    current: BaseException | None = error
    for _ in range(5):
        if current is None:
            break
        for headers in (getattr(current, "litellm_response_headers", None),
                        getattr(getattr(current, "response", None), "headers", None)):
            value = _header(headers, "retry-after")
            if value is not None:
                return _parse_retry_after(value, now)
        current = current.__cause__ or current.__context__
    return None


def _header(headers: Any, name: str) -> str | None:
    if headers is None:
        return None
    try:
        value = headers.get(name)
        if value is None and hasattr(headers, "items"):
            value = next((v for k, v in headers.items() if str(k).lower() == name), None)
    except Exception:  # noqa: BLE001 - an odd headers object is no Retry-After
        return None
    return None if value is None else str(value)


def _parse_retry_after(value: str, now: float | None) -> float | None:
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def estimate_tokens(llm_request: LlmRequest) -> int:
    """A rough token count of a request (4 characters a token) plus the response's cap, for booking."""
    chars = 0
    for content in llm_request.contents or ():
        for part in content.parts or ():
            if part.text:
                chars += len(part.text)
            elif part.function_call is not None:
                chars += len(str(part.function_call.args or "")) + len(part.function_call.name or "")
            elif part.function_response is not None:
                chars += len(str(part.function_response.response or ""))
    config = llm_request.config
    if config is not None and isinstance(config.system_instruction, str):
        chars += len(config.system_instruction)
    cap = config.max_output_tokens if config is not None and config.max_output_tokens else 0
    return chars // 4 + cap


def _tokens_of(response: LlmResponse) -> int:
    usage = response.usage_metadata
    if usage is None:
        return 0
    if usage.total_token_count:
        return usage.total_token_count
    return (usage.prompt_token_count or 0) + (usage.candidates_token_count or 0)
