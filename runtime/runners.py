"""Step runners that need no Ray: handlers in this process, sub-SOPs and agent steps as child executions.

The Ray task runner lives in :mod:`actors`; a replay's recorded runner in
:mod:`runtime.replay`. Each implements :class:`runtime.seams.StepRunner`.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import json
import threading
from typing import Any

from runtime.failure import ErrorInfo, error_from_exception
from runtime.handlers import StepOutcome, StepTask, run_task
from runtime.masking import secret_problems
from runtime.request import SubmitRequest, sop_definition
from runtime.seams import AttemptReport, AttemptSpec, ExecutionHost
from sop import Sop, Step
from sop.expressions import ExpressionError, compile_expression, find_references


class InProcessRunner:
    """Runs a handler step in a thread of this process (the in-process engine's task runner).

    A cancelled attempt is reported cancelled at once; its thread cannot be killed and
    runs to its end, its result ignored. Shell steps run in their own process group
    as anywhere else, and are killed with it.
    """

    needs_slot = True

    def __init__(self, prepare: Any = None) -> None:
        self.prepare = prepare
        """Called with each :class:`StepTask` before it runs (a replay feeds recorded values in)."""
        self.runs = 0

    def start(self, spec: AttemptSpec, report: AttemptReport) -> _ThreadAttempt:
        assert spec.task is not None
        task = spec.task if self.prepare is None else self.prepare(spec)
        # Every handler here shares this process: its memory is no one attempt's to limit.
        loop = asyncio.get_running_loop()
        task = dataclasses.replace(task, memory_mb=None, progress_to=lambda fraction, message: (
            loop.call_soon_threadsafe(report.progress, fraction, message)))
        attempt = _ThreadAttempt(report)
        attempt.task = asyncio.get_running_loop().create_task(self._run(task, attempt))
        return attempt

    async def _run(self, task: StepTask, attempt: _ThreadAttempt) -> None:
        outcome = await _in_own_thread(run_task, task)
        self.runs += 1
        attempt.done(outcome)


async def _in_own_thread(fn: Any, arg: Any) -> Any:
    """``fn(arg)`` in a thread of its own: every attempt holding a run slot really runs (a shared pool
    would cap them at its size, and starve the engine's own work behind blocked handlers). The
    thread is a daemon: one abandoned by a forced cancel never holds up the process's exit."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def deliver(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def work() -> None:
        result, error = None, None
        try:
            result = fn(arg)
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting task
            error = e
        try:
            loop.call_soon_threadsafe(deliver, result, error)
        except RuntimeError:  # the engine was shut down meanwhile: no one waits for this any more
            pass

    context = contextvars.copy_context()  # as asyncio.to_thread does (the trace context)
    threading.Thread(target=context.run, args=(work,), name=f"sopflow-step-{getattr(arg, 'key', '')}",
                     daemon=True).start()
    return await future


class _ThreadAttempt:
    __slots__ = ("report", "task", "cancelled")

    def __init__(self, report: AttemptReport) -> None:
        self.report = report
        self.task: asyncio.Task | None = None
        self.cancelled = False

    def done(self, outcome: StepOutcome) -> None:
        if not self.cancelled:
            self.report.settle(outcome)

    def cancel(self, force: bool) -> None:
        if force and not self.cancelled:
            self.cancelled = True
            self.report.settle(None, ErrorInfo("Cancelled", "the attempt was cancelled", retryable=False,
                                               origin="cancel"))


class SubSopRunner:
    """Runs a ``sop:`` step as a child execution of the same host and settles it by how the child ended."""

    needs_slot = False  # the child's steps take their own slots
    what = "sub-SOP"
    error_prefix = "SubSop"

    def __init__(self, host: ExecutionHost) -> None:
        self.host = host

    def start(self, spec: AttemptSpec, report: AttemptReport) -> _ChildAttempt:
        attempt = _ChildAttempt(self.host, report)
        run = _settle_on_error(self._start_child(spec, attempt), attempt)
        attempt.task = asyncio.get_running_loop().create_task(run)
        return attempt

    def reattach(self, spec: AttemptSpec, child_id: str, report: AttemptReport) -> _ChildAttempt:
        """Follow a child started before a restart."""
        attempt = _ChildAttempt(self.host, report, child_id)
        run = _settle_on_error(self._watch(spec, attempt, child_id), attempt)
        attempt.task = asyncio.get_running_loop().create_task(run)
        return attempt

    def child_request(self, spec: AttemptSpec) -> SubmitRequest | ErrorInfo:
        """The child execution's request for this attempt, or why its arguments make none (not retried)."""
        exe, step = spec.execution, spec.step
        template = exe.request.subsops[step.handler[len("sop:"):]]
        request = dataclasses.replace(template, inputs={**_defaults(template), **spec.args}, parent=exe.id,
                                      idempotency_key=child_key(spec),
                                      # a child's steps run with its parent's code
                                      runtime_env=template.runtime_env or exe.request.runtime_env)
        if problems := secret_problems(template.secrets, request.inputs):  # the rule submit applies
            return ErrorInfo("SubmissionError", f"step {step.id!r}: " + "; ".join(problems), retryable=False)
        return request

    async def _start_child(self, spec: AttemptSpec, attempt: _ChildAttempt) -> None:
        request = self.child_request(spec)
        if isinstance(request, ErrorInfo):
            attempt.report.settle(None, request)
            return
        child_id = await self.host.submit_child(request)
        attempt.child = child_id
        attempt.report.child_started(child_id)
        if attempt.cancel_requested is not None:  # cancelled while the child was being submitted
            await self.host.cancel_child(child_id, attempt.cancel_requested)
        await self._watch(spec, attempt, child_id)

    def why_not_completed(self, state: Any) -> str:
        """What to add to the step's error about a child that did not complete (nothing for a sub-SOP:
        its own steps' errors say it)."""
        return ""

    async def _watch(self, spec: AttemptSpec, attempt: _ChildAttempt, child_id: str) -> None:
        exe, step = spec.execution, spec.step
        state = await self.host.wait_child(child_id)
        key = f"{exe.id}/{step.id}/{spec.attempt}"
        if state.status.value == "completed":
            value = (state.outputs or {}).get("outputs")
            # The child's big outputs are its artifacts: the parent's step output needs its own copy.
            await asyncio.to_thread(self.host.artifacts.adopt, child_id, exe.id, value)
            attempt.report.settle(StepOutcome(key, True, value))
        else:
            cancelled = state.status.value == "cancelled"
            why = self.why_not_completed(state)
            attempt.report.settle(None, ErrorInfo(
                f"{self.error_prefix}Cancelled" if cancelled else f"{self.error_prefix}Failed",
                f"{self.what} execution {child_id} ended {state.status.value}{why}", retryable=False,
                origin="cancel" if cancelled else "handler"))


class _ChildAttempt:
    __slots__ = ("host", "report", "child", "task", "cancel_requested")

    def __init__(self, host: ExecutionHost, report: AttemptReport, child: str | None = None) -> None:
        self.host, self.report, self.child = host, report, child
        self.task: asyncio.Task | None = None
        self.cancel_requested: bool | None = None

    def cancel(self, force: bool) -> None:
        """Cancel the child execution; the step settles by how the child ends."""
        if self.child is None:
            self.cancel_requested = force
            return
        asyncio.get_running_loop().create_task(self.host.cancel_child(self.child, force))


async def _settle_on_error(run: Any, attempt: _ChildAttempt) -> None:
    """Run a sub-SOP attempt; should starting or following its child raise (the state store is stalled
    and takes no new execution, say), the attempt fails with that error instead of never ending."""
    try:
        await run
    except Exception as e:  # noqa: BLE001 - any failure here is the attempt's, reported as data
        attempt.report.settle(None, error_from_exception(e))


def child_key(spec: AttemptSpec) -> str:
    """The child execution's idempotency key: one child per attempt, even if the coordinator restarts before
    the parent logs it (submitting again finds the same child)."""
    return f"child:{spec.execution.id}/{spec.step.id}/{spec.attempt}"


def _defaults(request: Any) -> dict[str, Any]:
    return {k: v.default for k, v in request.sop.inputs.items() if v.default is not None}


class AgentStepRunner(SubSopRunner):
    """Runs a ``uses: agent`` step as a child Agent Centric Run; the step's output is the agent's result.

    The child's SOP is made from the parent's (:func:`agent_child_sop`): it has no steps, its
    procedure is the step's ``with.instruction``, and its agent may call the MCP tools in
    ``with.tools``. Its session is durable, resumable and replayable like any agent run's;
    the step succeeds with the ``outputs`` the agent reports through ``finish``, and fails when
    the agent stops without finishing (the child failed), saying why.
    """

    what = "agent step's"
    error_prefix = "AgentStep"

    def child_request(self, spec: AttemptSpec) -> SubmitRequest | ErrorInfo:
        exe, step = spec.execution, spec.step
        try:
            child = agent_child_sop(exe.sop, step, spec.args)
        except ValueError as e:  # pydantic's ValidationError: the rendered arguments make no agent
            return ErrorInfo("AgentStepError", f"step {step.id!r}: its with: arguments make no agent: "
                             f"{_first_error(e)}", retryable=False)
        names = set(child.inputs)
        inputs = {k: v for k, v in exe.request.inputs.items() if k in names}
        secrets = tuple(k for k in exe.request.secrets if k in names)
        return SubmitRequest(child, inputs, "agent_centric", exe.request.priority, child_key(spec),
                             secrets=secrets, source=f"{exe.request.source} (step {step.id})", parent=exe.id,
                             definition=sop_definition(child), priority_class=exe.request.priority_class,
                             runtime_env=exe.request.runtime_env)

    def why_not_completed(self, state: Any) -> str:
        message = (state.agent or {}).get("message") if state.status.value == "failed" else None
        return f": {message}" if message else ""


def agent_child_sop(parent: Sop, step: Step, args: dict[str, Any]) -> Sop:
    """The agent-only SOP a ``uses: agent`` step runs as its child execution.

    Named ``<parent sop>.<step id>``, in mode agent_centric, with no steps; its ``agent:`` block is
    the parent's with ``instruction``, ``tools`` and ``model`` from the step's rendered ``with:``
    arguments; it has the parent's data sources that those tools name, and the parent's inputs
    those sources' env and headers (and the agent's API key) read — the secret ones stay secret.

    Raises:
        ValueError: the arguments make no valid SOP (an empty instruction, a tool not ``source.tool``).
    """
    instruction = args.get("instruction")
    if not isinstance(instruction, str):  # one expression rendered to data: the agent reads it as JSON
        instruction = json.dumps(instruction, default=str)
    if not instruction.strip():
        raise ValueError("with.instruction rendered to empty text, so the agent has nothing to do; check the "
                         "values it reads")
    tools = args.get("tools") or []
    if not isinstance(tools, list | tuple) or not all(isinstance(t, str) and "." in t for t in tools):
        raise ValueError(f"with.tools must be a list of <data source>.<tool> names, got {tools!r}")
    sources = {t.split(".", 1)[0] for t in tools}
    missing = sorted(sources - set(parent.data_sources))
    if missing:
        raise ValueError(f"with.tools names data source {missing[0]!r}, which the SOP does not declare "
                         f"(data_sources: {', '.join(parent.data_sources) or 'none'})")
    data_sources = {name: ds for name, ds in parent.data_sources.items() if name in sources}
    for tool in tools:  # a name rendered from data: only tools its source declares
        source, name = tool.split(".", 1)
        declared = data_sources[source].tools
        if declared is not None and name not in declared:
            raise ValueError(f"with.tools names {tool!r}, but data source {source!r} declares only "
                             f"{', '.join(declared) or 'no tools'}")
    update: dict[str, Any] = {"instruction": instruction, "tools": tuple(tools)}
    if args.get("model"):
        update["model"] = args["model"]
        if not str(args["model"]).startswith("litellm:"):
            update["base_url"] = None  # an endpoint only a litellm: model has
    agent = parent.agent.model_copy(update=update)
    read = _inputs_read(data_sources.values())
    if agent.api_key_input:
        read.add(agent.api_key_input)
    name = f"{parent.sop}.{step.id.lower()}"[:128]
    return Sop.model_validate({
        "sop": name, "version": parent.version, "description": step.description or f"step {step.id} of {parent.sop}",
        "mode": "agent_centric", "inputs": {k: v for k, v in parent.inputs.items() if k in read},
        "data_sources": data_sources, "agent": agent, "steps": []})


def _inputs_read(sources: Any) -> set[str]:
    """The inputs that data sources' env and headers read (``${{ inputs.NAME }}``)."""
    names: set[str] = set()
    for ds in sources:
        for value in (*ds.env.values(), *ds.headers.values()):
            for source in find_references(value):
                try:
                    refs = compile_expression(source).references
                except ExpressionError:
                    continue
                names.update(r.name for r in refs if r.root == "inputs" and r.name)
    return names


def _first_error(e: ValueError) -> str:
    errors = getattr(e, "errors", None)
    if callable(errors):
        first = errors(include_url=False)[0]
        where = ".".join(str(x) for x in first["loc"])
        return f"{where}: {first['msg'].removeprefix('Value error, ')}" if where else first["msg"]
    return str(e)
