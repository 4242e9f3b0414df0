"""The coordinator: owns executions and drives each one as a state machine on its asyncio loop.

Every transition is appended to the event log and folded into the execution's
state (:func:`runtime.state.apply`) *before* the coordinator acts on it: effects
outside this loop wait until the event's commit is durable (:mod:`actors._journal`).
The same events stream in batches to the ExecutionMonitor, which answers status
queries so this loop stays free for dispatch. A restarted coordinator rebuilds
every unfinished execution from the log (:mod:`actors._recovery`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import deque
from typing import Any

from opentelemetry import trace

from actors._dispatch import Dispatcher
from actors._execution import Execution, SubmitRequest, sop_definition
from actors._journal import Journal, load_state
from runtime.config import RESTART_GRACE_S, EngineConfig
from runtime.errors import ExecutionError, ExecutionNotFound, IdempotencyConflict, StateStoreError
from runtime.events import Event, EventKind
from runtime.history import export_history, import_history
from runtime.idempotency import differences, fingerprint
from runtime.ids import ExecutionId
from runtime.outputs import Artifacts, OutputNotData, as_data, resolve
from runtime.scheduling import Verdict, verdict
from runtime.shipped import pack_callables
from runtime.state import ExecutionState, final_status
from runtime.status import ExecutionStatus, ExecutionView, StepStatus
from runtime.telemetry import carrier_for, setup_tracing, tracer
from sop import check_new_steps, render
from sop.expressions import ExpressionError, compile_expression, strip_braces
from sop.model import OnFailure

log = logging.getLogger("sopflow.coordinator")

DECISIONS = ("rerun", "succeed", "fail", "skip")
PURGE_EVERY_S = 3600.0
AUTO_KEY_WINDOW_S = 2 * RESTART_GRACE_S
"""How long after a (re)start a submission's automatic key is also looked up in the log."""


class _Coordinator:
    """Plain class behind the Coordinator actor; see :class:`actors.Actors`."""

    def __init__(self, monitor: Any = None, failure_handler: Any = None,
                 config: EngineConfig | None = None, event_log: Any = None, owner: str | None = None) -> None:
        setup_tracing("sopflow-coordinator")
        self.config = (config or EngineConfig(state="memory://")).on_this_node()
        self.failure_handler = failure_handler
        # A state file has one owner: this engine's id (a coordinator restarted by Ray keeps it).
        self.journal = Journal(self.config, monitor, event_log, owner or f"engine-{uuid.uuid4().hex}")
        self.executions: dict[str, Execution] = {}
        self.by_key: dict[str, str] = {}
        self.finished: deque[str] = deque()
        """Finished executions still held in memory, oldest first (see ``keep_finished``)."""
        self.dispatcher = Dispatcher(self)
        self.artifacts = Artifacts(lambda: self.log)
        self.recovery: dict[str, Any] | None = None
        self.started = time.monotonic()
        self._recovering: asyncio.Task | None = None

    @property
    def log(self) -> Any:
        return self.journal.log

    # -- events ---------------------------------------------------------------------------

    def emit(self, exe: Execution, kind: EventKind, step: str | None = None,
             attempt: int | None = None, **data: Any) -> Event:
        """Append an event and fold it into the execution's state: the only way state changes."""
        event = Event(exe.id, exe.state.last_seq + 1, kind, time.time(), step, attempt,
                      exe.redact(data) if exe.secret_values else data)
        before = exe.state.status
        exe.fold(event)
        self.journal.write(exe, event, exe.state.status is not before or kind == EventKind.SUBMITTED)
        return event

    async def flush(self) -> None:
        """Make everything durable and send pending events to the monitor now."""
        await self.journal.durable()
        await self.journal.flush_monitor()

    # -- API ------------------------------------------------------------------------------

    async def submit(self, request: SubmitRequest) -> str:
        await self.ready()
        self._refuse_if_stalled()
        await self.dispatcher.preflight([request])
        execution_id = self._admit(request)
        await self.journal.durable()  # answered once the submission is in the log
        return execution_id

    async def submit_many(self, requests: list[SubmitRequest]) -> list[str]:
        """Submit a batch in one call and one commit (the fast path for thousands of executions)."""
        await self.ready()
        self._refuse_if_stalled()
        await self.dispatcher.preflight(requests)
        self._check_keys(requests)  # a conflict refuses the whole batch before any of it is admitted
        ids = [self._admit(request) for request in requests]
        await self.journal.durable()
        return ids

    def _refuse_if_stalled(self) -> None:
        """Take no new work while the store takes no writes (a full disk): say so, and that it passes."""
        stalled = self.journal.committer.stalled
        if stalled is not None:
            raise StateStoreError(
                f"sopflow is stalled: its state store takes no writes now ({stalled}); running executions "
                "wait, their events held in memory, and everything resumes by itself once the store takes "
                "writes again (free disk space); submit again then")

    def _admit(self, request: SubmitRequest) -> str:
        key = request.idempotency_key
        if key:
            known = self.by_key.get(key) or (self._key_in_log(key) and self.log.find_key(key))
            if known:
                if not key.startswith("auto:"):  # an automatic key is only ever resent as is
                    self._check_same_request(key, known, request)
                return known
        exe = Execution(ExecutionId.new(), request)
        exe.load_artifact = self.artifacts.loader(exe.id)
        self.executions[exe.id] = exe
        if key:
            self.by_key[key] = exe.id
        sop = request.sop
        exe.span = tracer().start_span(f"execution {sop.sop}", attributes={
            "sopflow.execution_id": exe.id, "sopflow.sop": sop.sop, "sopflow.version": sop.version,
            "sopflow.mode": request.mode, "sopflow.priority": request.priority})
        if request.secrets:  # kept apart from the events, dropped when the execution ends
            secret = {k: request.inputs[k] for k in request.secrets if k in request.inputs}
            self.log.put_blob(exe.id, "secrets", json.dumps(secret).encode())
        if request.has_callables:
            self.log.put_blob(exe.id, "handlers", pack_callables(request.handlers))
        public_inputs = {k: ("***" if k in request.secrets else v) for k, v in request.inputs.items()}
        self.emit(exe, EventKind.SUBMITTED, sop=sop.sop, version=sop.version, mode=request.mode,
                  priority=request.priority, steps=[s.id for s in sop.steps],
                  rollback=[s.id for s in sop.rollback], inputs=public_inputs,
                  idempotency_key=key, parent=request.parent, source=request.source,
                  request=request.describe(),
                  **({"fingerprint": _fingerprint(request)} if key and not key.startswith("auto:") else {}),
                  trace=carrier_for(exe.span) if exe.span.is_recording() else {})
        self.emit(exe, EventKind.STARTED)
        self.advance(exe, exe.graph.roots())
        return exe.id

    def _check_keys(self, requests: list[SubmitRequest]) -> None:
        """Refuse a batch in which a key is reused for a different request (earlier or in the batch)."""
        first: dict[str, SubmitRequest] = {}
        for request in requests:
            key = request.idempotency_key
            if not key or key.startswith("auto:"):
                continue
            known = self.by_key.get(key) or (self._key_in_log(key) and self.log.find_key(key))
            if known:
                self._check_same_request(key, known, request)
            elif key in first:
                found = differences(_fingerprint(first[key], with_secrets=True),
                                    _fingerprint(request, with_secrets=True))
                if found:
                    raise IdempotencyConflict(key, "another request of this batch", found)
            else:
                first[key] = request

    def _check_same_request(self, key: str, known: str, request: SubmitRequest) -> None:
        """Refuse a reused key whose request differs from the first one (see :mod:`runtime.idempotency`).

        Raises:
            IdempotencyConflict: naming the first execution and what differs.
        """
        first = self.executions.get(known)
        if first is not None:
            earlier = _fingerprint(first.request, with_secrets=True)
        else:
            submitted = self.log.read(known, 0, 1)
            earlier = submitted[0].data.get("fingerprint") if submitted else None
            if earlier is None:
                return  # submitted before fingerprints were logged: nothing to compare with
        found = differences(earlier, _fingerprint(request, with_secrets=first is not None))
        if found:
            raise IdempotencyConflict(key, known, found)

    def _key_in_log(self, key: str) -> bool:
        """Whether a key missing from memory may still be in the log (a read off the hot path).

        A user's key may be any age. An automatic key (``auto:``) is only ever sent again by a
        client retrying across a coordinator restart, within ``RESTART_GRACE_S`` of it: later
        than that, every automatic key this coordinator knows is in memory.
        """
        return not key.startswith("auto:") or time.monotonic() - self.started < AUTO_KEY_WINDOW_S

    def _get(self, execution_id: str) -> Execution:
        exe = self.executions.get(execution_id)
        if exe is None:
            if self.log.get(execution_id) is None:
                raise ExecutionNotFound(execution_id)
            raise ExecutionError(f"execution {execution_id} has finished; it can no longer be changed")
        return exe

    def state_of(self, execution_id: str) -> ExecutionState:
        """The execution's state: from memory, else folded from the log."""
        exe = self.executions.get(execution_id)
        if exe is not None:
            return exe.state
        return load_state(self.log, execution_id)

    async def wait(self, execution_id: str, timeout: float | None = None) -> ExecutionView:
        await self.ready()
        exe = self.executions.get(execution_id)
        if exe is not None:
            try:
                await asyncio.wait_for(exe.done.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        return self.state_of(execution_id).view(with_outputs=True)

    async def resolve(self, execution_id: str, value: Any) -> Any:
        """``value`` (outputs of ``execution_id``) with its artifact descriptors replaced by their values.

        Raises:
            ExecutionError: an artifact is no longer in the state store.
        """
        try:
            return await asyncio.to_thread(resolve, value, self.artifacts.loader(execution_id))
        except LookupError as e:
            raise ExecutionError(f"execution {execution_id}: {e}") from None

    async def status(self, execution_id: str) -> ExecutionView:
        return self.state_of(execution_id).view(with_outputs=True)

    async def cancel(self, execution_id: str, force: bool = False) -> ExecutionView:
        exe = self.executions.get(execution_id)
        if exe is None:
            return self.state_of(execution_id).view()  # already finished: nothing to cancel
        if not exe.state.status.terminal and not (exe.state.cancel_requested and not force):
            self.emit(exe, EventKind.CANCEL_REQUESTED, force=force)
            for handle in exe.waiting_retry.values():
                handle.cancel()
            for sid in [*exe.waiting_retry, *exe.paused_retries]:
                self.emit(exe, EventKind.STEP_CANCELLED, sid, reason="cancelled while waiting to retry")
            exe.waiting_retry.clear()
            exe.paused_retries.clear()
            if force:
                self.dispatcher.kill_inflight(exe)
            self.dispatcher.release_held(exe)
            self.advance(exe, [])
            await self.journal.durable()
        return exe.state.view()

    async def pause(self, execution_id: str) -> ExecutionView:
        exe = self._get(execution_id)
        self._require_running(exe, "pause")
        if not exe.state.paused:
            self.emit(exe, EventKind.PAUSED)
            await self.journal.durable()
        return exe.state.view()

    async def resume(self, execution_id: str) -> ExecutionView:
        exe = self._get(execution_id)
        if exe.state.paused:
            self.emit(exe, EventKind.RESUMED)
            retries, exe.paused_retries = exe.paused_retries, {}
            for sid, attempt in retries.items():
                self.dispatcher.start(exe, exe.steps_by_id[sid], attempt)
            self.dispatcher.release_held(exe)
            self.advance(exe, list(exe.active_graph.nodes))
            await self.journal.durable()
        return exe.state.view()

    async def add_steps(self, execution_id: str, steps: list[dict[str, Any]],
                        handlers: dict[str, Any]) -> ExecutionView:
        exe = self._get(execution_id)
        self._require_running(exe, "add steps to")
        if exe.state.rolling_back:
            raise ExecutionError(f"execution {execution_id} is rolling back; steps cannot be added now")
        parsed = check_new_steps(exe.sop, exe.graph, steps)  # raises SopValidationError; graph untouched
        exe.request.handlers = {**exe.request.handlers, **handlers}  # the dict may be shared by a batch
        exe.add_steps(parsed)
        self.emit(exe, EventKind.STEPS_ADDED, steps=[s.id for s in parsed], specs=steps,
                  handlers={k: v for k, v in handlers.items() if isinstance(v, str)})
        self.advance(exe, [s.id for s in parsed])
        await self.journal.durable()
        return exe.state.view()

    async def decide(self, execution_id: str, step_id: str, decision: str, reason: str = "",
                     output: Any = None) -> ExecutionView:
        """Settle a step that waits for an operator after an interrupted attempt."""
        exe = self._get(execution_id)
        if decision not in DECISIONS:
            raise ExecutionError(f"decision must be one of {', '.join(DECISIONS)}, got {decision!r}")
        st = exe.state.steps.get(step_id)
        if st is None or st.status != StepStatus.NEEDS_DECISION:
            waiting = [k for k, s in exe.state.steps.items() if s.status == StepStatus.NEEDS_DECISION]
            raise ExecutionError(f"step {step_id!r} of {execution_id} is not waiting for a decision "
                                 f"(steps waiting: {', '.join(waiting) or 'none'})")
        if decision == "succeed":  # an operator's output is a step output: data, capped like one
            try:
                output = self.artifacts.spill(exe.id, exe.redact(as_data(output)), self.config.max_inline_output_bytes)
            except OutputNotData as e:
                raise ExecutionError(f"the output given for step {step_id!r} is not JSON data: {e}; give a "
                                     "dict with str keys, a list, a str, a number, a bool or None") from None
        self.emit(exe, EventKind.DECIDED, step_id, st.attempts, decision=decision, reason=reason,
                  output=output if decision == "succeed" else None)
        if decision == "rerun" and not exe.state.cancel_requested:
            self.dispatcher.start(exe, exe.steps_by_id[step_id], st.attempts + 1)
        else:
            self.step_finished(exe, step_id)
        await self.journal.durable()
        return exe.state.view()

    def _require_running(self, exe: Execution, verb: str) -> None:
        if exe.state.status.terminal or exe.state.cancel_requested:
            raise ExecutionError(f"cannot {verb} execution {exe.id}: it is {exe.state.status.value}")

    async def list_ids(self) -> list[str]:
        return list(self.executions)

    # -- the log --------------------------------------------------------------------------

    async def history(self, execution_id: str, after_seq: int = 0) -> list[Event]:
        await self.journal.durable()
        events = self.log.read(execution_id, after_seq)
        if not events and after_seq == 0 and self.log.get(execution_id) is None:
            raise ExecutionNotFound(execution_id)
        return events

    async def export(self, execution_id: str) -> dict[str, Any]:
        await self.journal.durable()
        return export_history(self.log, execution_id)

    async def import_(self, doc: dict[str, Any], replace: bool = False) -> str:
        execution_id = str(doc.get("execution", {}).get("id", "")) if isinstance(doc, dict) else ""
        if execution_id in self.executions and not self.executions[execution_id].state.status.terminal:
            raise ExecutionError(f"execution {execution_id} is running here; it cannot be replaced")
        imported = import_history(self.log, doc, replace=replace, require_finished=True)
        if self.executions.pop(imported, None) is not None and imported in self.finished:
            self.finished.remove(imported)  # replaced: forget the old copy in memory
        return imported

    async def recover(self) -> dict[str, Any]:
        """Rebuild every unfinished execution from the log and resume it (at most once per start)."""
        await self.ready()
        return dict(self.recovery or {})

    async def ready(self) -> None:
        """Recover from the log before the first request is served."""
        if self.recovery is not None:
            return
        if self._recovering is None:
            from actors._recovery import recover

            self._recovering = asyncio.get_running_loop().create_task(recover(self))
        self.recovery = await asyncio.shield(self._recovering)
        self._schedule_purge(PURGE_EVERY_S)

    def _schedule_purge(self, delay: float) -> None:
        asyncio.get_running_loop().call_later(delay, lambda: asyncio.ensure_future(self.purge()))

    async def purge(self) -> int:
        """Remove finished executions older than the retention period from the store."""
        cutoff = time.time() - self.config.retention_s
        try:
            removed = await asyncio.to_thread(self.log.purge, ended_before=cutoff)
        finally:
            self._schedule_purge(PURGE_EVERY_S)
        if removed:
            log.info("purged %d executions that ended before %s", removed, time.ctime(cutoff))
        return removed

    async def store_problems(self) -> list[str]:
        """Inconsistencies the check at start found in the state store (empty: none)."""
        await self.ready()
        return list((self.recovery or {}).get("store_problems") or [])

    async def close_store(self) -> None:
        """Commit what is pending and close the state store, releasing its lease (the engine stops)."""
        try:
            await self.journal.durable()
        finally:
            await asyncio.to_thread(self.journal.close)

    async def state_path(self) -> str:
        """Where this coordinator keeps its log (after recovering from it)."""
        await self.ready()
        return self.config.state

    async def info(self) -> dict[str, Any]:
        await self.ready()
        stalled = self.journal.committer.stalled
        return {"state": self.config.state, "durable": self.config.durable,
                "stalled": None if stalled is None else str(stalled),
                "in_memory": len(self.executions), "recovery": self.recovery,
                "commits": dict(self.journal.committer.stats), **self.log.stats()}

    # -- the state machine ----------------------------------------------------------------

    def advance(self, exe: Execution, candidates: list[str]) -> None:
        """Start, skip or halt every candidate step whose dependencies have finished.

        Candidates are the steps whose inputs may just have changed (the dependents of a
        step that finished); deciding one may make its own dependents candidates too.
        """
        state = exe.state
        if state.status.terminal:
            return
        graph = exe.active_graph
        stopping = state.cancel_requested or (exe.rollback_requested and not state.rolling_back)
        if not (stopping or state.paused):
            statuses = exe.statuses()
            todo = list(dict.fromkeys(candidates))
            while todo:
                sid = todo.pop()
                if sid not in graph or statuses[sid] != StepStatus.PENDING:
                    continue
                step = exe.steps_by_id[sid]
                what, reason = verdict(step.trigger_rule, graph.dependencies(sid), statuses, exe.tolerated)
                if what == Verdict.WAIT:
                    continue
                if what == Verdict.RUN and step.when is not None:
                    what, reason = self._condition(exe, step)
                if what == Verdict.RUN:
                    self.dispatcher.start(exe, step, 1)  # folds step_started: statuses sees it
                    continue
                if what == Verdict.SKIP:
                    self.emit(exe, EventKind.STEP_SKIPPED, sid, reason=reason)
                elif what == Verdict.HALT:
                    self.emit(exe, EventKind.STEP_HALTED, sid, reason=reason)
                else:  # condition could not be evaluated
                    self.emit(exe, EventKind.STEP_FAILED, sid, 0, error=reason,
                              classification="permanent", final=True)
                todo.extend(graph.dependents(sid))
        self._maybe_finish(exe)

    def _condition(self, exe: Execution, step: Any) -> tuple[Verdict | None, str]:
        """RUN or SKIP by the step's ``when``; ``None`` when the condition cannot be evaluated."""
        try:
            value = compile_expression(strip_braces(step.when)).evaluate(exe.expression_context())
        except ExpressionError as e:
            return None, f"condition of step '{step.id}' failed: {e}"
        if value:
            return Verdict.RUN, ""
        return Verdict.SKIP, f"condition is false: {step.when}"

    def _maybe_finish(self, exe: Execution) -> None:
        state = exe.state
        if exe.inflight or exe.waiting_retry:
            return
        graph = exe.active_graph
        if state.cancel_requested:
            for sid in graph.nodes:
                if not state.steps[sid].status.terminal:
                    self.emit(exe, EventKind.STEP_CANCELLED, sid, reason="execution cancelled")
            self._finish(exe, ExecutionStatus.CANCELLED)
            return
        if state.paused or exe.paused_retries:
            return
        if any(not state.steps[sid].status.terminal for sid in graph.nodes):
            if exe.rollback_requested and not state.rolling_back:
                for sid in graph.nodes:
                    if not state.steps[sid].status.terminal:
                        self.emit(exe, EventKind.STEP_CANCELLED, sid, reason="rollback started")
            else:
                return  # waiting on something that has not been decided yet
        main = {s.id: state.steps[s.id].status for s in exe.sop.steps}
        if not state.rolling_back:
            status = final_status(main, cancelled=False, rolled_back=False, tolerated=exe.tolerated)
            if exe.sop.rollback and (exe.rollback_requested or status == ExecutionStatus.FAILED):
                self.emit(exe, EventKind.ROLLBACK_STARTED,
                          reason="a step asked for rollback" if exe.rollback_requested else "execution failed")
                self.advance(exe, exe.rollback_graph.roots())
                return
            self._finish(exe, status)
            return
        self._finish(exe, ExecutionStatus.FAILED)

    def _finish(self, exe: Execution, status: ExecutionStatus) -> None:
        outputs, problems = self._outputs(exe)
        self.emit(exe, EventKind.FINISHED, status=status.value, outputs=outputs, output_errors=problems)
        if exe.span is not None:
            exe.span.set_attribute("sopflow.status", status.value)
            if status in (ExecutionStatus.FAILED, ExecutionStatus.PARTIALLY_COMPLETED):
                exe.span.set_status(trace.Status(trace.StatusCode.ERROR, _why_not_completed(exe, status)))
            exe.span.end()
        self.journal.on_durable(lambda: self._finished(exe))

    def _finished(self, exe: Execution) -> None:
        """The end is durable: tell waiters (once the monitor knows too), drop secrets, trim memory."""
        self.journal.after_monitor(exe.done.set)
        if exe.secret_values:
            self.log.drop_blob(exe.id, "secrets")
        self.finished.append(exe.id)
        while len(self.finished) > self.config.keep_finished:
            old = self.executions.pop(self.finished.popleft(), None)
            if old is not None and old.state.idempotency_key:
                self.by_key.pop(old.state.idempotency_key, None)

    def _outputs(self, exe: Execution) -> tuple[dict[str, Any], dict[str, str]]:
        ctx = exe.expression_context()
        values: dict[str, Any] = {}
        problems: dict[str, str] = {}
        for key, template in exe.sop.outputs.items():
            try:  # a big value (a step's artifact, read back to render it) is stored once, not inlined
                values[key] = self.artifacts.spill(exe.id, exe.redact(render(template, ctx)),
                                                   self.config.max_inline_output_bytes)
            except ExpressionError as e:
                values[key] = None
                problems[key] = str(e)
        step_outputs = {sid: st.output for sid, st in exe.state.steps.items()
                        if st.status == StepStatus.SUCCEEDED}
        return {"outputs": values, "steps": step_outputs}, problems

    # -- attempt outcomes (called by the dispatcher) --------------------------------------

    def step_finished(self, exe: Execution, sid: str) -> None:
        step = exe.steps_by_id[sid]
        st = exe.state.steps[sid]
        if st.status == StepStatus.FAILED and step.on_failure == OnFailure.ROLLBACK:
            exe.rollback_requested = True
        self.advance(exe, exe.active_graph.dependents(sid) if sid in exe.active_graph else [])


def _fingerprint(request: SubmitRequest, *, with_secrets: bool = False) -> dict[str, Any]:
    sop = request.sop
    return fingerprint(sop.sop, sop.version, request.definition or sop_definition(sop), request.mode,
                       request.inputs, request.secrets, with_secrets=with_secrets)


def _why_not_completed(exe: Execution, status: ExecutionStatus) -> str:
    """The reason an execution's span is an error: which steps failed, and the first one's error."""
    failed = [(sid, st) for sid, st in exe.state.steps.items() if st.status == StepStatus.FAILED]
    if not failed:
        return f"{status.value}: steps were halted or cancelled"
    first_id, first = failed[0]
    more = f" and {len(failed) - 1} more" if len(failed) > 1 else ""
    return f"{status.value}: step {first_id!r}{more} failed: {first.error or 'no error recorded'}"[:300]
