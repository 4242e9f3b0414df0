"""The start gate: where an execution waits before its first step (or before resuming after preemption).

Real-time executions pass straight through, unless their SOP's ``max_concurrent``
executions run already. A batch execution (one with a ``schedule``) waits until
its window opens (``not_before``, the daily ``window``) and until its slot in the
packing plan (:func:`runtime.batch.plan`), which spreads batch work over its
windows to keep peak use low. A preempted execution waits until no real-time
attempt waits for a slot any more. While an execution waits, its status says
why and until when (``execution_waiting`` events).

The gate holds nothing durable of its own: after a coordinator restart, recovery
hands it every execution that had not started, or was preempted, and it decides
again from their logged schedules.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from runtime import events as ev
from runtime.batch import Job, Schedule, choose_victim, plan
from runtime.execution import Execution
from runtime.status import ExecutionStatus

logger = logging.getLogger("sopflow.gate")

UNKNOWN_DURATION_S = 60.0
"""The duration assumed for packing an execution that neither an estimate nor its timeouts bound."""
RECHECK_PREEMPTED_S = 0.5
"""How often a preempted execution looks whether real-time work still needs the capacity."""
REPLAN_EVERY_S = 5.0
"""How often the packing plan is made again while the batch executions waiting stay the same (an
execution that ended early frees room sooner); a new or started one makes it again at once."""
UNTIL_SHOWN_WITHIN_S = 30.0
"""A new planned start is logged (``execution_waiting``) only when it moves more than this: a plan
made again and again must not flood the log."""
STOP_GRACE_S = 30.0
"""How long a preempted execution waits for its stopped attempts to end (their workers to be killed)
before it resumes anyway: a runner that cannot kill (threads of the in-process engine) must not hold
it forever."""


def expected_from_timeouts(exe: Execution) -> float:
    """An execution's expected duration from its SOP: ``expected_duration_s``, else its critical path of
    declared timeouts (an upper bound), else :data:`UNKNOWN_DURATION_S`."""
    sop = exe.sop
    if sop.expected_duration_s:
        return float(sop.expected_duration_s)
    timeouts = {s.id: sop.effective_timeout(s) for s in sop.steps}
    if timeouts and all(t for t in timeouts.values()):
        return float(exe.graph.critical_path(timeouts).duration_s)
    return UNKNOWN_DURATION_S


class StartGate:
    """See the module docstring.

    Args:
        core: The coordinator (:class:`runtime.coordinator.CoordinatorCore`) whose executions pass the gate.
        expected_s: An execution's expected duration in seconds, or None when unknown (then its
            SOP's timeouts bound it: :func:`expected_from_timeouts`).
        clock: Wall-clock time (tests pass a controllable one).
    """

    def __init__(self, core: Any, expected_s: Callable[[Execution], float | None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.core = core
        self.expected_s = expected_s
        self.clock = clock
        self.enabled = True
        """False in a replay: it runs at once, its windows were honoured when it first ran."""
        self.waiting: dict[str, Execution] = {}
        """Executions waiting to start or resume, in the order they came."""
        self.active: dict[str, set[str]] = {}
        """SOP name -> its executions started and neither ended nor preempted (``max_concurrent``)."""
        self.starts: dict[str, float] = {}
        """Batch execution -> its planned start (the last plan)."""
        self.preempted_at: dict[str, float] = {}
        """Preempted execution -> when (by ``clock``) the gate first saw it waiting."""
        self._planned_for: frozenset[str] = frozenset()
        self._planned_at = float("-inf")
        self.began: dict[str, float] = {}
        """Execution -> when (by ``clock``) it passed the gate last."""
        self._timer: Any = None
        self._poke_soon = False
        self._relieving = False
        self.preempted = 0
        """Preemptions so far (metrics, the benchmark)."""

    # -- entering --------------------------------------------------------------------------------

    def submitted(self, exe: Execution) -> None:
        """A new (or recovered, not yet started, or preempted) execution: start it now, or let it wait."""
        if not self.enabled or (exe.request.schedule is None and exe.sop.max_concurrent is None
                                and exe.state.status != ExecutionStatus.PREEMPTED):
            self._begin(exe)  # the real-time fast path: nothing to decide
            return
        self.waiting[exe.id] = exe
        self.poke_soon()

    def running(self, exe: Execution) -> None:
        """A recovered execution that had started: it counts against its SOP's ``max_concurrent``."""
        self.active.setdefault(exe.sop.sop, set()).add(exe.id)

    def ended(self, exe: Execution) -> None:
        """An execution ended: one fewer of its SOP runs; whoever waited for that may start."""
        self.waiting.pop(exe.id, None)
        self.starts.pop(exe.id, None)
        self.began.pop(exe.id, None)
        self.preempted_at.pop(exe.id, None)
        running = self.active.get(exe.sop.sop)
        if running is not None and exe.id in running:
            running.discard(exe.id)
            if exe.sop.max_concurrent is not None or self.starts:
                self.poke_soon()
        elif self.waiting:
            self.poke_soon()

    # -- deciding --------------------------------------------------------------------------------

    def poke_soon(self) -> None:
        """Decide again on the loop's next turn (many submissions in one call are decided once)."""
        if not self._poke_soon:
            self._poke_soon = True
            asyncio.get_running_loop().call_soon(self.poke)

    def poke(self) -> None:
        """Start every waiting execution that may start now; tell the others why they wait."""
        self._poke_soon = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        now = self.clock()
        self._replan(now)
        wake: float | None = None
        recheck = False
        for exe in list(self.waiting.values()):
            if exe.state.status.terminal or exe.state.cancel_requested:
                self.waiting.pop(exe.id, None)
                if not exe.state.status.terminal:
                    self._begin(exe)  # cancelled while it waited: the machine ends it
                continue
            reason, until = self._blocker(exe, now)
            if reason is None:
                del self.waiting[exe.id]
                self._begin(exe)
                continue
            if until is not None:
                wake = until if wake is None else min(wake, until)
            else:
                recheck = recheck or exe.state.status == ExecutionStatus.PREEMPTED
            shown = exe.state.waiting or {}
            if shown.get("reason") != reason or _moved(shown.get("until"), until):
                self.core.emit(exe, ev.Waiting(reason=reason, until=None if until is None else round(until, 3)))
        delay = None if wake is None else max(0.0, wake - now)
        if recheck:
            delay = RECHECK_PREEMPTED_S if delay is None else min(delay, RECHECK_PREEMPTED_S)
        if delay is not None:
            self._timer = asyncio.get_running_loop().call_later(delay, self.poke)

    def _blocker(self, exe: Execution, now: float) -> tuple[str | None, float | None]:
        """Why ``exe`` may not start now and until when (None: it may start)."""
        if exe.state.status == ExecutionStatus.PREEMPTED:
            since = self.preempted_at.setdefault(exe.id, now)
            if self.core.machine.stopping.get(exe.id) and now - since < STOP_GRACE_S:
                # resuming before the stopped attempt is really over could run a step twice at once
                return "preempted: waiting for its stopped attempts to end", since + STOP_GRACE_S
            if self._realtime_waiting() or not self._room():
                return "preempted: resumes once real-time work no longer needs the capacity", None
        elif exe.request.schedule is not None:
            sched = Schedule.from_data(exe.request.schedule)
            duration = self._duration(exe)
            opens = sched.earliest(now, duration)
            if opens > now:
                what = "its daily window" if sched.window is not None else "not_before"
                return f"batch window: waits for {what} ({_iso(opens)})", opens
            start = self.starts.get(exe.id, now)
            if start > now:
                return f"batch packing: planned to start at {_iso(start)} to keep peak use low", start
        limit = exe.sop.max_concurrent
        if limit is not None and len(self.active.get(exe.sop.sop, ())) >= limit:
            return f"max_concurrent: {limit} execution(s) of SOP {exe.sop.sop} run already", None
        return None, None

    def _begin(self, exe: Execution) -> None:
        self.preempted_at.pop(exe.id, None)
        self.active.setdefault(exe.sop.sop, set()).add(exe.id)
        if exe.request.schedule is not None:
            self.began[exe.id] = self.clock()
        self.starts.pop(exe.id, None)
        if exe.state.status == ExecutionStatus.PREEMPTED:
            self.core.machine.resume_preempted(exe)
        else:
            self.core.machine.begin(exe)

    def _duration(self, exe: Execution) -> float:
        expected = self.expected_s(exe) if self.expected_s is not None else None
        return float(expected) if expected is not None and expected > 0 else expected_from_timeouts(exe)

    def _replan(self, now: float) -> None:
        """Plan the starts of the batch executions waiting for their windows (see :func:`runtime.batch.plan`)."""
        planned = [exe for exe in self.waiting.values()
                   if exe.request.schedule is not None and exe.state.status != ExecutionStatus.PREEMPTED]
        key = frozenset(exe.id for exe in planned)
        if key == self._planned_for and now < self._planned_at + REPLAN_EVERY_S:
            return  # the same executions wait: the plan stands
        self._planned_for, self._planned_at = key, now
        jobs = []
        for exe in planned:
            sched = Schedule.from_data(exe.request.schedule)
            duration = self._duration(exe)
            earliest = sched.earliest(now, duration)
            jobs.append(Job(exe.id, earliest, sched.latest(earliest, duration), duration, _demand(exe)))
        if not jobs:
            self.starts.clear()
            return
        running = []  # batch executions under way: expected to run until their start + duration
        for ids in self.active.values():
            for execution_id in ids:
                exe = self.core.executions.get(execution_id)
                if exe is not None and exe.request.schedule is not None:
                    end = self.began.get(execution_id, now) + self._duration(exe)
                    running.append((max(end, now), _demand(exe)))
        self.starts = plan(jobs, running)

    # -- preemption ------------------------------------------------------------------------------

    def _room(self) -> bool:
        """Whether a slot is free now (a preempted execution resumes into free capacity, not into a queue)."""
        admission = self.core.machine.admission
        return admission.used < admission.capacity

    def _realtime_waiting(self) -> bool:
        return self.core.machine.admission.waiting_realtime() > 0

    def on_blocked(self, claim: Any) -> None:
        """The admission queued a real-time claim while batch work holds slots: preempt, on the next turn
        (the claim is queued by then, so the slots freed go to it)."""
        if not self._relieving:
            self._relieving = True
            asyncio.get_running_loop().call_soon(self._relieve, getattr(claim, "execution", "") or None)

    def _relieve(self, by: str | None) -> None:
        """Preempt batch executions, lowest priority and youngest first, while real-time claims wait."""
        self._relieving = False
        admission = self.core.machine.admission
        spared: set[str] = set()
        # The admission grants whatever fits as soon as a slot is given back, so a real-time claim
        # still queued has no room: free slots alone (``_room``) do not say a node can take it.
        while self._realtime_waiting():
            holding = admission.holding()
            victim_id = choose_victim(holding, exclude=spared)
            if victim_id is None:
                return
            victim = self.core.executions.get(victim_id)
            if victim is None or not self.core.machine.preemptible(victim):
                spared.add(victim_id)
                continue
            logger.info("preempting batch execution %s for %s", victim_id, by or "real-time work")
            self.core.machine.preempt(victim, by)
            self.preempted += 1
            self.active.get(victim.sop.sop, set()).discard(victim_id)
            self.waiting[victim_id] = victim
            self.poke_soon()


def _demand(exe: Execution) -> float:
    """What a running execution uses, for packing: the most CPUs one of its steps asks for."""
    return max((exe.sop.effective_resources(s).cpu for s in exe.sop.steps), default=1.0) or 1.0


def _moved(shown: float | None, until: float | None) -> bool:
    """Whether a new ``until`` is worth a new event (a plan that shifts by less than a second is not)."""
    if shown is None or until is None:
        return shown is not until
    return abs(shown - until) > UNTIL_SHOWN_WITHIN_S


def _iso(t: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")
