"""One execution's runtime data inside the coordinator (not an actor: thousands live in one loop)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from runtime.events import Event, EventKind
from runtime.masking import redact, secret_values
from runtime.outputs import StepContextView, descriptors
from runtime.request import SubmitRequest
from runtime.state import ExecutionState, StepState, apply
from runtime.status import StepStatus
from sop import Graph, Sop, Step
from sop.model import OnFailure


@dataclass(slots=True, eq=False)
class InFlight:
    """An attempt of a step in flight: from the moment it is started until its outcome is taken."""

    step: Step
    number: int
    span: Any = None
    handle: Any = None
    """What the step runner returned (:class:`runtime.seams.AttemptHandle`): cancels the attempt."""
    timer: Any = None
    """The attempt's timeout (a handle with ``cancel()``)."""
    settled: bool = False
    """An outcome (result, error or timeout) was taken; later ones are ignored."""
    holds_slot: bool = False
    """It holds a run slot of the :class:`runtime.seams.Admission` (given back when it settles)."""
    slot: Any = None
    """What the admission granted its slot to (the key it is given back by)."""
    child: str | None = None
    """The child execution of a sub-SOP step."""
    launch: Any = None
    """What starts it through its runner once it has a slot (kept while it is queued or held)."""
    needs_slot: bool = True
    """Its runner needs a run slot (a sub-SOP's does not)."""
    progress_at: float = float("-inf")
    """When (``time.monotonic``) its last progress report was logged."""
    claim: Any = None
    """The :class:`runtime.seams.Claim` its slot was asked for (given back with the slot)."""
    stopped: Any = None
    """Called once when its runner reports the end of an attempt a preemption stopped."""


@dataclass(slots=True)
class AgentRun:
    """What the machine keeps in memory about an execution's agent session (its state is in the log)."""

    session: int = 0
    """The running session's number; calls from an older one are refused."""
    handle: Any = None
    """The running session (its driver's handle: ``cancel()``)."""
    done: bool = False
    """The agent reported its result, gave up, or the execution is being cancelled."""
    failure: str | None = None
    """Why the run failed without the agent's report (it stopped, or its host was lost too often)."""
    waiters: dict[str, list[Any]] = field(default_factory=dict)
    """Step -> futures of the agent's step tool calls waiting for the step to end."""
    contact: float = 0.0
    """When (``time.monotonic``) the session was last heard from (or started)."""
    heard: bool = False
    """The running session has called the engine at least once."""
    watchdog: Any = None
    status_at: float = float("-inf")


class Execution:
    """Runtime companions of an :class:`ExecutionState`: the SOP, graph, attempts in flight."""

    def __init__(self, execution_id: str, request: SubmitRequest) -> None:
        self.id = execution_id
        self.request = request
        self.sop: Sop = request.sop
        self.graph = Graph.from_dependencies({s.id: list(s.depends_on) for s in self.sop.steps})
        self.rollback_graph = Graph.from_dependencies(
            {s.id: list(s.depends_on) for s in self.sop.rollback})
        self.state = ExecutionState(execution_id)
        self.since_snapshot = 0
        self.inflight: dict[str, InFlight] = {}
        """Step -> its attempt in flight (started, queued for a slot, or held while paused)."""
        self.waiting_retry: dict[str, Any] = {}
        """Step -> the timer that starts its next attempt once the backoff is over."""
        self.paused_retries: dict[str, int] = {}
        """Retries whose backoff ended while paused: step -> attempt, started on resume."""
        self.held: list[InFlight] = []
        """Attempts that got to the front of the queue while paused: started on resume."""
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
        self.agentic = request.mode == "agent_centric"
        """An agent, not the DAG, decides which step runs next (see :mod:`runtime.agentic`)."""
        self.agent: AgentRun | None = AgentRun() if self.agentic else None
        self.learned: dict[str, Any] = {}
        """Step -> the :class:`runtime.seams.Demand` it reserves instead of its declared CPU and memory
        (steps with ``resources.learned``; set when the coordinator adopts it, see :mod:`runtime.forecast`)."""
        self.learned_expected_s: float | None = None
        """How long its history says an execution of its SOP takes (None: no history)."""

    @property
    def memory_mb(self) -> dict[str, int]:
        """Memory raised for a retry after an out-of-memory failure, per step."""
        return self.state.memory_mb

    def fold(self, event: Event) -> None:
        """Fold an event into the state (the only way it changes) and the views derived from it."""
        apply(self.state, event)
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

    def require_running(self, verb: str) -> None:
        """Raise unless the execution can still be changed (not finished, not being cancelled)."""
        from runtime.errors import ExecutionError

        if self.state.status.terminal or self.state.cancel_requested:
            raise ExecutionError(f"cannot {verb} execution {self.id}: it is {self.state.status.value}")


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
