"""The SOP as data: the pydantic models behind the YAML/JSON format.

Field names are the SOP's own words, the same in the file, the model, the
events and the dashboard. Every model forbids unknown fields, so a misspelt
``dependson`` is an error with a suggestion rather than a silently ignored key.
Step-level ``retry``/``resources`` override the SOP's ``defaults`` field by
field (see :meth:`Sop.effective_retry`).
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

NAME_PATTERN = r"^[a-z0-9][a-z0-9_.\-]*$"
STEP_ID_PATTERN = r"^[A-Za-z_][A-Za-z0-9_\-]*$"

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN, max_length=128)]
StepId = Annotated[str, StringConstraints(pattern=STEP_ID_PATTERN, max_length=128)]


class Mode(StrEnum):
    """How an SOP runs."""

    SYSTEM_DESIGN = "system_design"
    AGENT_CENTRIC = "agent_centric"
    AUTO = "auto"


class TriggerRule(StrEnum):
    """When a step with dependencies may run, given how they ended."""

    ALL_SUCCESS = "all_success"
    """Every dependency succeeded (the default)."""
    ALL_DONE = "all_done"
    """Every dependency finished, whatever its outcome."""
    ONE_SUCCESS = "one_success"
    """At least one dependency succeeded; runs once all have finished."""
    NONE_FAILED = "none_failed"
    """No dependency failed; skipped dependencies are fine."""


class OnFailure(StrEnum):
    """What a step's (final) failure does to the rest of the execution."""

    HALT = "halt"
    """Halt every transitive dependent; independent branches run on."""
    CONTINUE = "continue"
    """Treat the failure as done: dependents decide by their trigger_rule."""
    ROLLBACK = "rollback"
    """Stop starting new steps and run the SOP's rollback steps."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True,
                              use_attribute_docstrings=True)


class RetryPolicy(_Model):
    """How often and how patiently a failing step is retried."""

    max_attempts: int = Field(3, ge=1, le=100)
    """Total attempts including the first; 1 means never retry."""
    initial_delay_s: float = Field(1.0, ge=0)
    """Delay before the second attempt, in seconds."""
    backoff: float = Field(2.0, ge=1)
    """Each further delay is the previous one times this (>= 1)."""
    max_delay_s: float = Field(60.0, ge=0)
    """Upper bound on any single delay, in seconds."""
    memory_growth: float = Field(1.0, ge=1, le=16)
    """On an out-of-memory failure, the next attempt asks for memory_mb times this; 1 keeps it."""

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before ``attempt`` (2 for the first retry)."""
        if attempt <= 1:
            return 0.0
        return min(self.initial_delay_s * self.backoff ** (attempt - 2), self.max_delay_s)


class Resources(_Model):
    """What one attempt of a step needs from the node it runs on."""

    cpu: float = Field(1.0, ge=0)
    """CPU cores (fractions allowed)."""
    memory_mb: int | None = Field(None, ge=0)
    """Memory to reserve, in MiB; unset reserves none."""
    gpu: float = Field(0.0, ge=0)
    """GPUs (fractions allowed)."""
    capabilities: tuple[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.\-]+$")], ...] = ()
    """Node capabilities the step needs; nodes advertise them as Ray resources ``capability:<name>``."""
    learned: bool = False
    """Reserve what runs of this step actually used (``sopflow suggest``) instead of ``cpu`` and
    ``memory_mb``, once it has a history; never more than declared (see :mod:`runtime.estimates`)."""


class StepDefaults(_Model):
    """Settings applied to every step that does not set its own."""

    retry: RetryPolicy = RetryPolicy()
    timeout_s: float | None = Field(None, gt=0)
    """Seconds before an attempt is cancelled; unset means no limit."""
    resources: Resources = Resources()


class InputSpec(_Model):
    """One input the SOP takes when it is submitted."""

    type: Literal["string", "integer", "number", "boolean", "object", "array"] = "string"
    required: bool = False
    default: Any = None
    description: str = ""
    secret: bool = False
    """A secret input is never written to logs, events or traces."""


class DataSource(_Model):
    """An MCP server the SOP may use: a command run over stdio, or a URL (streamable HTTP)."""

    command: str | None = None
    args: tuple[str, ...] = ()
    env: dict[str, str] = Field(default_factory=dict)
    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    tools: tuple[str, ...] | None = None
    """The tools this server offers, if declared; lets validation check tool names offline."""
    idempotent_tools: tuple[str, ...] = ()
    """Tools safe to call again when a call may have reached the server (a timeout, a dropped
    connection); other tools are retried only when the call surely never arrived."""
    timeout_s: float = Field(30.0, gt=0, le=3600)
    """Seconds one tool call may take before it counts as failed."""
    connect_timeout_s: float = Field(20.0, gt=0, le=600)
    """Seconds to start the server (stdio) or reach it (HTTP) and finish the MCP handshake."""
    description: str = ""

    @model_validator(mode="after")
    def _one_transport(self) -> DataSource:
        if (self.command is None) == (self.url is None):
            raise ValueError("a data source needs exactly one of 'command' (stdio) or 'url' (HTTP)")
        if self.url is not None and not re.match(r"^https?://", self.url):
            raise ValueError(f"url must start with http:// or https://, got {self.url!r}")
        return self


class AgentSpec(_Model):
    """The ADK agent of an agent-centric run."""

    model: str = "offline"
    """``offline`` (deterministic, no network, the default), ``gemini-…`` (google-genai),
    ``litellm:<provider>/<model>`` (needs the ``litellm`` extra), or a registered model name."""
    instruction: str = ""
    """What the agent should aim for, on top of the SOP itself."""
    tools: tuple[str, ...] = ()
    """``<data source>.<tool>`` names the agent may call."""
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1)
    """The most tokens one model response may have."""
    max_model_calls: int = Field(50, ge=1, le=10000)
    """The most model calls one run may make; the run fails when it needs more."""
    token_budget: int | None = Field(None, ge=1)
    """The most tokens (prompt and response) one run may use; the run fails when it needs more."""
    base_url: str | None = None
    """An OpenAI-compatible endpoint for a ``litellm:`` model (``http://…`` or ``https://…``)."""
    api_key_input: str | None = None
    """The secret input holding the model's API key (never logged)."""
    api_key_env: str | None = None
    """The environment variable holding the model's API key, read where the agent runs."""

    @model_validator(mode="after")
    def _url_is_http(self) -> AgentSpec:
        if self.base_url is not None and not re.match(r"^https?://", self.base_url):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        return self


class Step(_Model):
    """One step of an SOP."""

    id: StepId
    """Unique within the SOP; other steps refer to it in depends_on and ${{ steps.<id> }}."""
    name: str = ""
    description: str = ""
    uses: str | None = None
    """mcp:<source>/<tool> | python:<module>:<function> | <registered handler> | shell | sop:<file>."""
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    """Arguments for the handler; strings may hold ${{ }} references."""
    run: str | None = None
    """The command line of a shell step."""
    env: dict[str, str] = Field(default_factory=dict)
    """Extra environment variables for a shell step."""
    depends_on: tuple[StepId, ...] = ()
    when: str | None = None
    """A condition; the step is skipped when it is false."""
    retry: RetryPolicy | None = None
    timeout_s: float | None = Field(None, gt=0)
    resources: Resources | None = None
    expected_duration_s: float | None = Field(None, ge=0)
    """Used for the critical path and progress estimates."""
    trigger_rule: TriggerRule = TriggerRule.ALL_SUCCESS
    on_failure: OnFailure = OnFailure.HALT
    idempotent: bool = True
    """Safe to run again after a crash; false asks an operator before re-running (see ``recovery``)."""
    recovery: Literal["ask", "rerun", "fail"] = "ask"
    """For a step that is not idempotent, when a crash interrupted its attempt: ``ask`` an operator
    (``sopflow decide``), ``rerun`` it anyway, or ``fail`` it."""

    @field_validator("depends_on", mode="before")
    @classmethod
    def _one_dependency(cls, v: Any) -> Any:
        return (v,) if isinstance(v, str) else v

    @model_validator(mode="after")
    def _shell_has_run(self) -> Step:
        if self.uses is None and self.run is None:
            raise ValueError("a step needs 'uses' (its handler) or 'run' (a shell command)")
        if self.uses == "shell" and not self.run:
            raise ValueError("a shell step needs 'run', the command line to execute")
        if self.run is not None and self.uses not in (None, "shell"):
            raise ValueError(f"'run' is only for shell steps, but this step uses {self.uses!r}")
        return self

    @property
    def handler(self) -> str:
        """The handler, with ``run:`` alone meaning ``shell``."""
        return self.uses or "shell"

    @property
    def label(self) -> str:
        return self.name or self.id


class CatchUp(StrEnum):
    """What a cron trigger does with the fire times it missed while sopflow was down."""

    SKIP = "skip"
    """Drop them; only a fire that is due now starts an execution."""
    ONCE = "once"
    """Start one execution for all of them (with the latest missed fire time)."""
    ALL = "all"
    """Start one execution per missed fire time (up to ``EngineConfig.trigger_catch_up_max``)."""


class Trigger(_Model):
    """Starts executions of the SOP on a schedule (``cron``) or when an event is emitted (``event``).

    Takes effect when the SOP is deployed (``sopflow deploy``); see :mod:`runtime.triggers`.
    """

    name: Name
    """Unique within the SOP; ``sopflow triggers pause <sop>/<name>`` refers to it."""
    cron: str | None = Field(None, max_length=200)
    """Five-field cron (minute hour day-of-month month day-of-week), read in ``timezone``."""
    timezone: str = Field("UTC", max_length=64)
    """IANA time zone the cron fields are read in (``Europe/Paris``); daylight saving follows it."""
    event: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:\-]+$", max_length=128)
    """Name of the event that fires it (``sopflow emit <event>``)."""
    filter: str | None = Field(None, max_length=4000)
    """Condition over ``trigger.payload`` (same language as ``when``); the event fires only when true."""
    inputs: dict[str, Any] = Field(default_factory=dict)
    """SOP input -> value, usually ``${{ trigger.payload.<field> }}`` or ``${{ trigger.fire_time }}``."""
    catch_up: CatchUp = CatchUp.SKIP
    """Cron only: what to do with fire times missed while sopflow was down."""
    max_concurrent: int | None = Field(None, ge=1, le=10_000)
    """At most this many executions of this trigger run at once; further fires wait (durably)."""

    @model_validator(mode="after")
    def _cron_or_event(self) -> Trigger:
        if (self.cron is None) == (self.event is None):
            raise ValueError(f"trigger {self.name!r} needs exactly one of 'cron' (a schedule) or 'event' "
                             "(an event name)")
        if self.filter is not None and self.event is None:
            raise ValueError(f"trigger {self.name!r}: 'filter' is for event triggers; a cron trigger has no "
                             "payload to filter")
        return self


PRIORITY_CLASSES = ("critical", "high", "normal", "low")
"""Priority classes, most urgent first (``runtime.config`` gives their weights)."""


class Sop(_Model):
    """A whole SOP, as loaded from one file."""

    sop: Name
    """The SOP's name: lower-case letters, digits, '-', '_' and '.'."""
    version: str = "1"
    description: str = ""
    mode: Mode = Mode.AUTO
    inputs: dict[Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")], InputSpec] = Field(
        default_factory=dict)
    defaults: StepDefaults = StepDefaults()
    data_sources: dict[Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_\-]*$")], DataSource] = (
        Field(default_factory=dict))
    agent: AgentSpec = AgentSpec()
    steps: tuple[Step, ...]
    """The procedure. Empty only in an agent-only SOP (``mode: agent_centric``), whose procedure is
    its ``agent.instruction`` (what a ``uses: agent`` step runs as its child execution)."""
    rollback: tuple[Step, ...] = ()
    outputs: dict[str, Any] = Field(default_factory=dict)
    """Result values, usually ${{ steps.<id>.output... }} references."""
    expected_duration_s: float | None = Field(None, gt=0, allow_inf_nan=False)
    """How long one execution is expected to take (seconds); running over twice that raises an alert."""
    triggers: tuple[Trigger, ...] = ()
    """Cron and event triggers that start executions once the SOP is deployed (``sopflow deploy``)."""
    priority: str | int | None = None
    """Default priority of its executions: a class (critical, high, normal, low) or a number within
    ``normal`` (higher first); a submission may say otherwise."""
    max_concurrent: int | None = Field(None, ge=1, le=1_000_000)
    """At most this many executions of this SOP run at once; further ones wait to start (None: no limit)."""

    @field_validator("priority", mode="before")
    @classmethod
    def _priority_is_a_class_or_a_whole_number(cls, v: Any) -> Any:
        if v is None or (isinstance(v, int) and not isinstance(v, bool)) or v in PRIORITY_CLASSES:
            return v
        raise ValueError(f"priority must be one of {', '.join(PRIORITY_CLASSES)} or a whole number "
                         f"(higher first, within normal); got {v!r}")

    @field_validator("steps")
    @classmethod
    def _steps_or_an_agent_instruction(cls, v: tuple[Step, ...], info: Any) -> tuple[Step, ...]:
        if v:
            return v
        if "mode" not in info.data:
            return v  # the mode is invalid: its own error says so
        mode, agent = info.data["mode"], info.data.get("agent")
        if mode != Mode.AGENT_CENTRIC:
            raise ValueError(f"steps is empty, but only an SOP with mode: agent_centric may have no steps (its "
                             f"agent follows agent.instruction); add a step, or declare mode: agent_centric "
                             f"(mode is {mode.value})")
        if agent is not None and not agent.instruction.strip():
            raise ValueError("steps is empty, so agent.instruction must say what the agent does (it is the "
                             "whole procedure); add agent.instruction, or add steps")
        return v

    @field_validator("version", mode="before")
    @classmethod
    def _version_is_text(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            return str(v)
        if isinstance(v, float):
            raise ValueError(f"version must be text; write it quoted (version: \"{v}\") so "
                             "YAML does not read it as a number")
        return v

    def step(self, step_id: str) -> Step:
        """The step (or rollback step) with this id."""
        for s in self.steps:
            if s.id == step_id:
                return s
        for s in self.rollback:
            if s.id == step_id:
                return s
        raise KeyError(step_id)

    def effective_retry(self, step: Step) -> RetryPolicy:
        """The step's retry policy: its own fields over the SOP's defaults."""
        if step.retry is None:
            return self.defaults.retry
        return self.defaults.retry.model_copy(update=step.retry.model_dump(exclude_unset=True))

    def effective_resources(self, step: Step) -> Resources:
        """The step's resources: its own fields over the SOP's defaults."""
        if step.resources is None:
            return self.defaults.resources
        return self.defaults.resources.model_copy(update=step.resources.model_dump(exclude_unset=True))

    def effective_timeout(self, step: Step) -> float | None:
        return step.timeout_s if step.timeout_s is not None else self.defaults.timeout_s

    def _repr_html_(self) -> str:
        """Notebooks show the SOP as its DAG (see :mod:`sop.svg`)."""
        from sop.svg import sop_html

        return sop_html(self)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        """HTML for notebooks, and the bare SVG for front ends and exporters that take no HTML."""
        from sop.svg import drawable, sop_html, sop_svg

        bundle = {"text/html": sop_html(self)}
        if drawable(self):
            bundle["image/svg+xml"] = sop_svg(self)
        return bundle
