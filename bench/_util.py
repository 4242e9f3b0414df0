"""Timing helper, result record and Markdown rendering shared by the benchmark modules."""

from __future__ import annotations

from pathlib import Path

import gc
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Timing:
    """Wall-clock figures of one measured callable, in milliseconds."""

    n: int
    p50: float
    p99: float
    mean: float
    min: float

    def figures(self) -> dict[str, Any]:
        return {"n": self.n, "p50 ms": self.p50, "p99 ms": self.p99,
                "mean ms": self.mean, "min ms": self.min}


def _percentile(sorted_ms: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted samples (``q`` in 0..100)."""
    if not sorted_ms:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_ms)))
    return sorted_ms[min(rank, len(sorted_ms)) - 1]


def summarise(samples_ms: Sequence[float]) -> Timing:
    s = sorted(samples_ms)
    return Timing(len(s), _percentile(s, 50), _percentile(s, 99), sum(s) / len(s), s[0])


def measure(fn: Callable[[], Any], repeat: int, *, warmup: int = 3,
            setup: Callable[[], Any] | None = None) -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then ``repeat`` times timed with ``perf_counter``.

    ``setup`` (if given) runs before every call, outside the timed region. The
    garbage collector stays enabled (as in real use); a full collection runs
    before the timed calls so garbage from earlier benchmarks is not charged here.
    """
    for _ in range(warmup):
        if setup is not None:
            setup()
        fn()
    gc.collect()
    samples: list[float] = []
    clock = time.perf_counter
    for _ in range(repeat):
        if setup is not None:
            setup()
        t0 = clock()
        fn()
        samples.append((clock() - t0) * 1000.0)
    return summarise(samples)


def measure_pair(a: Callable[[], Any], b: Callable[[], Any], repeat: int, *,
                 warmup: int = 3) -> tuple[Timing, Timing]:
    """Time ``a`` and ``b`` alternately (a, b, a, b, ...) so drift in machine load hits both alike."""
    for _ in range(warmup):
        a()
        b()
    gc.collect()
    sa: list[float] = []
    sb: list[float] = []
    clock = time.perf_counter
    for _ in range(repeat):
        t0 = clock()
        a()
        t1 = clock()
        b()
        t2 = clock()
        sa.append((t1 - t0) * 1000.0)
        sb.append((t2 - t1) * 1000.0)
    return summarise(sa), summarise(sb)


def time_once(fn: Callable[[], Any]) -> float:
    """Milliseconds of a single call (for first-call figures)."""
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000.0


@dataclass(slots=True)
class Result:
    """One row of a results table: a name, its figures (column -> value) and free-form notes."""

    name: str
    figures: dict[str, Any] = field(default_factory=dict)
    notes: str = ""

    @classmethod
    def timing(cls, name: str, t: Timing, notes: str = "", **extra: Any) -> Result:
        return cls(name, {**t.figures(), **extra}, notes)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        a = abs(value)
        if a >= 100:
            return f"{value:,.0f}"
        if a >= 10:
            return f"{value:.1f}"
        if a >= 1:
            return f"{value:.2f}"
        return f"{value:.3f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(results: Sequence[Result], *, last: Sequence[str] = ("goal",)) -> str:
    """A Markdown table: one row per result, one column per figure name.

    Columns appear in first-seen order, except those named in ``last``, which go
    at the end (before the notes).
    """
    columns: list[str] = []
    for r in results:
        for k in r.figures:
            if k not in columns:
                columns.append(k)
    columns = [c for c in columns if c not in last] + [c for c in last if c in columns]
    has_notes = any(r.notes for r in results)
    head = ["benchmark", *columns] + (["notes"] if has_notes else [])
    align = ["---"] + ["---:"] * len(columns) + (["---"] if has_notes else [])
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(align) + " |"]
    for r in results:
        cells = [_fmt(r.name)] + [_fmt(r.figures.get(c)) for c in columns]
        if has_notes:
            cells.append(_fmt(r.notes))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def git_revision(repo: str | None = None) -> str:
    """The commit measured, e.g. ``bdd8056``, plus the tracked files changed since (``git status``)."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10,
                              check=True).stdout.rstrip("\n")

    try:
        head = git("rev-parse", "--short", "HEAD").strip()
        changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()]
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return head + (f" + uncommitted changes in {', '.join(changed)}" if changed else "")


def start_local_ray(namespace: str, num_cpus: int, probe_cpu: float = 0.01) -> None:
    """A fresh local Ray cluster whose workers can import this repository's ``bench`` package."""
    import os

    import ray

    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
             namespace=namespace)

    @ray.remote(num_cpus=probe_cpu)
    def can_import() -> bool:
        import importlib.util
        return importlib.util.find_spec("bench.engine") is not None

    if not ray.get(can_import.remote()):  # workers do not see the repository: say where it is
        ray.shutdown()
        root = str(Path(__file__).resolve().parent.parent)
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                 namespace=namespace, runtime_env={"env_vars": {"PYTHONPATH": path}})
