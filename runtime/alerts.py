"""Alert rules: an execution running far longer than expected, a step waiting too long. Pure Python.

The coordinator checks its unfinished executions on a timer
(``EngineConfig.alert_check_every_s``) with :func:`due_alerts`; each alert that
fires is appended as an ``alert_raised`` event (so status shows it, the monitor
counts it and Prometheus exports it) and sent to the hooks' ``on_alert``. An
alert fires once per execution (``overdue``) or once per step attempt (the
waiting rules); a restarted coordinator sees the ones already raised in the log.

Rules (all in :class:`runtime.config.EngineConfig`):

- ``overdue``: running longer than ``alert_overdue_factor`` (default 2) times the
  expected duration: the SOP's ``expected_duration_s``, else what earlier runs of
  the SOP took (:mod:`runtime.estimates`: the critical path of step p50s), else
  ``EngineConfig.expected_duration_s`` (0, the default: no expectation, no alert).
- ``queued_too_long``: a step waiting for a run slot longer than ``alert_queued_s``.
- ``needs_decision_too_long``: a step waiting for an operator's decision longer than
  ``alert_decision_s``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from runtime.status import StepStatus

if TYPE_CHECKING:
    from runtime.config import EngineConfig
    from runtime.state import ExecutionState


class AlertRule(StrEnum):
    OVERDUE = "overdue"
    QUEUED = "queued_too_long"
    DECISION = "needs_decision_too_long"


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert that is due: which rule, for which step attempt (None: the execution), and why."""

    rule: AlertRule
    step: str | None
    attempt: int | None
    threshold_s: float
    elapsed_s: float
    reason: str


def expected_duration(sop_expected_s: float | None, config: EngineConfig) -> float | None:
    """The execution's expected duration: the SOP's declaration, else the configured default (0: none)."""
    if sop_expected_s:
        return float(sop_expected_s)
    return config.expected_duration_s or None


def due_alerts(state: ExecutionState, expected_s: float | None, config: EngineConfig, now: float) -> list[Alert]:
    """The alerts ``state`` should raise at ``now`` and has not raised yet (none once it has finished)."""
    if state.status.terminal:
        return []
    raised = {(a.get("rule"), a.get("step"), a.get("attempt")) for a in state.alerts}
    out: list[Alert] = []
    # Batch work is timed from its first step, not from its submission: waiting for its window is not overdue.
    since = state.first_started_at if state.schedule else state.submitted_at
    if expected_s and since is not None:
        limit = config.alert_overdue_factor * expected_s
        elapsed = now - since
        if elapsed > limit and (AlertRule.OVERDUE.value, None, None) not in raised:
            out.append(Alert(AlertRule.OVERDUE, None, None, limit, elapsed,
                             f"running for {elapsed:.0f} s, over {config.alert_overdue_factor:g} x its expected "
                             f"{expected_s:g} s"))
    for sid, step in state.steps.items():
        if step.waiting_since is None:
            continue
        if step.status == StepStatus.QUEUED:
            rule, limit, what = AlertRule.QUEUED, config.alert_queued_s, "waiting for a run slot"
        elif step.status == StepStatus.NEEDS_DECISION:
            rule, limit, what = AlertRule.DECISION, config.alert_decision_s, "waiting for an operator's decision"
        else:
            continue
        elapsed = now - step.waiting_since
        if limit and elapsed > limit and (rule.value, sid, step.attempts) not in raised:
            out.append(Alert(rule, sid, step.attempts, limit, elapsed,
                             f"step {sid!r} {what} for {elapsed:.0f} s (limit {limit:g} s)"))
    return out


def raise_due(executions: Iterable[Any], machine: Any, config: EngineConfig, now: float) -> int:
    """Raise (through ``machine.alert``) every alert due at ``now`` in the unfinished ``executions``."""
    raised = 0
    for exe in list(executions):
        if exe.state.status.terminal:
            continue
        declared = exe.sop.expected_duration_s or getattr(exe, "learned_expected_s", None)  # see runtime/forecast.py
        for alert in due_alerts(exe.state, expected_duration(declared, config), config, now):
            machine.alert(exe, alert)
            raised += 1
    return raised
