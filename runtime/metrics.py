"""Execution metrics over a time window, computed from executions' events: pure Python, no Ray.

:func:`facts` reads one execution's events into the few numbers metrics need
(:class:`ExecutionFacts`); :func:`compute` aggregates facts into the report that
``engine.metrics()`` and ``sopflow metrics`` return. The monitor feeds it the
histories it holds in memory plus those of the state store (so the numbers are
the same after a monitor restart); ``sopflow metrics --state FILE`` feeds it a
state file through :func:`from_log`, with no cluster.

Which executions count: those submitted within the window, plus every execution
still unfinished (whenever it was submitted). Durations are wall time from
submission to the end, over the finished ones among them.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from runtime.errors import MetricsQueryError
from runtime.events import Event, EventKind
from runtime.failure import Classification
from runtime.state import fold
from runtime.status import ExecutionStatus, StepStatus

ERROR_CLASSES = tuple(c.value for c in Classification)
"""Failure classes always present in ``errors`` (others, such as ``operator``, appear when seen)."""
FINISHED = ("completed", "partially_completed", "failed", "cancelled")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, "w": 604_800.0}
_WINDOW = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")


def parse_window(value: str | float | int | None) -> float | None:
    """Seconds of a window given as ``90``, ``"30m"``, ``"1h"``, ``"7d"``, ``"2w"``; None or ``"all"``: no window.

    Raises:
        MetricsQueryError: naming the accepted forms (it is a ValueError).
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "all")):
        return None
    if isinstance(value, bool):
        raise MetricsQueryError(f"window must be a duration such as 90, '30m', '1h', '7d' or 'all', got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _WINDOW.match(str(value).lower())
        if not match:
            raise MetricsQueryError(f"window must be a duration such as 90 (seconds), '30m', '1h', '7d', '2w' or "
                             f"'all', got {str(value)[:40]!r}")
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if not (math.isfinite(seconds) and seconds > 0):
        raise MetricsQueryError(f"window must be > 0 seconds, got {value!r}")
    return seconds


def percentile(ordered: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` percentile (0 < q <= 100) of ascending ``ordered`` (not empty)."""
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def stats(values: Iterable[float]) -> dict[str, Any]:
    """``count``, ``mean``, ``p50``, ``p95``, ``p99`` and ``max`` of ``values`` (None when there are none)."""
    ordered = sorted(values)
    if not ordered:
        return {"count": 0, "mean": None, "p50": None, "p95": None, "p99": None, "max": None}
    return {"count": len(ordered), "mean": math.fsum(ordered) / len(ordered), "p50": percentile(ordered, 50),
            "p95": percentile(ordered, 95), "p99": percentile(ordered, 99), "max": ordered[-1]}


@dataclass(slots=True)
class ExecutionFacts:
    """What metrics need to know about one execution, read from its events."""

    id: str
    sop: str = ""
    mode: str = ""
    status: str = ExecutionStatus.QUEUED.value
    submitted_at: float = 0.0
    ended_at: float | None = None
    attempts: int = 0
    """Attempts handed to their runner (``step_started``)."""
    outcomes: int = 0
    """Attempts that ended succeeded or failed."""
    failures: dict[str, int] = field(default_factory=dict)
    """Failed attempts by classification."""
    retries: int = 0
    queued_now: int = 0
    """Steps waiting for a run slot at the end of the history."""
    queue_waits: list[float] = field(default_factory=list)
    """Seconds from ``step_queued`` to ``step_started``, per attempt that queued."""
    step_seconds: dict[str, list[float]] = field(default_factory=dict)
    """Step -> seconds from ``step_started`` to its outcome, per attempt."""
    alerts: int = 0

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def duration_s(self) -> float | None:
        return None if self.ended_at is None else max(0.0, self.ended_at - self.submitted_at)


def facts(events: Sequence[Event]) -> ExecutionFacts:
    """The :class:`ExecutionFacts` of one execution's events (in seq order)."""
    state = fold(events)
    out = ExecutionFacts(state.id, state.sop, state.mode, state.status.value, state.submitted_at, state.ended_at)
    queued: dict[tuple[str | None, int | None], float] = {}
    started: dict[tuple[str | None, int | None], float] = {}
    for e in events:
        key = (e.step, e.attempt)
        if e.kind == EventKind.STEP_QUEUED:
            queued[key] = e.ts
        elif e.kind == EventKind.STEP_STARTED:
            out.attempts += 1
            started[key] = e.ts
            if key in queued:
                out.queue_waits.append(max(0.0, e.ts - queued.pop(key)))
        elif e.kind in (EventKind.STEP_SUCCEEDED, EventKind.STEP_FAILED):
            out.outcomes += 1
            if key in started:
                out.step_seconds.setdefault(e.step or "", []).append(max(0.0, e.ts - started.pop(key)))
            if e.kind == EventKind.STEP_FAILED:
                cls = e.data.get("classification") or "unknown"
                out.failures[cls] = out.failures.get(cls, 0) + 1
        elif e.kind == EventKind.RETRY_SCHEDULED:
            out.retries += 1
        elif e.kind == EventKind.ALERTED:
            out.alerts += 1
    if not state.status.terminal:
        out.queued_now = sum(1 for s in state.steps.values() if s.status == StepStatus.QUEUED)
    return out


def selected(f: ExecutionFacts, *, since: float | None, sop: str | None, mode: str | None) -> bool:
    """Whether ``f`` counts: the SOP and mode match, and it was submitted since ``since`` or is unfinished."""
    return ((sop is None or f.sop == sop) and (mode is None or f.mode == mode)
            and (since is None or f.submitted_at >= since or not f.finished))


def compute(all_facts: Iterable[ExecutionFacts], *, now: float | None = None, window_s: float | None = None,
            sop: str | None = None, mode: str | None = None,
            resources: Mapping[str, Any] | None = None, source: str = "") -> dict[str, Any]:
    """The metrics report (JSON data) over the executions that count (see the module docstring).

    Keys: ``window`` (``seconds``, ``since``, ``until``, ``sop``, ``mode``); ``executions``
    (``total``, ``running`` (= unfinished), each finished status, ``success_rate`` = completed /
    finished); ``duration_s`` (stats of finished ones), ``duration_by_sop``, ``duration_by_mode``;
    ``steps`` (``attempts``, ``outcomes``, ``failed``, ``retries``, ``errors`` by class,
    ``error_rate`` by class = failed attempts of that class / attempt outcomes);
    ``queue`` (``depth`` = steps waiting for a run slot now, ``wait_s`` stats over attempts that
    waited); ``step_duration_s`` (SOP -> step -> stats); ``alerts``; ``resources`` (as given,
    with its ``source``); ``source``. Every stats entry has ``count``, ``mean``, ``p50``, ``p95``,
    ``p99``, ``max`` (None when count is 0).
    """
    now = time.time() if now is None else now
    since = None if window_s is None else now - window_s
    chosen = [f for f in all_facts if selected(f, since=since, sop=sop, mode=mode)]
    finished = [f for f in chosen if f.finished]
    counts = {status: sum(1 for f in finished if f.status == status) for status in FINISHED}
    errors = dict.fromkeys(ERROR_CLASSES, 0)
    for f in chosen:
        for cls, n in f.failures.items():
            errors[cls] = errors.get(cls, 0) + n
    outcomes = sum(f.outcomes for f in chosen)
    by_sop: dict[str, list[float]] = {}
    by_mode: dict[str, list[float]] = {}
    for f in finished:
        by_sop.setdefault(f.sop, []).append(f.duration_s or 0.0)
        by_mode.setdefault(f.mode, []).append(f.duration_s or 0.0)
    step_seconds: dict[str, dict[str, list[float]]] = {}
    for f in chosen:
        for step, values in f.step_seconds.items():
            step_seconds.setdefault(f.sop, {}).setdefault(step, []).extend(values)
    return {
        "window": {"seconds": window_s, "since": since, "until": now, "sop": sop, "mode": mode},
        "executions": {"total": len(chosen), "running": len(chosen) - len(finished), **counts,
                       "success_rate": counts["completed"] / len(finished) if finished else None},
        "duration_s": stats(f.duration_s or 0.0 for f in finished),
        "duration_by_sop": {k: stats(v) for k, v in sorted(by_sop.items())},
        "duration_by_mode": {k: stats(v) for k, v in sorted(by_mode.items())},
        "steps": {"attempts": sum(f.attempts for f in chosen), "outcomes": outcomes,
                  "failed": sum(errors.values()), "retries": sum(f.retries for f in chosen),
                  "errors": errors,
                  "error_rate": {cls: (n / outcomes if outcomes else 0.0) for cls, n in errors.items()}},
        "queue": {"depth": sum(f.queued_now for f in chosen),
                  "wait_s": stats(w for f in chosen for w in f.queue_waits)},
        "step_duration_s": {s: {step: stats(v) for step, v in sorted(steps.items())}
                            for s, steps in sorted(step_seconds.items())},
        "alerts": sum(f.alerts for f in chosen),
        "resources": dict(resources or {"source": "not measured"}),
        "source": source,
    }


def from_log(log: Any, *, now: float | None = None, window_s: float | None = None, sop: str | None = None,
             mode: str | None = None, skip: Iterable[str] = ()) -> list[ExecutionFacts]:
    """Facts of the executions in an event log that may count (``skip``: ids the caller has already)."""
    now = time.time() if now is None else now
    since = None if window_s is None else now - window_s
    skipped = set(skip)
    records = [*log.query(since=since, sop=sop, limit=None), *log.unfinished()]
    out = []
    for record in records:
        if record.id in skipped or (sop is not None and record.sop != sop):
            continue
        skipped.add(record.id)
        events = log.read(record.id)
        if events:
            f = facts(events)
            if selected(f, since=since, sop=sop, mode=mode):
                out.append(f)
    return out


def host_resources() -> dict[str, Any]:
    """CPU, memory and network of this machine (psutil when installed, else ``/proc``), with its source."""
    try:
        import psutil
    except ImportError:
        return _proc_resources()
    memory = psutil.virtual_memory()
    net = psutil.net_io_counters()
    return {"source": "psutil on the monitor's host", "cpu_count": psutil.cpu_count(),
            "cpu_percent": psutil.cpu_percent(interval=None), "load_1m": _load(),
            "memory_total_bytes": memory.total, "memory_used_bytes": memory.total - memory.available,
            "memory_percent": memory.percent,
            "network_sent_bytes": getattr(net, "bytes_sent", None),
            "network_recv_bytes": getattr(net, "bytes_recv", None)}


def _load() -> float | None:
    try:
        import os

        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def _proc_resources() -> dict[str, Any]:
    import os

    out: dict[str, Any] = {"source": "/proc on the monitor's host", "cpu_count": os.cpu_count(), "load_1m": _load()}
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if line.split()[1:2]}
        out["memory_total_bytes"] = info.get("MemTotal")
        out["memory_used_bytes"] = info.get("MemTotal", 0) - info.get("MemAvailable", 0)
    except (OSError, ValueError, IndexError):
        pass
    return out
