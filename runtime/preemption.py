"""Preemption: stopping a batch execution's running attempts for real-time work, and resuming it later.

A preempted execution is left exactly as a coordinator crash would leave it:
its completed steps stay completed, the attempts that were stopped are listed
in its ``execution_preempted`` event, and on resuming each follows its step's
``recovery`` rule (an idempotent step, or ``recovery: rerun``, runs the *same*
attempt again, so the stop does not count against ``max_attempts``; ``recovery:
fail`` fails it; otherwise an operator decides). Attempts that were only queued
queue again; retries waiting out a backoff are due when they were.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from runtime import events as ev
from runtime.execution import Execution, InFlight
from runtime.status import StepStatus

if TYPE_CHECKING:
    from runtime.seams import ExecutionHost

PREEMPTED_REASON = "preempted to make room for real-time work"


class PreemptionMixin:
    """``preempt`` and ``resume_preempted`` (mixed into :class:`runtime.machine.StateMachine`)."""

    host: ExecutionHost
    admission: Any
    stopping: dict[str, set[InFlight]]
    """Execution -> its preempted attempts whose runners have not reported their end yet."""
    on_stopped: Callable[[Execution], None] | None
    """Called when the last preempted attempt of an execution has ended (the start gate listens)."""
    # the rest of the machine (runtime.attempts, runtime.machine)
    _give_back: Callable[[InFlight], None]
    after_interruption: Callable[[Execution, Any, int, str], str]
    step_ended: Callable[[Execution, str], None]
    start: Callable[[Execution, Any, int], None]
    retry: Callable[[Execution, Any, int], None]
    advance: Callable[[Execution, list[str]], None]

    def preemptible(self, exe: Execution) -> bool:
        """Whether ``exe`` may be preempted: a running DAG execution whose attempts are plain tasks.

        Agent runs and executions with a sub-SOP or agent step in flight are not: stopping
        their children would spread the preemption to executions that are not batch work.
        """
        state = exe.state
        return (not exe.agentic and not state.status.terminal and not state.cancel_requested
                and state.status.value != "preempted"
                and all(f.child is None and f.needs_slot for f in exe.inflight.values()))

    def preempt(self, exe: Execution, by: str | None = None) -> dict[str, int]:
        """Stop every attempt of ``exe`` in flight and log ``execution_preempted``.

        Returns:
            Step -> the attempt that was stopped (it had been handed to its runner, or its start was
            logged); attempts that only waited for a slot are not in it (they simply queue again).
        """
        interrupted: dict[str, int] = {}
        for sid, flight in list(exe.inflight.items()):
            if flight.settled:
                continue
            flight.settled = True  # its runner's late report (a cancelled task) is ignored
            if flight.timer is not None:
                flight.timer.cancel()
            if flight.launch is not None and not flight.holds_slot:
                self.admission.withdraw(flight.launch)  # still queued for a slot
            self._give_back(flight)
            if flight.handle is not None:  # it ran: it is over only once its runner says so (a killed worker)
                self.stopping.setdefault(exe.id, set()).add(flight)
                flight.stopped = functools.partial(self._attempt_stopped, exe, flight)
                flight.handle.cancel(True)
            if exe.state.steps[sid].status == StepStatus.RUNNING:
                interrupted[sid] = flight.number
            if flight.span is not None:
                flight.span.set_attribute("sopflow.status", "preempted")
                flight.span.end()
            del exe.inflight[sid]
        exe.held.clear()  # held while paused: they are queued in the log and queue again on resuming
        for timer in exe.waiting_retry.values():
            timer.cancel()  # due again on resuming, at the time the log says
        exe.waiting_retry.clear()
        self.host.emit(exe, ev.Preempted(reason=PREEMPTED_REASON + (f" (execution {by})" if by else ""), by=by,
                                         interrupted=interrupted))
        return interrupted

    def _attempt_stopped(self, exe: Execution, flight: InFlight) -> None:
        flight.stopped = None
        flights = self.stopping.get(exe.id)
        if flights is not None:
            flights.discard(flight)
            if not flights:
                del self.stopping[exe.id]
                if self.on_stopped is not None:
                    self.on_stopped(exe)

    def resume_preempted(self, exe: Execution) -> None:
        """Start a preempted execution again from its log, as recovery would after a crash."""
        state = exe.state
        for flight in self.stopping.pop(exe.id, ()):  # given up waiting for them: late reports change nothing
            flight.stopped = None
        self.host.emit(exe, ev.Started())
        for sid, attempt in list(state.interrupted.items()):
            step = exe.steps_by_id[sid]
            done = self.after_interruption(exe, step, attempt, "the execution was preempted while this attempt ran")
            if done in ("failed", "cancelled"):
                self.step_ended(exe, sid)
        for sid, st in state.steps.items():
            if st.status == StepStatus.QUEUED and sid not in exe.inflight and sid in exe.steps_by_id:
                self.start(exe, exe.steps_by_id[sid], st.attempts or 1)
        for sid, (attempt, due) in list(state.retry_due.items()):
            if state.steps[sid].status == StepStatus.RETRYING and sid not in exe.waiting_retry:
                exe.waiting_retry[sid] = self.host.call_later(
                    max(0.0, due - time.time()), self.retry, exe, exe.steps_by_id[sid], int(attempt))
        self.advance(exe, list(exe.active_graph.nodes))
