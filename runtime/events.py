"""The events every execution is made of. State is a fold over them (see :mod:`runtime.state`)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

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
    FINISHED = "execution_finished"


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
        data: Kind-specific details (output, error, classification, delay ...).
    """

    execution_id: str
    seq: int
    kind: EventKind
    ts: float = field(default_factory=time.time)
    step: str | None = None
    attempt: int | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = self.kind.value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Event:
        return cls(d["execution_id"], d["seq"], EventKind(d["kind"]), d["ts"], d.get("step"),
                   d.get("attempt"), d.get("data") or {})

    def describe(self) -> str:
        """One line for ``sopflow history`` / progress output."""
        who = f" {self.step}" if self.step else ""
        att = f" (attempt {self.attempt})" if self.attempt else ""
        extra = ""
        if self.kind == EventKind.STEP_FAILED:
            extra = f": [{self.data.get('classification')}] {self.data.get('error')}"
        elif self.kind == EventKind.RETRY_SCHEDULED:
            extra = f": in {self.data.get('delay_s', 0):.2f} s"
        elif self.kind in (EventKind.STEP_SKIPPED, EventKind.STEP_HALTED, EventKind.ESCALATED,
                           EventKind.ATTEMPT_INTERRUPTED, EventKind.DECISION_REQUIRED, EventKind.STEP_QUEUED):
            extra = f": {self.data.get('reason', '')}"
        elif self.kind == EventKind.FINISHED:
            extra = f": {self.data.get('status')}"
        elif self.kind == EventKind.DECIDED:
            extra = f": {self.data.get('decision')} ({self.data.get('reason') or 'no reason given'})"
        elif self.kind == EventKind.CHILD_SUBMITTED:
            extra = f": {self.data.get('child')}"
        return f"#{self.seq} {self.kind.value}{who}{att}{extra}"
