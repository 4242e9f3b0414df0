"""The coordinator's logic, free of Ray: owns executions and hosts their state machine.

:class:`CoordinatorCore` keeps every running execution in memory, appends its
events through the :class:`runtime.journal.Journal` (the event log, group
commits, the monitor feed), and implements :class:`runtime.seams.ExecutionHost`
for the :class:`runtime.machine.StateMachine` that decides what happens next.
It is the Coordinator actor's class (``actors.fronts`` adds Ray: the task
runner, the failure handler, the monitor), the in-process engine's
(:mod:`runtime.local`), and a replay's (:mod:`runtime.replay`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from runtime.admission import LocalAdmission
from runtime.agentic import AgentSessionEnded
from runtime.alerts import raise_due
from runtime.batch import parse_schedule
from runtime import batch_report
from runtime.config import RESTART_GRACE_S, EngineConfig
from runtime.errors import ExecutionError, ExecutionNotFound, IdempotencyConflict, StateStoreError
from runtime import events as ev
from runtime.events import Event, EventKind
from runtime.execution import Execution
from runtime.failure import Decision, ErrorInfo, decide
from runtime.forecast import Learning, expected_s
from runtime.gate import StartGate
from runtime.history import export_history, import_history
from runtime.hooks import EscalationHook, Hook, Hooks
from runtime.idempotency import differences, fingerprint
from runtime.ids import ExecutionId
from runtime.journal import Journal, MonitorFeed, load_state
from runtime.leases import LeaseKeeper, check_requests, local_source, resources_view
from runtime.machine import StateMachine
from runtime.outputs import Artifacts, resolve
from runtime.request import ENV_VARS, SubmitRequest, sop_definition
from runtime.runners import AgentStepRunner, SubSopRunner
from runtime.scaling import scalable_shapes
from runtime.seams import Cancellable, Demand, FailurePolicy, StepRunner
from runtime.shipped import pack_callables
from runtime.state import ExecutionState
from runtime.status import ExecutionView
from runtime.telemetry import carrier_for, setup_tracing, tracer
from sop import Step, check_new_steps

logger = logging.getLogger("sopflow.coordinator")

PURGE_EVERY_S = 3600.0
AUTO_KEY_WINDOW_S = 2 * RESTART_GRACE_S
"""How long after a (re)start a submission's automatic key is also looked up in the log."""


class LocalFailurePolicy:
    """The :class:`runtime.seams.FailurePolicy` of :func:`runtime.failure.decide`, in this process."""

    async def judge(self, exe: Execution, step: Step, attempt: int, error: ErrorInfo) -> Decision:
        memory = exe.memory_mb.get(step.id, exe.sop.effective_resources(step).memory_mb)
        return decide(error, attempt, exe.sop.effective_retry(step), memory)


_AGENT_FIRE_AND_FORGET = frozenset({"status", "record"})
"""Agent calls answered without waiting for durability (see :meth:`CoordinatorCore.agent_call`)."""


class CoordinatorCore:
    """Owns executions; see the module docstring.

    Args:
        config: The engine's configuration (the state store, limits).
        task_runner: Runs handler steps (``python:``, registered handlers, ``shell``).
        runners: Further runners by kind (``mcp``); ``sop`` steps get a sub-SOP runner, ``agent`` steps
            an agent step runner (both child executions).
        policy: What a failed attempt means (default: :class:`LocalFailurePolicy`).
        monitor: Where committed events go (the ExecutionMonitor), if anywhere.
        capacity: How many attempts may run at once (``max_running_steps`` overrides it).
        event_log: The log to use instead of opening ``config.state``.
        owner: The state file's lease holder id (a coordinator restarted by Ray keeps it).
        service_name: The OpenTelemetry service name of this process's spans.
        clock: Wall-clock time for the alert rules (tests pass a controllable one).
        lease_source: Where leases on the cluster's capacity come from (the ResourceManager actor);
            default: one local node (see :func:`runtime.leases.local_source`).
    """

    def __init__(self, config: EngineConfig | None = None, *, task_runner: StepRunner,
                 runners: Mapping[str, StepRunner] | None = None, policy: FailurePolicy | None = None,
                 monitor: MonitorFeed | None = None, capacity: Callable[[], int] | None = None,
                 event_log: Any = None, owner: str | None = None,
                 service_name: str = "sopflow-coordinator", clock: Callable[[], float] = time.time,
                 lease_source: Any = None) -> None:
        setup_tracing(service_name)
        self.config = (config or EngineConfig(state="memory://")).on_this_node()
        owner = owner or f"engine-{uuid.uuid4().hex}"
        self.journal = Journal(self.config, monitor, event_log, owner)
        self.executions: dict[str, Execution] = {}
        self.by_key: dict[str, str] = {}
        self.finished_ids: deque[str] = deque()
        """Finished executions still held in memory, oldest first (see ``keep_finished``)."""
        self.artifacts = Artifacts(lambda: self.event_log)
        self.hooks = Hooks()
        all_runners = {"task": task_runner, "sop": SubSopRunner(self), "agent": AgentStepRunner(self),
                       **(runners or {})}
        admission = LocalAdmission(lambda: self.config.max_running_steps or (capacity or _default_capacity)(),
                                   self.config.priority_weights,
                                   on_blocked=lambda claim: self.start_gate.on_blocked(claim))
        self.kept_env_vars: dict[bytes, str] = {}
        """runtime_env ``env_vars`` (as JSON) stored this life -> their blob's reference (see :meth:`_described`)."""
        self.machine = StateMachine(self, all_runners, admission, policy or LocalFailurePolicy(), self.hooks)
        # The ResourceManager's lease (runtime.leases): steps placed on nodes by their resources.
        self.leases = None if not self.config.resource_manager else LeaseKeeper(
            admission, lease_source or local_source(admission.capacity, self.config.resource_lease_ttl_s), owner)
        self.scalable_shapes: list[Any] = scalable_shapes() if self.config.autoscale else []
        """Node shapes the autoscaler could add: a step fitting one of them is not refused at submit."""
        self.recovery: dict[str, Any] | None = None
        self.started = time.monotonic()
        self._recovering: asyncio.Task | None = None
        self.clock = clock
        self.start_gate = StartGate(self, expected_s=expected_s, clock=clock)
        self.machine.on_stopped = lambda exe: self.start_gate.poke_soon()
        """Where executions wait before starting: batch windows and packing, ``max_concurrent``, preemption."""
        self.learning = Learning(lambda: self.event_log)
        """Learned estimates of SOP steps (runtime/estimates.py): expected durations, ETAs, allocations."""

    @property
    def event_log(self) -> Any:
        """The event log (the journal's)."""
        return self.journal.log

    # -- ExecutionHost ----------------------------------------------------------------------

    def emit(self, exe: Execution, payload: ev.Payload, step: str | None = None,
             attempt: int | None = None) -> Event:
        """Append an event and fold it into the execution's state: the only way state changes."""
        data = payload.to_data()
        event = Event(exe.id, exe.state.last_seq + 1, payload.kind, time.time(), step, attempt,
                      exe.redact(data) if exe.secret_values else data)
        before = exe.state.status
        exe.fold(event)
        self.journal.write(exe, event, exe.state.status is not before or payload.kind == EventKind.SUBMITTED)
        self.learning.feed(exe, event)
        return event

    def on_durable(self, callback: Callable[[], None]) -> None:
        self.journal.on_durable(callback)

    def call_later(self, delay_s: float, callback: Callable[..., None], *args: Any) -> Cancellable:
        return asyncio.get_running_loop().call_later(delay_s, callback, *args)

    async def submit_child(self, request: SubmitRequest) -> str:
        parent = self.executions.get(request.parent or "")
        if parent is not None and parent.request.schedule is not None and request.schedule is None:
            # a batch execution's sub-SOP is batch work too (it must not preempt other batch work),
            # free to start now: its parent started inside its window
            request.schedule = {"not_before": time.time()}
        return await self.submit(request)

    async def cancel_child(self, child_id: str, force: bool) -> None:
        await self.cancel(child_id, force=force, by="its parent execution")

    async def wait_child(self, child_id: str) -> ExecutionState:
        child = self.executions.get(child_id)
        if child is not None:
            await child.done.wait()
        return self.state_of(child_id)

    def finished(self, exe: Execution) -> None:
        """The end is durable: tell waiters (once the monitor knows too), drop secrets, trim memory."""
        self.journal.after_monitor(exe.done.set)
        self.start_gate.ended(exe)
        if exe.secret_values:
            self.event_log.drop_blob(exe.id, "secrets")
        self.finished_ids.append(exe.id)
        while len(self.finished_ids) > self.config.keep_finished:
            old = self.executions.pop(self.finished_ids.popleft(), None)
            if old is not None and old.state.idempotency_key:
                self.by_key.pop(old.state.idempotency_key, None)

    # -- submitting ---------------------------------------------------------------------------

    async def submit(self, request: SubmitRequest) -> str:
        await self.ready()
        self._refuse_if_stalled()
        _check_schedule(request)
        await self._preflight([request])
        execution_id = self._create(request)
        if request.schedule:
            await batch_report.remember(self, [request], [execution_id])
        await self.journal.durable()  # answered once the submission is in the log
        return execution_id

    async def submit_many(self, requests: list[SubmitRequest]) -> list[str]:
        """Submit a batch in one call and one commit (the fast path for thousands of executions)."""
        await self.ready()
        self._refuse_if_stalled()
        for request in requests:
            _check_schedule(request)
        await self._preflight(requests)
        self._check_keys(requests)  # a conflict refuses the whole batch before any of it is created
        ids = [self._create(request) for request in requests]
        await batch_report.remember(self, requests, ids)
        await self.journal.durable()
        return ids

    async def _preflight(self, requests: list[SubmitRequest]) -> None:
        """Let each runner refuse requests it cannot run (say, handlers that do not import on the workers)."""
        check_requests(self.leases, requests, self.scalable_shapes)  # a step no node can ever run
        for runner in self.machine.runners.values():
            check = getattr(runner, "preflight", None)
            if check is not None:
                await check(requests)

    def _refuse_if_stalled(self) -> None:
        """Take no new work while the store takes no writes (a full disk): say so, and that it passes."""
        stalled = self.journal.committer.stalled
        if stalled is not None:
            raise StateStoreError(
                f"sopflow is stalled: its state store takes no writes now ({stalled}); running executions "
                "wait, their events held in memory, and everything resumes by itself once the store takes "
                "writes again (free disk space); submit again then")

    def _described(self, request: SubmitRequest) -> dict[str, Any]:
        """The request as its ``execution_submitted`` event records it.

        A runtime_env's ``env_vars`` may hold credentials: they are stored apart, once per
        distinct value in this coordinator's life, under a random reference the event names.
        """
        described = request.describe()
        env_vars = (request.runtime_env or {}).get("env_vars")
        if env_vars:
            value = json.dumps(env_vars, sort_keys=True).encode()
            ref = self.kept_env_vars.get(value)
            if ref is None:
                ref = self.kept_env_vars[value] = uuid.uuid4().hex
                self.event_log.put_blob(ENV_VARS, ref, value)
            described["env_vars"] = ref
        return described

    def _create(self, request: SubmitRequest) -> str:
        """Create and begin an execution for ``request`` (or find the one its idempotency key made)."""
        key = request.idempotency_key
        if key:
            known = self.by_key.get(key) or (self._key_in_log(key) and self.event_log.find_key(key))
            if known:
                if not key.startswith("auto:"):  # an automatic key is only ever resent as is
                    self._check_same_request(key, known, request)
                return known
        exe = Execution(ExecutionId.new(), request)
        self.adopt(exe)
        sop = request.sop
        exe.span = tracer().start_span(f"execution {sop.sop}", attributes={
            "sopflow.execution_id": exe.id, "sopflow.sop": sop.sop, "sopflow.version": sop.version,
            "sopflow.mode": request.mode, "sopflow.priority": request.priority})
        if request.secrets:  # kept apart from the events, dropped when the execution ends
            secret = {k: request.inputs[k] for k in request.secrets if k in request.inputs}
            self.event_log.put_blob(exe.id, "secrets", json.dumps(secret).encode())
        if request.has_callables:
            self.event_log.put_blob(exe.id, "handlers", pack_callables(request.handlers))
        public_inputs = {k: ("***" if k in request.secrets else v) for k, v in request.inputs.items()}
        fingerprinted = {"fingerprint": _fingerprint(request)} if key and not key.startswith("auto:") else {}
        self.emit(exe, ev.Submitted(sop=sop.sop, version=sop.version, mode=request.mode, priority=request.priority,
                                    priority_class=request.priority_class,
                                    steps=[s.id for s in sop.steps], rollback=[s.id for s in sop.rollback],
                                    inputs=public_inputs, idempotency_key=key, parent=request.parent,
                                    source=request.source, request=self._described(request),
                                    trace=carrier_for(exe.span) if exe.span.is_recording() else {},
                                    submitted_by=request.submitted_by or (
                                        f"execution {request.parent}" if request.parent else ""),
                                    agent=request.agent or (f"{sop.sop}/{exe.id}" if exe.agentic else None),
                                    schedule=request.schedule, **fingerprinted))
        self.start_gate.submitted(exe)  # real-time: begins now; batch or over max_concurrent: may wait
        return exe.id

    def adopt(self, exe: Execution) -> None:
        """Hold ``exe`` in memory as a running execution (a new one, or one rebuilt from the log)."""
        exe.load_artifact = self.artifacts.loader(exe.id)
        self.learning.adopt(exe)
        self.executions[exe.id] = exe
        key = exe.request.idempotency_key or exe.state.idempotency_key
        if key:
            self.by_key[key] = exe.id

    def _check_keys(self, requests: list[SubmitRequest]) -> None:
        """Refuse a batch in which a key is reused for a different request (earlier or in the batch)."""
        first: dict[str, SubmitRequest] = {}
        for request in requests:
            key = request.idempotency_key
            if not key or key.startswith("auto:"):
                continue
            known = self.by_key.get(key) or (self._key_in_log(key) and self.event_log.find_key(key))
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
            submitted = self.event_log.read(known, 0, 1)
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

    # -- following and controlling ------------------------------------------------------------

    def _running(self, execution_id: str) -> Execution:
        exe = self.executions.get(execution_id)
        if exe is None:
            if self.event_log.get(execution_id) is None:
                raise ExecutionNotFound(execution_id)
            raise ExecutionError(f"execution {execution_id} has finished; it can no longer be changed")
        return exe

    def state_of(self, execution_id: str) -> ExecutionState:
        """The execution's state: from memory, else folded from the log."""
        exe = self.executions.get(execution_id)
        if exe is not None:
            return exe.state
        return load_state(self.event_log, execution_id)

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

    async def forecast(self, execution_id: str) -> dict[str, Any]:
        """A running execution's ``expected_duration_s``, ``eta`` and ``queue_position`` (empty once
        it finished, or when this coordinator does not hold it): see :mod:`runtime.forecast`."""
        exe = self.executions.get(execution_id)
        if exe is None or exe.state.status.terminal:
            return {}
        return self.learning.forecast(exe, self.machine.admission.position(execution_id))

    async def estimates(self, sop: str) -> dict[str, Any]:
        """What the history of the SOP named ``sop`` says, per step (for ``sopflow suggest``)."""
        await self.ready()
        return self.learning.known(sop)

    async def cancel(self, execution_id: str, force: bool = False, by: str | None = None) -> ExecutionView:
        await self.ready()  # a request that arrives while recovering acts on the recovered execution
        exe = self.executions.get(execution_id)
        if exe is None:
            return self.state_of(execution_id).view()  # already finished: nothing to cancel
        self.machine.cancel(exe, force, by)
        await self.journal.durable()
        return exe.state.view()

    async def pause(self, execution_id: str, by: str | None = None) -> ExecutionView:
        return await self._operate(execution_id, lambda exe: self.machine.pause(exe, by))

    async def resume(self, execution_id: str, by: str | None = None) -> ExecutionView:
        return await self._operate(execution_id, lambda exe: self.machine.resume(exe, by))

    async def add_steps(self, execution_id: str, steps: list[dict[str, Any]],
                        handlers: dict[str, Any], by: str | None = None) -> ExecutionView:
        def add(exe: Execution) -> None:
            self.machine.check_can_add_steps(exe)
            parsed = check_new_steps(exe.sop, exe.graph, steps)  # raises SopValidationError; graph untouched
            self.machine.add_steps(exe, parsed, steps, handlers, by)

        return await self._operate(execution_id, add)

    async def decide(self, execution_id: str, step_id: str, decision: str, reason: str = "",
                     output: Any = None, by: str | None = None) -> ExecutionView:
        """Settle a step that waits for an operator after an interrupted attempt."""
        return await self._operate(execution_id,
                                   lambda exe: self.machine.decide(exe, step_id, decision, reason, output, by))

    async def _operate(self, execution_id: str, act: Callable[[Execution], None]) -> ExecutionView:
        """Apply an operator's request to a running execution; answered once its events are durable."""
        await self.ready()  # a request that arrives while recovering acts on the recovered execution
        exe = self._running(execution_id)
        act(exe)
        await self.journal.durable()
        return exe.state.view()

    async def step_progress(self, execution_id: str, step_id: str, attempt: int, fraction: float | None,
                            message: str = "") -> None:
        """A step's worker reported progress (``context.report_progress``); late or stray reports are dropped."""
        exe = self.executions.get(execution_id)
        flight = exe.inflight.get(step_id) if exe is not None else None
        if exe is not None and flight is not None and flight.number == attempt:
            self.machine.progress(exe, flight, fraction, message)

    async def agent_call(self, execution_id: str, session: int, op: str, args: dict[str, Any],
                         call: int | None = None) -> Any:
        """One call of an execution's agent session (see :mod:`runtime.agentic`); answered once what
        it changed is durable (a step call: once the step has ended). Status reports and recorded model
        answers are answered at once: losing the last of them in a crash costs a repeated model call,
        not a wrong outcome; a ``tool_started`` record waits, since the call it announces must not
        run before an interruption of it can be seen.

        Raises:
            AgentSessionEnded: the execution ended, or the session was replaced by a newer one.
        """
        await self.ready()
        exe = self.executions.get(execution_id)
        if exe is None:
            raise AgentSessionEnded(f"execution {execution_id} is not running")
        result = self.machine.agent_op(exe, session, op, args, call)
        if isinstance(result, asyncio.Future):
            result = await result
        if op not in _AGENT_FIRE_AND_FORGET or any(kind == "tool_started" for kind, _ in args.get("records", ())):
            await self.journal.durable()
        return result

    async def batch_report(self, name: str) -> dict[str, Any]:
        """The report of a named batch (see :func:`runtime.batch_report.build`)."""
        await self.ready()
        return await batch_report.build(self, name)

    async def list_ids(self) -> list[str]:
        return list(self.executions)

    async def flush(self) -> None:
        """Make everything durable and send pending events to the monitor now."""
        await self.journal.durable()
        await self.journal.flush_monitor()

    # -- escalation hooks ----------------------------------------------------------------------

    async def add_hook(self, name: str, hook: Hook) -> list[str]:
        """Add (or replace) a hook under ``name``; its registration is kept in the state store."""
        await self.ready()
        from runtime.shipped import pack_hook

        await asyncio.to_thread(self.event_log.put_setting, f"hook:{name}", pack_hook(hook))
        self.hooks.add(name, hook)
        return self.hooks.names

    async def add_escalation_hook(self, name: str, target: Any) -> list[str]:
        """Call ``target`` (a PythonHook or WebhookHook) when a step escalates."""
        return await self.add_hook(name, EscalationHook(target))

    async def remove_hook(self, name: str) -> list[str]:
        await self.ready()
        await asyncio.to_thread(self.event_log.drop_setting, f"hook:{name}")
        self.hooks.remove(name)
        return self.hooks.names

    remove_escalation_hook = remove_hook

    async def hook_names(self) -> list[str]:
        await self.ready()
        return self.hooks.names

    async def drain_hooks(self) -> int:
        """Wait for the hook calls under way; returns how many were waited for."""
        return await self.hooks.drain()

    def _load_hooks(self) -> None:
        """Register the hooks kept in the state store (after a start or restart), in the order added."""
        from runtime.shipped import unpack_hook

        loaded = []
        for key, blob in self.event_log.settings("hook:").items():
            name = key[len("hook:"):]
            try:
                hook, added = unpack_hook(blob, name)
            except Exception as e:  # noqa: BLE001 - one hook that cannot load must not stop the engine
                logger.warning("hook %s cannot be loaded here: %s", name, e)
                continue
            loaded.append((added, name, hook if isinstance(hook, Hook) else EscalationHook(hook)))
        for _, name, hook in sorted(loaded, key=lambda found: found[:2]):
            self.hooks.add(name, hook)

    # -- the log --------------------------------------------------------------------------------

    async def history(self, execution_id: str, after_seq: int = 0) -> list[Event]:
        await self.journal.durable()
        events = self.event_log.read(execution_id, after_seq)
        if not events and after_seq == 0 and self.event_log.get(execution_id) is None:
            raise ExecutionNotFound(execution_id)
        return events

    async def logs(self, query: Any) -> list[Any]:
        """Audit log entries (a :class:`runtime.audit.LogQuery`), including everything written so far."""
        await self.journal.durable()
        return await asyncio.to_thread(self.event_log.logs, query)

    async def export(self, execution_id: str) -> dict[str, Any]:
        await self.journal.durable()
        return export_history(self.event_log, execution_id)

    async def import_(self, doc: dict[str, Any], replace: bool = False) -> str:
        execution_id = str(doc.get("execution", {}).get("id", "")) if isinstance(doc, dict) else ""
        if execution_id in self.executions and not self.executions[execution_id].state.status.terminal:
            raise ExecutionError(f"execution {execution_id} is running here; it cannot be replaced")
        imported = import_history(self.event_log, doc, replace=replace, require_finished=True)
        if self.executions.pop(imported, None) is not None and imported in self.finished_ids:
            self.finished_ids.remove(imported)  # replaced: forget the old copy in memory
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
            from runtime.recovery import recover

            self._load_hooks()
            self.learning.start()
            self._recovering = asyncio.get_running_loop().create_task(self._lease_then_recover(recover))
        recovered = await asyncio.shield(self._recovering)
        if self.recovery is None:  # the first caller back schedules the timers (once per start)
            self.recovery = recovered
            self._schedule_purge(PURGE_EVERY_S)
            self._schedule_alert_check()

    async def _lease_then_recover(self, recover: Any) -> Any:
        """The first lease comes before recovery, so recovered steps are placed on nodes."""
        if self.leases is not None:
            await self.leases.start()
        return await recover(self)

    async def resources(self) -> dict[str, Any]:
        """Per node: total, leased and used CPU, memory and GPU; steps queued and running."""
        await self.ready()
        return resources_view(self.machine.admission, self.leases)

    def _schedule_purge(self, delay: float) -> None:
        asyncio.get_running_loop().call_later(delay, lambda: asyncio.ensure_future(self.purge()))

    def _schedule_alert_check(self) -> None:
        asyncio.get_running_loop().call_later(self.config.alert_check_every_s,
                                              lambda: asyncio.ensure_future(self._alert_tick()))

    async def _alert_tick(self) -> None:
        try:
            await self.check_alerts()
        except Exception:  # noqa: BLE001 - a failed check must not stop later ones
            logger.exception("checking the alert rules failed")
        finally:
            self._schedule_alert_check()

    async def check_alerts(self) -> int:
        """Raise the alerts that are due now (by ``clock``) in running executions; returns how many."""
        return raise_due(self.executions.values(), self.machine, self.config, self.clock())

    async def purge(self) -> int:
        """Remove finished executions older than the retention period from the store."""
        now = time.time()
        cutoff = now - self.config.retention_s
        try:
            removed = await asyncio.to_thread(self.event_log.purge, ended_before=cutoff,
                                              logs_before=now - self.config.log_retention_s)
        finally:
            self._schedule_purge(PURGE_EVERY_S)
        if removed:
            logger.info("purged %d executions that ended before %s", removed, time.ctime(cutoff))
        return removed

    # -- triggers: the trigger actor keeps its records in this store (one writer per state file) --

    async def trigger_settings(self) -> dict[str, bytes]:
        """Every trigger record in the state store (see :mod:`runtime._trigger_state`)."""
        return await asyncio.to_thread(self.event_log.settings, _TRIGGER_PREFIX)

    async def put_trigger_setting(self, key: str, value: bytes) -> None:
        """Keep one trigger record; only ``trigger:`` keys, so no other setting can be overwritten."""
        if not key.startswith(_TRIGGER_PREFIX):
            raise ValueError(f"a trigger record's key starts with {_TRIGGER_PREFIX!r}, got {key!r}")
        await asyncio.to_thread(self.event_log.put_setting, key, value)

    async def drop_trigger_setting(self, key: str) -> None:
        if not key.startswith(_TRIGGER_PREFIX):
            raise ValueError(f"a trigger record's key starts with {_TRIGGER_PREFIX!r}, got {key!r}")
        await asyncio.to_thread(self.event_log.drop_setting, key)

    async def ended(self, execution_ids: list[str]) -> list[str]:
        """Those of ``execution_ids`` that have ended or are unknown (a trigger's ``max_concurrent``)."""
        out = []
        for eid in execution_ids:
            exe = self.executions.get(eid)
            if exe is not None:
                if exe.state.status.terminal:
                    out.append(eid)
                continue
            record = self.event_log.get(eid)
            if record is None or record.terminal:
                out.append(eid)
        return out

    async def store_problems(self) -> list[str]:
        """Inconsistencies the check at start found in the state store (empty: none)."""
        await self.ready()
        return list((self.recovery or {}).get("store_problems") or [])

    async def close_store(self) -> None:
        """Commit what is pending and close the state store, releasing its lease (the engine stops)."""
        if self.leases is not None:
            self.leases.stop()
        try:
            await self.journal.durable()
            await self.learning.save()
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
                "commits": dict(self.journal.committer.stats), **self.event_log.stats(),
                "agent_hosts": await self._agent_hosts(),
                "resources": resources_view(self.machine.admission, self.leases)}

    async def waiting_demands(self) -> list[Demand]:
        """What each attempt queued for a run slot needs: the unmet demand the autoscaler is asked for
        (see :mod:`runtime.scaling`). Empty under a fixed ``max_running_steps``: more nodes would not
        start those attempts any sooner. Held attempts of paused executions wait for a resume, not
        for capacity."""
        if self.config.max_running_steps:
            return []
        from runtime.attempts import _claim  # the one place an attempt's demand is worked out

        return [_claim(exe, flight.step).demand for exe in self.executions.values()
                for flight in exe.inflight.values()
                if flight.launch is not None and flight.needs_slot and not flight.holds_slot
                and not flight.settled and not any(flight is held for held in exe.held)]

    async def _agent_hosts(self) -> list[dict[str, Any]]:
        """Each agent host: its sessions and its MCP data sources' circuit breakers (none before the
        first Agent Centric Run or ``mcp:`` step)."""
        hosts = getattr(self.machine.agents, "info", None)
        return await hosts() if hosts is not None else []


_TRIGGER_PREFIX = "trigger:"


def _check_schedule(request: SubmitRequest) -> None:
    """Validate a request's schedule and keep it as the log records it (epoch seconds; see
    :func:`runtime.batch.parse_schedule`).

    Raises:
        ScheduleError: a field of it is not valid (named in the message).
    """
    if request.schedule is not None:
        request.schedule = parse_schedule(request.schedule, time.time()).to_data()  # type: ignore[union-attr]


def _default_capacity() -> int:
    import os

    return max(16, (os.cpu_count() or 2) * 8)


def _fingerprint(request: SubmitRequest, *, with_secrets: bool = False) -> dict[str, Any]:
    sop = request.sop
    return fingerprint(sop.sop, sop.version, request.definition or sop_definition(sop), request.mode,
                       request.inputs, request.secrets, with_secrets=with_secrets)

