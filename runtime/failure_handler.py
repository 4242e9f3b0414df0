"""The FailureHandler: classifies failed attempts and decides retry, fail or escalate; counts them.

The plain class behind the FailureHandler actor (``actors.fronts``), and the
in-process engine's :class:`runtime.seams.FailurePolicy`. The rules are the
pure functions of :mod:`runtime.failure`; escalation hooks run in the
coordinator (:mod:`runtime.hooks`).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from runtime.failure import Action, Decision, ErrorInfo, as_dict, decide


class FailureHandler:
    """Decides what failures mean and keeps counts of them."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.escalations = 0

    async def handle(self, error: ErrorInfo, report: dict[str, Any]) -> Decision:
        """Decide for one failed attempt, described by ``report`` (step, attempt, retry policy, memory)."""
        decision = decide(error, report["attempt"], report["policy"], report.get("memory_mb"))
        self.counts[f"{decision.classification.value}/{decision.action.value}"] += 1
        if decision.action == Action.ESCALATE:
            self.escalations += 1
        return decision

    async def judge(self, exe: Any, step: Any, attempt: int, error: ErrorInfo) -> Decision:
        """:class:`runtime.seams.FailurePolicy`: decide in this process."""
        return await self.handle(error, failure_report(exe, step, attempt, error))

    async def stats(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "escalations": self.escalations}


def failure_report(exe: Any, step: Any, attempt: int, error: ErrorInfo) -> dict[str, Any]:
    """What the failure handler is told about a failed attempt (secrets masked)."""
    return {"execution_id": exe.id, "sop": exe.sop.sop, "step": step.id, "attempt": attempt,
            "error": exe.redact(as_dict(error)), "policy": exe.sop.effective_retry(step),
            "memory_mb": exe.memory_mb.get(step.id, exe.sop.effective_resources(step).memory_mb)}
