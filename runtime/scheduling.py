"""When a step may run: trigger rules over the statuses of its dependencies (pure)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum

from runtime.status import StepStatus
from sop.model import TriggerRule

_FAILED = {StepStatus.FAILED, StepStatus.UPSTREAM_FAILED, StepStatus.CANCELLED}


class Verdict(StrEnum):
    WAIT = "wait"
    RUN = "run"
    SKIP = "skip"
    HALT = "halt"


def verdict(rule: TriggerRule, deps: Iterable[str], statuses: Mapping[str, StepStatus],
            tolerated: set[str]) -> tuple[Verdict, str]:
    """Decide a pending step's fate from its dependencies, once they have all finished.

    ``tolerated`` holds failed steps marked ``on_failure: continue``: they count as done
    and successful for their dependents.
    """
    succeeded = failed = skipped = 0
    failed_name = skipped_name = ""
    for d in deps:
        s = statuses[d]
        if not s.terminal:
            return Verdict.WAIT, ""
        if s == StepStatus.SUCCEEDED or (s == StepStatus.FAILED and d in tolerated):
            succeeded += 1
        elif s in _FAILED:
            failed += 1
            failed_name = failed_name or d
        else:
            skipped += 1
            skipped_name = skipped_name or d
    if rule == TriggerRule.ALL_DONE:
        return Verdict.RUN, ""
    if rule == TriggerRule.ONE_SUCCESS:
        if succeeded or not (failed or skipped):
            return Verdict.RUN, ""
        if failed:
            return Verdict.HALT, f"no dependency succeeded ('{failed_name}' {statuses[failed_name].value})"
        return Verdict.SKIP, "every dependency was skipped"
    if failed:
        return Verdict.HALT, f"dependency '{failed_name}' {statuses[failed_name].value}"
    if rule == TriggerRule.NONE_FAILED or not skipped:
        return Verdict.RUN, ""
    return Verdict.SKIP, f"dependency '{skipped_name}' was skipped"
