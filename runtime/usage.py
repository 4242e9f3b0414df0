"""What one attempt used, measured where it ran: CPU seconds and peak memory.

The numbers feed :mod:`runtime.estimates` (``sopflow suggest``, learned
allocations). They are measured the way :mod:`runtime.isolation` enforces
``memory_mb``, so a suggestion made from them does not trip the limit:

- a Python handler: in a Ray worker, which runs one task at a time, the
  worker process's CPU time over the attempt (every thread, so a library's
  thread pool counts, and the children it waited for; :func:`process_cpu_s`);
  in the in-process engine, whose handlers share one process, the CPU time of
  the handler's thread only (``time.thread_time``). Memory: the growth of the
  process's resident memory over the attempt's start;
- a shell step: the child's own rusage (user + system time of it and every
  descendant it waited for, from ``wait4``) and the peak resident memory of its
  process tree (sampled: the rusage's ``ru_maxrss`` would count the forked child
  before its ``exec``, i.e. the worker's own memory).

Peaks are sampled every :data:`SAMPLE_S` by one thread per process (not one
per attempt: a worker runs thousands of short attempts) plus once at the end,
so a spike shorter than the interval can be missed. In the in-process engine
handlers share one process, so a Python handler's memory is that process's
growth and includes what concurrent handlers allocated: an upper bound.
"""

from __future__ import annotations

import os
import resource
import subprocess
import threading
from collections.abc import Callable
from typing import Any

SAMPLE_S = 0.05
"""How often the shared sampler reads the resident memory of the attempts it tracks."""

_MIB = 1024 * 1024


class _Tracked:
    __slots__ = ("measure", "peak")

    def __init__(self, measure: Callable[[], float]) -> None:
        self.measure = measure
        self.peak = 0.0


class PeakSampler:
    """Samples the memory of every tracked attempt of this process from one daemon thread.

    The thread sleeps (on a condition, not a timer) while nothing is tracked.
    """

    def __init__(self, every_s: float = SAMPLE_S) -> None:
        self.every_s = every_s
        self._tracked: set[_Tracked] = set()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def track(self, measure: Callable[[], float]) -> Callable[..., float]:
        """Start following ``measure`` (bytes now); returns ``stop(final=True)``, which gives the peak
        in bytes (with ``final``, after one last reading)."""
        entry = _Tracked(measure)
        _sample(entry)
        with self._cond:
            self._tracked.add(entry)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="sopflow-usage-sampler", daemon=True)
                self._thread.start()
            self._cond.notify()

        def stop(final: bool = True) -> float:
            with self._cond:
                self._tracked.discard(entry)
            if final:  # the last reading: an attempt shorter than the interval gets one at least
                _sample(entry)
            return entry.peak

        return stop

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._tracked:
                    self._cond.wait()
                entries = list(self._tracked)
            for entry in entries:
                _sample(entry)
            with self._cond:  # woken early only by a new attempt; otherwise sample again after the interval
                self._cond.wait(self.every_s)


def _sample(entry: _Tracked) -> None:
    try:
        value = float(entry.measure())
    except Exception:  # noqa: BLE001 - a process that is gone, or /proc unreadable: keep the last peak
        return
    if value > entry.peak:
        entry.peak = value


_sampler: PeakSampler | None = None
_sampler_lock = threading.Lock()


def sampler() -> PeakSampler:
    """This process's sampler, started on first use (one thread per worker process, on purpose)."""
    global _sampler
    with _sampler_lock:
        if _sampler is None:
            _sampler = PeakSampler()
        return _sampler


class MeasuredPopen(subprocess.Popen):
    """A :class:`subprocess.Popen` that keeps the child's rusage when it is reaped.

    ``Popen`` reaps with ``waitpid``, which drops the rusage; this reaps with ``wait4``
    (same pid, same flags) so the CPU time of the child and the descendants it waited for is
    known per child: ``getrusage(RUSAGE_CHILDREN)`` would mix in every other child of the
    process, and an in-process engine runs several shell steps at once.
    """

    rusage: Any = None

    def _try_wait(self, wait_flags: int) -> tuple[int, int]:  # the one place Popen calls waitpid
        try:
            pid, status, rusage = os.wait4(self.pid, wait_flags)
        except ChildProcessError:  # as Popen: SIGCHLD ignored, the status is lost
            return self.pid, 0
        if pid == self.pid:
            self.rusage = rusage
        return pid, status


def cpu_seconds(rusage: Any) -> float | None:
    """User + system CPU seconds of a ``wait4``/``getrusage`` result (None without one)."""
    if rusage is None:
        return None
    return float(rusage.ru_utime + rusage.ru_stime)


def process_cpu_s() -> float:
    """CPU seconds of this process and of the children it has waited for, so far."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def as_mb(n_bytes: float | None) -> float | None:
    """Bytes as MiB, rounded to 0.1 (None stays None)."""
    return None if n_bytes is None else round(n_bytes / _MIB, 1)
