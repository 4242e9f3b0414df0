"""A hypothesis strategy for plausible execution histories, with what each one should count as.

Each generated execution is planned first (steps, attempts, waits, outcomes) and its
events are written from the plan; the plan's own numbers are the expectation the
metrics are checked against, so the test does not recount the events the way the
code under test does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import strategies as st

from runtime import events as ev
from runtime.events import Event, new_event

SOPS = ("alpha", "beta", "gamma")
MODES = ("system_design", "agent_centric")
CLASSES = ("transient", "permanent", "resource", "crash")


@dataclass
class Planned:
    """One generated execution and what metrics should say about it."""

    id: str
    sop: str
    mode: str
    submitted_at: float
    events: list[Event] = field(default_factory=list)
    status: str = "running"
    ended_at: float | None = None
    attempts: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    retries: int = 0
    waits: list[float] = field(default_factory=list)
    queued_now: int = 0
    step_seconds: dict[str, list[float]] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.status in ("completed", "partially_completed", "failed", "cancelled")


_attempt = st.tuples(st.one_of(st.none(), st.floats(0.0, 50.0)),       # queue wait, if it queued
                     st.floats(0.0, 100.0),                              # run time
                     st.one_of(st.just("ok"), st.sampled_from(CLASSES)))  # outcome


@st.composite
def execution(draw: st.DrawFn, index: int) -> Planned:
    sop, mode = draw(st.sampled_from(SOPS)), draw(st.sampled_from(MODES))
    t = draw(st.floats(1.0, 10_000.0))
    p = Planned(f"exe-{index:012x}-00000000", sop, mode, t)
    plans = draw(st.lists(st.lists(_attempt, min_size=1, max_size=3), min_size=1, max_size=4))
    names = [f"s{i}" for i in range(len(plans))]
    finish = draw(st.booleans())
    leave_queued = not finish and draw(st.booleans())
    seq = 0

    def emit(payload: ev.Payload, step: str | None = None, attempt: int | None = None) -> None:
        nonlocal seq
        seq += 1
        p.events.append(new_event(p.id, seq, payload, step, attempt, ts=t))

    emit(ev.Submitted(sop=sop, mode=mode, steps=names))
    emit(ev.Started())
    all_ok = True
    for name, attempts in zip(names, plans):
        for n, (wait, run, result) in enumerate(attempts, start=1):
            last = n == len(attempts)
            if wait is not None:
                emit(ev.StepQueued(reason="slots"), name, n)
                t += wait
                p.waits.append(wait)
            emit(ev.StepStarted(), name, n)
            p.attempts += 1
            t += run
            p.step_seconds.setdefault(name, []).append(run)
            if result == "ok":
                emit(ev.StepSucceeded(duration_s=run), name, n)
                break
            p.failures[result] = p.failures.get(result, 0) + 1
            emit(ev.StepFailed(error="boom", classification=result, final=last), name, n)
            if last:
                all_ok = False
            else:
                emit(ev.RetryScheduled(delay_s=0.0), name, n + 1)
                p.retries += 1
    if leave_queued:
        emit(ev.StepsAdded(steps=["late"], specs=[{"id": "late"}]))
        emit(ev.StepQueued(reason="slots"), "late", 1)
        p.queued_now = 1
    if finish:
        p.status = draw(st.sampled_from(["cancelled"])) if draw(st.booleans()) and not all_ok else (
            "completed" if all_ok else "failed")
        t += draw(st.floats(0.0, 10.0))
        emit(ev.Finished(status=p.status))
        p.ended_at = t
    return p


@st.composite
def executions(draw: st.DrawFn, max_size: int = 12) -> list[Planned]:
    n = draw(st.integers(0, max_size))
    return [draw(execution(i)) for i in range(n)]
