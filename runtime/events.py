"""The events every execution is made of. State is a fold over them (see :mod:`runtime.state`).

An :class:`Event` is the envelope the log stores: which execution, its position,
its kind, when, which step and attempt, and the kind's payload as JSON-like
data. Each kind's payload is a class below (:class:`StepSucceeded` ...) with
its fields and what they mean; the coordinator builds events from them
(:func:`new_event`) and the fold reads them back (:meth:`Event.payload`).

Payloads are versioned (:data:`EVENT_SCHEMA`). An event written by an older
sopflow is upcast when it is read (:func:`upcast`), so stored logs and saved
histories keep loading; unknown fields (from a newer writer) are ignored.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

from runtime._pickle import positional_pickle


class EventKind(StrEnum):
    SUBMITTED = "execution_submitted"
    STARTED = "execution_started"
    STEP_QUEUED = "step_queued"
    """An attempt is ready but waits for a run slot (``max_running_steps``); not running yet."""
    STEP_STARTED = "step_started"
    """An attempt got its run slot and was launched into Ray (``data["inputs"]``: their digest)."""
    STEP_PROGRESS = "step_progress"
    """A running attempt reported how far it is (``context.report_progress``)."""
    STEP_SUCCEEDED = "step_succeeded"
    STEP_FAILED = "step_failed"
    RETRY_SCHEDULED = "retry_scheduled"
    STEP_SKIPPED = "step_skipped"
    STEP_HALTED = "step_halted"
    STEP_CANCELLED = "step_cancelled"
    ESCALATED = "escalated"
    STEPS_ADDED = "steps_added"
    PAUSED = "execution_paused"
    RESUMED = "execution_resumed"
    CANCEL_REQUESTED = "cancel_requested"
    ROLLBACK_STARTED = "rollback_started"
    CHILD_SUBMITTED = "child_submitted"
    """A ``sop:`` step started its sub-SOP as the child execution ``data["child"]``."""
    RECOVERED = "execution_recovered"
    """A restarted coordinator rebuilt the execution from the log and resumed it."""
    ATTEMPT_INTERRUPTED = "attempt_interrupted"
    """An attempt was running when the coordinator stopped; its outcome is unknown."""
    DECISION_REQUIRED = "decision_required"
    """An interrupted attempt of a non-idempotent step waits for an operator's decision."""
    DECIDED = "operator_decided"
    """An operator settled a step awaiting decision: rerun, succeed, fail or skip."""
    ALERTED = "alert_raised"
    """An alert rule fired: the execution runs too long, or a step waits too long (``data["rule"]``)."""
    FINISHED = "execution_finished"
    DATA_ACCESSED = "data_accessed"
    """A step or an agent read or wrote data through an MCP server (one tool call); changes no state."""
    AGENT_STARTED = "agent_started"
    """An agent session (Agent Centric Run) started on a host, or started again after its host was lost."""
    MODEL_CALLED = "model_called"
    """The agent's model answered one request (recorded for resumption and replay)."""
    TOOL_STARTED = "tool_started"
    """The agent is about to call an MCP tool that is not idempotent (so an interruption is visible)."""
    TOOL_CALLED = "tool_called"
    """One MCP tool call of the agent ended (recorded for resumption and replay)."""
    AGENT_DECIDED = "agent_decided"
    """The agent decided something about a step, with its rationale."""
    AGENT_STATUS = "agent_status"
    """The agent reported its status (at every decision and at least every heartbeat)."""
    AGENT_LOST = "agent_lost"
    """The agent session stopped answering or its host died; it is started again from its recording."""
    AGENT_REPORTED = "agent_reported"
    """The agent finished and reported its result to the engine."""
    WAITING = "execution_waiting"
    """The execution waits at the start gate: its batch window, its packing slot, or its SOP's
    ``max_concurrent`` (``data["reason"]``, ``data["until"]``)."""
    PREEMPTED = "execution_preempted"
    """A batch execution's running attempts were stopped to make room for real-time work; it is
    queued again and resumes from the log as after a crash (not a failure)."""


EVENT_SCHEMA = 2
"""The payload schema this sopflow writes. 1: sopflow <= 0.3, payloads without a version."""


@positional_pickle
@dataclass(frozen=True, slots=True)
class Event:
    """One transition of one execution.

    Attributes:
        execution_id: The execution it belongs to.
        seq: Position in that execution's history, from 1, without gaps.
        kind: What happened.
        ts: Wall-clock time (seconds since the epoch).
        step: The step it concerns, if any.
        attempt: The step attempt it concerns, if any.
        data: The kind's payload as data (see :meth:`payload` for it typed).
        schema: The payload schema it was written with (:data:`EVENT_SCHEMA`; read ones are upcast).
    """

    execution_id: str
    seq: int
    kind: EventKind
    ts: float = field(default_factory=time.time)
    step: str | None = None
    attempt: int | None = None
    data: dict[str, Any] = field(default_factory=dict)
    schema: int = EVENT_SCHEMA

    @property
    def payload(self) -> Payload:
        """The payload as its kind's class (missing fields get their defaults)."""
        return PAYLOADS[self.kind].from_data(self.data)

    def to_dict(self) -> dict[str, Any]:
        return {"execution_id": self.execution_id, "seq": self.seq, "kind": self.kind.value, "ts": self.ts,
                "step": self.step, "attempt": self.attempt, "data": self.data, "schema": self.schema}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Event:
        """An event from :meth:`to_dict`'s data (an older schema's is upcast)."""
        kind = EventKind(d["kind"])
        schema = d.get("schema", 1)
        return cls(d["execution_id"], d["seq"], kind, d["ts"], d.get("step"), d.get("attempt"),
                   upcast(kind, d.get("data") or {}, schema), max(schema, EVENT_SCHEMA))

    def describe(self) -> str:
        """One line for ``sopflow history`` / progress output."""
        who = f" {self.step}" if self.step else ""
        att = f" (attempt {self.attempt})" if self.attempt else ""
        extra = self.payload.summary()
        return f"#{self.seq} {self.kind.value}{who}{att}{': ' + extra if extra else ''}"


# -- payloads -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Payload:
    """Base of the payload classes: one per :class:`EventKind`."""

    kind: ClassVar[EventKind]

    def to_data(self) -> dict[str, Any]:
        """The payload as the log stores it: every field that is not None."""
        return {name: value for name in _NAMES_IN_ORDER[type(self)]
                if (value := getattr(self, name)) is not None}

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Payload:
        names = _NAMES[cls]
        return cls(**{k: v for k, v in data.items() if k in names})

    def summary(self) -> str:
        """The part of ``sopflow history``'s line that says what happened."""
        reason = getattr(self, "reason", None)
        return str(reason) if reason else ""


@dataclass(frozen=True, slots=True)
class Submitted(Payload):
    """An execution was submitted: everything needed to run it again (secret values masked)."""

    kind: ClassVar[EventKind] = EventKind.SUBMITTED
    sop: str = ""
    version: str = ""
    mode: str = "system_design"
    priority: int = 0
    priority_class: str = "normal"
    """critical, high, normal or low."""
    steps: list[str] = field(default_factory=list)
    """The main steps, in SOP order."""
    rollback: list[str] = field(default_factory=list)
    """The rollback steps, in SOP order."""
    inputs: dict[str, Any] = field(default_factory=dict)
    """Resolved inputs; secret ones as ``***``."""
    idempotency_key: str | None = None
    parent: str | None = None
    """The execution whose ``sop:`` step started this one."""
    source: str = ""
    """Where the SOP came from (a path, ``<string>``, ``<object>``)."""
    request: dict[str, Any] = field(default_factory=dict)
    """The request as data (the SOP definition, handler references, sub-SOPs): what replay rebuilds."""
    fingerprint: dict[str, Any] | None = None
    """What a reused idempotency key is compared with (user keys only)."""
    trace: dict[str, str] = field(default_factory=dict)
    """The W3C trace context of the execution's span."""
    submitted_by: str = ""
    """Who or what submitted it, as the client said: ``user@host`` by default, or the caller's value."""
    agent: str | None = None
    """The agent running it (Agent Centric Run), when there is one."""
    schedule: dict[str, Any] | None = None
    """A batch execution's schedule (``batch``, ``not_before``, ``deadline`` as epoch seconds, daily
    ``window``); None: real-time."""


@dataclass(frozen=True, slots=True)
class Started(Payload):
    """The execution started (right after it was submitted)."""

    kind: ClassVar[EventKind] = EventKind.STARTED


@dataclass(frozen=True, slots=True)
class StepQueued(Payload):
    """An attempt is ready but waits for a run slot; it is not running yet."""

    kind: ClassVar[EventKind] = EventKind.STEP_QUEUED
    reason: str = ""


@dataclass(frozen=True, slots=True)
class StepStarted(Payload):
    """An attempt got its run slot and was handed to its runner."""

    kind: ClassVar[EventKind] = EventKind.STEP_STARTED
    inputs: str | None = None
    """A digest of what the handler gets (arguments, command, environment; secrets masked)."""


@dataclass(frozen=True, slots=True)
class StepProgress(Payload):
    """A running attempt reported how far it is (``context.report_progress``)."""

    kind: ClassVar[EventKind] = EventKind.STEP_PROGRESS
    fraction: float | None = None
    """0.0-1.0, or None when the step says only a message."""
    message: str = ""

    def summary(self) -> str:
        done = "" if self.fraction is None else f"{self.fraction:.0%}"
        return " ".join(p for p in (done, self.message) if p)


@dataclass(frozen=True, slots=True)
class StepSucceeded(Payload):
    """An attempt succeeded."""

    kind: ClassVar[EventKind] = EventKind.STEP_SUCCEEDED
    output: Any = None
    """The output (JSON data), or the descriptor of an artifact holding it."""
    duration_s: float = 0.0
    recorded: list[list[Any]] | None = None
    """Values the handler took from its context (time, randomness, ids), for an exact replay."""
    replay_diverged: str | None = None
    logs: list[list[Any]] | None = None
    """Lines the handler wrote through ``context.logger`` and a shell step's output tail, bounded:
    ``[ts, level, source, text]`` each (see :class:`runtime.audit.LineBuffer`)."""
    cpu_s: float | None = None
    """CPU seconds the attempt used, measured where it ran (see :mod:`runtime.usage`); absent in
    events of older sopflow versions and for attempts that were not measured."""
    peak_mb: float | None = None
    """The attempt's peak resident memory in MiB (see :mod:`runtime.usage`); absent when not measured."""


@dataclass(frozen=True, slots=True)
class StepFailed(Payload):
    """An attempt failed; ``final`` says whether the step failed for good or will be retried."""

    kind: ClassVar[EventKind] = EventKind.STEP_FAILED
    error: str | None = None
    error_type: str | None = None
    classification: str | None = None
    """transient, permanent, resource, crash (or operator)."""
    final: bool = True
    action: str | None = None
    """What the failure policy decided: retry, fail or escalate."""
    reason: str | None = None
    output: Any = None
    """What a failed shell step printed, if anything."""
    recorded: list[list[Any]] | None = None
    replay_diverged: str | None = None
    logs: list[list[Any]] | None = None
    """As :attr:`StepSucceeded.logs`."""
    duration_s: float | None = None
    """How long the attempt ran, when it ran at all (absent in events of older sopflow versions)."""
    cpu_s: float | None = None
    """As :attr:`StepSucceeded.cpu_s`."""
    peak_mb: float | None = None
    """As :attr:`StepSucceeded.peak_mb`."""

    def summary(self) -> str:
        return f"[{self.classification}] {self.error}"


@dataclass(frozen=True, slots=True)
class RetryScheduled(Payload):
    """The next attempt (the event's ``attempt``) runs after a backoff."""

    kind: ClassVar[EventKind] = EventKind.RETRY_SCHEDULED
    delay_s: float = 0.0
    memory_mb: int | None = None
    """Memory for the next attempt, when an out-of-memory failure raised it."""

    def summary(self) -> str:
        return f"in {self.delay_s:.2f} s"


@dataclass(frozen=True, slots=True)
class StepSkipped(Payload):
    """A step was skipped: its condition was false, or its trigger rule said so."""

    kind: ClassVar[EventKind] = EventKind.STEP_SKIPPED
    reason: str = ""


@dataclass(frozen=True, slots=True)
class StepHalted(Payload):
    """A step will not run because a dependency failed (its status is upstream_failed)."""

    kind: ClassVar[EventKind] = EventKind.STEP_HALTED
    reason: str = ""


@dataclass(frozen=True, slots=True)
class StepCancelled(Payload):
    """A step ended cancelled (the execution was cancelled, or a rollback started)."""

    kind: ClassVar[EventKind] = EventKind.STEP_CANCELLED
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Escalated(Payload):
    """A step's retries are exhausted; escalation hooks were told."""

    kind: ClassVar[EventKind] = EventKind.ESCALATED
    reason: str = ""
    classification: str | None = None


@dataclass(frozen=True, slots=True)
class StepsAdded(Payload):
    """Steps were added to the running execution (``add_steps``)."""

    kind: ClassVar[EventKind] = EventKind.STEPS_ADDED
    steps: list[str] = field(default_factory=list)
    specs: list[dict[str, Any]] = field(default_factory=list)
    """The steps as the user gave them: recovery and replay add them again."""
    handlers: dict[str, str] = field(default_factory=dict)
    """Registered handlers they use, as importable references."""
    by: str | None = None
    """The operator who asked, as their client said (``user@host`` by default)."""


@dataclass(frozen=True, slots=True)
class Paused(Payload):
    """No new attempt starts until the execution is resumed."""

    kind: ClassVar[EventKind] = EventKind.PAUSED
    by: str | None = None
    """The operator who asked, as their client said (``user@host`` by default)."""


@dataclass(frozen=True, slots=True)
class Resumed(Payload):
    """A paused execution goes on."""

    kind: ClassVar[EventKind] = EventKind.RESUMED
    by: str | None = None
    """The operator who asked, as their client said (``user@host`` by default)."""


@dataclass(frozen=True, slots=True)
class CancelRequested(Payload):
    """Start nothing new; with ``force``, running attempts are killed."""

    kind: ClassVar[EventKind] = EventKind.CANCEL_REQUESTED
    force: bool = False
    by: str | None = None
    """The operator who asked, as their client said (``user@host`` by default)."""


@dataclass(frozen=True, slots=True)
class RollbackStarted(Payload):
    """The SOP's rollback steps run (a step asked for it, or the execution failed)."""

    kind: ClassVar[EventKind] = EventKind.ROLLBACK_STARTED
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ChildSubmitted(Payload):
    """A ``sop:`` step started its sub-SOP as the child execution ``child``."""

    kind: ClassVar[EventKind] = EventKind.CHILD_SUBMITTED
    child: str = ""

    def summary(self) -> str:
        return self.child


@dataclass(frozen=True, slots=True)
class Recovered(Payload):
    """A restarted coordinator rebuilt the execution from the log and resumed it."""

    kind: ClassVar[EventKind] = EventKind.RECOVERED
    in_flight: list[str] = field(default_factory=list)
    queued: list[str] = field(default_factory=list)
    awaiting_decision: list[str] = field(default_factory=list)
    retrying: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class AttemptInterrupted(Payload):
    """An attempt was running when the coordinator stopped; its outcome is unknown."""

    kind: ClassVar[EventKind] = EventKind.ATTEMPT_INTERRUPTED
    reason: str = ""


@dataclass(frozen=True, slots=True)
class DecisionRequired(Payload):
    """An interrupted attempt of a non-idempotent step waits for an operator's decision."""

    kind: ClassVar[EventKind] = EventKind.DECISION_REQUIRED
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Decided(Payload):
    """An operator settled a step awaiting decision."""

    kind: ClassVar[EventKind] = EventKind.DECIDED
    decision: str = ""
    """rerun, succeed, fail or skip."""
    reason: str = ""
    output: Any = None
    """The step's output, when the decision is succeed."""
    by: str | None = None
    """The operator who asked, as their client said (``user@host`` by default)."""

    def summary(self) -> str:
        return f"{self.decision} ({self.reason or 'no reason given'})"


@dataclass(frozen=True, slots=True)
class Alerted(Payload):
    """An alert rule fired (see :mod:`runtime.alerts`); the execution is flagged in its status."""

    kind: ClassVar[EventKind] = EventKind.ALERTED
    rule: str = ""
    """overdue (the execution), queued_too_long or needs_decision_too_long (the event's step)."""
    reason: str = ""
    threshold_s: float = 0.0
    """The limit that was passed (seconds)."""
    elapsed_s: float = 0.0
    """How long it had been when the check fired (seconds)."""

    def summary(self) -> str:
        return f"[{self.rule}] {self.reason}"


@dataclass(frozen=True, slots=True)
class Finished(Payload):
    """The execution ended."""

    kind: ClassVar[EventKind] = EventKind.FINISHED
    status: str = ""
    """completed, partially_completed, failed or cancelled."""
    outputs: dict[str, Any] | None = None
    """``{"outputs": the SOP's outputs, "steps": each succeeded step's output}``."""
    output_errors: dict[str, str] = field(default_factory=dict)
    """SOP outputs that could not be rendered, and why."""
    reason: str | None = None
    """Why it failed, when no step's failure says it (an agent that stopped without its report)."""

    def summary(self) -> str:
        return f"{self.status}: {self.reason}" if self.reason else self.status


@dataclass(frozen=True, slots=True)
class DataAccessed(Payload):
    """One call to an MCP server (a data access), by a step or an agent; it changes no state.

    Written by whatever makes the call (the MCP runner, the agent host); the audit log
    shows it as a ``data_access`` entry. Arguments are not kept, only their digest.
    """

    kind: ClassVar[EventKind] = EventKind.DATA_ACCESSED
    server: str = ""
    """The MCP server's name (as configured)."""
    tool: str = ""
    """The tool called (or ``resources/read`` and the like)."""
    ok: bool = True
    duration_s: float = 0.0
    arguments: str | None = None
    """A digest of the arguments (never their values: they may hold secrets)."""
    error: str | None = None
    agent: str | None = None
    """The agent that made the call, when it was an agent."""

    def summary(self) -> str:
        return f"{self.server}.{self.tool} {'ok' if self.ok else 'failed: ' + str(self.error)}"


@dataclass(frozen=True, slots=True)
class AgentStarted(Payload):
    """An agent session started (``session`` 1), or started again (2, 3 ...) after its host was lost."""

    kind: ClassVar[EventKind] = EventKind.AGENT_STARTED
    session: int = 1
    agent: str = ""
    """The agent's id: ``<sop>/<execution>``, or ``<sop>/<execution>/<step>`` for an ``agent`` step."""
    model: str = ""
    host: str = ""
    """Where the session runs (a host actor's name, or ``local``)."""
    recorded: int = 0
    """Model and tool calls replayed from the recording before the session went on live."""

    def summary(self) -> str:
        again = f" (again, {self.recorded} recorded calls replayed)" if self.session > 1 else ""
        return f"session {self.session} of {self.agent} with model {self.model} on {self.host}{again}"


@dataclass(frozen=True, slots=True)
class ModelCalled(Payload):
    """The model answered request ``index`` of the session (0-based, in order)."""

    kind: ClassVar[EventKind] = EventKind.MODEL_CALLED
    index: int = 0
    request: str = ""
    """A digest of the request (instruction, conversation, tools): replay matches calls by it."""
    response: dict[str, Any] = field(default_factory=dict)
    """The model's response (``LlmResponse`` as data), secrets masked."""
    prompt_tokens: int = 0
    response_tokens: int = 0
    duration_s: float = 0.0

    def summary(self) -> str:
        calls = [p["function_call"]["name"] for p in (self.response.get("content") or {}).get("parts") or []
                 if isinstance(p, dict) and p.get("function_call")]
        return f"call {self.index}: " + (", ".join(calls) if calls else "text")


@dataclass(frozen=True, slots=True)
class ToolStarted(Payload):
    """The agent is about to call a tool that is not idempotent: if the session is lost before
    :class:`ToolCalled`, the call may or may not have taken effect."""

    kind: ClassVar[EventKind] = EventKind.TOOL_STARTED
    index: int = 0
    tool: str = ""
    request: str = ""
    """A digest of the tool's name and arguments."""

    def summary(self) -> str:
        return f"call {self.index}: {self.tool}"


@dataclass(frozen=True, slots=True)
class ToolCalled(Payload):
    """Tool call ``index`` of the session (0-based, counting the agent's MCP tool calls) ended."""

    kind: ClassVar[EventKind] = EventKind.TOOL_CALLED
    index: int = 0
    tool: str = ""
    """The agent's name of the tool (``<source>__<tool>``)."""
    source: str | None = None
    """The data source (MCP server) as the SOP names it."""
    arguments: Any = None
    """The arguments the agent gave (secrets masked)."""
    result_bytes: int | None = None
    request: str = ""
    """A digest of the tool's name and arguments: replay matches calls by it."""
    result: Any = None
    """What the tool answered (secrets masked)."""
    ok: bool = True
    duration_s: float = 0.0

    def summary(self) -> str:
        return f"call {self.index}: {self.tool} {'ok' if self.ok else 'failed'}"


@dataclass(frozen=True, slots=True)
class AgentDecided(Payload):
    """The agent decided about a step (``run``, ``skip``, ``halt`` or its own word), and why."""

    kind: ClassVar[EventKind] = EventKind.AGENT_DECIDED
    decision: str = ""
    rationale: str = ""
    call: int | None = None
    """The session's tool call that made it (a resumed session repeating it changes nothing)."""

    def summary(self) -> str:
        return f"{self.decision}: {self.rationale}"


@dataclass(frozen=True, slots=True)
class AgentStatus(Payload):
    """What the agent says it is doing."""

    kind: ClassVar[EventKind] = EventKind.AGENT_STATUS
    message: str = ""
    progress: float | None = None
    """Fraction done (0..1), when the agent says."""

    def summary(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class AgentLost(Payload):
    """Session ``session`` was lost (its host died, or it went silent)."""

    kind: ClassVar[EventKind] = EventKind.AGENT_LOST
    session: int = 1
    reason: str = ""

    def summary(self) -> str:
        return f"session {self.session}: {self.reason}"


@dataclass(frozen=True, slots=True)
class AgentReported(Payload):
    """The agent finished and reported its result to the engine."""

    kind: ClassVar[EventKind] = EventKind.AGENT_REPORTED
    summary_text: str = ""
    """The agent's own account of the run."""
    outputs: dict[str, Any] = field(default_factory=dict)
    """The outputs the agent reported (the SOP's declared outputs are rendered by the engine)."""
    call: int | None = None

    def summary(self) -> str:
        return self.summary_text


@dataclass(frozen=True, slots=True)
class Waiting(Payload):
    """The execution waits at the start gate before its first step (or before resuming after preemption)."""

    kind: ClassVar[EventKind] = EventKind.WAITING
    reason: str = ""
    until: float | None = None
    """When it is expected to start (epoch seconds), if that is known."""


@dataclass(frozen=True, slots=True)
class Preempted(Payload):
    """A batch execution was stopped to make room for real-time work; it waits to resume."""

    kind: ClassVar[EventKind] = EventKind.PREEMPTED
    reason: str = ""
    by: str | None = None
    """The execution whose step needed the capacity."""
    interrupted: dict[str, int] = field(default_factory=dict)
    """Step -> the attempt that was stopped (it follows the step's ``recovery`` rule on resuming)."""


PAYLOADS: dict[EventKind, type[Payload]] = {cls.kind: cls for cls in Payload.__subclasses__()}
"""Event kind -> its payload class."""
_FIELDS = {cls: dataclasses.fields(cls) for cls in PAYLOADS.values()}
_NAMES_IN_ORDER = {cls: tuple(f.name for f in fields) for cls, fields in _FIELDS.items()}
_NAMES = {cls: frozenset(names) for cls, names in _NAMES_IN_ORDER.items()}
assert set(PAYLOADS) == set(EventKind), f"kinds without a payload: {set(EventKind) - set(PAYLOADS)}"


def new_event(execution_id: str, seq: int, payload: Payload, step: str | None = None,
              attempt: int | None = None, ts: float | None = None) -> Event:
    """The event carrying ``payload`` (its kind is the payload's)."""
    return Event(execution_id, seq, payload.kind, time.time() if ts is None else ts, step, attempt,
                 payload.to_data())


def _v1_to_v2(kind: EventKind, data: dict[str, Any]) -> dict[str, Any]:
    """Schema 1 left some fields implicit; schema 2 reads a missing field as its default, except these."""
    if kind == EventKind.STEP_FAILED and "final" not in data:
        return {**data, "final": True}  # schema 1 wrote no "final" on a failure that was never retried
    return data


_UPCASTERS: dict[int, Callable[[EventKind, dict[str, Any]], dict[str, Any]]] = {1: _v1_to_v2}
"""Schema N -> a function turning a schema-N payload into a schema-(N+1) one."""


def upcast(kind: EventKind, data: dict[str, Any], schema: int) -> dict[str, Any]:
    """``data`` of an event written with ``schema``, as this sopflow's schema has it.

    Raises:
        ValueError: the schema is newer than this sopflow's, or not a positive integer.
    """
    if not isinstance(schema, int) or schema < 1:
        raise ValueError(f"event schema must be a positive integer, got {schema!r}")
    if schema > EVENT_SCHEMA:
        raise ValueError(f"event schema {schema} is newer than this sopflow's {EVENT_SCHEMA}; upgrade sopflow")
    while schema < EVENT_SCHEMA:
        data, schema = _UPCASTERS[schema](kind, data), schema + 1
    return data
