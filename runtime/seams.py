"""The seams of the execution state machine: where runners, admission, failure policy and hooks plug in.

The state machine (:mod:`runtime.machine`) is plain Python: it decides what
happens next and talks to the world only through these interfaces.

- :class:`ExecutionHost` — what owns the executions (the Coordinator actor, the
  in-process engine, a replay): appends events, makes them durable, keeps
  timers, starts and stops child executions.
- :class:`StepRunner` — runs one attempt of a step of one kind (a Ray task, a
  handler in this process, a sub-SOP, a recorded outcome in a replay; MCP and
  agent runners plug in the same way) and reports its outcome.
- :class:`Admission` — gives out run slots, highest priority first.
- :class:`FailurePolicy` — says what a failed attempt means: retry, fail, escalate.
- Hooks (:mod:`runtime.hooks`) — observe attempts, retries, escalations and ends.

Every interface has an in-process implementation in ``runtime``; the Ray ones
live in ``actors``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from runtime.failure import Decision, ErrorInfo
from runtime.handlers import StepOutcome, StepTask

if TYPE_CHECKING:
    from runtime.config import EngineConfig
    from runtime.events import Event, Payload
    from runtime.execution import Execution
    from runtime.outputs import Artifacts
    from runtime.request import SubmitRequest
    from runtime.state import ExecutionState
    from sop import Sop, Step


@runtime_checkable
class Cancellable(Protocol):
    """A timer or an attempt that can be called off."""

    def cancel(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class AttemptSpec:
    """Everything a runner needs to run one attempt of one step.

    Attributes:
        execution: The execution (read-only for runners).
        step: The step.
        attempt: The attempt number, from 1.
        task: The attempt as a step task (rendered arguments, command, environment, handler,
            timeout, trace carrier) for runners that call a handler; ``None`` for a sub-SOP.
        args: The step's rendered ``with:`` arguments.
        placement: The node the admission placed the attempt on (Ray's node id), if it placed it.
    """

    execution: Execution
    step: Step
    attempt: int
    task: StepTask | None
    args: dict[str, Any]
    placement: str | None = None


class AttemptReport(Protocol):
    """How a runner reports back; every method may be called from the state machine's loop only."""

    def settle(self, outcome: StepOutcome | None, error: ErrorInfo | None = None) -> None:
        """The attempt ended: with an outcome (ok or failed), or with an error of the runner."""

    def child_started(self, child_id: str) -> None:
        """A sub-SOP attempt started its child execution."""

    def progress(self, fraction: float | None, message: str = "") -> None:
        """The running attempt reported how far it is (``context.report_progress``)."""

    def interrupted(self, reason: str) -> None:
        """The attempt was lost and its outcome cannot be known (its host died): the step's ``recovery``
        rule applies, as after a coordinator restart (run again, fail, or wait for a decision)."""


class AttemptHandle(Protocol):
    """A started attempt."""

    def cancel(self, force: bool) -> None:
        """Stop the attempt (``force``: kill it now). Its outcome is still reported through ``settle``."""


@runtime_checkable
class StepRunner(Protocol):
    """Runs attempts of one kind of step.

    Attributes:
        needs_slot: Whether an attempt takes a run slot of the :class:`Admission` while it runs
            (a sub-SOP does not: its child's steps take theirs).
    """

    needs_slot: bool

    def start(self, spec: AttemptSpec, report: AttemptReport) -> AttemptHandle:
        """Start the attempt; its outcome arrives later through ``report.settle``."""
        ...


@dataclass(frozen=True, slots=True)
class Demand:
    """What one attempt needs from the node it runs on (a step's effective resources).

    Attributes:
        cpu: CPU cores (fractions allowed).
        memory_mb: Memory to reserve, in MiB (0: none).
        gpu: GPUs (fractions allowed).
        capabilities: Node capabilities it needs (Ray resources ``capability:<name>``).
    """

    cpu: float = 1.0
    memory_mb: int = 0
    gpu: float = 0.0
    capabilities: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Claim:
    """Who asks :class:`Admission` for a run slot: the attempt's execution, as far as order goes.

    Attributes:
        priority: The execution's priority within its class (higher first).
        continuing: The execution has started a step already: within a class and priority,
            work of executions under way goes before the first steps of new ones ("finish
            what you started"), so a flood of new executions cannot hold back the ones running.
        since: When the execution was submitted: older first.
        priority_class: ``critical``, ``high``, ``normal`` or ``low``: classes share the slots
            by weight (``EngineConfig.priority_weights``) while several wait.
        execution: The execution's id.
        batch: A batch execution (submitted with a ``schedule``): it runs in capacity that
            real-time work does not want, and may be preempted for it.
        demand: What the attempt needs from its node.
    """

    priority: int = 0
    continuing: bool = False
    since: float = 0.0
    priority_class: str = "normal"
    execution: str = ""
    batch: bool = False
    demand: Demand = Demand()

    def key(self) -> tuple[int, bool, float]:
        """The order within its class: smaller goes first."""
        return (-self.priority, not self.continuing, self.since)


class Admission(Protocol):
    """Run slots: how many attempts may run at once, and who goes next."""

    def acquire(self, claim: Claim, grant: Callable[[], None]) -> bool:
        """Take a slot now (True), or queue for one (False): ``grant()`` is called when it is taken."""
        ...

    def release(self, grant: Callable[[], None] | None = None) -> None:
        """Give back the slot granted to ``grant`` (the next queued caller gets it)."""
        ...

    def withdraw(self, grant: Callable[[], None]) -> bool:
        """Leave the queue without a slot; False when ``grant`` was not queued."""
        ...

    @property
    def capacity(self) -> int:
        """How many slots there are now."""
        ...

    used: int
    """Slots taken now."""

    def holding(self) -> dict[str, Any]:
        """Execution id -> what it holds now (``runtime.admission.Held``): preemption picks from these."""
        ...

    def waiting_realtime(self) -> int:
        """Real-time claims queued that some node could take (preemption relieves them)."""
        ...

    def position(self, execution_id: str) -> int | None:
        """1-based place of the execution's first queued claim in the order grants go; None: none queued."""
        ...


class FailurePolicy(Protocol):
    """Decides what a failed attempt means."""

    def judge(self, exe: Execution, step: Step, attempt: int, error: ErrorInfo) -> Awaitable[Decision]:
        """Retry (with a delay), fail, or escalate attempt ``attempt`` of ``step``; never raises."""
        ...


@dataclass(frozen=True, slots=True)
class AgentSessionSpec:
    """Everything an agent host needs to run (or resume, or replay) one execution's agent.

    Attributes:
        execution_id: The execution.
        session: The session's number: 1, then one more each time it is started again.
        sop: The SOP (its ``agent`` block already holds any overrides given at submit).
        inputs: The inputs, secret values included (they travel to the host, never into events).
        secrets: Names of the secret inputs.
        records: The recording to replay before going live: ``{"models": [...], "tools": {...}}``
            as :func:`runtime.state.new_agent_state` keeps them.
        replay: An offline replay: nothing may be called live (no model, no MCP server).
        trace: The W3C trace context of the execution's span.
        agent_id: The agent's id (``<sop>/<execution>``).
    """

    execution_id: str
    session: int
    sop: Sop
    inputs: dict[str, Any]
    secrets: tuple[str, ...]
    records: dict[str, Any]
    replay: bool = False
    trace: dict[str, str] | None = None
    agent_id: str = ""


class AgentDriver(Protocol):
    """Runs agent sessions somewhere (host actors on Ray, or this process) for the state machine.

    The session talks back to the engine through the host's ``agent_call`` (see
    :meth:`runtime.coordinator.CoordinatorCore.agent_call`).
    """

    def start(self, spec: AgentSessionSpec, ended: Callable[[str | None, bool], None]) -> AgentHandle:
        """Start the session; ``ended(error, lost)`` is called on the machine's loop when it stops:
        ``(None, False)`` when it returned, ``(why, False)`` when it failed, ``(why, True)`` when it
        was lost (its host died) and may be started again from its recording."""
        ...


class AgentHandle(Protocol):
    """A running agent session."""

    where: str
    """The host it runs on, for status and the log."""

    def cancel(self, lost: bool = False) -> None:
        """Stop the session (``ended`` is not called after this); ``lost``: it went silent, so its host
        is suspect (a new session should go elsewhere if it can)."""


class ExecutionHost(Protocol):
    """What the state machine asks of whoever owns the executions."""

    config: EngineConfig
    artifacts: Artifacts

    def emit(self, exe: Execution, payload: Payload, step: str | None = None, attempt: int | None = None) -> Event:
        """Append the event carrying ``payload`` and fold it into ``exe``'s state (the only way state changes)."""
        ...

    def on_durable(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` on the loop once every event appended so far is durable."""
        ...

    def call_later(self, delay_s: float, callback: Callable[..., None], *args: Any) -> Cancellable:
        """Call ``callback(*args)`` on the loop after ``delay_s`` seconds (a backoff, a timeout)."""
        ...

    async def submit_child(self, request: SubmitRequest) -> str:
        """Start a child execution (a sub-SOP); returns its id."""
        ...

    async def cancel_child(self, child_id: str, force: bool) -> None:
        """Cancel a child execution."""
        ...

    async def wait_child(self, child_id: str) -> ExecutionState:
        """Wait until a child execution has ended; returns its final state."""
        ...

    def finished(self, exe: Execution) -> None:
        """``exe``'s end is durable: forget what the host keeps for running executions."""
        ...
