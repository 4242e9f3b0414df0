"""Audit log queries (``Engine.logs``) on a state file of 1M entries spread over 90 days.

The state file is generated through the real write path (``SqliteEventLog.append``, which
derives the entries from the events in the same transaction): executions of 20 SOPs, a
third of them run by one of 50 agents (each with one MCP data access), 8 steps each with
one handler line naming an order id; one attempt in ten fails and is retried; submission
times uniform over the last 90 days. "write" is that generation: entries stored per second
(one commit per 500 executions, ``synchronous=NORMAL``), with the file's size. "append" rows
compare the event log's write rate with and without the audit log (the same 4,000 executions
into fresh files, alternating; the median of 2 runs each).

Each filter kind is then queried with varying values (the default ``limit`` of 1,000,
newest first) through ``SqliteEventLog.logs`` (rows turned into ``LogEntry`` objects),
and the same SQL is run with ``FROM logs NOT INDEXED`` through a plain ``sqlite3``
connection: a full-table scan of the same data, alternating call by call. "ratio" is
scan p50 / indexed p50. The text filter is a literal substring (``instr``): alone, it is
tried on the newest day first (enough for a common text), then on every row (a rare text:
that row shows the cost of a full scan).

``SOPFLOW_BENCH_LOG_ENTRIES`` sets the size (default 1,000,000; ``--quick``: 20,000).
"""

from __future__ import annotations

import os
import random
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench._util import Result, measure_pair
from runtime import events as ev
from runtime._sqlite_logs import select_sql
from runtime.audit import LogQuery
from runtime.eventlog import ExecutionRecord, SqliteEventLog

DAY_S = 86_400.0
STEPS = [f"step{i}" for i in range(8)]
SOPS = [f"sop{i:02d}" for i in range(20)]
AGENTS = [f"agent{i:02d}" for i in range(50)]
PER_COMMIT = 500


def _execution(rng: random.Random, n: int, t0: float) -> tuple[list[Any], ExecutionRecord, dict[str, Any]]:
    eid = f"x{n:08d}"
    sop = rng.choice(SOPS)
    agent = rng.choice(AGENTS) if rng.random() < 1 / 3 else None
    seq, ts, events = 0, t0, []

    def add(payload: Any, step: str | None = None, attempt: int | None = None) -> None:
        nonlocal seq, ts
        seq += 1
        ts += rng.random()
        events.append(ev.new_event(eid, seq, payload, step, attempt, ts=ts))

    add(ev.Submitted(sop=sop, version="1", submitted_by="bench@host", agent=agent))
    if agent:
        add(ev.DataAccessed(server="crm", tool="lookup", duration_s=0.01, agent=agent), "step0", 1)
    for step in STEPS:
        attempt = 1
        if rng.random() < 0.1:
            add(ev.StepStarted(), step, attempt)
            add(ev.StepFailed(error="connection reset", classification="transient", final=False, action="retry"),
                step, attempt)
            attempt = 2
        add(ev.StepStarted(), step, attempt)
        line = [[ts + 0.1, 20, "handler", f"processed order ORD-{n}-{step} for {sop}"]]
        add(ev.StepSucceeded(output=n, duration_s=0.1, logs=line), step, attempt)
    add(ev.Finished(status="completed", outputs={"outputs": {"n": n}}))
    return events, ExecutionRecord(eid, sop, "completed", t0, seq, ts, True), {"eid": eid, "sop": sop,
                                                                              "agent": agent, "t0": t0}


def generate(path: Path, entries: int, seed: int = 7) -> tuple[list[dict[str, Any]], float, int]:
    """Write about ``entries`` audit entries; returns what was written, the seconds it took, and how many."""
    rng = random.Random(seed)
    now = time.time()
    log = SqliteEventLog(path)
    made: list[dict[str, Any]] = []
    start = time.perf_counter()
    try:
        per_execution = 27  # about: start, 8 x (started, line, succeeded), retries, accesses, end
        n = 0
        while n * per_execution < entries:
            batch, records = [], []
            for _ in range(PER_COMMIT):
                events, record, info = _execution(rng, n, now - 90 * DAY_S * rng.random())
                batch += events
                records.append(record)
                made.append(info)
                n += 1
            log.append(batch, records)
        seconds = time.perf_counter() - start
        count = log._conn().execute("SELECT COUNT(*) FROM logs").fetchone()[0]  # noqa: SLF001 - a count
    finally:
        log.close()
    return made, seconds, count


class _NoAuditLog:
    """Stands in for the audit log writer: the event log as it was before the audit log."""

    def write(self, conn: Any, events: Any) -> dict[str, Any]:
        return {}

    def committed(self, *args: Any) -> None:
        pass

    def forget(self, *args: Any) -> None:
        pass


def write_cost(directory: Path, executions: int, rounds: int = 4) -> list[Result]:
    """Events appended per second with and without the audit log (alternating, fresh files)."""
    rng = random.Random(3)
    batches = []
    for b in range(executions // PER_COMMIT):
        batch, records = [], []
        for i in range(PER_COMMIT):
            events, record, _ = _execution(rng, b * PER_COMMIT + i, time.time() - DAY_S * rng.random())
            batch += events
            records.append(record)
        batches.append((batch, records))
    rates: dict[str, list[float]] = {"with the audit log": [], "without (events only)": []}
    n_events = sum(len(b) for b, _ in batches)
    for r in range(rounds):
        for name in (list(rates) if r % 2 == 0 else list(rates)[::-1]):
            log = SqliteEventLog(directory / f"w{r}-{len(rates[name])}-{name[:4]}.db")
            if name.startswith("without"):
                log._logs = _NoAuditLog()  # noqa: SLF001 - the comparison needs the bare event log
            start = time.perf_counter()
            for batch, records in batches:
                log.append(batch, records)
            rates[name].append(n_events / (time.perf_counter() - start))
            log.close()
    out = [Result(f"append: {name}", {"events/s (median)": sorted(v)[len(v) // 2], "events": n_events,
                                      "commits": len(batches) * len(v)}) for name, v in rates.items()]
    with_, without = (out[0].figures["events/s (median)"], out[1].figures["events/s (median)"])
    out[0].figures["cost"] = f"{1 - with_ / without:.0%} fewer events/s"
    return out


def _cycle(values: list[Any]) -> Callable[[], Any]:
    it: Iterator[Any] = iter(values * 1000)
    return lambda: next(it)


def run(quick: bool = False) -> list[Result]:
    size = 20_000 if quick else int(os.environ.get("SOPFLOW_BENCH_LOG_ENTRIES", "1000000"))
    reps = 5 if quick else 15
    with tempfile.TemporaryDirectory(prefix="sopflow-bench-logs-") as tmp:
        path = Path(tmp) / "state.db"
        made, seconds, count = generate(path, size)
        results = [Result("write (generate the state file)", {"entries": count, "entries/s": count / seconds,
                                                              "MB": os.path.getsize(path) / 1e6})]
        results += write_cost(Path(tmp), 1000 if quick else 4000)
        rng = random.Random(11)
        now = time.time()
        picks = [rng.choice(made) for _ in range(reps * 2 + 10)]
        kinds: dict[str, list[dict[str, Any]]] = {
            "no filter (newest 1,000)": [{}],
            "execution": [{"execution": p["eid"]} for p in picks],
            "sop": [{"sop": rng.choice(SOPS)} for _ in picks],
            "agent": [{"agent": rng.choice(AGENTS)} for _ in picks],
            "step": [{"step": rng.choice(STEPS)} for _ in picks],
            "status (failed)": [{"status": "failed"}],
            "level >= warning": [{"level": "warning"}],
            "kind data_access + agent": [{"kind": "data_access", "agent": rng.choice(AGENTS)} for _ in picks],
            "since/until (one day)": [{"since": (d := now - rng.random() * 89 * DAY_S), "until": d + DAY_S}
                                      for _ in picks],
            "text, common": [{"text": "processed order"}],
            "text, rare (one execution's order)": [{"text": f"ORD-{int(p['eid'][1:])}-step3 "}
                                                   for p in picks],
            "sop + level + 7 days": [{"sop": rng.choice(SOPS), "level": "warning",
                                      "since": (d := now - rng.random() * 80 * DAY_S), "until": d + 7 * DAY_S}
                                     for _ in picks],
        }
        log = SqliteEventLog(path, readonly=True)
        plain = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            for name, variants in kinds.items():
                queries = [LogQuery.of(**v) for v in variants]
                next_ours, next_scan = _cycle(queries), _cycle(queries)
                hits: list[int] = []

                def ours() -> None:
                    hits.append(len(log.logs(next_ours())))

                def scan() -> None:
                    sql, args = select_sql(next_scan(), scan=True)
                    plain.execute(sql, args).fetchall()

                indexed, full = measure_pair(ours, scan, reps if "text, rare" not in name else max(3, reps // 3),
                                             warmup=1)
                results.append(Result(name, {"p50 ms": indexed.p50, "p99 ms": indexed.p99,
                                             "scan p50 ms": full.p50, "scan p99 ms": full.p99,
                                             "ratio": full.p50 / indexed.p50 if indexed.p50 else float("nan"),
                                             "rows (mean)": sum(hits) / len(hits)}))
        finally:
            plain.close()
            log.close()
    return results
