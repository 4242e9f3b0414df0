"""Named batches: which executions belong to one, and the one report a finished batch gets.

Membership is kept in the state store's settings (``batch:<name>:<first id>`` ->
the ids submitted in one call), written before the submission is answered, so a
report never misses an execution its client was told about. The report itself is
folded from each member's state: counts by status, durations, failures, and
every execution's result.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from runtime.batch import check_batch_name
from runtime.errors import BatchNotFound
from runtime.status import StepStatus

if TYPE_CHECKING:
    from runtime.request import SubmitRequest
    from runtime.state import ExecutionState

PREFIX = "batch:"


async def remember(core: Any, requests: Iterable[SubmitRequest], ids: Iterable[str]) -> None:
    """Record the members of named batches among ``requests`` (one write per batch per call)."""
    by_batch: dict[str, list[str]] = {}
    for request, execution_id in zip(requests, ids):
        name = (request.schedule or {}).get("batch")
        if name:
            by_batch.setdefault(name, []).append(execution_id)
    for name, members in by_batch.items():
        await asyncio.to_thread(core.event_log.put_setting, f"{PREFIX}{name}:{members[0]}",
                                json.dumps(members).encode())


def members(core: Any, name: str) -> list[str]:
    """The executions of batch ``name``, in the order they were submitted (each once)."""
    found: dict[str, None] = {}
    for _, blob in sorted(core.event_log.settings(f"{PREFIX}{name}:").items()):
        found.update(dict.fromkeys(json.loads(blob)))
    return list(found)


def check_name(name: Any) -> str:
    """Raise unless ``name`` could be a batch's name (see :func:`runtime.batch.check_batch_name`)."""
    return check_batch_name(name)


def report(name: str, states: list[ExecutionState]) -> dict[str, Any]:
    """The report of batch ``name`` from its executions' states (see :meth:`runtime.Engine.batch_report`)."""
    counts = Counter(st.status.value for st in states)
    durations = sorted(st.ended_at - (st.first_started_at or st.submitted_at)
                       for st in states if st.ended_at is not None)
    waits = sorted(st.first_started_at - st.submitted_at for st in states if st.first_started_at is not None)
    results = [_result(st) for st in states]
    failures = [r for r in results if r["status"] in ("failed", "partially_completed")]
    finished = all(st.status.terminal for st in states)
    return {"batch": name, "executions": len(states), "finished": finished, "counts": dict(sorted(counts.items())),
            "succeeded": counts.get("completed", 0), "failed": len(failures),
            "preemptions": sum(st.preemptions for st in states),
            "first_submitted_at": min((st.submitted_at for st in states), default=None),
            "last_ended_at": max((st.ended_at for st in states if st.ended_at), default=None) if finished else None,
            "duration_s": _summary(durations), "waited_s": _summary(waits),
            "failures": failures, "results": results}


def _result(st: ExecutionState) -> dict[str, Any]:
    errors = {sid: s.error for sid, s in st.steps.items() if s.status == StepStatus.FAILED and s.error}
    ran = None if st.ended_at is None else round(st.ended_at - (st.first_started_at or st.submitted_at), 6)
    return {"id": st.id, "sop": st.sop, "status": st.status.value, "submitted_at": st.submitted_at,
            "started_at": st.first_started_at, "ended_at": st.ended_at, "duration_s": ran,
            "preemptions": st.preemptions, "outputs": (st.outputs or {}).get("outputs") if st.outputs else None,
            "errors": errors}


def _summary(values: list[float]) -> dict[str, float] | None:
    """min, p50, p95, max and mean of sorted ``values`` (None when there are none)."""
    if not values:
        return None
    pick = lambda q: values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]  # noqa: E731
    return {"min": round(values[0], 6), "p50": round(pick(0.5), 6), "p95": round(pick(0.95), 6),
            "max": round(values[-1], 6), "mean": round(sum(values) / len(values), 6)}


async def build(core: Any, name: str) -> dict[str, Any]:
    """The report of batch ``name`` as the coordinator holds it now.

    Raises:
        ScheduleError: the name is not a valid batch name.
        BatchNotFound: no execution was submitted in that batch.
    """
    check_name(name)
    await core.journal.durable()
    ids = await asyncio.to_thread(members, core, name)
    if not ids:
        raise BatchNotFound(name)
    states = []
    for execution_id in ids:
        if execution_id in core.executions:
            states.append(core.executions[execution_id].state)
        else:
            states.append(await asyncio.to_thread(core.state_of, execution_id))
    return report(name, states)
