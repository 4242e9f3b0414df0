"""Statuses of executions and steps, and the snapshot clients read."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from runtime._pickle import positional_pickle


class ExecutionStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    CANCELLING = "cancelling"
    NEEDS_DECISION = "needs_decision"
    """A step's attempt was interrupted and the step is not safe to re-run: an operator decides."""
    PREEMPTED = "preempted"
    """A batch execution stopped to make room for real-time work; it resumes from the log later."""
    STALLED = "stalled"
    """Running, but the state store takes no writes now (a full disk): nothing moves until it does.
    Shown by status queries only; never logged."""
    COMPLETED = "completed"
    PARTIALLY_COMPLETED = "partially_completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL_EXECUTION


_TERMINAL_EXECUTION = {ExecutionStatus.COMPLETED, ExecutionStatus.PARTIALLY_COMPLETED,
                       ExecutionStatus.FAILED, ExecutionStatus.CANCELLED}


class StepStatus(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    """Ready to run, waiting for a run slot (``max_running_steps``); no task is in Ray yet."""
    RUNNING = "running"
    """Launched into Ray: its task is on a worker or waiting there for the cluster's resources."""
    RETRYING = "retrying"
    """Failed an attempt; waiting out the backoff before the next one."""
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    """Its condition was false, or its trigger rule could not be met without a failure."""
    UPSTREAM_FAILED = "upstream_failed"
    """Halted because a step it depends on failed."""
    CANCELLED = "cancelled"
    NEEDS_DECISION = "needs_decision"
    """Interrupted by a coordinator restart, not idempotent: waits for ``sopflow decide``."""

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL_STEP


_TERMINAL_STEP = {StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.SKIPPED,
                  StepStatus.UPSTREAM_FAILED, StepStatus.CANCELLED}


@positional_pickle
@dataclass(frozen=True, slots=True)
class StepView:
    id: str
    status: StepStatus
    attempts: int = 0
    error: str | None = None
    classification: str | None = None
    started_at: float | None = None
    ended_at: float | None = None
    progress: float | None = None
    """How far a running attempt said it is (0.0-1.0), if it reports progress."""
    message: str = ""
    """What a running attempt last said with its progress."""


@positional_pickle
@dataclass(frozen=True, slots=True)
class ExecutionView:
    """A snapshot of one execution, as ``status``/``wait``/``list`` return it."""

    id: str
    sop: str
    version: str
    mode: str
    status: ExecutionStatus
    progress: float
    """Share of steps that reached a terminal status, 0.0-1.0."""
    steps: dict[str, StepView] = field(default_factory=dict)
    submitted_at: float = 0.0
    ended_at: float | None = None
    outputs: dict[str, Any] | None = None
    priority: int = 0
    trace_id: str | None = None
    """Its OpenTelemetry trace id, to look it up in a tracing tool (None when tracing was off)."""
    priority_class: str = "normal"
    """critical, high, normal or low."""
    alerts: list[dict[str, Any]] = field(default_factory=list)
    """Alerts raised for it (see :mod:`runtime.alerts`): ``{"rule", "step", "attempt", "reason", "at"}`` each."""
    schedule: dict[str, Any] | None = None
    """A batch execution's schedule (``batch``, ``not_before``, ``deadline``, ``window``); None: real-time."""
    waiting: dict[str, Any] | None = None
    """Why it waits at the start gate and until when: ``{"reason", "until"}``; None when it does not."""
    agent: dict[str, Any] | None = None
    """Its agent (Agent Centric Run): ``session``, ``model``, ``message``, ``progress``, ``seen`` (its last
    status), ``decisions`` (``{"step", "decision", "rationale", "at"}``), ``model_calls``, ``tool_calls``,
    ``tokens``, ``lost`` (sessions lost), ``summary`` and ``outputs`` (its report); None for a DAG run."""
    expected_duration_s: float | None = None
    """How long it is expected to run: its SOP's ``expected_duration_s``, else what earlier runs of the
    SOP took (see :mod:`runtime.estimates`); None without either, and once it finished."""
    eta: float | None = None
    """When it is expected to end (a timestamp) from its steps' history: not counting time still to be
    spent waiting for capacity; None without history, and once it finished."""
    queue_position: int | None = None
    """The place of its first attempt waiting for capacity (1: next); None when none waits."""

    @property
    def decisions(self) -> list[dict[str, Any]]:
        """The agent's decisions, each with its rationale (none for a DAG run)."""
        return list(self.agent["decisions"]) if self.agent else []

    @property
    def alerting(self) -> bool:
        """Whether an alert was raised for it (it ran too long, or a step waited too long)."""
        return bool(self.alerts)

    @property
    def elapsed_s(self) -> float:
        import time

        return (self.ended_at or time.time()) - self.submitted_at

    @property
    def errors(self) -> dict[str, str]:
        return {s.id: s.error for s in self.steps.values() if s.error and s.status == StepStatus.FAILED}

    def _repr_html_(self) -> str:
        """Notebooks show the status, progress and a table of steps; see ``runtime.display``
        (``execution_html(view, sop)`` adds the DAG coloured by state)."""
        from runtime.display import execution_html

        return execution_html(self)
