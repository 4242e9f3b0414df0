"""The audit log in the event log backends: entries derived from events, queries, retention.

Every test runs against the memory and the SQLite log (real files).
"""

from __future__ import annotations

import logging
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime import events as ev
from runtime._log_lines import HEAD_LINES, TAIL_LINES, LineBuffer, readable
from runtime.audit import MAX_LIMIT, LogKind, LogQuery, LogQueryError, select
from runtime.eventlog import ExecutionRecord, MemoryEventLog, SqliteEventLog
from runtime.events import Event


def open_backend(kind: str, directory: Path) -> Any:
    return MemoryEventLog() if kind == "memory" else SqliteEventLog(directory / "state.db")


@pytest.fixture(params=["memory", "sqlite"])
def log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    store = open_backend(request.param, tmp_path)
    yield store
    store.close()


class Run:
    """Builds one execution's events, seq by seq."""

    def __init__(self, eid: str, sop: str = "orders", agent: str | None = None, ts: float = 1000.0) -> None:
        self.eid, self.seq, self.ts = eid, 0, ts
        self.events: list[Event] = []
        self.add(ev.Submitted(sop=sop, version="3", mode="system_design", submitted_by="ann@host", agent=agent))

    def add(self, payload: ev.Payload, step: str | None = None, attempt: int | None = None,
            dt: float = 1.0) -> Run:
        self.seq += 1
        self.ts += dt
        self.events.append(ev.new_event(self.eid, self.seq, payload, step, attempt, ts=self.ts))
        return self

    def lines(self, step: str, lines: list[tuple[int, str]], ok: bool = True, attempt: int = 1) -> Run:
        self.add(ev.StepStarted(), step, attempt)
        logs = [[self.ts + 0.5, level, "handler", text] for level, text in lines]
        payload = ev.StepSucceeded(output=1, duration_s=0.5, logs=logs) if ok else ev.StepFailed(
            error="boom", classification="permanent", action="fail", logs=logs)
        return self.add(payload, step, attempt)

    def finish(self, status: str = "completed") -> Run:
        return self.add(ev.Finished(status=status, outputs={"outputs": {"total": 42}}))


def everything(log: Any) -> list[Any]:
    return log.logs(LogQuery.of(limit=None))


# -- what the entries say ------------------------------------------------------------------------


def test_an_execution_leaves_start_attempt_decision_operator_and_end_entries(log: Any) -> None:
    run = Run("e1", agent="agent-7")
    run.lines("fetch", [(logging.INFO, "fetched 3 rows")])
    run.add(ev.StepStarted(), "ship", 1).add(ev.StepFailed(error="timeout", classification="transient",
                                                             final=False, action="retry", reason="attempt 1 of 3"),
                                               "ship", 1)
    run.add(ev.Paused()).add(ev.Resumed()).add(ev.Decided(decision="skip", reason="ops said so"), "ship")
    run.add(ev.DataAccessed(server="crm", tool="lookup", ok=True, duration_s=0.02, arguments="ab12"), "fetch", 1)
    run.add(ev.CancelRequested(force=True)).finish("cancelled")
    log.append(run.events, [ExecutionRecord("e1", "orders", "cancelled", 1001.0, run.seq, run.ts, True)])
    got = everything(log)
    kinds = [(e.kind, e.status) for e in got]
    assert kinds[0] == ("start", "submitted") and kinds[-1] == ("end", "cancelled")
    start = got[0]
    assert (start.sop, start.agent, start.data["submitted_by"], start.data["version"], start.data["mode"]) == (
        "orders", "agent-7", "ann@host", "3", "system_design")
    for expected in [("attempt", "started"), ("handler", None), ("attempt", "succeeded"), ("attempt", "failed"),
                     ("decision", "retry"), ("operator", "pause"), ("operator", "resume"), ("operator", "decide"),
                     ("data_access", "ok"), ("operator", "cancel")]:
        assert expected in kinds, expected
    assert all(e.sop == "orders" and e.agent == "agent-7" and e.execution_id == "e1" for e in got)
    end = got[-1]
    assert end.data["duration_s"] == pytest.approx(run.ts - 1001.0) and end.data["outputs"] == ["total=42"]
    assert end.level == logging.WARNING
    handler = next(e for e in got if e.kind == "handler")
    assert (handler.step, handler.attempt, handler.message, handler.level_name) == ("fetch", 1, "fetched 3 rows",
                                                                                     "info")
    access = log.logs(LogQuery.of(kind="data_access", agent="agent-7"))
    assert [(e.data["server"], e.data["tool"], e.step) for e in access] == [("crm", "lookup", "fetch")]


def test_an_event_stored_twice_is_logged_once_even_by_a_fresh_writer(tmp_path: Path) -> None:
    run = Run("e1").lines("a", [(logging.INFO, "hello")])
    first = SqliteEventLog(tmp_path / "s.db")
    first.append(run.events[:2])
    first.close()
    again = SqliteEventLog(tmp_path / "s.db")  # knows nothing: reads the context back from the store
    try:
        again.append(run.events)  # the first two again, and the rest
        run.finish()
        again.append(run.events[-1:])
        got = everything(again)
        assert [e.kind for e in got] == ["start", "attempt", "handler", "attempt", "end"]
        assert {e.sop for e in got} == {"orders"}
    finally:
        again.close()


# -- hostile input -------------------------------------------------------------------------------

NASTY = ["100% done", "a_b", "it's", "x' OR 1=1 --", "%", "_", "\\", "[a-z]*", "\"; DROP TABLE logs; --"]


@pytest.mark.parametrize("needle", NASTY + ["%_%", "%%", "' OR '1'='1"])
def test_text_filters_match_sql_and_like_metacharacters_literally(log: Any, needle: str) -> None:
    log.append(Run("e1").lines("s", [(logging.INFO, t) for t in NASTY]).events)
    got = log.logs(LogQuery.of(text=needle, kind="handler"))
    assert sorted(e.message for e in got) == sorted(t for t in NASTY if needle in t)
    assert len(everything(log)) > len(got)  # the table is still there and whole


def test_a_huge_limit_is_capped_and_a_bad_one_refused(log: Any) -> None:
    assert LogQuery.of(limit=10**18).limit == MAX_LIMIT and LogQuery.of(limit=None).limit == MAX_LIMIT
    run = Run("e1")
    for i in range(MAX_LIMIT // 200 + 1):
        run.lines(f"s{i}", [(logging.INFO, f"l{j}") for j in range(200)])
    log.append(run.events)
    assert len(log.logs(LogQuery.of(limit=10**9))) == MAX_LIMIT
    for bad, says in [({"limit": -1}, "limit must be"), ({"level": "loud"}, "level must be one of debug"),
                      ({"kind": "gossip"}, "kind must be one of start"), ({"since": float("nan")}, "since must"),
                      ({"after": -3}, "after must")]:
        with pytest.raises(LogQueryError, match=says):
            LogQuery.of(**bad)


def test_control_characters_and_undecodable_text_are_stored_readably(log: Any) -> None:
    raw = ["bell\x07 esc\x1b[31m nul\x00 cr\r", "lone \udcff surrogate", b"bytes \xff\xfe".decode("latin-1"),
           "tab\tnewline\nkept"]
    log.append(Run("e1").lines("s", [(logging.INFO, t) for t in raw]).events)
    got = [e.message for e in log.logs(LogQuery.of(kind="handler"))]
    assert got[0] == "bell\\x07 esc\\x1b[31m nul\\x00 cr\\x0d" and got[1] == "lone \\udcff surrogate"
    assert got[3] == "tab\tnewline\nkept"
    for message in got:
        message.encode("utf-8")  # storable and printable as UTF-8
        assert not any(ord(c) < 32 and c not in "\t\n" for c in message)
    assert readable(b"\xff ok") == "\\xff ok"
    assert log.logs(LogQuery.of(text="\x07"))[0].message == got[0]  # the filter reads its text the same way


def test_a_flood_of_lines_keeps_the_first_and_last_and_counts_the_rest() -> None:
    buffer = LineBuffer()
    for i in range(100_000):
        buffer.add(logging.INFO, f"line {i}")
    lines = buffer.lines()
    assert len(lines) == HEAD_LINES + 1 + TAIL_LINES
    assert lines[0][3] == "line 0" and lines[-1][3] == "line 99999"
    marker = lines[HEAD_LINES]
    assert marker[1] == logging.WARNING and f"{100_000 - HEAD_LINES - TAIL_LINES} line(s) dropped" in marker[3]
    long = LineBuffer()
    long.add(logging.INFO, "x" * 100_000)
    assert len(long.lines()[0][3]) < 4100 and long.lines()[0][3].endswith("(96000 more characters)")


# -- retention -----------------------------------------------------------------------------------


def test_purge_removes_an_executions_entries_with_it_and_entries_past_log_retention(log: Any) -> None:
    old, recent = Run("old", ts=100.0).lines("s", [(20, "old line")]).finish(), Run("new", ts=5000.0)
    recent.lines("s", [(20, "new line")])
    log.append(old.events + recent.events,
               [ExecutionRecord("old", "orders", "completed", 101.0, old.seq, old.ts, True),
                ExecutionRecord("new", "orders", "running", 5001.0, recent.seq)])
    assert log.purge(ended_before=1000.0) == 1
    assert {e.execution_id for e in everything(log)} == {"new"}
    log.purge(ended_before=0.0, logs_before=5003.0)  # the running execution stays; its old entries go
    assert all(e.ts >= 5003.0 for e in everything(log)) and everything(log)
    log.delete("new")
    assert everything(log) == []


def test_a_store_older_than_the_audit_log_gets_one(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    SqliteEventLog(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    try:  # as sopflow <= schema 2 left it
        conn.execute("DROP TABLE logs")
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    finally:
        conn.close()
    reader = SqliteEventLog(path, readonly=True)
    try:
        assert reader.logs(LogQuery.of()) == []
    finally:
        reader.close()
    writer = SqliteEventLog(path)
    try:
        writer.append(Run("e1").events)
        assert [e.kind for e in everything(writer)] == ["start"]
    finally:
        writer.close()


# -- property 25 ---------------------------------------------------------------------------------

WORDS = st.sampled_from(["alpha", "beta", "100%", "a_b", "it's", "x", "BETA", "é", "ok"])
STEPS = ["a", "b", "c"]


@st.composite
def histories(draw: Any) -> list[Event]:
    events: list[Event] = []
    for n in range(draw(st.integers(1, 4))):
        run = Run(f"e{n}", sop=draw(st.sampled_from(["orders", "billing"])),
                  agent=draw(st.sampled_from([None, "ag1", "ag2"])), ts=draw(st.floats(0, 1000)))
        for step in draw(st.lists(st.sampled_from(STEPS), max_size=3, unique=True)):
            lines = draw(st.lists(st.tuples(st.sampled_from([10, 20, 30, 40]),
                                            st.lists(WORDS, min_size=1, max_size=3).map(" ".join)), max_size=3))
            run.lines(step, lines, ok=draw(st.booleans()))
        if draw(st.booleans()):
            run.add(ev.Paused(), dt=draw(st.floats(0, 5)))
        run.finish(draw(st.sampled_from(["completed", "failed", "cancelled"])))
        events += run.events
    return events


QUERIES = st.fixed_dictionaries({}, optional={
    "execution": st.sampled_from(["e0", "e1", "e9"]), "sop": st.sampled_from(["orders", "billing", "none"]),
    "agent": st.sampled_from(["ag1", "ag2"]), "step": st.sampled_from(STEPS),
    "status": st.sampled_from(["succeeded", "failed", "completed", "pause", "fail"]),
    "level": st.sampled_from(["debug", "info", "warning", "error"]), "kind": st.sampled_from([k.value for k in LogKind]),
    "since": st.floats(0, 1100), "until": st.floats(0, 1100), "text": WORDS | st.sampled_from(["%", "_", "'"]),
    "limit": st.integers(0, 50)})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=histories(), filters=QUERIES)
def test_log_query_filters(events: list[Event], filters: dict[str, Any]) -> None:
    """Property 25: every entry a query returns matches every filter, on both backends alike,
    and none that matches is left out (beyond the limit, which keeps the newest)."""
    query = LogQuery.of(**filters)
    with tempfile.TemporaryDirectory() as directory:
        answers = []
        for kind in ("memory", "sqlite"):
            store = open_backend(kind, Path(directory))
            try:
                store.append(events)
                answers.append((store.logs(query), everything(store)))
            finally:
                store.close()
    (memory, all_memory), (sqlite, all_sqlite) = answers
    assert [e.to_dict() for e in memory] == [e.to_dict() for e in sqlite]
    assert [e.to_dict() for e in all_memory] == [e.to_dict() for e in all_sqlite]
    for entry in sqlite:
        for name, want in filters.items():
            have = {"execution": entry.execution_id, "sop": entry.sop, "agent": entry.agent, "step": entry.step,
                    "status": entry.status, "kind": entry.kind}.get(name)
            if name in ("execution", "sop", "agent", "step", "status", "kind"):
                assert have == want, (name, entry)
            elif name == "level":
                assert entry.level >= logging.getLevelName(want.upper())
            elif name == "since":
                assert entry.ts >= want
            elif name == "until":
                assert entry.ts < want
            elif name == "text":
                assert want in entry.message
    assert [e.id for e in sqlite] == [e.id for e in select(all_sqlite, query)]
    assert len(sqlite) <= query.limit


@pytest.mark.parametrize("limit", [1, 3, 5, 50])
def test_a_text_query_over_many_days_returns_the_newest_matches_wherever_they_are(log: Any, limit: int) -> None:
    """The SQLite log tries the newest day first: it must fall back to every day when that is not enough."""
    events: list[Event] = []
    for day in range(10):
        run = Run(f"d{day}", ts=day * 86_400.0)
        run.lines("s", [(logging.INFO, f"needle of day {day}")] if day in (0, 4, 9) else [(logging.INFO, "hay")])
        events += run.events
    log.append(events)
    got = log.logs(LogQuery.of(text="needle", limit=limit))
    want = ["needle of day 0", "needle of day 4", "needle of day 9"][-limit:]
    assert [e.message for e in got] == want
