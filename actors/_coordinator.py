"""The coordinator: owns executions and drives each one as a state machine on its asyncio loop.

Every transition is appended to the execution's event list and folded into its
state (:func:`runtime.state.apply`) *before* the coordinator acts on it; the
same events stream in batches to the ExecutionMonitor, which answers status
queries so this loop stays free for dispatch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from actors._dispatch import Dispatcher
from actors._execution import Execution, SubmitRequest
from runtime.errors import ExecutionError, ExecutionNotFound
from runtime.events import Event, EventKind
from runtime.ids import ExecutionId
from runtime.scheduling import Verdict, verdict
from runtime.state import apply, final_status
from runtime.status import ExecutionStatus, ExecutionView, StepStatus
from runtime.telemetry import setup_tracing, tracer
from sop import check_new_steps, render
from sop.expressions import ExpressionError, compile_expression, strip_braces
from sop.model import OnFailure

log = logging.getLogger("sopflow.coordinator")

FLUSH_INTERVAL_S = 0.01
"""How long events may wait before the batch goes to the monitor."""


class _Coordinator:
    """Plain class behind the Coordinator actor; see :class:`actors.Coordinator`."""

    def __init__(self, monitor: Any = None, failure_handler: Any = None) -> None:
        setup_tracing("sopflow-coordinator")
        self.monitor = monitor
        self.failure_handler = failure_handler
        self.executions: dict[str, Execution] = {}
        self.by_key: dict[str, str] = {}
        self._outbox: list[Event] = []
        self._outbox_ready: asyncio.Event | None = None
        self._flusher: asyncio.Task | None = None
        self.dispatcher = Dispatcher(self)

    # -- events ---------------------------------------------------------------------------

    def emit(self, exe: Execution, kind: EventKind, step: str | None = None,
             attempt: int | None = None, **data: Any) -> Event:
        """Append an event and fold it into the execution's state: the only way state changes."""
        event = Event(exe.id, exe.state.last_seq + 1, kind, time.time(), step, attempt,
                      exe.redact(data) if exe.secret_values else data)
        exe.events.append(event)
        apply(exe.state, event)
        if self.monitor is not None:
            self._outbox.append(event)
            self._wake_flusher()
        return event

    def _wake_flusher(self) -> None:
        if self._outbox_ready is None:
            self._outbox_ready = asyncio.Event()
            self._flusher = asyncio.get_running_loop().create_task(self._flush_forever())
        self._outbox_ready.set()

    async def _flush_forever(self) -> None:
        assert self._outbox_ready is not None
        while True:
            await self._outbox_ready.wait()
            await asyncio.sleep(FLUSH_INTERVAL_S)  # batching window, not synchronisation
            self._outbox_ready.clear()
            batch, self._outbox = self._outbox, []
            if batch:
                try:
                    await self.monitor.apply.remote(batch)
                except Exception:  # noqa: BLE001 - the monitor is a view; never stop dispatch for it
                    log.exception("could not forward %d events to the monitor", len(batch))

    async def flush(self) -> None:
        """Send pending events to the monitor now."""
        batch, self._outbox = self._outbox, []
        if batch and self.monitor is not None:
            await self.monitor.apply.remote(batch)

    # -- API ------------------------------------------------------------------------------

    async def submit(self, request: SubmitRequest) -> str:
        if request.idempotency_key and request.idempotency_key in self.by_key:
            return self.by_key[request.idempotency_key]
        exe = Execution(ExecutionId.new(), request)
        self.executions[exe.id] = exe
        if request.idempotency_key:
            self.by_key[request.idempotency_key] = exe.id
        sop = request.sop
        exe.span = tracer().start_span(f"execution {sop.sop}", attributes={
            "sopflow.execution_id": exe.id, "sopflow.sop": sop.sop, "sopflow.version": sop.version,
            "sopflow.mode": request.mode, "sopflow.priority": request.priority})
        public_inputs = {k: ("***" if k in request.secrets else v) for k, v in request.inputs.items()}
        self.emit(exe, EventKind.SUBMITTED, sop=sop.sop, version=sop.version, mode=request.mode,
                  priority=request.priority, steps=[s.id for s in sop.steps],
                  rollback=[s.id for s in sop.rollback], inputs=public_inputs,
                  idempotency_key=request.idempotency_key, parent=request.parent, source=request.source)
        self.emit(exe, EventKind.STARTED)
        self.advance(exe, exe.graph.roots())
        return exe.id

    def _get(self, execution_id: str) -> Execution:
        exe = self.executions.get(execution_id)
        if exe is None:
            raise ExecutionNotFound(execution_id)
        return exe

    async def wait(self, execution_id: str, timeout: float | None = None) -> ExecutionView:
        exe = self._get(execution_id)
        try:
            await asyncio.wait_for(exe.done.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        else:
            await self.flush()  # whoever waited may ask the monitor next: let it know the end
        return exe.state.view(with_outputs=True)

    async def status(self, execution_id: str) -> ExecutionView:
        return self._get(execution_id).state.view(with_outputs=True)

    async def cancel(self, execution_id: str, force: bool = False) -> ExecutionView:
        exe = self._get(execution_id)
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
            self.advance(exe, [])
        return exe.state.view()

    async def pause(self, execution_id: str) -> ExecutionView:
        exe = self._get(execution_id)
        self._require_running(exe, "pause")
        if not exe.state.paused:
            self.emit(exe, EventKind.PAUSED)
        return exe.state.view()

    async def resume(self, execution_id: str) -> ExecutionView:
        exe = self._get(execution_id)
        if exe.state.paused:
            self.emit(exe, EventKind.RESUMED)
            retries, exe.paused_retries = exe.paused_retries, {}
            for sid, attempt in retries.items():
                self.dispatcher.start(exe, exe.steps_by_id[sid], attempt)
            self.advance(exe, list(exe.active_graph.nodes))
        return exe.state.view()

    async def add_steps(self, execution_id: str, steps: list[dict[str, Any]],
                        handlers: dict[str, Any]) -> ExecutionView:
        exe = self._get(execution_id)
        self._require_running(exe, "add steps to")
        if exe.state.rolling_back:
            raise ExecutionError(f"execution {execution_id} is rolling back; steps cannot be added now")
        parsed = check_new_steps(exe.sop, exe.graph, steps)  # raises SopValidationError; graph untouched
        exe.request.handlers.update(handlers)
        exe.add_steps(parsed)
        self.emit(exe, EventKind.STEPS_ADDED, steps=[s.id for s in parsed], specs=steps)
        self.advance(exe, [s.id for s in parsed])
        return exe.state.view()

    def _require_running(self, exe: Execution, verb: str) -> None:
        if exe.state.status.terminal or exe.state.cancel_requested:
            raise ExecutionError(f"cannot {verb} execution {exe.id}: it is {exe.state.status.value}")

    async def list_ids(self) -> list[str]:
        return list(self.executions)

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
                    self.dispatcher.start(exe, step, 1)
                    statuses[sid] = StepStatus.RUNNING
                    continue
                if what == Verdict.SKIP:
                    self.emit(exe, EventKind.STEP_SKIPPED, sid, reason=reason)
                elif what == Verdict.HALT:
                    self.emit(exe, EventKind.STEP_HALTED, sid, reason=reason)
                else:  # condition could not be evaluated
                    self.emit(exe, EventKind.STEP_FAILED, sid, 0, error=reason,
                              classification="permanent", final=True)
                statuses[sid] = exe.state.steps[sid].status
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
            exe.span.end()
        exe.done.set()

    def _outputs(self, exe: Execution) -> tuple[dict[str, Any], dict[str, str]]:
        ctx = exe.expression_context()
        values: dict[str, Any] = {}
        problems: dict[str, str] = {}
        for key, template in exe.sop.outputs.items():
            try:
                values[key] = render(template, ctx)
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

