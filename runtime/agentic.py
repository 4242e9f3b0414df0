"""The state machine's half of an Agent Centric Run: the agent, not the DAG, says which step runs.

An agent-centric execution starts an agent session through the
:class:`runtime.seams.AgentDriver` (host actors on Ray, or this process) instead of
its root steps. The session calls back (:meth:`AgentRunsMixin.agent_op`) to run a
step — through the same runners, retries, timeouts and events as a System Design
Run —, to record a decision with its rationale, to report its status, to record its
model and tool calls as they happen, to escalate, and to finish with its result.

Every call names the session it comes from: a session replaced after its host was
lost gets "session ended" and changes nothing. Calls that change the execution carry
the session's tool-call index, so a resumed session replaying its recording repeats
them harmlessly. A session that goes silent for ``agent_silence_s`` or whose host dies
is started again from its recording (``agent_restarts`` times); the steps it had
started keep running in the meantime, so no step runs twice.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from runtime import events as ev
from runtime.errors import ExecutionError
from runtime.seams import AgentSessionSpec
from runtime.state import AGENT_CALL
from runtime.status import ExecutionStatus, StepStatus

if TYPE_CHECKING:
    from runtime.execution import Execution
    from runtime.seams import AgentDriver, ExecutionHost

AGENT_DECISIONS = ("run", "skip", "halt")
"""Decisions that change a step: ``skip`` and ``halt`` end a pending step; any other word is only logged."""
START_S = 120.0
"""The least time a new session gets to say its first word before it counts as lost."""
MAX_TEXT = 4000
"""The longest rationale, reason or summary an agent may log (longer ones are cut): events stay small."""
MAX_DECISION = 100
STATUS_EVERY_S = 0.2
"""The agent's status is logged at most this often (a heartbeat; every decision is logged anyway)."""


class AgentSessionEnded(ExecutionError):
    """A call from an agent session that is no longer the execution's (it ended, or was replaced)."""


class AgentRunsMixin:
    """Agent-centric executions, for :class:`runtime.machine.StateMachine`."""

    host: ExecutionHost
    agents: AgentDriver | None
    replaying: bool
    agent_recording: dict[str, Any] | None

    # -- the session's life -------------------------------------------------------------------

    def begin_agent(self, exe: Execution) -> None:
        self.host.emit(exe, ev.Started())
        self.launch_agent(exe)

    def launch_agent(self, exe: Execution) -> None:
        """Start the execution's agent session: the first one, or again from its recording."""
        run = exe.agent
        if self.agents is None:
            self.agent_failed(exe, "no agent driver is installed (install sopflow with `pip install -e .`)")
            return
        recorded = exe.state.agent or {}
        run.session = int(recorded.get("session", 0)) + 1
        if self.agent_recording is not None and exe.request.parent is None and not recorded:
            recorded = self.agent_recording  # a replay: the recorded run's calls, not this run's (none yet)
        records = {"models": list(recorded.get("models", [])), "tools": dict(recorded.get("tools", {}))}
        spec = session_spec(exe, run.session, records, self.replaying)
        session = run.session
        run.handle = self.agents.start(spec, lambda error, lost: self.agent_ended(exe, session, error, lost))
        run.contact, run.heard = time.monotonic(), False
        replayed = len(records["models"]) + sum(1 for t in records["tools"].values() if "result" in t)
        self.host.emit(exe, ev.AgentStarted(session=session, agent=spec.agent_id, model=exe.sop.agent.model,
                                            host=getattr(run.handle, "where", ""), recorded=replayed))
        self._watch(exe, session)

    def _watch(self, exe: Execution, session: int) -> None:
        """Take the session as lost when it is silent for ``agent_silence_s`` (its heartbeat stopped).

        Until its first word, a session gets at least :data:`START_S`: a host that Ray starts anew
        takes seconds to come up, which is not silence.
        """
        run = exe.agent

        def check() -> None:
            if run.session != session or run.done or exe.state.status.terminal:
                return
            silence = self.host.config.agent_silence_s if run.heard else max(self.host.config.agent_silence_s,
                                                                              START_S)
            quiet = time.monotonic() - run.contact
            if quiet >= silence:
                self.agent_ended(exe, session, f"no word from the session for {quiet:.0f} s", True)
            else:
                # at least every agent_silence_s: the first word may come while a longer start wait runs
                run.watchdog = self.host.call_later(min(silence - quiet, self.host.config.agent_silence_s), check)

        run.watchdog = self.host.call_later(self.host.config.agent_silence_s, check)

    def agent_ended(self, exe: Execution, session: int, error: str | None, lost: bool) -> None:
        """The driver says session ``session`` stopped (returned, failed, or was lost)."""
        run = exe.agent
        if run.session != session or exe.state.status.terminal:
            return
        if run.handle is not None and lost:
            run.handle.cancel(lost=True)  # a silent session may still be alive somewhere: stop it for good
        run.handle = None
        if run.done:
            return  # it reported its result (or the execution is being cancelled): nothing is missing
        if lost:
            self.host.emit(exe, ev.AgentLost(session=session, reason=error or "lost"))
            if exe.state.agent and exe.state.agent["lost"] <= self.host.config.agent_restarts:
                self.launch_agent(exe)
                return
            self.agent_failed(exe, f"the agent's session was lost {exe.state.agent['lost']} times "
                                   f"(last: {error}); agent_restarts is {self.host.config.agent_restarts}")
            return
        self.agent_failed(exe, f"the agent stopped without reporting a result: {error}" if error else
                          "the agent stopped without reporting a result (it never called finish)")

    def agent_failed(self, exe: Execution, why: str) -> None:
        """End the run as failed without the agent's report; steps it had not run are skipped."""
        run = exe.agent
        run.done, run.failure = True, why
        self.host.emit(exe, ev.AgentStatus(message=why))
        self._close_steps(exe, "the agent stopped before running it")
        self.advance(exe, [])

    def stop_agent(self, exe: Execution) -> None:
        """The execution is being cancelled or ended: stop its session, answer its waiting calls."""
        run = exe.agent
        if run is None:
            return
        run.done = True
        if run.handle is not None:
            run.handle.cancel()
            run.handle = None
        if run.watchdog is not None:
            run.watchdog.cancel()
        for waiters in run.waiters.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(AgentSessionEnded(f"execution {exe.id} is {exe.state.status.value}"))
        run.waiters.clear()

    # -- what the session asks ----------------------------------------------------------------

    def agent_op(self, exe: Execution, session: int, op: str, args: dict[str, Any], call: int | None) -> Any:
        """Serve one call of session ``session``: the result, or a future of it (a step's end).

        Raises:
            AgentSessionEnded: the execution ended, or the session was replaced.
            ExecutionError: an unknown operation.
        """
        run = exe.agent
        if run is None:
            raise ExecutionError(f"execution {exe.id} is not an Agent Centric Run")
        if run.session != session or exe.state.status.terminal:
            raise AgentSessionEnded(f"session {session} of execution {exe.id} has ended "
                                    f"(the execution is {exe.state.status.value}, its session {run.session})")
        run.contact, run.heard = time.monotonic(), True
        handler = _OPS.get(op)
        if handler is None:
            raise ExecutionError(f"unknown agent operation {op!r}; known: {', '.join(sorted(_OPS))}")
        if op != "record" and args.get("records"):
            self._op_record(exe, args, None)  # model answers that ride along: logged before what they asked
        return handler(self, exe, args, call)

    def _op_record(self, exe: Execution, args: dict[str, Any], _: int | None) -> None:
        """Log the session's model and MCP tool calls as they happen (see :mod:`agents.recording`)."""
        for kind, data in args.get("records", ()):
            payload = {"model": ev.ModelCalled, "tool_started": ev.ToolStarted, "tool": ev.ToolCalled}[kind]
            self.host.emit(exe, payload.from_data(data))

    def _op_step(self, exe: Execution, args: dict[str, Any], _: int | None) -> Any:
        sid = args.get("step")
        step = exe.steps_by_id.get(sid) if isinstance(sid, str) else None
        if step is None or sid not in exe.graph:
            return {"step": sid, "status": "refused",
                    "error": f"there is no step {sid!r}; the steps are {', '.join(exe.graph.nodes)}"}
        st = exe.state.steps[sid]
        if st.status.terminal:
            return self._step_result(exe, sid)
        if exe.agent.done or exe.state.cancel_requested:
            return {"step": sid, "status": "refused", "error": f"execution {exe.id} is ending"}
        fut = asyncio.get_running_loop().create_future()
        if sid not in exe.inflight and sid not in exe.waiting_retry and sid not in exe.paused_retries \
                and st.status != StepStatus.NEEDS_DECISION:
            waiting = [d for d in exe.graph.dependencies(sid) if not exe.state.steps[d].status.terminal]
            if waiting:
                return {"step": sid, "status": "refused",
                        "error": f"step {sid!r} depends on {', '.join(waiting)}, which has not run yet"}
            self.start(exe, step, 1)
            if exe.state.steps[sid].status.terminal:  # it could not even start (a bad argument)
                return self._step_result(exe, sid)
        exe.agent.waiters.setdefault(sid, []).append(fut)
        return fut

    def agent_step_ended(self, exe: Execution, sid: str) -> None:
        """A step ended: answer the session's calls waiting for it."""
        waiters = exe.agent.waiters.pop(sid, ())
        if waiters:
            result = self._step_result(exe, sid)
            for fut in waiters:
                if not fut.done():
                    fut.set_result(result)

    def _step_result(self, exe: Execution, sid: str) -> dict[str, Any]:
        """A step's end as the agent's step tool answers it (the output as expressions see it)."""
        st = exe.state.steps[sid]
        out: dict[str, Any] = {"step": sid, "status": st.status.value, "attempts": st.attempts}
        if st.status == StepStatus.SUCCEEDED:
            out["output"] = _plain(exe.expression_context()["steps"][sid]["output"])
        if st.error:
            out["error"] = st.error
        return out

    def _op_interrupted(self, exe: Execution, args: dict[str, Any], _: int | None) -> Any:
        """A resumed session met a tool call, not idempotent, that was in flight when its session was lost:
        it may or may not have taken effect, so an operator decides (as for a step's interrupted attempt):
        ``sopflow decide <execution> call:<index> rerun|succeed|fail|skip``. Answers the decision."""
        key = f"{AGENT_CALL}{int(args['index'])}"
        decided = (exe.state.agent or {}).get("decided", {}).get(key)
        if decided is not None:
            return decided  # decided before this session (or the coordinator) was restarted
        waiting = (exe.state.agent or {}).get("waiting")
        if waiting is None or waiting["call"] != key:
            self.host.emit(exe, ev.DecisionRequired(
                reason=f"the agent's call {args['index']} to {args.get('tool')} was in flight when its session was "
                       "lost and the tool is not idempotent: it may or may not have taken effect; decide with "
                       f"`sopflow decide {exe.id} {key} rerun|succeed|fail|skip`"), key)
        fut = asyncio.get_running_loop().create_future()
        exe.agent.waiters.setdefault(key, []).append(fut)
        return fut

    def agent_call_decided(self, exe: Execution, key: str, decision: str, reason: str, output: Any,
                           by: str | None) -> None:
        """An operator settled the agent's interrupted call ``key`` (``call:<index>``).

        Raises:
            ExecutionError: no call of this execution waits for that decision.
        """
        waiting = (exe.state.agent or {}).get("waiting")
        if waiting is None or waiting["call"] != key:
            raise ExecutionError(f"no call of execution {exe.id} waits for a decision as {key!r} (waiting: "
                                 f"{waiting['call'] if waiting else 'none'})")
        self.host.emit(exe, ev.Decided(decision=decision, reason=reason, output=output, by=by), key)
        answer = exe.state.agent["decided"][key]
        for fut in exe.agent.waiters.pop(key, ()):
            if not fut.done():
                fut.set_result(answer)

    def _op_decide(self, exe: Execution, args: dict[str, Any], call: int | None) -> dict[str, Any]:
        if _repeated(exe, call):
            return {"recorded": True, "repeated": True}
        sid, decision = args.get("step") or None, str(args.get("decision") or "").strip()[:MAX_DECISION]
        rationale = str(args.get("rationale") or "").strip()[:MAX_TEXT]
        if not decision or not rationale:
            return {"recorded": False, "error": "a decision needs both 'decision' and 'rationale'"}
        if sid is not None and (not isinstance(sid, str) or sid not in exe.graph):
            return {"recorded": False, "error": f"there is no step {sid!r}; the steps are "
                                                f"{', '.join(exe.graph.nodes)}"}
        self.host.emit(exe, ev.AgentDecided(decision=decision, rationale=rationale, call=call), sid)
        if sid is not None and decision in ("skip", "halt"):
            st = exe.state.steps[sid]
            if st.status == StepStatus.PENDING and sid not in exe.inflight:
                why = f"the agent decided: {rationale}"
                self.host.emit(exe, ev.StepSkipped(reason=why) if decision == "skip" else ev.StepHalted(reason=why),
                               sid)
        self._agent_status(exe, f"{sid}: {decision}" if sid else decision, None, force=True)
        return {"recorded": True}

    def _op_status(self, exe: Execution, args: dict[str, Any], _: int | None) -> dict[str, Any]:
        progress = args.get("progress")
        if progress is not None:
            try:
                progress = min(1.0, max(0.0, float(progress)))
            except (TypeError, ValueError):
                progress = None
        self._agent_status(exe, str(args.get("message") or "")[:1000], progress)
        return {"reported": True}

    def _agent_status(self, exe: Execution, message: str, progress: float | None, force: bool = False) -> None:
        run = exe.agent
        now = time.monotonic()
        if force or now - run.status_at >= STATUS_EVERY_S:
            run.status_at = now
            self.host.emit(exe, ev.AgentStatus(message=message, progress=progress))

    def _op_escalate(self, exe: Execution, args: dict[str, Any], call: int | None) -> dict[str, Any]:
        if _repeated(exe, call):
            return {"escalated": True, "repeated": True}
        sid = args.get("step") if isinstance(args.get("step"), str) and args["step"] in exe.graph else None
        reason = str(args.get("reason") or "the agent asked for help")[:MAX_TEXT]
        self.host.emit(exe, ev.Escalated(reason=reason, classification="agent"), sid)
        self.host.emit(exe, ev.AgentDecided(decision="escalate", rationale=reason, call=call), sid)
        self.hooks.on_escalate(exe, sid, 0, {"type": "AgentEscalation", "message": reason}, "agent", reason)
        return {"escalated": True, "message": "the operators were notified"}

    def _op_finish(self, exe: Execution, args: dict[str, Any], call: int | None) -> dict[str, Any]:
        run = exe.agent
        if _repeated(exe, call):
            return {"finished": True, "repeated": True}
        running = [sid for sid in exe.inflight if sid in exe.graph]
        if running:
            return {"finished": False, "error": f"steps {', '.join(running)} still run: wait for them first"}
        outputs = args.get("outputs") if isinstance(args.get("outputs"), dict) else {}
        summary = str(args.get("summary") or "")[:MAX_TEXT]
        # a big result is stored once, as an artifact, like a step's big output (never inlined in events)
        outputs = self.host.artifacts.spill(exe.id, exe.redact(_plain(outputs)),
                                            self.host.config.max_inline_output_bytes)
        self.host.emit(exe, ev.AgentReported(summary_text=summary, outputs=outputs, call=call))
        run.done = True
        if run.watchdog is not None:
            run.watchdog.cancel()
        self._close_steps(exe, "the agent finished without running it")
        self.advance(exe, [])
        return {"finished": True, "status": exe.state.status.value}

    def _close_steps(self, exe: Execution, why: str) -> None:
        """End the main steps nobody will run now: halted below a failure, skipped otherwise."""
        state = exe.state
        for sid in exe.graph.topological_order():
            st = state.steps[sid]
            if st.status != StepStatus.PENDING or sid in exe.inflight or sid in exe.waiting_retry:
                continue
            failed = [d for d in exe.graph.dependencies(sid)
                      if state.steps[d].status in (StepStatus.FAILED, StepStatus.UPSTREAM_FAILED)
                      and d not in exe.tolerated]
            if failed:
                self.host.emit(exe, ev.StepHalted(reason=f"dependency {failed[0]} failed"), sid)
            else:
                self.host.emit(exe, ev.StepSkipped(reason=why), sid)

    def agent_final_status(self, exe: Execution, status: ExecutionStatus) -> ExecutionStatus:
        """A run whose agent gave up failed, whatever its steps did."""
        return ExecutionStatus.FAILED if exe.agent is not None and exe.agent.failure else status


def _repeated(exe: Execution, call: int | None) -> bool:
    """Whether the session's tool call ``call`` was applied already (a resumed session repeating it)."""
    return call is not None and call in exe.state.agent["calls"]


def session_spec(exe: Execution, session: int, records: dict[str, Any], replay: bool = False) -> AgentSessionSpec:
    """What the agent host gets to run session ``session`` of ``exe``'s agent (its execution context)."""
    return AgentSessionSpec(exe.id, session, exe.sop, dict(exe.request.inputs), tuple(exe.request.secrets),
                            records, replay=replay, trace=_carrier(exe), agent_id=f"{exe.sop.sop}/{exe.id}")


_OPS = {"record": AgentRunsMixin._op_record, "step": AgentRunsMixin._op_step,
        "interrupted": AgentRunsMixin._op_interrupted,
        "decide": AgentRunsMixin._op_decide, "status": AgentRunsMixin._op_status,
        "escalate": AgentRunsMixin._op_escalate, "finish": AgentRunsMixin._op_finish}


def _carrier(exe: Execution) -> dict[str, str] | None:
    from runtime.telemetry import carrier_for

    return carrier_for(exe.span) if exe.span is not None and exe.span.is_recording() else None


def _plain(value: Any) -> Any:
    """``value`` as plain JSON-like data (a lazily loaded artifact view becomes its value)."""
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
