"""Learned estimates: per SOP and step, what recent attempts took (duration, CPU, memory). Pure Python.

The coordinator feeds :class:`Estimates` as steps end (:meth:`Estimates.feed`,
from the ``step_succeeded`` / ``step_failed`` events and their ``cpu_s`` and
``peak_mb``) and as executions finish. Each SOP/step keeps a bounded window of
its latest successful attempts (:data:`WINDOW`), from which it answers p50/p95
and a recent trend. The windows are kept in the state store (settings
``estimates:<sop>``, see :func:`save` / :func:`load`) rather than rebuilt from
the event log at every start: a start then costs the same however long the log
is, and the history survives the log's retention purge. A store without them
(older sopflow) is rebuilt once from its latest finished executions
(:func:`rebuild`).

What the estimates are used for, and the rules (see also :mod:`runtime.forecast`):

- expected duration of an execution: the critical path of its DAG weighted by
  each step's p50 (a step that never ran in a completed execution counts 0: it
  was skipped; one with no history at all and no declared
  ``expected_duration_s`` means no expectation);
- ``sopflow suggest``: per step ``cpu`` (p95 of cores used x :data:`HEADROOM`),
  ``memory_mb`` (p95 of the peak x :data:`HEADROOM`), ``timeout_s`` (2 x p95 of
  the duration, never below 1.2 x the longest success);
- learned allocations (``resources: {learned: true}``): after
  :data:`MIN_SAMPLES` successes, the step reserves the suggested CPU and memory,
  never more than it declares (so opting in never makes a step harder to place;
  a step that declares no memory reserves the suggested memory), never less than
  :data:`MIN_CPU` / :data:`MIN_MEMORY_MB`; GPUs and capabilities are never
  learned, and the enforced memory limit stays the declared one (a learned
  reservation never kills a step).
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from runtime.events import Event, EventKind
from runtime.seams import Demand

WINDOW = 200
"""Successful attempts kept per SOP/step (the oldest drop out): estimates follow recent behaviour."""
MIN_SAMPLES = 3
"""Successes needed before a learned allocation replaces the declared one."""
HEADROOM = 1.25
"""Margin over the p95 of what was used, for suggested and learned CPU and memory."""
MIN_CPU = 0.05
"""The smallest learned CPU reservation (a sleeping step still needs a little)."""
MIN_MEMORY_MB = 16
"""The smallest learned memory reservation; memory is rounded up to multiples of it."""
REBUILD_EXECUTIONS = 200
"""Finished executions read from the log when the state store holds no estimates yet."""
SETTING_PREFIX = "estimates:"


def percentile(values: Sequence[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile (0 < p <= 100) of non-empty ``values``."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def trend(values: Sequence[float]) -> float | None:
    """How the latest quarter of ``values`` (oldest first) compares with the rest: the relative change
    of the median (0.3: 30 % more lately); None with fewer than 6 values or a zero median before."""
    if len(values) < 6:
        return None
    recent = max(3, len(values) // 4)
    before = percentile(values[:-recent], 50)
    if before <= 0:
        return None
    return round(percentile(values[-recent:], 50) / before - 1, 3)


def _ceil_to(x: float, step: float) -> float:
    return math.ceil(x / step - 1e-9) * step


@dataclass(frozen=True, slots=True)
class StepEstimate:
    """What the history of one SOP step says (durations in seconds, memory in MiB, CPU in cores).

    ``cores_p95`` and ``memory_p95_mb`` are None when no attempt of it was measured.
    """

    samples: int
    failures: int
    p50_s: float
    p95_s: float
    max_s: float
    trend: float | None
    cores_p95: float | None
    memory_p95_mb: float | None
    resource_samples: int

    def suggestion(self) -> dict[str, Any]:
        """Recommended ``cpu``, ``memory_mb`` and ``timeout_s`` (a field is None when unmeasured)."""
        return {"cpu": None if self.cores_p95 is None else round(max(MIN_CPU, _ceil_to(self.cores_p95 * HEADROOM,
                                                                                      MIN_CPU)), 2),
                "memory_mb": None if self.memory_p95_mb is None else int(max(
                    MIN_MEMORY_MB, _ceil_to(self.memory_p95_mb * HEADROOM, MIN_MEMORY_MB))),
                "timeout_s": float(math.ceil(max(2 * self.p95_s, 1.2 * self.max_s, 1.0)))}


class StepHistory:
    """A bounded window of one SOP step's successful attempts, and how many failed."""

    __slots__ = ("durations", "cores", "memory", "failures", "_cached")

    def __init__(self, window: int = WINDOW) -> None:
        self.durations: deque[float] = deque(maxlen=window)
        self.cores: deque[float] = deque(maxlen=window)
        """CPU seconds / duration of measured successes: the cores it kept busy."""
        self.memory: deque[float] = deque(maxlen=window)
        """Peak MiB of measured successes."""
        self.failures = 0
        self._cached: StepEstimate | None = None

    def add(self, duration_s: float, cpu_s: float | None = None, peak_mb: float | None = None) -> None:
        """One successful attempt (a negative or non-finite measurement is ignored)."""
        if not _ok(duration_s):
            return
        self.durations.append(float(duration_s))
        if _ok(cpu_s):
            # Under 10 ms a duration is mostly start-up noise: do not divide by it.
            self.cores.append(float(cpu_s) / max(float(duration_s), 0.01))
        if _ok(peak_mb):
            self.memory.append(float(peak_mb))
        self._cached = None

    def fail(self) -> None:
        self.failures += 1
        self._cached = None

    def estimate(self) -> StepEstimate | None:
        """The window's summary; None while it holds no success."""
        if not self.durations:
            return None
        if self._cached is None:
            d = list(self.durations)
            self._cached = StepEstimate(
                samples=len(d), failures=self.failures, p50_s=percentile(d, 50), p95_s=percentile(d, 95),
                max_s=max(d), trend=trend(d),
                cores_p95=percentile(self.cores, 95) if self.cores else None,
                memory_p95_mb=percentile(self.memory, 95) if self.memory else None,
                resource_samples=max(len(self.cores), len(self.memory)))
        return self._cached

    def to_data(self) -> dict[str, Any]:
        return {"d": list(self.durations), "c": list(self.cores), "m": list(self.memory), "f": self.failures}

    @classmethod
    def from_data(cls, data: dict[str, Any], window: int = WINDOW) -> StepHistory:
        h = cls(window)
        h.durations.extend(float(x) for x in data.get("d", ()) if _ok(x))
        h.cores.extend(float(x) for x in data.get("c", ()) if _ok(x))
        h.memory.extend(float(x) for x in data.get("m", ()) if _ok(x))
        h.failures = int(data.get("f", 0) or 0)
        return h


def _ok(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x >= 0


class Estimates:
    """Every SOP step's history, fed by the coordinator; see the module docstring.

    Args:
        window: Successful attempts kept per SOP/step.
    """

    def __init__(self, window: int = WINDOW) -> None:
        self.window = window
        self._steps: dict[tuple[str, str], StepHistory] = {}
        self._completed: dict[str, int] = {}
        """SOP -> executions of it that completed (a step with no history in them was skipped)."""
        self.dirty: set[str] = set()
        """SOPs changed since they were last saved."""
        self.changes: dict[str, int] = {}
        """SOP -> how many times its history changed (a cache of what is derived from it checks it)."""

    def history(self, sop: str, step: str) -> StepHistory:
        h = self._steps.get((sop, step))
        if h is None:
            h = self._steps[sop, step] = StepHistory(self.window)
        return h

    def feed(self, sop: str, event: Event, started_at: float | None = None) -> None:
        """Take what an event says about an attempt or an execution (other kinds are ignored).

        ``started_at`` (when the step started) gives the duration of a success that reports none:
        a ``sop:`` or ``agent`` step, whose work is a child execution, not a timed handler.
        """
        if event.kind == EventKind.STEP_SUCCEEDED and event.step:
            data = event.data
            duration = data.get("duration_s") or 0.0
            if not duration and started_at is not None:
                duration = max(event.ts - started_at, 0.0)
            self.history(sop, event.step).add(duration, data.get("cpu_s"), data.get("peak_mb"))
        elif event.kind == EventKind.STEP_FAILED and event.step and event.attempt:  # attempt 0: never ran
            self.history(sop, event.step).fail()
        elif event.kind == EventKind.FINISHED and event.data.get("status") == "completed":
            self._completed[sop] = self._completed.get(sop, 0) + 1
        else:
            return
        self.dirty.add(sop)
        self.changes[sop] = self.changes.get(sop, 0) + 1

    def step(self, sop: str, step: str) -> StepEstimate | None:
        h = self._steps.get((sop, step))
        return None if h is None else h.estimate()

    def completed(self, sop: str) -> int:
        return self._completed.get(sop, 0)

    def sops(self) -> list[str]:
        return sorted({s for s, _ in self._steps} | set(self._completed))

    def step_durations(self, sop: Any) -> dict[str, float] | None:
        """Each main step's expected seconds (see the module docstring), or None when one is unknown."""
        out: dict[str, float] = {}
        learned = False
        for step in sop.steps:
            found = self.step(sop.sop, step.id)
            if found is not None:
                out[step.id], learned = found.p50_s, True
            elif step.expected_duration_s is not None:
                out[step.id] = float(step.expected_duration_s)
            elif self.completed(sop.sop):
                out[step.id] = 0.0  # completed runs never ran it: skipped by its `when`
            else:
                return None
        return out if learned else None  # declarations alone: the SOP's own expected_duration_s says it

    def expected_duration(self, sop: Any, graph: Any = None) -> float | None:
        """Seconds a whole execution of ``sop`` is expected to take: the critical path of step p50s."""
        durations = self.step_durations(sop)
        if durations is None:
            return None
        if graph is None:
            from sop.graph import Graph

            graph = Graph.from_dependencies({s.id: list(s.depends_on) for s in sop.steps})
        return round(graph.critical_path(durations).duration_s, 3)

    def learned(self, sop: str, step: str, declared: Any) -> Demand | None:
        """The reservation the history suggests for a step opted in to learned resources, within the
        declared one (see the module docstring); None until it has :data:`MIN_SAMPLES` successes."""
        found = self.step(sop, step)
        if found is None or found.samples < MIN_SAMPLES:
            return None
        return bounded(found, declared)

    def steps_of(self, sop: str) -> list[str]:
        """The steps of the SOP named ``sop`` that have a history."""
        return [step for s, step in self._steps if s == sop]

    def described(self, sop: str, step: str) -> dict[str, Any]:
        """A step's estimate and suggestion as data (``{"samples": 0, ...}`` without a success)."""
        found = self.step(sop, step)
        if found is None:
            h = self._steps.get((sop, step))
            return {"samples": 0, "failures": h.failures if h else 0}
        return {**asdict(found), **found.suggestion()}

    # -- persistence ---------------------------------------------------------------------------

    def to_data(self, sop: str) -> dict[str, Any]:
        return {"v": 1, "completed": self._completed.get(sop, 0),
                "steps": {step: h.to_data() for (s, step), h in self._steps.items() if s == sop}}

    def add_data(self, sop: str, data: dict[str, Any]) -> None:
        self.changes[sop] = self.changes.get(sop, 0) + 1
        self._completed[sop] = int(data.get("completed", 0) or 0)
        for step, h in (data.get("steps") or {}).items():
            self._steps[sop, str(step)] = StepHistory.from_data(h, self.window)


def save(estimates: Estimates, event_log: Any, sops: Iterable[str]) -> int:
    """Keep the histories of ``sops`` in the state store's settings; returns how many were written."""
    n = 0
    for sop in sops:
        event_log.put_setting(SETTING_PREFIX + sop, json.dumps(estimates.to_data(sop)).encode())
        n += 1
    return n


def load(event_log: Any, window: int = WINDOW) -> Estimates | None:
    """The histories kept in the state store; None when it holds none (rebuild them then)."""
    kept = event_log.settings(SETTING_PREFIX)
    if not kept:
        return None
    estimates = Estimates(window)
    for key, blob in kept.items():
        try:
            estimates.add_data(key[len(SETTING_PREFIX):], json.loads(blob))
        except (ValueError, TypeError, AttributeError):  # a damaged entry: that SOP starts afresh
            continue
    return estimates


def rebuild(event_log: Any, limit: int = REBUILD_EXECUTIONS, window: int = WINDOW) -> Estimates:
    """Histories from the log's latest ``limit`` finished executions, fed oldest first."""
    estimates = Estimates(window)
    for record in reversed(event_log.query(terminal=True, limit=limit)):
        feed_all(estimates, event_log.read(record.id))
    return estimates


def feed_all(estimates: Estimates, events: Sequence[Event]) -> None:
    """Feed one execution's events (its first must be ``execution_submitted``, which names the SOP)."""
    if not events or events[0].kind != EventKind.SUBMITTED:
        return
    sop = str(events[0].data.get("sop") or "")
    started: dict[str, float] = {}  # as the state keeps it: a step's first start
    for event in events:
        if event.kind == EventKind.STEP_STARTED and event.step:
            started.setdefault(event.step, event.ts)
        estimates.feed(sop, event, started.get(event.step or ""))


def bounded(found: StepEstimate, declared: Any) -> Demand:
    """The learned reservation: the suggestion held within ``declared`` (a :class:`sop.model.Resources`)."""
    suggestion = found.suggestion()
    cpu = float(declared.cpu)
    if suggestion["cpu"] is not None and cpu > 0:  # a step declaring 0 CPU keeps 0
        cpu = min(cpu, max(MIN_CPU, suggestion["cpu"]))
    memory = int(declared.memory_mb or 0)
    if suggestion["memory_mb"] is not None:
        memory = min(memory, suggestion["memory_mb"]) if memory else suggestion["memory_mb"]
    return Demand(cpu, memory, float(declared.gpu), tuple(declared.capabilities))
