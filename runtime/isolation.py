"""Each step attempt's own place to run: a fresh working directory and a clean environment.

Attempts share worker processes (Ray reuses them), so nothing an attempt leaves
behind may reach the next one:

- **Working directory.** Every attempt gets a new directory under
  ``$SOPFLOW_ATTEMPTS_DIR`` (default ``<tmp>/sopflow-attempts``). A shell step
  runs in it (its cwd, and ``TMPDIR``); a Python handler gets its path as
  ``context.workdir``. The worker's own cwd is *not* changed for Python
  handlers: ``os.chdir`` is process-wide, and a handler may share its process
  with other threads (a replay runs handlers in threads of one process). It is
  removed after a success; after a failure it is kept for inspection (when the
  attempt left anything in it) and its path is appended to the error message.
- **Environment.** A shell step gets a clean environment: the variables named
  in :data:`SHELL_ENV_ALLOW` (and ``LC_*``) from the worker, then the step's
  ``env``, then ``SOPFLOW_*`` ids. Whatever else is in the worker's
  ``os.environ`` (a previous attempt's or handler's leftovers, Ray's internals)
  is not passed on; a step that needs a variable names it in its ``env``.
- **Memory.** A step's ``resources.memory_mb`` is enforced, not only used to
  place it: a watchdog thread samples the resident memory (RSS) every
  :data:`SAMPLE_S`. A shell step's whole process tree is measured and killed
  (SIGKILL to its process group) when over the limit. A Python handler is
  charged for what its worker process gained since the attempt began (the
  worker's own baseline, Ray included, is not the step's); when over, the
  watchdog raises :class:`MemoryLimitExceeded` in the handler's thread
  (``PyThreadState_SetAsyncExc``), which unwinds the handler and frees what it
  held while the worker survives. (Killing the worker with ``os._exit`` would
  lose the attempt's output and look like a crash.) Either way the attempt
  fails with origin ``oom``: classified ``resource`` and retried with
  ``retry.memory_growth`` x memory. Limits: a spike shorter than a sample can
  pass unnoticed, and a handler blocked inside one long C call is stopped when
  it returns to Python. RSS is used rather than ``RLIMIT_AS``: address-space
  limits fail programs that reserve much more than they use (JVMs, Go, BLAS
  thread pools).
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path
from collections.abc import Callable
from typing import IO, TYPE_CHECKING

from runtime.usage import MeasuredPopen, cpu_seconds, sampler

if TYPE_CHECKING:
    from runtime.failure import ErrorInfo

SHELL_ENV_ALLOW = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TERM",
                   "PYTHONPATH", "VIRTUAL_ENV", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
                   "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")
"""Worker environment variables a shell step inherits (plus every ``LC_*``); nothing else."""

SAMPLE_S = 0.05
"""How often the memory watchdog samples an attempt's resident memory."""

_PAGE = os.sysconf("SC_PAGE_SIZE")
_MIB = 1024 * 1024
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def attempts_root() -> Path:
    """Where attempt directories are made: ``$SOPFLOW_ATTEMPTS_DIR`` or ``<tmp>/sopflow-attempts``."""
    return Path(os.environ.get("SOPFLOW_ATTEMPTS_DIR") or Path(tempfile.gettempdir()) / "sopflow-attempts")


class Attempt:
    """One attempt's working directory and environment; :meth:`close` cleans up after it."""

    def __init__(self, execution_id: str, step: str, attempt: int, memory_mb: int | None = None) -> None:
        self.memory_mb = memory_mb or None
        self.over_mb: float | None = None
        """Set by the watchdog when the attempt went over ``memory_mb`` (the MiB it had)."""
        self.cpu_s: float | None = None
        """A shell step's CPU seconds (its child's rusage), once it ended (see :mod:`runtime.usage`)."""
        self.peak_bytes: float | None = None
        """The attempt's peak resident memory, measured as ``memory_mb`` is enforced, once it ended."""
        root = attempts_root()
        root.mkdir(parents=True, exist_ok=True)
        prefix = _UNSAFE.sub("_", f"{execution_id}-{step}-{attempt}-")[:120]
        self.workdir = tempfile.mkdtemp(prefix=prefix, dir=root)
        """A fresh, private (mode 0700) directory for this attempt alone."""

    def shell_env(self, step_env: dict[str, str], ids: dict[str, str]) -> dict[str, str]:
        """The whole environment of a shell step: allow-listed worker variables, its env, its ids."""
        inherited = {k: v for k, v in os.environ.items() if k in SHELL_ENV_ALLOW or k.startswith("LC_")}
        return {**inherited, "TMPDIR": self.workdir, **step_env, **ids}

    def run_shell(self, argv: list[str], *, env: dict[str, str], timeout: float | None,
                  stdout: IO[bytes], stderr: IO[bytes]) -> int:
        """Run ``argv`` in the attempt's directory, its process tree held to ``memory_mb``; the exit status.

        Output goes to the given files (never to pipes, so a step's background child that keeps
        them open cannot hold the step up once the command itself ended).

        Raises:
            subprocess.TimeoutExpired: like ``subprocess.run`` (the process group is killed).
        """
        with MeasuredPopen(argv, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, env=env,
                           cwd=self.workdir, start_new_session=True) as proc:
            stop = self._watch(lambda: _tree_rss(proc.pid), lambda: _kill_group(proc.pid))
            peak = sampler().track(lambda: _tree_rss(proc.pid))
            try:
                return proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid)
                proc.wait()
                raise
            finally:
                # Sampled only: the rusage's ru_maxrss counts the forked child before its exec, i.e.
                # this (large) worker's own memory. No last reading: the pid is reaped, maybe reused.
                self.peak_bytes = peak(final=False)
                stop()
                _kill_group(proc.pid)  # nothing the step started outlives it
                self.cpu_s = cpu_seconds(proc.rusage)

    def watch_this_thread(self) -> Callable[[], None]:
        """Hold a Python handler running in this thread to ``memory_mb`` and note its peak; returns ``stop``."""
        baseline = _rss(os.getpid()) or 0
        thread = threading.get_ident()
        stop_limit = self._watch(lambda: (_rss(os.getpid()) or 0) - baseline, lambda: _raise_in(thread))
        peak = sampler().track(lambda: (_rss(os.getpid()) or 0) - baseline)

        def stop() -> None:
            stop_limit()
            self.peak_bytes = peak()

        return stop

    def _watch(self, measure: Callable[[], float], stop_it: Callable[[], None]) -> Callable[[], None]:
        if not self.memory_mb:
            return lambda: None
        done = threading.Event()
        lock = threading.Lock()  # once stop() returned, the watchdog can no longer strike
        limit = self.memory_mb * _MIB

        def watchdog() -> None:
            while not done.wait(SAMPLE_S):
                used = measure()
                if used > limit:
                    with lock:
                        if not done.is_set():
                            self.over_mb = used / _MIB
                            stop_it()
                    return

        def stop() -> None:
            with lock:
                done.set()

        threading.Thread(target=watchdog, name="sopflow-memory-watchdog", daemon=True).start()
        return stop

    def close(self, error: ErrorInfo | None) -> ErrorInfo | None:
        """Remove the directory after a success; keep it after a failure and say where it is."""
        if self.over_mb is not None:  # whatever the step did about it, it went over its limit
            from runtime.failure import ErrorInfo

            error = ErrorInfo("MemoryLimitExceeded", f"the attempt used {self.over_mb:.0f} MiB, more than its "
                              f"memory_mb={self.memory_mb}; raise resources.memory_mb or set retry.memory_growth",
                              origin="oom")
        path = Path(self.workdir)
        if error is None or not path.is_dir() or not any(path.iterdir()):
            shutil.rmtree(path, ignore_errors=True)
            return error
        return dataclasses.replace(error, message=f"{error.message} (working directory kept: {path})")



class MemoryLimitExceeded(Exception):
    """Raised inside a Python handler whose attempt went over its ``memory_mb``."""


def _rss(pid: int) -> int | None:
    """Resident memory of one process in bytes (from /proc; None once it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


def _tree_rss(pid: int) -> int:
    """Resident memory of a process and all its descendants, in bytes."""
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        total += _rss(p) or 0
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return total


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _raise_in(thread_id: int) -> None:
    """Raise :class:`MemoryLimitExceeded` in a thread at its next Python instruction."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(MemoryLimitExceeded))
