"""The execution state machine: what happens next in an execution, decided in plain Python.

Given an event that just happened (a submission, an attempt's outcome, an
operator's request), the machine appends the events that follow from it —
steps started, skipped, halted, retried, rolled back, the execution finished —
through its :class:`runtime.seams.ExecutionHost`, and starts attempts through
the :class:`runtime.seams.StepRunner` of each step's kind. It holds no Ray and
no I/O of its own: the Coordinator actor, the in-process engine, recovery and
replay all drive this one class with different hosts and runners.

Every effect outside the machine waits for the event that announces it to be
appended first; a non-idempotent step waits for it to be *durable*. The half
that handles one attempt at a time is :mod:`runtime.attempts`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace

from runtime.agentic import AgentRunsMixin
from runtime.alerts import Alert
from runtime import events as ev
from runtime.attempts import AttemptsMixin, runner_kind
from runtime.errors import ExecutionError
from runtime.execution import Execution
from runtime.hooks import Hooks
from runtime.outputs import OutputNotData, as_data
from runtime.preemption import PreemptionMixin
from runtime.scheduling import Verdict, verdict
from runtime.seams import Admission, AgentDriver, ExecutionHost, FailurePolicy, StepRunner
from runtime.state import AGENT_CALL, final_status
from runtime.status import ExecutionStatus, StepStatus
from sop import Step, render
from sop.expressions import ExpressionError, compile_expression, strip_braces
from sop.model import OnFailure

logger = logging.getLogger("sopflow.machine")

__all__ = ["DECISIONS", "StateMachine", "runner_kind"]

DECISIONS = ("rerun", "succeed", "fail", "skip")
"""What an operator may decide for a step that waits for a decision."""


class StateMachine(AttemptsMixin, AgentRunsMixin, PreemptionMixin):
    """Advances executions; see the module docstring.

    Args:
        host: Owns the executions: the log, timers, child executions.
        runners: Runner kind (:func:`runner_kind`) -> the runner of that kind.
        admission: Run slots for attempts whose runner needs one.
        policy: What a failed attempt means.
        hooks: Observers of attempts, retries, escalations and ends.
        agents: Runs the agent sessions of Agent Centric Runs (None: such runs fail, saying so).
    """

    def __init__(self, host: ExecutionHost, runners: Mapping[str, StepRunner], admission: Admission,
                 policy: FailurePolicy, hooks: Hooks | None = None, agents: AgentDriver | None = None) -> None:
        self.host = host
        self.agents = agents
        self.replaying = False
        """An offline replay drives this machine: agent sessions may call nothing live."""
        self.agent_recording: dict[str, Any] | None = None
        """A replay's recording of the root execution's agent session (``{"models", "tools"}``)."""
        self.runners = dict(runners)
        self.admission = admission
        self.policy = policy
        self.hooks = hooks or Hooks()
        self.backoff_scale = 1.0
        """Multiplies retry backoffs (a replay sets 0: it waits none out)."""
        self._tasks: set[asyncio.Task] = set()
        self.stopping: dict[str, set[Any]] = {}
        """Execution -> its preempted attempts still ending (see :mod:`runtime.preemption`)."""
        self.on_stopped: Any = None
        """Called with an execution whose preempted attempts have all ended."""

    # -- the execution --------------------------------------------------------------------

    def begin(self, exe: Execution) -> None:
        """Start a submitted execution: its root steps run (or wait for slots), or its agent starts."""
        if exe.agentic:
            self.begin_agent(exe)
            return
        self.host.emit(exe, ev.Started())
        self.advance(exe, exe.graph.roots())

    def advance(self, exe: Execution, candidates: list[str]) -> None:
        """Start, skip or halt every candidate step whose dependencies have finished.

        Candidates are the steps whose inputs may just have changed (the dependents of a
        step that finished); deciding one may make its own dependents candidates too.
        """
        state = exe.state
        if state.status.terminal:
            return
        if exe.agentic and not state.rolling_back:
            self._maybe_finish(exe)  # the agent decides which step runs; the DAG only after it (rollback)
            return
        graph = exe.active_graph
        stopping = state.cancel_requested or (exe.rollback_requested and not state.rolling_back)
        preempted = state.status == ExecutionStatus.PREEMPTED  # its steps start when the gate resumes it
        if not (stopping or state.paused or preempted):
            statuses = exe.statuses()
            todo = list(dict.fromkeys(candidates))
            while todo:
                sid = todo.pop()
                if sid not in graph or statuses[sid] != StepStatus.PENDING or sid in exe.inflight:
                    continue  # not ready, or an attempt is already on its way (a rerun held while paused)
                step = exe.steps_by_id[sid]
                what, reason = verdict(step.trigger_rule, graph.dependencies(sid), statuses, exe.tolerated)
                if what == Verdict.WAIT:
                    continue
                if what == Verdict.RUN and step.when is not None:
                    what, reason = self._condition(exe, step)
                if what == Verdict.RUN:
                    self.start(exe, step, 1)  # folds step_started or step_queued: statuses sees it
                    continue
                if what == Verdict.SKIP:
                    self.host.emit(exe, ev.StepSkipped(reason=reason), sid)
                elif what == Verdict.HALT:
                    self.host.emit(exe, ev.StepHalted(reason=reason), sid)
                else:  # the condition could not be evaluated
                    self.host.emit(exe, ev.StepFailed(error=reason, classification="permanent"), sid, 0)
                todo.extend(graph.dependents(sid))
        self._maybe_finish(exe)

    def _condition(self, exe: Execution, step: Step) -> tuple[Verdict | None, str]:
        """RUN or SKIP by the step's ``when``; ``None`` when the condition cannot be evaluated."""
        try:
            value = compile_expression(strip_braces(step.when)).evaluate(exe.expression_context())
        except ExpressionError as e:
            return None, f"condition of step '{step.id}' failed: {e}"
        if value:
            return Verdict.RUN, ""
        return Verdict.SKIP, f"condition is false: {step.when}"

    def step_ended(self, exe: Execution, sid: str) -> None:
        """A step reached a terminal status: its dependents may now run (or a rollback start)."""
        st = exe.state.steps[sid]
        if st.status == StepStatus.FAILED and exe.steps_by_id[sid].on_failure == OnFailure.ROLLBACK:
            if not exe.rollback_requested and not exe.state.rolling_back:
                exe.rollback_requested = True
                self._stop_retries(exe, "rollback started")  # no step waits out a backoff to no end
        if exe.agentic and sid in exe.graph:
            self.agent_step_ended(exe, sid)
        self.advance(exe, exe.active_graph.dependents(sid) if sid in exe.active_graph else [])

    def _maybe_finish(self, exe: Execution) -> None:
        state = exe.state
        if exe.inflight or exe.waiting_retry:
            return
        if exe.agentic and not exe.agent.done and not state.cancel_requested:
            return  # the agent has not reported yet
        graph = exe.active_graph
        if state.cancel_requested:
            for sid in graph.nodes:
                if not state.steps[sid].status.terminal:
                    self.host.emit(exe, ev.StepCancelled(reason="execution cancelled"), sid)
            self._finish(exe, ExecutionStatus.CANCELLED)
            return
        if state.paused or exe.paused_retries:
            return
        if any(not state.steps[sid].status.terminal for sid in graph.nodes):
            if not (exe.rollback_requested and not state.rolling_back):
                return  # waiting on something that has not been decided yet
            for sid in graph.nodes:
                if not state.steps[sid].status.terminal:
                    self.host.emit(exe, ev.StepCancelled(reason="rollback started"), sid)
        if state.rolling_back:
            self._finish(exe, ExecutionStatus.FAILED)
            return
        status = self.agent_final_status(
            exe, final_status({s.id: state.steps[s.id].status for s in exe.sop.steps}, exe.tolerated))
        if exe.sop.rollback and (exe.rollback_requested or status == ExecutionStatus.FAILED):
            why = "a step asked for rollback" if exe.rollback_requested else "execution failed"
            self.host.emit(exe, ev.RollbackStarted(reason=why))
            self.advance(exe, exe.rollback_graph.roots())
            return
        self._finish(exe, status)

    def _finish(self, exe: Execution, status: ExecutionStatus) -> None:
        if exe.agentic:
            self.stop_agent(exe)
        outputs, problems = self._outputs(exe)
        self.host.emit(exe, ev.Finished(status=status.value, outputs=outputs, output_errors=problems,
                                        reason=exe.agent.failure if exe.agent is not None else None))
        if exe.span is not None:
            exe.span.set_attribute("sopflow.status", status.value)
            if status in (ExecutionStatus.FAILED, ExecutionStatus.PARTIALLY_COMPLETED):
                exe.span.set_status(trace.Status(trace.StatusCode.ERROR, _why_not_completed(exe, status)))
            exe.span.end()
        self.hooks.on_end(exe, status.value)
        self.host.on_durable(lambda: self.host.finished(exe))

    def _outputs(self, exe: Execution) -> tuple[dict[str, Any], dict[str, str]]:
        ctx = exe.expression_context()
        values: dict[str, Any] = {}
        problems: dict[str, str] = {}
        for key, template in exe.sop.outputs.items():
            try:  # a big value (a step's artifact, read back to render it) is stored once, not inlined
                values[key] = self.host.artifacts.spill(exe.id, exe.redact(render(template, ctx)),
                                                        self.host.config.max_inline_output_bytes)
            except ExpressionError as e:
                values[key] = None
                problems[key] = str(e)
        if exe.agentic and not exe.sop.outputs and exe.state.agent is not None:
            values = dict(exe.state.agent["outputs"] or {})  # the agent's own result, as it reported it
        step_outputs = {sid: st.output for sid, st in exe.state.steps.items()
                        if st.status == StepStatus.SUCCEEDED}
        return {"outputs": values, "steps": step_outputs}, problems

    def alert(self, exe: Execution, alert: Alert) -> None:
        """An alert rule fired (:func:`runtime.alerts.due_alerts`): log it (status flags it), tell the hooks."""
        if exe.state.status.terminal:
            return
        self.host.emit(exe, ev.Alerted(rule=alert.rule.value, reason=alert.reason,
                                       threshold_s=round(alert.threshold_s, 3), elapsed_s=round(alert.elapsed_s, 3)),
                       alert.step, alert.attempt)
        self.hooks.on_alert(exe, alert.step, alert.attempt, alert.rule.value, alert.reason, alert.threshold_s,
                            alert.elapsed_s)

    # -- what operators ask -------------------------------------------------------------------

    def cancel(self, exe: Execution, force: bool, by: str | None = None) -> None:
        """Start nothing new; with ``force``, also kill what runs. Steps waiting to retry end cancelled."""
        state = exe.state
        if state.status.terminal or (state.cancel_requested and not force):
            return
        self.host.emit(exe, ev.CancelRequested(force=force, by=by))
        if exe.agentic:
            self.stop_agent(exe)
        self._stop_retries(exe, "cancelled while waiting to retry")
        if force:
            self.kill_inflight(exe)
        else:  # what runs finishes; a sub-SOP's child is asked to start nothing new either
            for flight in list(exe.inflight.values()):
                if flight.handle is not None and not flight.settled:
                    flight.handle.cancel(False)
        self.withdraw_queued(exe)
        self.release_held(exe)
        self.advance(exe, [])

    def _stop_retries(self, exe: Execution, reason: str) -> None:
        """End every step waiting out a backoff (or a retry held while paused) as cancelled."""
        for timer in exe.waiting_retry.values():
            timer.cancel()
        for sid in [*exe.waiting_retry, *exe.paused_retries]:
            self.host.emit(exe, ev.StepCancelled(reason=reason), sid)
        exe.waiting_retry.clear()
        exe.paused_retries.clear()

    def pause(self, exe: Execution, by: str | None = None) -> None:
        """Start no new attempt until :meth:`resume`; running ones finish."""
        exe.require_running("pause")
        if not exe.state.paused:
            self.host.emit(exe, ev.Paused(by=by))

    def resume(self, exe: Execution, by: str | None = None) -> None:
        """Let a paused execution go on; an execution that ended while paused stays as it ended."""
        if not exe.state.paused or exe.state.status.terminal:
            return
        self.host.emit(exe, ev.Resumed(by=by))
        retries, exe.paused_retries = exe.paused_retries, {}
        for sid, attempt in retries.items():
            self.start(exe, exe.steps_by_id[sid], attempt)
        self.release_held(exe)
        self.advance(exe, list(exe.active_graph.nodes))

    def _decided_output(self, exe: Execution, step_id: str, decision: str, output: Any) -> Any:
        """An operator's output (``succeed``) as a step output: data, capped like one; None otherwise.

        Raises:
            ExecutionError: the output is not JSON data.
        """
        if decision != "succeed":
            return None
        try:
            return self.host.artifacts.spill(exe.id, exe.redact(as_data(output)),
                                             self.host.config.max_inline_output_bytes)
        except OutputNotData as e:
            what = f"call {step_id!r}" if step_id.startswith(AGENT_CALL) else f"step {step_id!r}"
            raise ExecutionError(f"the output given for {what} is not JSON data: {e}; give a dict with str keys, "
                                 "a list, a str, a number, a bool or None") from None

    def check_can_add_steps(self, exe: Execution) -> None:
        """Raise unless steps may be added to ``exe`` now (checked before they are validated against it).

        Raises:
            ExecutionError: it ended, is rolling back, or is an Agent Centric Run.
        """
        exe.require_running("add steps to")
        if exe.agentic:
            raise ExecutionError(f"execution {exe.id} is an Agent Centric Run: its agent was given the whole SOP "
                                 "when it started, so steps cannot be added; cancel it and submit the SOP with "
                                 "the new steps")
        if exe.state.rolling_back:
            raise ExecutionError(f"execution {exe.id} is rolling back; steps cannot be added now")

    def add_steps(self, exe: Execution, steps: list[Step], specs: list[dict[str, Any]],
                  handlers: dict[str, Any], by: str | None = None) -> None:
        """Add validated steps (``specs`` as the user gave them) and run those that are ready."""
        self.check_can_add_steps(exe)
        exe.request.handlers = {**exe.request.handlers, **handlers}  # the dict may be shared by a batch
        exe.add_steps(steps)
        references = {k: v for k, v in handlers.items() if isinstance(v, str)}
        self.host.emit(exe, ev.StepsAdded(steps=[s.id for s in steps], specs=specs, handlers=references, by=by))
        self.advance(exe, [s.id for s in steps])

    def decide(self, exe: Execution, step_id: str, decision: str, reason: str = "", output: Any = None,
               by: str | None = None) -> None:
        """Settle a step that waits for an operator after an interrupted attempt.

        Raises:
            ExecutionError: an unknown decision, a step not waiting, or an output that is not data.
        """
        if decision not in DECISIONS:
            raise ExecutionError(f"decision must be one of {', '.join(DECISIONS)}, got {decision!r}")
        if exe.agentic and step_id.startswith(AGENT_CALL):  # an agent's interrupted tool call
            self.agent_call_decided(exe, step_id, decision, reason, self._decided_output(exe, step_id, decision,
                                                                                          output), by)
            return
        st = exe.state.steps.get(step_id)
        if st is None or st.status != StepStatus.NEEDS_DECISION:
            waiting = [k for k, s in exe.state.steps.items() if s.status == StepStatus.NEEDS_DECISION]
            raise ExecutionError(f"step {step_id!r} of {exe.id} is not waiting for a decision "
                                 f"(steps waiting: {', '.join(waiting) or 'none'})")
        output = self._decided_output(exe, step_id, decision, output)
        self.host.emit(exe, ev.Decided(decision=decision, reason=reason, output=output, by=by), step_id, st.attempts)
        if decision == "rerun" and not exe.state.cancel_requested:
            self.start(exe, exe.steps_by_id[step_id], st.attempts + 1)
        else:
            self.step_ended(exe, step_id)


def _why_not_completed(exe: Execution, status: ExecutionStatus) -> str:
    """The reason an execution's span is an error: which steps failed, and the first one's error."""
    failed = [(sid, st) for sid, st in exe.state.steps.items() if st.status == StepStatus.FAILED]
    if not failed:
        return f"{status.value}: steps were halted or cancelled"
    first_id, first = failed[0]
    more = f" and {len(failed) - 1} more" if len(failed) > 1 else ""
    return f"{status.value}: step {first_id!r}{more} failed: {first.error or 'no error recorded'}"[:300]
