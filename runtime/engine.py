"""The public API: start or join a cluster, submit SOPs, follow and control executions.

``Engine`` is a client: every method goes through its :class:`Connection` —
to the named sopflow actors on a Ray cluster, so any number of engines (a
notebook, the CLI, a service) see the same executions; or to an engine in
this process (:meth:`Engine.in_process`). The Ray connection lives in
:mod:`actors` and is found as a plugin: ``runtime`` never imports ``actors``,
and stays importable without Ray.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from runtime._engine_triggers import TriggerMethods
from runtime.config import PRIORITY_CLASSES, EngineConfig
from runtime.display import ExecutionList
from runtime.errors import (EngineStartError, ExecutionFailed, ExecutionNotFound, ExecutionTimeout,
                            SubmissionError)
from runtime.events import Event
from runtime.forecast import with_forecast
from runtime.ids import ExecutionId
from runtime.inputs import resolve_inputs
from runtime.outputs import descriptors
from runtime.registry import Registry, RegistryError
from runtime.status import ExecutionStatus, ExecutionView
from sop import Mode, Sop, check_file, check_text
from sop.paths import SubSopPathError, resolve_sub_sop
from sop.validate import BUILTIN_HANDLERS, ValidationReport, choose_mode

if TYPE_CHECKING:
    from runtime.compare import Comparison

DEFAULT_NAMESPACE = "sopflow"
_UNREAD: Any = object()  # the job's runtime_env, not read yet


def _ray_init(ray: Any, options: dict[str, Any]) -> None:
    """``ray.init`` with the code it ships checked first; Ray's refusal of a too-big one made clear."""
    from runtime.code_dirs import check_runtime_env

    check_runtime_env(options.get("runtime_env"))
    try:
        ray.init(**options)
    except ValueError as e:
        if "exceeds the maximum size" not in str(e):
            raise
        raise SubmissionError(f"the runtime_env code is too big for Ray to ship: {str(e).split('. ')[0]}; leave "
                              "big files out (a `.rayignore` file or runtime_env `excludes`)") from None


def use_token_auth_if_available(address: str | None) -> bool:
    """Send Ray's auth token to a cluster given by address, when this machine has one.

    Ray 2.60 turns token auth on by itself only for a cluster it finds on its own
    (``address="auto"`` without ``$RAY_ADDRESS``); given an explicit address, a client
    that holds the token still sends none and the cluster refuses it ("InvalidAuthToken").
    When ``$RAY_AUTH_MODE`` is unset and a token is at hand (``$RAY_AUTH_TOKEN``,
    ``$RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``), set ``RAY_AUTH_MODE=token`` for this
    process, as Ray itself does for local clusters. Returns whether it did.
    """
    explicit = address not in (None, "auto", "local") or (address == "auto" and os.environ.get("RAY_ADDRESS"))
    if not explicit or str(address).startswith("ray://") or os.environ.get("RAY_AUTH_MODE") is not None:
        return False
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if not (os.environ.get("RAY_AUTH_TOKEN") or token_file.is_file()):
        return False
    os.environ["RAY_AUTH_MODE"] = "token"
    try:  # Ray caches its config at import: refresh it, as Ray does when it enables auth itself
        from ray._private.authentication.authentication_token_setup import _enable_token_auth
    except ImportError:  # another Ray version: the variable alone works if set before import
        return True
    _enable_token_auth()
    return True



class Connection(Protocol):
    """How an :class:`Engine` reaches the coordinator, monitor and failure handler of one engine.

    ``ray`` (the actors on a Ray cluster) is found as a plugin (:mod:`runtime.plugins`);
    the in-process engine's is :class:`runtime.local.InProcessConnection`.
    """

    def call(self, target: str, method: str, *args: Any, timeout: float | None = None) -> Any:
        """Call ``method`` of ``target`` (``coordinator``, ``monitor`` or ``failure_handler``) and return
        its answer, re-raising sopflow's errors as themselves."""
        ...

    def close_store(self) -> None:
        """Commit what is pending and close the state store (the engine is stopping)."""
        ...

    def kill(self) -> None:
        """Stop the engine's parts now (they could not start)."""
        ...

    def close(self) -> None:
        """Disconnect this client."""
        ...


class Engine(TriggerMethods):
    """A connection to sopflow.

    Use :meth:`local` to start (or join) a Ray cluster on this machine,
    :meth:`connect` to attach to a running one (both create sopflow's actors on
    first use and find them by name afterwards), or :meth:`in_process` for the
    whole engine in this process, without Ray (tests, notebooks, a laptop).
    """

    def __init__(self, *, namespace: str = DEFAULT_NAMESPACE, registry: Registry | None = None,
                 config: EngineConfig | None = None, connection: Connection | None = None) -> None:
        if connection is None:
            from runtime.plugins import load

            connection = load("sopflow.connections", "ray")(namespace, config)
        self.namespace = namespace
        self.registry = registry or Registry()
        self._owns_cluster = False  # set by local() when it started the cluster
        self._conn = connection
        self._job_env: Any = _UNREAD
        # Also waits until the coordinator has resumed the unfinished executions in its log.
        try:
            state = self._conn.call("coordinator", "state_path")
        except EngineStartError:
            self._conn.kill()  # else Ray would keep restarting actors that cannot start
            raise
        if config is not None and config.state and config.state != state:
            raise SubmissionError(
                f"sopflow in namespace {namespace!r} already runs with the state file {state}, "
                f"not {config.state}; connect without a state, or use another namespace")
        self.store_problems: list[str] = self._conn.call("coordinator", "store_problems")
        """Where the state file's executions and their rows disagreed at start (see ``sopflow check``)."""
        if self.store_problems:
            logging.getLogger("sopflow.engine").warning(
                "the state file %s is inconsistent: %s%s; run `sopflow check --state %s` and restore a "
                "backup if needed", state, "; ".join(self.store_problems[:5]),
                f" (and {len(self.store_problems) - 5} more)" if len(self.store_problems) > 5 else "", state)

    # -- connecting -----------------------------------------------------------------------

    @classmethod
    def local(cls, *, address: str | None = None, num_cpus: int | None = None,
              dashboard: bool = True, namespace: str = DEFAULT_NAMESPACE,
              registry: Registry | None = None, state: str | None = None,
              config: EngineConfig | None = None, **ray_options: Any) -> Engine:
        """Start a local Ray cluster (``address="local"``), or join ``address``, and connect.

        The dashboard binds to 127.0.0.1 unless ``dashboard_host`` says otherwise.
        Unfinished executions in the state file (``state``, default
        ``~/.sopflow/state.db``) resume before this returns.
        """
        if state is not None:
            config = dataclasses.replace(config or EngineConfig(), state=state)
        import ray

        started = not ray.is_initialized() and address in (None, "local")
        if not ray.is_initialized():
            options: dict[str, Any] = {"namespace": namespace, "log_to_driver": False}
            if address in (None, "local"):
                # Workers import `python:` handlers from the directory the engine started in.
                path = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)
                options.update(address="local", num_cpus=num_cpus, include_dashboard=dashboard,
                               dashboard_host=ray_options.pop("dashboard_host", "127.0.0.1"),
                               runtime_env={"env_vars": {"PYTHONPATH": path}})
            else:
                options["address"] = address
                use_token_auth_if_available(address)
            _ray_init(ray, {**options, **ray_options})
        engine = cls(namespace=namespace, registry=registry, config=config)
        if started:  # the cluster dies with this process: close the state file first (before Ray's own
            engine._owns_cluster = True  # exit handler, registered earlier, stops the cluster)
            atexit.register(engine._close_store)
        return engine

    @classmethod
    def in_process(cls, *, state: str = "memory://", registry: Registry | None = None,
                   config: EngineConfig | None = None) -> Engine:
        """The whole engine in this process, without Ray: the same API, handlers run in threads.

        For tests, notebooks and trying SOPs on a laptop. ``state`` is ``memory://``
        (the default: gone with the process) or a SQLite file, as for :meth:`local`.
        Resources, memory limits and a forced cancel's kill do not apply to handlers
        running in threads; shell steps run in their own processes as on a cluster.
        """
        from runtime.local import InProcessConnection

        config = dataclasses.replace(config or EngineConfig(), state=state)
        registry = registry or Registry()
        return cls(registry=registry, config=config, connection=InProcessConnection(config, registry))

    @classmethod
    def connect(cls, address: str = "auto", *, namespace: str = DEFAULT_NAMESPACE,
                registry: Registry | None = None, **ray_options: Any) -> Engine:
        """Attach to a running cluster: ``auto`` (this machine), ``host:6379`` or ``ray://head:10001``.

        ``runtime_env={"working_dir": "."}`` (or ``py_modules``, ``pip``) ships code to the cluster:
        the steps of every execution this client submits run with it, even after it disconnects.
        """
        import ray

        if not ray.is_initialized():
            use_token_auth_if_available(address)
            _ray_init(ray, {"address": address, "namespace": namespace, "log_to_driver": False, **ray_options})
        elif "runtime_env" in ray_options:  # else the code the caller means to ship would silently stay behind
            raise SubmissionError(
                "Ray is already initialised in this process, so its runtime_env cannot change now; pass "
                "runtime_env to the first Engine.connect / ray.init of the process, or call ray.shutdown() first")
        return cls(namespace=namespace, registry=registry)

    # -- submitting -----------------------------------------------------------------------

    def load(self, sop: str | os.PathLike[str] | Sop) -> tuple[Sop, ValidationReport | None, str]:
        """Load and validate a path, YAML/JSON text or a loaded :class:`Sop`."""
        if isinstance(sop, Sop):
            return sop, None, "<object>"
        text = os.fspath(sop)
        looks_like_text = "\n" in text or text.lstrip().startswith(("{", "sop:"))
        if looks_like_text:
            report = check_text(text, handlers=self.registry)
            source = "<string>"
        else:
            if not Path(text).is_file():
                raise SubmissionError(f"SOP file {text!r} does not exist (looked in {Path.cwd()})")
            report = check_file(text, handlers=self.registry)
            source = text
        return report.raise_for_problems(), report, source

    def submit(self, sop: str | os.PathLike[str] | Sop, inputs: Mapping[str, Any] | None = None, *,
               mode: str | None = None, priority: int | str | None = None, idempotency_key: str | None = None,
               inputs_from_text: bool = False, submitted_by: str | None = None,
               agent: Mapping[str, Any] | None = None,
               schedule: Mapping[str, Any] | None = None) -> ExecutionId:
        """Validate and submit an SOP; returns at once with the execution's id.

        ``priority`` is a class — ``critical``, ``high``, ``normal``, ``low``: classes share
        the run slots by weight while several wait (``EngineConfig.priority_weights``) — or
        a whole number (higher first, within ``normal``); None takes the SOP's ``priority``.
        ``submitted_by`` names who or what submits it in the audit log (``Engine.logs``);
        the default is this process's OS user and host, ``user@host``. ``agent`` overrides
        fields of the SOP's ``agent:`` block for this run (``model``, ``temperature``,
        ``max_tokens``, ``max_model_calls``, ``token_budget`` ...).

        ``schedule`` makes it a batch execution (None: real-time, it starts at once):
        ``{"batch": NAME, "not_before": T, "deadline": T, "window": "22:00-06:00 Europe/Paris"}``,
        any of them, times as timezone-aware datetimes, ISO 8601 strings with an offset, or
        epoch seconds. It starts inside its window, packed with other batch work to keep peak
        use low, and may be preempted by real-time work (see :mod:`runtime.batch`); a named
        batch gets one report (:meth:`batch_report`).

        Raises:
            SopValidationError: the SOP is invalid (every problem listed).
            SubmissionError: inputs, mode or handlers do not fit.
            ScheduleError: a field of ``schedule`` is not valid (the message names it).
        """
        # A key makes the submission safe to send again if the coordinator restarts meanwhile.
        request = self._request(sop, dict(inputs or {}), mode=mode, priority=priority,
                                idempotency_key=idempotency_key or f"auto:{uuid.uuid4().hex}",
                                inputs_from_text=inputs_from_text, submitted_by=submitted_by, agent=agent,
                                schedule=schedule)
        return ExecutionId(self._conn.call("coordinator", "submit", request))

    def submit_many(self, sop: str | os.PathLike[str] | Sop, inputs: list[Mapping[str, Any]], *,
                    mode: str | None = None, priority: int | str | None = None,
                    idempotency_keys: list[str] | None = None,
                    submitted_by: str | None = None, agent: Mapping[str, Any] | None = None,
                    schedule: Mapping[str, Any] | None = None) -> list[ExecutionId]:
        """Submit one SOP many times (one execution per inputs mapping) in a single round trip.

        The SOP is validated once; the batch is committed to the log in one go.
        Use it to start thousands of executions: it is far cheaper than a loop of
        :meth:`submit`. ``schedule`` (as in :meth:`submit`) applies to every one of them:
        ``schedule={"batch": "nightly"}`` submits a named batch.

        Raises:
            SopValidationError: the SOP is invalid.
            SubmissionError: an inputs mapping does not fit (nothing is submitted).
        """
        if idempotency_keys is not None and len(idempotency_keys) != len(inputs):
            raise SubmissionError(f"idempotency_keys has {len(idempotency_keys)} keys for {len(inputs)} inputs")
        if not inputs:
            return []
        model, _, source = self.load(sop)
        keys = idempotency_keys or [f"auto:{uuid.uuid4().hex}" for _ in inputs]
        base = self._request(model, dict(inputs[0]), mode=mode, priority=priority, idempotency_key=keys[0],
                             source=source, submitted_by=submitted_by, agent=agent, schedule=schedule)
        # One SOP object and definition shared by every request: pickled once for the whole batch.
        requests = [base, *(dataclasses.replace(base, inputs=resolve_inputs(model, dict(i), source=source),
                                                idempotency_key=k) for i, k in zip(inputs[1:], keys[1:]))]
        return [ExecutionId(i) for i in
                self._conn.call("coordinator", "submit_many", requests)]

    def _request(self, sop: Any, inputs: dict[str, Any], *, mode: str | None, priority: int | str | None,
                 idempotency_key: str | None, inputs_from_text: bool = False,
                 source: str | None = None, submitted_by: str | None = None,
                 agent: Mapping[str, Any] | None = None, schedule: Mapping[str, Any] | None = None) -> Any:
        from runtime.batch import parse_schedule
        from runtime.request import SubmitRequest, sop_definition, submitter

        checked = parse_schedule(schedule, time.time())  # refused here, before anything is sent

        model, _, loaded_from = self.load(sop)
        source = source or loaded_from
        if agent:
            model = _with_agent_settings(model, agent, source)
        chosen = self._mode(model, mode, source)
        priority_class, rank = _priority(model.priority if priority is None else priority)
        resolved = resolve_inputs(model, inputs, source=source, from_text=inputs_from_text)
        base = Path(source).parent if source not in ("<string>", "<object>") else Path.cwd()
        return SubmitRequest(model, resolved, chosen, rank, idempotency_key, self._handlers(model),
                             self._subsops(model, base, ()), _secrets(model), source,
                             definition=sop_definition(model), priority_class=priority_class,
                             submitted_by=submitter(submitted_by), runtime_env=self._runtime_env(),
                             schedule=None if checked is None else checked.to_data())

    def compare(self, sop: str | os.PathLike[str] | Sop, inputs: Mapping[str, Any] | None = None, *,
                timeout: float | None = None, inputs_from_text: bool = False) -> Comparison:
        """Run an SOP once in each mode, wait for both, and say whether they came to the same result.

        Equivalent means: the same final status, equal SOP outputs, every step ended the
        same way (an agent's ``skip`` and a DAG's false ``when`` are both ``skipped``) and
        equal outputs of the steps that succeeded (see :mod:`runtime.compare`). Both runs
        are submitted before either is waited for, so they run side by side.

        Returns:
            A :class:`runtime.compare.Comparison` (``equivalent``, both ids, ``differences``).

        Raises:
            SopValidationError: the SOP is invalid.
            SubmissionError: it fits one mode only (the message says why), or its inputs do not fit;
                nothing was submitted.
            ExecutionTimeout: a run was still going after ``timeout`` seconds (both are left running).
        """
        import time

        from runtime.compare import MODES, RunResult, check_both_modes, compare_results

        model, _, source = self.load(sop)
        check_both_modes(model, source)
        key = uuid.uuid4().hex
        # Both requests are built (inputs checked) before either is submitted: all or nothing.
        requests = [self._request(sop if not isinstance(sop, Sop) else model, dict(inputs or {}), mode=mode,
                                  priority=None, idempotency_key=f"compare:{key}:{mode}",
                                  inputs_from_text=inputs_from_text) for mode in MODES]
        ids = [ExecutionId(self._conn.call("coordinator", "submit", r)) for r in requests]
        deadline = None if timeout is None else time.monotonic() + timeout
        results = []
        for eid in ids:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                view = self.wait(eid, left)
            except ExecutionTimeout as e:  # name the whole comparison's timeout, not what was left of it
                raise ExecutionTimeout(str(eid), timeout or 0.0, e.status) from None
            outputs = dict(view.outputs or {})
            if next(descriptors(outputs), None) is not None:  # big values live as artifacts: compare values
                outputs = self._conn.call("coordinator", "resolve", str(eid), outputs)
            results.append(RunResult.from_view(view, outputs))
        return compare_results(model.sop, *results)

    def _runtime_env(self) -> dict[str, Any] | None:
        """This client job's runtime_env, read once: the code (``working_dir`` ...) its steps run with."""
        if self._job_env is _UNREAD:
            read = getattr(self._conn, "job_runtime_env", None)
            self._job_env = read() if read is not None else None
        return self._job_env

    def _subsops(self, model: Sop, base: Path, stack: tuple[str, ...]) -> dict[str, Any]:
        from runtime.request import SubmitRequest, sop_definition

        out = {}
        for step in (*model.steps, *model.rollback):
            if step.handler.startswith("sop:"):
                try:
                    path = resolve_sub_sop(base, step.handler[4:])
                except SubSopPathError as e:
                    raise SubmissionError(f"step {step.id!r}: {e}; {e.suggestion}") from e
                if str(path) in stack:
                    raise SubmissionError(f"sub-SOP {step.handler[4:]} includes itself")
                child, _, source = self.load(str(path))
                out[step.handler[4:]] = SubmitRequest(
                    child, {}, "system_design", 0, None, self._handlers(child),
                    self._subsops(child, path.parent, (*stack, str(path))),
                    _secrets(child), source, definition=sop_definition(child))
        return out

    def _mode(self, model: Sop, requested: str | None, source: str) -> str:
        declared = requested or model.mode.value
        depends = {s.id: list(s.depends_on) for s in model.steps}
        rules = {s.id: s.trigger_rule.value for s in model.steps}
        chosen, reason = choose_mode(declared, depends, rules)
        if chosen is None:
            raise SubmissionError(f"cannot run {source} in mode {declared}: {reason}")
        return chosen.value

    def _handlers(self, model: Sop) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for step in (*model.steps, *model.rollback):
            name = step.handler
            if name in BUILTIN_HANDLERS or ":" in name:
                continue
            try:
                reg = self.registry.lookup("handler", name)
            except RegistryError as e:
                raise SubmissionError(f"step {step.id!r}: {e}") from e
            out[name] = reg.reference or reg.implementation
        return out

    # -- following ------------------------------------------------------------------------

    def status(self, execution_id: str) -> ExecutionView:
        """A snapshot from the monitor (it lags the coordinator by a few milliseconds).

        Raises:
            ExecutionNotFound: neither the monitor nor the coordinator knows the id.
        """
        try:
            view = self._conn.call("monitor", "status", str(execution_id))
        except ExecutionNotFound:
            # Submitted a moment ago: its first events may still be on their way to the monitor.
            view = self._conn.call("coordinator", "status", str(execution_id))
        return with_forecast(view, lambda: self._conn.call("coordinator", "forecast", str(execution_id)))

    def wait(self, execution_id: str, timeout: float | None = None) -> ExecutionView:
        """Block until the execution ends; returns its final view (with outputs).

        Raises:
            ExecutionTimeout: it was still running after ``timeout`` seconds.
        """
        view = self._conn.call("coordinator", "wait", str(execution_id), timeout)
        if not view.status.terminal:
            raise ExecutionTimeout(str(execution_id), timeout or 0.0, view.status.value)
        return view

    def result(self, execution_id: str, timeout: float | None = None) -> dict[str, Any]:
        """The outputs of a completed execution (``outputs`` mapping and per-step ``steps``).

        Raises:
            ExecutionFailed: it ended partially_completed, failed or cancelled.
        """
        view = self.wait(execution_id, timeout)
        if view.status.value != "completed":
            raise ExecutionFailed(str(execution_id), view.status.value, view.errors)
        outputs = dict(view.outputs or {})
        if next(descriptors(outputs), None) is not None:  # big values live as artifacts in the store
            outputs = self._conn.call("coordinator", "resolve", str(execution_id), outputs)
        return outputs

    def batch_report(self, name: str) -> dict[str, Any]:
        """The report of the named batch (executions submitted with ``schedule={"batch": name}``).

        Returns:
            ``batch``, ``executions``, ``finished`` (every one ended), ``counts`` by status,
            ``succeeded``, ``failed``, ``preemptions``, ``duration_s`` and ``waited_s`` (min, p50,
            p95, max, mean), ``failures`` and ``results``: every execution's id, status, times,
            outputs and step errors.

        Raises:
            BatchNotFound: no execution was submitted in that batch.
            ScheduleError: ``name`` is not a valid batch name.
        """
        return self._conn.call("coordinator", "batch_report", name)

    def list(self, status: str | None = None, sop: str | None = None, since: float | None = None,
             limit: int = 1000, *, until: float | None = None) -> list[ExecutionView]:
        """Executions newest first, by status, SOP and submission time in ``[since, until)``.

        Recent ones come from the monitor's memory, older ones from the state store. What
        this client submitted before the call is in the list (the coordinator's pending
        events reach the monitor first).

        Raises:
            ValueError: ``status`` is not an execution status (the message lists them).
        """
        statuses = [s.value for s in ExecutionStatus]
        if status is not None and str(status) not in statuses:
            raise ValueError(f"status must be one of {', '.join(statuses)}; got {status!r}")
        self._conn.call("coordinator", "flush")  # read your own writes: the monitor is fed in batches
        return ExecutionList(self._conn.call("monitor", "list", status, sop, since, limit, until))

    def events(self, execution_id: str, *, follow: bool = True, poll_s: float = 1.0) -> Iterator[Event]:
        """Yield the execution's events in order; with ``follow``, until it finishes."""
        seq = 0
        while True:
            batch = self._conn.call("monitor", "events", str(execution_id), seq,
                                                                  poll_s if follow else 0.0)
            for event in batch:
                seq = event.seq
                yield event
                if event.kind.value == "execution_finished":
                    return
            if not follow:
                return

    # -- controlling ----------------------------------------------------------------------

    # ``by`` (here and in decide) names the operator in the audit log; default: this process's user@host.

    def cancel(self, execution_id: str, force: bool = False, *, by: str | None = None) -> ExecutionView:
        """Start nothing new; with ``force``, also kill running steps."""
        return self._conn.call("coordinator", "cancel", str(execution_id), force, _operator(by))

    def pause(self, execution_id: str, *, by: str | None = None) -> ExecutionView:
        return self._conn.call("coordinator", "pause", str(execution_id), _operator(by))

    def resume(self, execution_id: str, *, by: str | None = None) -> ExecutionView:
        return self._conn.call("coordinator", "resume", str(execution_id), _operator(by))

    def add_steps(self, execution_id: str, steps: list[dict[str, Any]], *, by: str | None = None) -> ExecutionView:
        """Add steps to a running execution, validated incrementally.

        Raises:
            SopValidationError: a cycle, a bad reference or a bad field; nothing changed.
        """
        model = Sop.model_validate({"sop": "added", "steps": steps}) if steps else None
        handlers = self._handlers(model) if model else {}
        return self._conn.call("coordinator", "add_steps", str(execution_id), steps, handlers, _operator(by))

    # -- escalation hooks -----------------------------------------------------------------

    def add_escalation_hook(self, name: str, *, fn: Any = None, url: str | None = None,
                            headers: dict[str, str] | None = None) -> list[str]:
        """Run ``fn(payload)`` or POST to ``url`` whenever a step's retries are exhausted."""
        from runtime.hooks import PythonHook, WebhookHook

        if (fn is None) == (url is None):
            raise SubmissionError("an escalation hook needs exactly one of fn= or url=")
        hook = PythonHook(fn) if fn is not None else WebhookHook(url, dict(headers or {}))  # type: ignore[arg-type]
        return self._conn.call("coordinator", "add_escalation_hook", name, hook)

    def remove_escalation_hook(self, name: str) -> list[str]:
        return self._conn.call("coordinator", "remove_hook", name)

    def add_hook(self, name: str, hook: Any) -> list[str]:
        """Run ``hook`` (a :class:`runtime.Hook` subclass) on every execution from now on, in the coordinator.

        Its methods (``before_attempt``, ``after_attempt``, ``on_retry``, ``on_escalate``,
        ``on_end``) get a JSON-able payload; "before" hooks run in the order added, "after"
        hooks in reverse; one that raises is logged, never fatal. The registration is kept in
        the state store, so the hook survives coordinator restarts; it must be importable or
        picklable by value (cloudpickle) where the coordinator runs. Returns every hook's name.

        Raises:
            SubmissionError: ``hook`` is not a :class:`runtime.Hook`.
        """
        from runtime.hooks import Hook

        if not isinstance(hook, Hook):
            raise SubmissionError(f"a hook must be an instance of a runtime.Hook subclass, got {type(hook).__name__}; "
                                  "override the notifications you need (before_attempt, after_attempt, on_retry, "
                                  "on_escalate, on_end)")
        return self._conn.call("coordinator", "add_hook", name, hook)

    def remove_hook(self, name: str) -> list[str]:
        return self._conn.call("coordinator", "remove_hook", name)

    def estimates(self, sop: str) -> dict[str, Any]:
        """What earlier runs of the SOP named ``sop`` took, per step, as JSON data.

        ``{"sop", "completed": executions that completed, "steps": {step: {"samples", "failures",
        "p50_s", "p95_s", "max_s", "trend", "cores_p95", "memory_p95_mb", "cpu", "memory_mb",
        "timeout_s"}}}``: the last three are the suggested resources (see :mod:`runtime.estimates`);
        a step with no successful attempt has ``samples: 0`` only.
        """
        return self._conn.call("coordinator", "estimates", str(sop))

    def metrics(self, window: str | float | None = "1h", *, sop: str | None = None,
                mode: str | None = None) -> dict[str, Any]:
        """Execution metrics over a time window, as JSON data (see :func:`runtime.metrics.compute`).

        Counts (total, running, completed, failed ...), success rate, mean/p95/p99 durations
        by SOP and mode, error rate by class, retries, queue depth and wait, step durations,
        alerts, and CPU/memory (with where they come from). Executions count when submitted
        within ``window`` (``"30m"``, ``"1h"``, ``"7d"``, seconds, or None / ``"all"``) or
        still unfinished.

        Raises:
            MetricsQueryError: ``window`` or ``mode`` is not understood (the message says what is).
        """
        from runtime.errors import MetricsQueryError
        from runtime.metrics import parse_window

        if mode is not None and mode not in [m.value for m in Mode]:
            raise MetricsQueryError(f"mode must be one of {', '.join(m.value for m in Mode)}, got {mode!r}")
        return self._conn.call("monitor", "metrics", parse_window(window), sop, mode)

    def failure_stats(self) -> dict[str, Any]:
        stats = self._conn.call("failure_handler", "stats")
        return {**stats, "hooks": self._conn.call("coordinator", "hook_names")}

    def drain_hooks(self) -> int:
        """Wait until escalation hooks already triggered have finished."""
        return self._conn.call("coordinator", "drain_hooks")

    def flush(self) -> None:
        """Push the coordinator's pending events to the monitor now."""
        self._conn.call("coordinator", "flush")

    # -- the log: history, export/import, recovery, decisions, replay ---------------------

    def info(self) -> dict[str, Any]:
        """Where state lives, how many executions it holds, what the last recovery did."""
        return self._conn.call("coordinator", "info")

    def resources(self) -> dict[str, Any]:
        """Per node: the CPU, memory (MiB) and GPU it has, leased to the coordinator and used by running
        steps (``nodes``); steps ``running`` and ``queued`` (see :mod:`runtime.resources`)."""
        return self._conn.call("coordinator", "resources")

    def history(self, execution_id: str, after_seq: int = 0) -> list[Event]:
        """Every event of an execution, in order, from the durable log."""
        return self._conn.call("coordinator", "history", str(execution_id), after_seq)

    def logs(self, *, execution: str | None = None, sop: str | None = None, agent: str | None = None,
             step: str | None = None, status: str | None = None, level: str | int | None = None,
             since: float | None = None, until: float | None = None, text: str | None = None,
             kind: str | None = None, limit: int | None = 1000, after: int | None = None) -> list[Any]:
        """Audit log entries (:class:`runtime.audit.LogEntry`) matching every filter given.

        Args:
            execution, sop, agent, step, status, kind: Equal to the entry's (``kind``: a
                :class:`runtime.audit.LogKind` value).
            level: A minimum level: ``debug``, ``info``, ``warning``, ``error`` (or a number).
            since, until: The entry's time is in ``[since, until)`` (seconds since the epoch).
            text: A literal, case-sensitive part of the message (``%``, ``_``, quotes are plain text).
            limit: The newest this many are returned, oldest first; at most
                :data:`runtime.audit.MAX_LIMIT` (a larger one is lowered to it).
            after: Instead, the first ``limit`` entries stored after the entry with this id
                (to page forwards, or follow new entries).

        Raises:
            LogQueryError: a filter has a value it cannot have (the message says which).
        """
        from runtime.audit import LogQuery

        query = LogQuery.of(execution=execution, sop=sop, agent=agent, step=step, status=status, kind=kind,
                            level=level, since=since, until=until, text=text, limit=limit, after=after)
        return self._conn.call("coordinator", "logs", query)

    def export(self, execution_id: str) -> dict[str, Any]:
        """The execution's full history as JSON data (``sopflow export``); secrets stay behind."""
        return self._conn.call("coordinator", "export", str(execution_id))

    def import_history(self, doc: dict[str, Any] | str | os.PathLike[str], *, replace: bool = False) -> str:
        """Store an exported history (data, or a path to a ``.json`` file); returns its execution id."""
        if not isinstance(doc, dict):
            from runtime.history import read_history_file

            doc = read_history_file(doc)
        return self._conn.call("coordinator", "import_", doc, replace)

    def recover(self) -> dict[str, Any]:
        """Resume every unfinished execution in the log (done on start; returns what it did)."""
        return self._conn.call("coordinator", "recover")

    def decide(self, execution_id: str, step: str, decision: str, *, reason: str = "",
               output: Any = None, by: str | None = None) -> ExecutionView:
        """Settle a step waiting for an operator: ``rerun``, ``succeed`` (with ``output``), ``fail``, ``skip``."""
        return self._conn.call("coordinator", "decide", str(execution_id), step, decision,
                               reason, output, _operator(by))

    def replay(self, execution_id: str, from_step: str | None = None) -> Any:
        """Replay a finished execution in this process and compare it with its recording.

        Steps before ``from_step`` take their recorded outcomes; ``from_step`` and
        the steps downstream of it run their handlers again. Returns a
        :class:`runtime.replay.ReplayReport` naming every divergence.
        """
        from runtime.replay import replay
        from runtime.history import artifacts_from_doc, events_from_doc

        doc = self.export(execution_id)  # the events and the big outputs they refer to
        return replay(events_from_doc(doc), from_step, handlers=self._registered_handlers(),
                      artifacts=artifacts_from_doc(doc))

    def _registered_handlers(self) -> dict[str, Any]:
        out = {}
        for name in self.registry.names("handler"):
            reg = self.registry.lookup("handler", name)
            out[name] = reg.reference or reg.implementation
        return out

    def shutdown(self) -> None:
        """Disconnect this client (executions keep running on the cluster).

        When :meth:`local` started the cluster, the cluster stops too: the coordinator
        first commits what is pending, checkpoints and closes the state file and
        releases its lease, so the next engine on the file starts at once.
        """
        self._close_store()
        self._conn.close()

    def _close_store(self) -> None:
        if not self._owns_cluster:
            return
        self._owns_cluster = False
        self._conn.close_store()


def _priority(priority: int | str | None) -> tuple[str, int]:
    """``(class, number within it)`` of a submission's priority.

    Raises:
        SubmissionError: neither a class name nor a whole number.
    """
    if priority is None:
        return "normal", 0
    if isinstance(priority, str) and priority in PRIORITY_CLASSES:
        return priority, 0
    if isinstance(priority, int) and not isinstance(priority, bool):
        return "normal", priority
    raise SubmissionError(f"priority must be one of {', '.join(PRIORITY_CLASSES)} or a whole number "
                          f"(higher first, within normal); got {priority!r}")


def _operator(by: str | None) -> str:
    """Who acts, for the audit log: ``by`` (checked), else this process's ``user@host``."""
    from runtime._who import submitter

    return submitter(by)


def _secrets(model: Sop) -> tuple[str, ...]:
    return tuple(k for k, v in model.inputs.items() if v.secret)


def _with_agent_settings(model: Sop, agent: Mapping[str, Any], source: str) -> Sop:
    """``model`` with fields of its ``agent:`` block overridden for one submission.

    Raises:
        SubmissionError: an unknown field or a value the agent block refuses.
    """
    from pydantic import ValidationError

    from sop.model import AgentSpec

    try:
        merged = AgentSpec.model_validate({**model.agent.model_dump(exclude_unset=True), **dict(agent)})
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'agent'}: {err['msg']}" for err in e.errors())
        raise SubmissionError(f"the agent settings given for {source} do not fit: {problems}") from None
    return model.model_copy(update={"agent": merged})
