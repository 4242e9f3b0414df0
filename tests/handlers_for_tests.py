"""Step handlers for the test SOPs (``uses: python:tests.handlers_for_tests:<fn>``).

They run in Ray workers, so state shared with the test (attempt counts, "go"
signals) lives in files under the test's tmp_path, passed in through ``with:``.
Waiting is always a bounded polling loop for a condition.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from runtime.errors import PermanentError, RetryableError

POLL_S = 0.02


def _wait_until(predicate: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(POLL_S)  # polling interval of a bounded wait, not synchronisation by itself
    return predicate()


def echo(value: Any = None) -> Any:
    """Return the argument unchanged."""
    return value


def fail(message: str = "boom", kind: str = "transient") -> None:
    """Always fail: ``transient`` (RuntimeError), ``retryable``, ``permanent`` or ``value``."""
    if kind == "permanent":
        raise PermanentError(message)
    if kind == "value":
        raise ValueError(message)
    if kind == "retryable":
        raise RetryableError(message)
    raise RuntimeError(message)


def outcome(ok: bool, name: str = "") -> str:
    """Succeed or fail (permanently, so nothing is retried) as told."""
    if not ok:
        raise PermanentError(f"step {name} was told to fail")
    return f"{name} ok"


def flaky(fail_times: int, counter_dir: str, context: Any) -> dict:
    """Fail (transiently) on the first ``fail_times`` attempts, then succeed.

    Each attempt also leaves a file in ``counter_dir``, so the test can count them
    independently of the engine's own bookkeeping.
    """
    Path(counter_dir).mkdir(parents=True, exist_ok=True)
    (Path(counter_dir) / f"attempt-{context.attempt}").write_text(str(os.getpid()))
    if context.attempt <= fail_times:
        raise ConnectionError(f"flaky dependency unavailable (attempt {context.attempt})")
    return {"attempt": context.attempt}


def crash_once(marker: str) -> dict:
    """Kill the worker process on the first attempt; succeed on the next."""
    path = Path(marker)
    if not path.exists():
        path.write_text(str(os.getpid()))
        os._exit(1)
    return {"pid": os.getpid(), "crashed_pid": int(path.read_text())}


def slow_first_attempt(seconds: float, context: Any) -> dict:
    """Sleep ``seconds`` on attempt 1 (to hit the step's timeout); return at once afterwards."""
    if context.attempt == 1:
        time.sleep(seconds)
    return {"attempt": context.attempt}


def wait_for_file(path: str, timeout_s: float = 30.0, value: Any = None) -> Any:
    """Block (bounded) until ``path`` exists; fail if it never appears."""
    if not _wait_until(lambda: Path(path).exists(), timeout_s):
        raise TimeoutError(f"{path} did not appear within {timeout_s} s")
    return value if value is not None else Path(path).read_text()


def barrier(directory: str, name: str, parties: int, timeout_s: float = 30.0) -> str:
    """Arrive at a barrier of ``parties`` steps and wait (bounded) until all have arrived.

    Only steps that really run at the same time can all pass it.
    """
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(str(os.getpid()))
    if not _wait_until(lambda: len(list(root.iterdir())) >= parties, timeout_s):
        raise TimeoutError(f"only {len(list(root.iterdir()))} of {parties} parties arrived")
    return name


def touch(path: str, text: str = "") -> str:
    """Write a file (rollback steps use it to show they ran)."""
    Path(path).write_text(text)
    return text


def leak_secret(token: str) -> None:
    """Fail with an error message that contains the (secret) argument."""
    raise PermanentError(f"authentication rejected for token {token}")


def log_secret(token: str, marker: str, context: Any) -> str:
    """Write the (secret) argument through the step's logger, as a message, an argument and a traceback."""
    context.logger.warning(f"{marker} inline {token}")
    context.logger.warning("%s as argument %s", marker, token)
    try:
        raise ValueError(f"bad token {token}")
    except ValueError:
        context.logger.exception("%s with traceback", marker)
    return "logged"


def return_secret(token: str) -> dict:
    """Succeed with an output that contains the (secret) argument."""
    return {"header": f"Bearer {token}"}


def record_run(runs_dir: str, name: str, ok: bool = True, upstream: Any = None, work_s: float = 0.0,
               gate: str | None = None, context: Any = None) -> str:
    """Note this run (step, attempt, pid, start time) in ``runs_dir``, then succeed or fail as told.

    With ``gate``, the run waits for that file first (the test opens the gate); ``work_s``
    is the step's own work. The output depends only on the inputs, so an undisturbed
    run and a recovered one must produce the same.
    """
    Path(runs_dir).mkdir(parents=True, exist_ok=True)
    line = f"{name} {context.attempt if context else 0} {os.getpid()} {time.time():.6f}\n"
    with open(Path(runs_dir) / f"{name}.runs", "a") as f:  # one write per run; O_APPEND keeps lines whole
        f.write(line)
    if gate is not None:
        _wait_until(lambda: os.path.exists(gate), 60.0)
    if work_s:
        time.sleep(work_s)  # the step's own work, not synchronisation
    if not ok:
        raise PermanentError(f"step {name} was told to fail")
    return f"{name}<{upstream}>" if upstream is not None else name


# -- replay histories (tests/histories/make_histories.py) -------------------------------------------


def stamp(label: str, upstream: Any = None, context: Any = None) -> dict:
    """Take a time, an id and a die roll from the step context (recorded, so a replay is exact)."""
    return {"at": context.now(), "id": context.uuid4(), "roll": context.randint(1, 6), "label": label,
            "upstream": upstream}


def sneaky_random(label: str) -> dict:
    """Read randomness directly instead of from the context: a replay cannot reproduce it."""
    import random

    return {"label": label, "value": random.random()}


def chain(name: str, ok: bool = True, upstream: Any = None) -> str:
    """Succeed with a value built from the inputs only, or fail permanently as told (replay properties)."""
    if not ok:
        raise PermanentError(f"step {name} was told to fail")
    return f"{name}<{upstream}>" if upstream is not None else name


# -- outputs that are not data, exits, unprintable errors (tests/runtime/test_engine_outcomes.py) --


def returns_lambda() -> dict:
    """Return a live function inside the output (not data: refused)."""
    return {"total": 3, "fn": lambda x: x}


def returns_socket() -> dict:
    """Return an open socket (cannot even be pickled)."""
    import socket

    return {"conn": socket.socket()}


def returns_generator() -> Any:
    """Return a generator (not data)."""
    return (i for i in range(3))


def exits(code: int) -> None:
    """Leave through sys.exit(code), as a script would."""
    import sys

    sys.exit(code)


def hard_exit(code: int) -> None:
    """Kill the worker process on the spot (no exception, no cleanup)."""
    os._exit(code)


class UnprintableError(Exception):
    """An exception whose message cannot be computed."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken")


def raises_unprintable() -> None:
    raise UnprintableError()


def big_output(n: int) -> dict:
    """An output of about ``n`` bytes of JSON (a list of short strings)."""
    return {"rows": [f"row-{i:08d}" for i in range(n // 15)], "n": n}


def size_of(value: Any = None) -> dict:
    """How big the value it was given is, and its first row (to see it got the real value)."""
    rows = value["rows"] if isinstance(value, dict) else value
    return {"count": len(rows), "first": rows[0], "last": rows[-1]}


def big_secret_output(token: str, n: int) -> dict:
    """A big output (an artifact) that quotes the (secret) argument."""
    return {"header": f"Bearer {token}", "padding": "x" * n}


def _rebuild_unshippable() -> Any:
    import ray

    ctx = ray.get_runtime_context()
    if ctx.get_actor_id() is None and ctx.worker.mode == ray.WORKER_MODE:  # a step task's worker
        raise ModuleNotFoundError("No module named 'pricing_engine'")
    return Unshippable()


class Unshippable:
    """A handler that cannot be rebuilt in a step's worker (a module only some nodes have)."""

    def __call__(self) -> str:
        return "never"

    def __reduce__(self) -> tuple:
        return (_rebuild_unshippable, ())


def report_then_wait(gate: str, context: Any) -> str:
    """Report half-way progress, then wait (bounded) for the test to open ``gate``; report done."""
    context.report_progress(0.5, "half way")
    if not _wait_until(lambda: os.path.exists(gate), 60.0):
        raise TimeoutError(f"{gate} did not appear")
    context.report_progress(1.0, "done")
    return "reported"
