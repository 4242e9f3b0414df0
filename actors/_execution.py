"""One execution's runtime data inside the coordinator (not an actor: thousands live in one loop)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from runtime.events import Event
from runtime.state import ExecutionState
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


@dataclass(slots=True)
class InFlight:
    attempt: int
    ref: Any = None
    span: Any = None
    task: asyncio.Task | None = None
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
        self.events: list[Event] = []
        self.inflight: dict[str, InFlight] = {}
        self.waiting_retry: dict[str, asyncio.TimerHandle] = {}
        self.paused_retries: dict[str, int] = {}
        """Retries whose backoff ended while paused: step -> attempt, started on resume."""
        self.memory_mb: dict[str, int] = {}
        self.done = asyncio.Event()
        self.span: Any = None
        self.rollback_requested = False
        self.remote_fns: dict[tuple[str, int | None], Any] = {}
        self.secret_values = tuple(str(request.inputs[k]) for k in request.secrets
                                   if request.inputs.get(k) not in (None, ""))
        self.steps_by_id: dict[str, Step] = {s.id: s for s in (*self.sop.steps, *self.sop.rollback)}

    @property
    def active_graph(self) -> Graph:
        return self.rollback_graph if self.state.rolling_back else self.graph

    @property
    def tolerated(self) -> set[str]:
        return {sid for sid, st in self.state.steps.items()
                if st.status == StepStatus.FAILED and self.steps_by_id[sid].on_failure == OnFailure.CONTINUE}

    def statuses(self) -> dict[str, StepStatus]:
        return {sid: st.status for sid, st in self.state.steps.items()}

    def expression_context(self) -> dict[str, Any]:
        steps = {sid: {"output": st.output, "status": st.status.value, "attempts": st.attempts,
                       "error": st.error} for sid, st in self.state.steps.items()}
        return {"inputs": self.request.inputs, "steps": steps,
                "execution": {"id": self.id, "sop": self.sop.sop, "version": self.sop.version,
                              "mode": self.request.mode}}

    def redact(self, value: Any) -> Any:
        """Replace secret input values wherever they appear in event data."""
        if not self.secret_values:
            return value
        if isinstance(value, str):
            for s in self.secret_values:
                value = value.replace(s, "***")
            return value
        if isinstance(value, dict):
            return {k: self.redact(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.redact(v) for v in value]
        return value

    def add_steps(self, steps: list[Step]) -> None:
        self.sop = self.sop.model_copy(update={"steps": (*self.sop.steps, *steps)})
        self.steps_by_id.update({s.id: s for s in steps})
