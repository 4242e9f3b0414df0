"""Rebuilding executions from the event log after the coordinator (or the whole cluster) restarted.

Every unfinished execution is folded back from its latest snapshot and the events
after it, then resumed:

- an attempt that was running has an unknown outcome (its Ray task died with the
  old coordinator, which owned it). An idempotent step runs the same attempt again
  (at-least-once); a step declared ``idempotent: false`` is not re-run behind
  anyone's back: it waits for an operator's decision (``sopflow decide``), unless
  its ``recovery`` says ``rerun`` or ``fail``;
- a ``sop:`` step whose child execution was submitted re-attaches to the child;
- an attempt that was queued for a run slot never reached Ray: it is queued again
  (not reported as interrupted);
- a retry waiting out its backoff is scheduled for the time it was due;
- every other step is re-evaluated as if its dependencies had just finished.

A step whose success is in the log is never run again.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

from runtime import events as ev
from runtime.events import Event, EventKind
from runtime.execution import Execution
from runtime.request import ENV_VARS, request_from_log
from runtime.outputs import blob_kind
from runtime.shipped import unpack_callables
from runtime.snapshots import read_snapshot
from runtime.status import ExecutionStatus, StepStatus
from runtime.telemetry import attached, tracer
from sop import check_new_steps
from sop.model import OnFailure

if TYPE_CHECKING:
    from runtime.coordinator import CoordinatorCore

logger = logging.getLogger("sopflow.recovery")


async def recover(c: CoordinatorCore) -> dict[str, Any]:
    """Rebuild and resume every unfinished execution in ``c``'s log; returns what was done."""
    started = time.perf_counter()
    store_problems = check_store(c.event_log)
    rebuilt: list[Execution] = []
    failed: dict[str, str] = {}
    for record in c.event_log.unfinished():
        if record.id in c.executions:
            continue
        try:
            exe = rebuild(c.event_log, record.id)
        except Exception as e:  # noqa: BLE001 - one unreadable history must not block the others
            logger.exception("cannot rebuild execution %s from the log", record.id)
            failed[record.id] = f"{type(e).__name__}: {e}"
            continue
        c.adopt(exe)
        rebuilt.append(exe)
    counts = {"redispatched": 0, "requeued": 0, "reattached": 0, "awaiting_decision": 0, "retries": 0}
    for exe in rebuilt:
        for what, n in resume(c, exe).items():
            counts[what] += n
    await c.journal.durable()
    if c.journal.monitor is not None:  # events on their way to it died with the old coordinator
        await c.journal.monitor.resync()
    return {"executions": len(rebuilt), **counts, "failed": failed, "store_problems": store_problems,
            "seconds": round(time.perf_counter() - started, 4)}


def check_store(event_log: Any) -> list[str]:
    """Executions whose events and state rows disagree (a damaged file or WAL): reported, not hidden."""
    check = getattr(event_log, "check", None)
    if check is None:
        return []
    try:
        found = check(deep=False)
    except Exception as e:  # noqa: BLE001 - a failed check is itself worth reporting, not fatal
        found = [f"the consistency check could not run: {e}"]
    if found:
        logger.warning("the state store %s is inconsistent (%d problem(s)); run `sopflow check --state %s`: %s",
                    event_log.path, len(found), event_log.path, "; ".join(found[:10]))
    return found


def rebuild(event_log: Any, execution_id: str) -> Execution:
    """An :class:`Execution` with the state folded from the log (snapshot + tail)."""
    first = event_log.read(execution_id, 0, 1)
    if not first or first[0].kind != EventKind.SUBMITTED:
        raise ValueError(f"the history of {execution_id} does not start with execution_submitted")
    submitted = first[0].data
    inputs = dict(submitted.get("inputs") or {})
    secrets = event_log.get_blob(execution_id, "secrets")
    if secrets:
        inputs.update(json.loads(secrets))
    request = request_from_log(submitted, inputs)
    digest = submitted["request"].get("env_vars")
    env_vars = event_log.get_blob(ENV_VARS, digest) if digest else None
    if env_vars:  # the runtime_env's env_vars, kept apart from the events
        request.runtime_env = {**(request.runtime_env or {}), "env_vars": json.loads(env_vars)}
    shipped = event_log.get_blob(execution_id, "handlers")
    if shipped:  # handlers shipped as callables by the client
        request.handlers.update(unpack_callables(shipped, execution_id))
    exe = Execution(execution_id, request)
    exe.load_artifact = lambda sha: event_log.get_blob(execution_id, blob_kind(sha))
    snap = event_log.latest_snapshot(execution_id)
    after = 0
    loaded = read_snapshot(snap[1], execution_id) if snap is not None else None
    if snap is not None and loaded is not None:
        after = snap[0]
        exe.state = loaded
        exe.forget_derived()
    for event in event_log.read(execution_id, after):
        exe.fold(event)
    _restore_added_steps(exe, event_log)
    exe.forget_derived()
    exe.rollback_requested = any(
        st.status == StepStatus.FAILED and exe.steps_by_id[sid].on_failure == OnFailure.ROLLBACK
        for sid, st in exe.state.steps.items() if sid in exe.steps_by_id)
    exe.span = _recovered_span(exe, first[0])
    return exe


def _restore_added_steps(exe: Execution, event_log: Any) -> None:
    if not exe.state.added:
        return
    handlers: dict[str, Any] = {}
    for event in event_log.read(exe.id):
        if event.kind == EventKind.STEPS_ADDED:
            handlers.update(event.data.get("handlers") or {})
    exe.request.handlers = {**exe.request.handlers, **handlers}  # the dict may be shared by a batch
    exe.add_steps(check_new_steps(exe.sop, exe.graph, exe.state.added))


def _recovered_span(exe: Execution, submitted: Event) -> Any:
    """A new execution span in the original trace (the first one died with the old coordinator)."""
    with attached(submitted.data.get("trace") or {}):
        parent = trace.get_current_span()
        return tracer().start_span(
            f"execution {exe.sop.sop} (recovered)", context=trace.set_span_in_context(parent),
            attributes={"sopflow.execution_id": exe.id, "sopflow.sop": exe.sop.sop,
                        "sopflow.version": exe.sop.version, "sopflow.recovered": True})


def resume(c: CoordinatorCore, exe: Execution) -> dict[str, int]:
    """Pick up an execution where the log left it; returns counts of what was done."""
    state = exe.state
    counts = {"redispatched": 0, "requeued": 0, "reattached": 0, "awaiting_decision": 0, "retries": 0}
    if state.status in (ExecutionStatus.QUEUED, ExecutionStatus.PREEMPTED) and not state.cancel_requested:
        # not started (a batch window, max_concurrent) or preempted: the start gate decides again
        c.emit(exe, ev.Recovered(in_flight=sorted(state.interrupted)))
        c.start_gate.submitted(exe)
        return counts
    c.start_gate.running(exe)
    # attempts a preemption stopped whose recovery rule has not been applied yet count as running
    running = [sid for sid, st in state.steps.items() if st.status == StepStatus.RUNNING or sid in state.interrupted]
    queued = [sid for sid, st in state.steps.items() if st.status == StepStatus.QUEUED and sid not in running]
    waiting = [sid for sid, st in state.steps.items() if st.status == StepStatus.NEEDS_DECISION]
    retrying = [sid for sid in state.retry_due if state.steps[sid].status == StepStatus.RETRYING]
    c.emit(exe, ev.Recovered(in_flight=running, queued=queued, awaiting_decision=waiting, retrying=retrying))
    machine = c.machine
    for sid in queued:  # never reached Ray: queue the same attempt again, nothing was interrupted
        if state.cancel_requested:
            c.emit(exe, ev.StepCancelled(reason="execution cancelled"), sid)
        else:
            machine.start(exe, exe.steps_by_id[sid], state.steps[sid].attempts or 1)
            counts["requeued"] += 1
    for sid in running:
        step = exe.steps_by_id[sid]
        attempt = state.steps[sid].attempts or 1
        child = state.children.get(sid)
        if child is not None:
            machine.reattach(exe, step, attempt, child)
            counts["reattached"] += 1
            continue
        done = machine.after_interruption(
            exe, step, attempt, "the coordinator restarted while this attempt ran; its outcome is unknown")
        if done == "failed":
            machine.step_ended(exe, sid)
        elif done in counts:
            counts[done] += 1
    for sid, (attempt, due) in list(state.retry_due.items()):
        if state.steps[sid].status != StepStatus.RETRYING or state.cancel_requested:
            continue
        if state.paused:
            exe.paused_retries[sid] = int(attempt)
        else:
            exe.waiting_retry[sid] = c.call_later(max(0.0, due - time.time()), machine.retry,
                                                  exe, exe.steps_by_id[sid], int(attempt))
        counts["retries"] += 1
    if exe.agentic and not state.status.terminal and not state.rolling_back:
        if state.cancel_requested or (state.agent is not None and state.agent["summary"] is not None):
            exe.agent.done = True  # it reported (or is being cancelled): only the ending is left
        else:
            machine.launch_agent(exe)  # from its recording: no model or tool call is made twice
    machine.advance(exe, list(exe.active_graph.nodes))
    return counts

