"""Running one step attempt's handler, inside whatever process the step landed in.

A handler is resolved from the step's ``uses``: ``python:<module>:<function>``,
a registered name (shipped as an importable reference or the callable itself),
or ``shell``. It receives the step's rendered ``with`` arguments as keyword
arguments, plus a :class:`StepContext` if it declares a ``context`` parameter.
Time, randomness and ids taken from the context are recorded in the
:class:`StepOutcome`, so a replay of the step can be given the same values.
"""

from __future__ import annotations

import asyncio
import datetime
import inspect
import logging
import random
import subprocess
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from runtime._pickle import positional_pickle
from runtime._log_lines import CAPTURE_LEVEL, LineBuffer
from runtime._shell_output import ShellCapture
from runtime.failure import ErrorInfo, error_from_exception
from runtime.isolation import Attempt
from runtime.masking import MaskingLoggerAdapter
from runtime.outputs import DEFAULT_INLINE_OUTPUT_BYTES, Spilled, settle_output
from runtime.registry import import_object
from runtime.usage import as_mb, process_cpu_s

log = logging.getLogger("sopflow.step")

PROGRESS_EVERY_S = 0.5
"""The shortest time between two progress reports of one attempt that reach the engine."""
MAX_PROGRESS_MESSAGE = 200
"""Characters of a progress message kept."""


@positional_pickle
@dataclass(slots=True)
class StepTask:
    """Everything a worker needs to run one attempt; built by the coordinator."""

    execution_id: str
    sop: str
    step: str
    attempt: int
    uses: str
    handler: Any = None
    """For registered handlers: ``module:attr`` or the callable itself."""
    args: dict[str, Any] = field(default_factory=dict)
    run: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    timeout_s: float | None = None
    trace_carrier: dict[str, str] = field(default_factory=dict)
    recorded: tuple[tuple[str, Any], ...] = ()
    """Values an earlier run of this step took from its context (``StepOutcome.recorded``),
    given when the step is replayed; empty for a fresh run. A replay of a run that
    recorded nothing looks like a fresh run, so its extra calls are not reported."""
    output_cap: int = DEFAULT_INLINE_OUTPUT_BYTES
    """Outputs whose JSON text is larger are returned as an artifact (``EngineConfig.max_inline_output_bytes``)."""
    memory_mb: int | None = None
    """The attempt's memory limit (``resources.memory_mb``, grown by retries), enforced by
    :mod:`runtime.isolation`."""
    secrets: tuple[str, ...] = field(default=(), repr=False)
    """The execution's secret input values, so ``context.logger`` can mask them in the worker."""
    progress_to: Any = field(default=None, repr=False)
    """Where ``context.report_progress`` sends: a callable ``(fraction, message)`` set by the runner."""

    @property
    def key(self) -> str:
        return f"{self.execution_id}/{self.step}/{self.attempt}"


@positional_pickle
@dataclass(slots=True)
class StepOutcome:
    """The result of one attempt, as plain data."""

    key: str
    ok: bool
    output: Any = None
    error: ErrorInfo | None = None
    duration_s: float = 0.0
    progress: float | None = None
    recorded: tuple[tuple[str, Any], ...] = ()
    """Every time, random value and id the handler took from its context, in order, as
    ``(kind, value)`` pairs with JSON-friendly values; kept on failure too."""
    replay_diverged: str | None = None
    """Set when a replayed run's calls on its context did not match the recording (another
    kind at some call, more calls, or fewer): one line naming the first difference."""
    spilled: Spilled | None = None
    """The JSON text of an output over the inline cap (``output`` is then its descriptor), for the
    coordinator to store once as an artifact before it records the outcome."""
    logs: tuple[list[Any], ...] = ()
    """Lines for the audit log, bounded (:class:`runtime._log_lines.LineBuffer`): what the handler
    wrote through ``context.logger`` (masked) and a shell step's output tail, ``[ts, level, source, text]``."""
    cpu_s: float | None = None
    """CPU seconds the attempt used (see :mod:`runtime.usage` for how); None when not measured."""
    peak_mb: float | None = None
    """The attempt's peak resident memory in MiB, measured as ``memory_mb`` is enforced."""


# os.urandom-backed: no state to share after a fork, and a handler that seeds the
# global ``random`` module cannot make two steps draw the same values.
_entropy = random.SystemRandom()


@dataclass(slots=True)
class StepContext:
    """Given to handlers that declare a ``context`` parameter.

    Handlers that need the time, randomness or ids must take them from the
    context (:meth:`now`, :meth:`utcnow`, :meth:`random`, :meth:`randint`,
    :meth:`uuid4`, :meth:`choice`) so a replay of the step is exact: each call
    is recorded, and a replayed run gets the recorded values back in order.
    Anything a handler takes elsewhere (``time.time()``, ``uuid.uuid4()``, the
    network) is not recorded and comes out different on replay. A replayed run
    whose calls do not match the recording (another kind at some call, more
    calls, or fewer) is reported as non-deterministic in
    ``StepOutcome.replay_diverged``; from the first differing call on, the
    handler gets fresh values.

    Attributes:
        execution_id: The execution this attempt belongs to.
        step: The step id.
        attempt: 1 for the first attempt.
        logger: A logger whose records carry the execution and step. Its lines at info level
            and above (secrets masked) also go to the audit log (``Engine.logs``), bounded: an
            attempt keeps its first and last 100 lines and says how many it dropped.
        workdir: This attempt's own fresh directory (see :mod:`runtime.isolation`); removed
            after a success, kept after a failure. The process cwd is not changed.
    """

    execution_id: str
    step: str
    attempt: int
    logger: logging.LoggerAdapter
    workdir: str = ""
    _progress: float | None = None
    _progress_to: Any = None
    _progress_sent: float = 0.0
    _replay: tuple[tuple[str, Any], ...] = ()
    _recorded: list[tuple[str, Any]] = field(default_factory=list)
    _diverged_at: str | None = None
    """The first call that did not match the recording, already worded."""
    _extra: list[tuple[int, str]] = field(default_factory=list)
    """Calls past the end of a non-empty recording: (call number, kind)."""

    def report_progress(self, fraction: float | None, message: str = "") -> None:
        """Say how far this attempt is: ``fraction`` from 0.0 to 1.0 (or None), and a short message.

        It shows in ``status`` (the step's ``progress`` and ``message``) and is logged as a
        ``step_progress`` event. At most ``PROGRESS_EVERY_S`` apart reach the engine (the
        others are dropped; a report of 1.0 always goes), so calling it in a tight loop is cheap.
        """
        value = None if fraction is None else max(0.0, min(1.0, float(fraction)))
        self._progress = value
        now = time.monotonic()
        if self._progress_to is None or (now - self._progress_sent < PROGRESS_EVERY_S and value != 1.0):
            return
        self._progress_sent = now
        try:
            self._progress_to(value, str(message)[:MAX_PROGRESS_MESSAGE])
        except Exception:  # noqa: BLE001 - a progress report must never fail the step
            log.debug("progress report of %s/%s dropped", self.execution_id, self.step, exc_info=True)

    @property
    def idempotency_key(self) -> str:
        return f"{self.execution_id}/{self.step}/{self.attempt}"

    def now(self) -> float:
        """Seconds since the epoch, like ``time.time()``; recorded as ``now``."""
        return self._take("now", time.time, _number)

    def utcnow(self) -> datetime.datetime:
        """The current time as a timezone-aware UTC datetime; recorded as its timestamp."""
        return self._take("utcnow", lambda: datetime.datetime.now(datetime.UTC).timestamp(),
                          lambda ts: datetime.datetime.fromtimestamp(_number(ts), datetime.UTC))

    def random(self) -> float:
        """A float in [0.0, 1.0), like ``random.random()``; recorded as ``random``."""
        return self._take("random", _entropy.random, _in_unit_interval)

    def randint(self, a: int, b: int) -> int:
        """An int N with a <= N <= b, like ``random.randint``; recorded as ``randint``."""
        return self._take("randint", lambda: _entropy.randint(a, b), lambda n: _within(n, a, b))

    def uuid4(self) -> str:
        """A fresh random UUID as text (``str(uuid.uuid4())``); recorded as ``uuid4``."""
        return self._take("uuid4", lambda: str(uuid.uuid4()), lambda u: str(uuid.UUID(u)))

    def choice(self, seq: Sequence[Any]) -> Any:
        """One element of ``seq``, like ``random.choice``; the chosen index is recorded.

        Raises:
            IndexError: ``seq`` is empty.
        """
        if not len(seq):
            raise IndexError("context.choice() cannot choose from an empty sequence")
        index = self._take("choice", lambda: _entropy.randrange(len(seq)),
                           lambda i: _within(i, 0, len(seq) - 1))
        return seq[index]

    def _take(self, kind: str, fresh: Callable[[], Any], revive: Callable[[Any], Any]) -> Any:
        """The next value of ``kind``: the recorded one while the replay matches, else fresh.

        ``fresh`` makes the JSON-friendly value that is recorded; ``revive`` turns a
        recorded value into what the handler gets (and rejects one that cannot be it),
        so a first run and its replay hand the handler the same thing.
        """
        call = len(self._recorded) + 1
        if self._diverged_at is None and call <= len(self._replay):
            want, value = self._replay[call - 1]
            if want != kind:
                self._diverged_at = f"call {call} asked for {kind} but the recording has {want}"
            else:
                try:
                    revived = revive(value)
                except (TypeError, ValueError, OverflowError) as e:
                    self._diverged_at = (f"call {call} asked for {kind} but the recorded value "
                                         f"{value!r} does not fit: {e}")
                else:
                    self._recorded.append((kind, value))
                    return revived
        elif self._diverged_at is None and self._replay:
            self._extra.append((call, kind))
        value = fresh()
        self._recorded.append((kind, value))
        return revive(value)

    def _divergence(self) -> str | None:
        """One line describing how the replayed run differed from its recording, if it did."""
        if self._diverged_at is not None:
            return self._diverged_at
        if self._extra:
            first, kind = self._extra[0]
            n = len(self._extra)
            return (f"asked for {n} more value{'s' if n != 1 else ''} than the {len(self._replay)} "
                    f"recorded (call {first} asked for {kind})")
        asked = len(self._recorded)
        if asked < len(self._replay):
            return (f"asked for only {asked} of the {len(self._replay)} recorded values "
                    f"(call {asked + 1}, {self._replay[asked][0]}, was never asked for)")
        return None


def _number(x: Any) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise TypeError(f"{x!r} is not a number")
    return float(x)


def _in_unit_interval(x: Any) -> float:
    value = _number(x)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{value!r} is not in [0.0, 1.0)")
    return value


def _within(n: Any, lo: int, hi: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int | float) or n != int(n):
        raise TypeError(f"{n!r} is not an integer")
    if not lo <= int(n) <= hi:
        raise ValueError(f"{int(n)} is outside [{lo}, {hi}]")
    return int(n)


_resolved: dict[str, Callable[..., Any]] = {}


def resolve(task: StepTask) -> Callable[..., Any]:
    """The callable for a python or registered handler (imports are cached per process)."""
    if task.uses.startswith("python:"):
        ref = task.uses[len("python:"):]
    elif isinstance(task.handler, str):
        ref = task.handler
    elif callable(task.handler):
        return task.handler
    else:
        raise LookupError(f"step {task.step!r}: handler {task.uses!r} was not shipped with the task")
    fn = _resolved.get(ref)
    if fn is None:
        fn = import_object(ref)
        if not callable(fn):
            raise TypeError(f"{ref} is not callable")
        _resolved[ref] = fn
    return fn


def run_task(task: StepTask, *, own_process: bool = False) -> StepOutcome:
    """Run one attempt and describe how it went; never raises for handler failures.

    Args:
        task: The attempt.
        own_process: The attempt has the process to itself (a Ray worker): its CPU use is the
            process's, threads and waited-for children included (see :mod:`runtime.usage`).
    """
    cpu_clock = process_cpu_s if own_process else time.thread_time
    start, cpu_start = time.perf_counter(), cpu_clock()
    place = Attempt(task.execution_id, task.step, task.attempt, task.memory_mb)
    lines = LineBuffer()
    ctx = StepContext(task.execution_id, task.step, task.attempt,
                      MaskingLoggerAdapter(log, {"execution_id": task.execution_id, "step": task.step},
                                           task.secrets, lines.add, CAPTURE_LEVEL),
                      place.workdir, _progress_to=task.progress_to, _replay=_as_recording(task.recorded))
    try:
        if task.uses == "shell":
            output, error = _run_shell(task, place)
            lines.add_shell_output(output)
        else:
            stop_watch = place.watch_this_thread()
            try:
                output, error = _call(resolve(task), task.args, ctx), None
            finally:
                stop_watch()
    except BaseException as exc:  # noqa: BLE001 - every handler failure, sys.exit included, becomes data
        output, error = None, error_from_exception(exc, traceback=traceback.format_exc())
    output, error, spilled = settle_output(task.step, output, error, task.output_cap)
    error = place.close(error)  # after the output check: a refused output keeps the directory too
    # A shell step's CPU is its child's (this thread only waited); a handler's is its process's or thread's.
    cpu_s = place.cpu_s if task.uses == "shell" else cpu_clock() - cpu_start
    return StepOutcome(task.key, error is None, output, error, time.perf_counter() - start,
                       ctx._progress, tuple(ctx._recorded), ctx._divergence(), spilled, tuple(lines.lines()),
                       None if cpu_s is None else round(cpu_s, 4), as_mb(place.peak_bytes))


def _as_recording(recorded: Any) -> tuple[tuple[str, Any], ...]:
    """``recorded`` as (kind, value) tuples: after a trip through JSON the pairs are lists."""
    return tuple((str(kind), value) for kind, value in recorded or ())


def _call(fn: Callable[..., Any], args: dict[str, Any], ctx: StepContext) -> Any:
    kwargs = dict(args)
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    if "context" in params:
        kwargs["context"] = ctx
    result = fn(**kwargs)
    if inspect.isawaitable(result):
        result = asyncio.run(_await(result))
    return result


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _run_shell(task: StepTask, place: Attempt) -> tuple[Any, ErrorInfo | None]:
    env = place.shell_env(task.env, {"SOPFLOW_EXECUTION_ID": task.execution_id, "SOPFLOW_STEP": task.step,
                                     "SOPFLOW_ATTEMPT": str(task.attempt)})
    with ShellCapture(task.execution_id, task.step, task.attempt) as streams:  # files, not memory
        try:
            code = place.run_shell(["/bin/sh", "-c", task.run or ""], env=env, timeout=task.timeout_s,
                                   stdout=streams.stdout, stderr=streams.stderr)
        except subprocess.TimeoutExpired as e:
            return None, ErrorInfo("Timeout", f"command ran longer than {e.timeout:g} s", origin="timeout")
        output = streams.output(code)
    if code == 0:
        return output, None
    tail = (output["stderr"].strip() or output["stdout"].strip()).splitlines()[-1:] or [""]
    return output, ErrorInfo("ExitCode", f"command exited with status {code}: {tail[0][:300]}",
                             exit_code=code, origin="shell")
