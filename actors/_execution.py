"""One execution's runtime data inside the coordinator (not an actor: thousands live in one loop)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from runtime.events import Event, EventKind
from runtime.masking import redact, secret_values
from runtime.outputs import StepContextView, descriptors
from runtime.state import ExecutionState, StepState, apply
from runtime.status import StepStatus
from sop import Graph, Sop, Step
from sop.model import OnFailure


@dataclass(slots=True)
class SubmitRequest:
    """What a client sends to submit an execution (built by :class:`runtime.Engine`)."""

    sop: Sop
    inputs: dict[str, Any] = field(default_factory=dict)
    mode: str = "system_design"
    priority: int = 0
    idempotency_key: str | None = None
    handlers: dict[str, Any] = field(default_factory=dict)
    """Registered handler name -> ``module:attr`` or the callable."""
    subsops: dict[str, SubmitRequest] = field(default_factory=dict)
    """``sop:<file>`` reference -> the sub-SOP's own request (inputs filled at run time)."""
    secrets: tuple[str, ...] = ()
    """Names of secret inputs: their values never reach events, logs or traces."""
    source: str = "<string>"
    parent: str | None = None
    definition: dict[str, Any] | None = None
    """The SOP as JSON data (built by the client), logged so the run can be rebuilt and replayed."""

    def describe(self) -> dict[str, Any]:
        """Everything needed to rebuild this request from the log, minus secret values."""
        return {"definition": self.definition or sop_definition(self.sop),
                "handlers": {k: v if isinstance(v, str) else None for k, v in self.handlers.items()},
                "subsops": {k: r.describe() for k, r in self.subsops.items()},
                "secrets": list(self.secrets), "source": self.source}

    @property
    def has_callables(self) -> bool:
        """True when a handler was shipped as a callable (the log can only name importable ones)."""
        return any(not isinstance(v, str) for v in self.handlers.values()) or any(
            r.has_callables for r in self.subsops.values())


def sop_definition(sop: Sop) -> dict[str, Any]:
    """The SOP as compact JSON data that :meth:`Sop.model_validate` reads back to an equal SOP."""
    return sop.model_dump(mode="json", by_alias=True, exclude_defaults=True)


def request_from_log(submitted: dict[str, Any], inputs: dict[str, Any]) -> SubmitRequest:
    """Rebuild a request from its ``execution_submitted`` event data and the (secret-filled) inputs."""
    return _from_described(submitted["request"], inputs, submitted["mode"], submitted.get("priority", 0),
                           submitted.get("idempotency_key"), submitted.get("parent"))


def _from_described(described: dict[str, Any], inputs: dict[str, Any], mode: str = "system_design",
                    priority: int = 0, key: str | None = None, parent: str | None = None) -> SubmitRequest:
    """The inverse of :meth:`SubmitRequest.describe` (sub-SOP requests get their inputs at run time)."""
    return SubmitRequest(
        Sop.model_validate(described["definition"]), inputs, mode, priority, key,
        {k: v for k, v in described.get("handlers", {}).items() if v is not None},
        {name: _from_described(d, {}) for name, d in described.get("subsops", {}).items()},
        tuple(described.get("secrets", ())), described.get("source", "<log>"), parent, described["definition"])


@dataclass(slots=True)
class Recoverable:
    """What recovery needs beyond the folded state; snapshotted with it."""

    added: list[dict[str, Any]] = field(default_factory=list)
    """Specs of steps added while running (``add_steps``), in order."""
    memory_mb: dict[str, int] = field(default_factory=dict)
    """Memory raised for a retry after an out-of-memory failure, per step."""
    retry_due: dict[str, tuple[int, float]] = field(default_factory=dict)
    """Step -> (next attempt, wall-clock time it is due) while waiting out a backoff."""
    children: dict[str, str] = field(default_factory=dict)
    """``sop:`` step -> its child execution."""

    def to_data(self) -> dict[str, Any]:
        """As JSON data, for a snapshot (:mod:`runtime.snapshots`)."""
        return {"added": list(self.added), "memory_mb": dict(self.memory_mb),
                "retry_due": {k: [attempt, due] for k, (attempt, due) in self.retry_due.items()},
                "children": dict(self.children)}

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Recoverable:
        """The inverse of :meth:`to_data`; fields missing from an older snapshot stay empty."""
        return cls(list(data.get("added") or ()), dict(data.get("memory_mb") or {}),
                   {k: (int(v[0]), float(v[1])) for k, v in (data.get("retry_due") or {}).items()},
                   dict(data.get("children") or {}))

    def note(self, event: Event) -> None:
        kind = event.kind
        if kind == EventKind.STEPS_ADDED:
            self.added.extend(event.data.get("specs", ()))
        elif kind == EventKind.RETRY_SCHEDULED and event.step:
            self.retry_due[event.step] = (event.attempt or 1, event.ts + event.data.get("delay_s", 0.0))
            if event.data.get("memory_mb"):
                self.memory_mb[event.step] = event.data["memory_mb"]
        elif kind in (EventKind.STEP_QUEUED, EventKind.STEP_STARTED) and event.step:
            self.retry_due.pop(event.step, None)
        elif kind == EventKind.CHILD_SUBMITTED and event.step:
            self.children[event.step] = event.data["child"]


_AUX_KINDS = frozenset({EventKind.STEPS_ADDED, EventKind.RETRY_SCHEDULED, EventKind.STEP_QUEUED, EventKind.STEP_STARTED,
                        EventKind.CHILD_SUBMITTED})


@dataclass(slots=True)
class InFlight:
    attempt: int
    ref: Any = None
    span: Any = None
    task: asyncio.Task | None = None
    timer: asyncio.TimerHandle | None = None
    settled: bool = False
    """An outcome (result, error or timeout) was taken; later ones are ignored."""
    child: str | None = None
    """The child execution of a sub-SOP step."""


class Execution:
    """Runtime companions of an :class:`ExecutionState`: the SOP, graph, tasks in flight."""

    def __init__(self, execution_id: str, request: SubmitRequest) -> None:
        self.id = execution_id
        self.request = request
        self.sop: Sop = request.sop
        self.graph = Graph.from_dependencies({s.id: list(s.depends_on) for s in self.sop.steps})
        self.rollback_graph = Graph.from_dependencies(
            {s.id: list(s.depends_on) for s in self.sop.rollback})
        self.state = ExecutionState(execution_id)
        self.aux = Recoverable()
        self.since_snapshot = 0
        self.inflight: dict[str, InFlight] = {}
        self.waiting_retry: dict[str, asyncio.TimerHandle] = {}
        self.paused_retries: dict[str, int] = {}
        """Retries whose backoff ended while paused: step -> attempt, started on resume."""
        self.done = asyncio.Event()
        self.span: Any = None
        self.rollback_requested = False
        self.secret_values = secret_values(request.secrets, request.inputs)
        self.steps_by_id: dict[str, Step] = {s.id: s for s in (*self.sop.steps, *self.sop.rollback)}
        self._ctx_steps: dict[str, Any] | None = None
        self.load_artifact: Any = None
        """``sha -> bytes`` of this execution's artifacts (set by the coordinator): expressions read
        the real value of an output stored as an artifact."""
        self._tolerated: set[str] | None = None
        self._ctx_execution = {"id": execution_id, "sop": self.sop.sop, "version": self.sop.version,
                               "mode": request.mode}

    @property
    def memory_mb(self) -> dict[str, int]:
        return self.aux.memory_mb

    def fold(self, event: Event) -> None:
        """Fold an event into the state and what recovery needs (the only way either changes)."""
        apply(self.state, event)
        if event.kind in _AUX_KINDS:
            self.aux.note(event)
        self._refresh(event)

    @property
    def active_graph(self) -> Graph:
        return self.rollback_graph if self.state.rolling_back else self.graph

    @property
    def tolerated(self) -> set[str]:
        """Failed steps marked ``on_failure: continue`` (kept up to date by :meth:`fold`)."""
        if self._tolerated is None:
            self._tolerated = {sid for sid, st in self.state.steps.items() if self._tolerates(sid, st)}
        return self._tolerated

    def _tolerates(self, sid: str, st: StepState) -> bool:
        step = self.steps_by_id.get(sid)
        return st.status == StepStatus.FAILED and step is not None and step.on_failure == OnFailure.CONTINUE

    def statuses(self) -> Mapping[str, StepStatus]:
        """Every step's status, read live from the state (no copy)."""
        return _Statuses(self.state.steps)

    def expression_context(self) -> dict[str, Any]:
        """What ``${{ }}`` expressions see; the per-step part is kept up to date by :meth:`fold`."""
        if self._ctx_steps is None:
            self._ctx_steps = {sid: self._step_context(sid, st) for sid, st in self.state.steps.items()}
        return {"inputs": self.request.inputs, "steps": self._ctx_steps, "execution": self._ctx_execution}

    def _refresh(self, event: Event) -> None:
        """Keep the derived views in step with one folded event (O(1), not O(steps))."""
        if event.kind in (EventKind.SUBMITTED, EventKind.STEPS_ADDED) or event.step is None:
            if event.kind in (EventKind.SUBMITTED, EventKind.STEPS_ADDED):
                self._ctx_steps = self._tolerated = None
            return
        st = self.state.steps.get(event.step)
        if st is None:
            return
        if self._ctx_steps is not None:
            self._ctx_steps[event.step] = self._step_context(event.step, st)
        if self._tolerated is not None and self._tolerates(event.step, st):
            self._tolerated.add(event.step)

    def _step_context(self, sid: str, st: StepState) -> Any:
        fields = _step_context(st)
        if self.load_artifact is None or next(descriptors(st.output), None) is None:
            return fields
        return StepContextView(sid, fields, self.load_artifact)  # fetched when an expression reads it

    def forget_derived(self) -> None:
        """The state was replaced wholesale (a snapshot): rebuild derived views on next use."""
        self._ctx_steps = self._tolerated = None

    def redact(self, value: Any) -> Any:
        """Mask secret input values wherever they appear in event data (rules: :mod:`runtime.masking`)."""
        return redact(value, self.secret_values)

    def add_steps(self, steps: list[Step]) -> None:
        self.sop = self.sop.model_copy(update={"steps": (*self.sop.steps, *steps)})
        self.steps_by_id.update({s.id: s for s in steps})


def _step_context(st: StepState) -> dict[str, Any]:
    return {"output": st.output, "status": st.status.value, "attempts": st.attempts, "error": st.error}


class _Statuses(Mapping[str, StepStatus]):
    """A read-only, live mapping step -> status over an execution's state."""

    __slots__ = ("_steps",)

    def __init__(self, steps: dict[str, StepState]) -> None:
        self._steps = steps

    def __getitem__(self, sid: str) -> StepStatus:
        return self._steps[sid].status

    def __iter__(self) -> Iterator[str]:
        return iter(self._steps)

    def __len__(self) -> int:
        return len(self._steps)
