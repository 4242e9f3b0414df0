"""The event log and state store: one contract suite for every backend, the group committer, histories.

No Ray here: the log is plain Python and SQLite.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import json
import logging
import math
import os
import sqlite3
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.eventlog import (
    SCHEMA_VERSION,
    DEFAULT_STATE_PATH,
    EventLog,
    ExecutionRecord,
    GroupCommitter,
    MemoryEventLog,
    SqliteEventLog,
    StateStoreError,
    default_state_path,
    open_log,
)
from runtime.events import Event, EventKind
from runtime.history import FORMAT, dumps_history, export_history, import_history
from sop.errors import SopflowError

BACKENDS = ["memory", "sqlite"]
WAIT_S = 10.0


def make_log(backend: str, directory: Path) -> EventLog:
    return MemoryEventLog() if backend == "memory" else SqliteEventLog(directory / "state.db")


@pytest.fixture(params=BACKENDS)
def log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EventLog]:
    store = make_log(request.param, tmp_path)
    yield store
    store.close()


def ev(execution_id: str, seq: int, kind: EventKind = EventKind.STEP_STARTED, **data: Any) -> Event:
    return Event(execution_id, seq, kind, 1000.0 + seq, "step" if kind.value.startswith("step") else None,
                 1 if kind.value.startswith("step") else None, data)


def rec(execution_id: str, version: int = 1, status: str = "running", submitted_at: float = 100.0,
        **kw: Any) -> ExecutionRecord:
    return ExecutionRecord(execution_id, kw.pop("sop", "orders"), status, submitted_at, version, **kw)


def done(execution_id: str, submitted_at: float, ended_at: float, status: str = "completed",
         **kw: Any) -> ExecutionRecord:
    return rec(execution_id, 9, status, submitted_at, ended_at=ended_at, terminal=True, **kw)


def seqs(events: list[Event]) -> list[int]:
    return [e.seq for e in events]


def run(coro: Any) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, WAIT_S)

    return asyncio.run(bounded())


# -- the contract: events -------------------------------------------------------------------


def test_both_backends_implement_the_protocol(log: EventLog) -> None:
    assert isinstance(log, EventLog)


def test_read_returns_events_in_seq_order_sliced_after_and_until(log: EventLog) -> None:
    log.append([ev("a", 3), ev("a", 1), ev("b", 1), ev("a", 2), ev("a", 4)])
    assert seqs(log.read("a")) == [1, 2, 3, 4]
    assert seqs(log.read("a", after_seq=2)) == [3, 4]
    assert seqs(log.read("a", until_seq=2)) == [1, 2]
    assert seqs(log.read("a", after_seq=1, until_seq=3)) == [2, 3]
    assert log.read("a", after_seq=4) == [] and log.read("nobody") == []
    assert log.read("a")[0] == ev("a", 1)


def test_appending_an_event_twice_stores_it_once(log: EventLog) -> None:
    assert log.append([ev("a", 1, note="first"), ev("a", 2)]) == 2
    assert log.append([ev("a", 2), ev("a", 1, note="second"), ev("a", 3)]) == 1
    assert log.append([]) == 0
    assert seqs(log.read("a")) == [1, 2, 3]
    assert log.read("a")[0].data == {"note": "first"}


def test_events_keep_every_field(log: EventLog) -> None:
    original = Event("a", 1, EventKind.STEP_FAILED, 1234.5, "ship", 3,
                     {"error": "boom", "classification": "retryable", "nested": {"x": [1, 2.5, None, True]}})
    log.append([original])
    (back,) = log.read("a")
    assert back == original and back.kind is EventKind.STEP_FAILED


def test_data_json_cannot_hold_round_trips_unchanged(log: EventLog) -> None:
    data = {"tuple": (1, 2), "int_keys": {1: "one"}, "nan": math.nan, "decimal": decimal.Decimal("1.10"),
            "when": datetime.datetime(2024, 5, 1, 12, 30), "set": {3, 4}, "bytes": b"\x00\xff"}
    log.append([Event("a", 1, EventKind.STEP_SUCCEEDED, 1.0, "s", 1, data), ev("a", 2, plain=[1, "x"])])
    first, second = log.read("a")
    without_nan = {k: v for k, v in data.items() if k != "nan"}
    assert {k: v for k, v in first.data.items() if k != "nan"} == without_nan
    assert isinstance(first.data["tuple"], tuple) and math.isnan(first.data["nan"])
    assert second.data == {"plain": [1, "x"]}


# -- the contract: records ------------------------------------------------------------------


def test_a_record_is_replaced_only_by_a_newer_version(log: EventLog) -> None:
    log.append([], [rec("a", 2, "running")])
    log.append([], [rec("a", 1, "queued")])  # stale
    log.append([], [rec("a", 2, "paused")])  # duplicate version
    assert log.get("a") == rec("a", 2, "running")
    log.append([ev("a", 3)], [rec("a", 3, "completed", ended_at=200.0, terminal=True)])
    assert log.get("a") == rec("a", 3, "completed", ended_at=200.0, terminal=True)
    assert log.get("nobody") is None


def test_records_keep_every_field(log: EventLog) -> None:
    full = ExecutionRecord("a", "orders", "completed", 10.5, 7, 20.25, True, "key-1", "parent-1")
    log.append([], [full])
    assert log.get("a") == full


@pytest.fixture
def population(log: EventLog) -> EventLog:
    log.append([], [
        rec("q1", status="queued", submitted_at=10.0),
        rec("r1", status="running", submitted_at=20.0),
        rec("r2", status="running", submitted_at=30.0, sop="invoices"),
        done("c1", submitted_at=40.0, ended_at=45.0),
        done("f1", submitted_at=50.0, ended_at=55.0, status="failed", sop="invoices"),
        rec("p1", status="paused", submitted_at=60.0),
    ])
    return log


def ids(records: list[ExecutionRecord]) -> list[str]:
    return [r.id for r in records]


def test_query_returns_newest_first_and_filters(population: EventLog) -> None:
    log = population
    assert ids(log.query()) == ["p1", "f1", "c1", "r2", "r1", "q1"]
    assert ids(log.query(status="running")) == ["r2", "r1"]
    assert ids(log.query(status=["queued", "failed"])) == ["f1", "q1"]
    assert log.query(status=[]) == []
    assert ids(log.query(sop="invoices")) == ["f1", "r2"]
    assert ids(log.query(since=20.0, until=50.0)) == ["c1", "r2", "r1"]  # [since, until)
    assert ids(log.query(terminal=True)) == ["f1", "c1"]
    assert ids(log.query(terminal=False, sop="orders")) == ["p1", "r1", "q1"]
    assert ids(log.query(limit=2)) == ["p1", "f1"]
    assert log.query(limit=0) == [] and len(log.query(limit=None)) == 6


def test_query_refuses_a_negative_limit(log: EventLog) -> None:
    with pytest.raises(StateStoreError, match="limit must be >= 0 or None, got -1"):
        log.query(limit=-1)


def test_unfinished_lists_every_non_terminal_execution_oldest_first(population: EventLog) -> None:
    assert ids(population.unfinished()) == ["q1", "r1", "r2", "p1"]


def test_find_key_names_the_execution_submitted_with_it(log: EventLog) -> None:
    log.append([], [rec("a", idempotency_key="order-17"), rec("b")])
    assert log.find_key("order-17") == "a"
    assert log.find_key("order-18") is None


# -- the contract: blobs, snapshots, deletion -------------------------------------------------


def test_blobs_are_stored_overwritten_and_dropped(log: EventLog) -> None:
    log.put_blob("a", "request", b"one")
    log.put_blob("a", "secrets", b"s3cret")
    log.put_blob("a", "request", b"two")
    assert log.get_blob("a", "request") == b"two" and log.get_blob("a", "secrets") == b"s3cret"
    log.drop_blob("a", "secrets")
    log.drop_blob("a", "never-there")
    assert log.get_blob("a", "secrets") is None and log.get_blob("b", "request") is None


def test_only_the_latest_snapshot_is_kept(log: EventLog) -> None:
    assert log.latest_snapshot("a") is None
    log.put_snapshot("a", 10, b"ten")
    log.put_snapshot("a", 20, b"twenty")
    log.put_snapshot("a", 15, b"stale")
    assert log.latest_snapshot("a") == (20, b"twenty")
    assert log.latest_snapshot("a", at_or_before=25) == (20, b"twenty")
    assert log.latest_snapshot("a", at_or_before=20) == (20, b"twenty")
    assert log.latest_snapshot("a", at_or_before=19) is None  # replay from the start instead


def fill(log: EventLog, execution_id: str, record: ExecutionRecord) -> None:
    log.append([ev(execution_id, 1), ev(execution_id, 2)], [record])
    log.put_blob(execution_id, "request", b"r")
    log.put_snapshot(execution_id, 2, b"s")


def test_purge_removes_only_terminal_executions_ended_before_the_cutoff(log: EventLog) -> None:
    fill(log, "old", done("old", 1.0, ended_at=5.0))
    fill(log, "recent", done("recent", 1.0, ended_at=50.0))
    fill(log, "running", rec("running", submitted_at=1.0))
    assert log.purge(ended_before=10.0) == 1
    assert log.get("old") is None and log.read("old") == []
    assert log.get_blob("old", "request") is None and log.latest_snapshot("old") is None
    for kept in ("recent", "running"):
        assert log.get(kept) is not None and len(log.read(kept)) == 2
        assert log.get_blob(kept, "request") == b"r" and log.latest_snapshot(kept) == (2, b"s")
    assert log.purge(ended_before=10.0) == 0


def test_delete_removes_one_execution_entirely(log: EventLog) -> None:
    fill(log, "a", rec("a"))
    fill(log, "b", rec("b"))
    log.delete("a")
    log.delete("never-there")
    assert log.get("a") is None and log.read("a") == [] and log.get_blob("a", "request") is None
    assert log.latest_snapshot("a") is None and log.get("b") is not None
    assert log.stats() == {"executions": 1, "events": 2, "unfinished": 1}


def test_stats_count_executions_events_and_unfinished_ones(log: EventLog) -> None:
    assert log.stats() == {"executions": 0, "events": 0, "unfinished": 0}
    fill(log, "a", rec("a"))
    fill(log, "b", done("b", 1.0, 2.0))
    assert log.stats() == {"executions": 2, "events": 4, "unfinished": 1}


def test_a_closed_log_refuses_to_work(log: EventLog) -> None:
    log.close()
    with pytest.raises(StateStoreError, match="closed"):
        log.read("a")
    with pytest.raises(StateStoreError, match="closed"):
        log.append([ev("a", 1)])


# -- SQLite only -------------------------------------------------------------------------------


def test_sqlite_keeps_everything_across_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    first = SqliteEventLog(path)
    fill(first, "a", rec("a", 2, idempotency_key="k"))
    first.close()
    again = SqliteEventLog(path)
    assert seqs(again.read("a")) == [1, 2] and again.get("a") == rec("a", 2, idempotency_key="k")
    assert again.get_blob("a", "request") == b"r" and again.find_key("k") == "a"
    again.close()


def test_sqlite_creates_its_directories_and_a_file_only_its_owner_can_read(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "state.db"
    store = SqliteEventLog(path)
    store.put_blob("a", "secrets", b"token")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert store.path == str(path)
    store.close()


def test_a_readonly_log_sees_commits_and_refuses_writes(tmp_path: Path) -> None:
    writer = SqliteEventLog(tmp_path / "state.db")
    reader = SqliteEventLog.open_readonly(tmp_path / "state.db")
    writer.append([ev("a", 1)], [rec("a")])
    assert seqs(reader.read("a")) == [1] and reader.get("a") == rec("a")
    for write in (lambda: reader.append([ev("a", 2)]), lambda: reader.put_blob("a", "request", b""),
                  lambda: reader.purge(ended_before=1e12), lambda: reader.delete("a")):
        with pytest.raises(StateStoreError, match="read-only"):
            write()
    assert seqs(writer.read("a")) == [1]
    reader.close()
    writer.close()


def test_a_readonly_log_needs_an_existing_file(tmp_path: Path) -> None:
    with pytest.raises(StateStoreError, match="no state store at"):
        SqliteEventLog(tmp_path / "missing.db", readonly=True)


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    SqliteEventLog(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.close()
    with pytest.raises(StateStoreError, match=f"schema version 99, newer than the {SCHEMA_VERSION}") as err:
        SqliteEventLog(path)
    assert isinstance(err.value, SopflowError)
    with pytest.raises(StateStoreError, match="schema version 99"):
        SqliteEventLog.open_readonly(path)


def test_a_file_that_is_not_a_state_store_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(StateStoreError, match="is not a sopflow state store"):
        SqliteEventLog(other)
    (tmp_path / "junk.db").write_text("not a database at all" * 50)
    with pytest.raises(StateStoreError, match="junk.db"):
        SqliteEventLog(tmp_path / "junk.db")


def test_an_unknown_synchronous_setting_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StateStoreError, match="must be one of OFF, NORMAL, FULL, EXTRA, got 'fast'"):
        SqliteEventLog(tmp_path / "state.db", synchronous="fast")


def test_sqlite_serves_reads_on_one_thread_while_another_writes(tmp_path: Path) -> None:
    store = SqliteEventLog(tmp_path / "state.db")
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for seq in range(1, 201):
                store.append([ev("a", seq)], [rec("a", seq)])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    writer = threading.Thread(target=write)
    writer.start()
    while writer.is_alive():
        seen = seqs(store.read("a"))
        assert seen == list(range(1, len(seen) + 1))
    writer.join()
    assert not errors and len(store.read("a")) == 200 and store.get("a").version == 200
    store.close()


# -- opening by URL or path ----------------------------------------------------------------------


def test_open_log_picks_the_backend_from_the_url(tmp_path: Path) -> None:
    for memory in (None, ":memory:", "memory://"):
        assert isinstance(open_log(memory), MemoryEventLog)
    for url in (f"sqlite://{tmp_path}/a.db", str(tmp_path / "b.db")):
        store = open_log(url)
        assert isinstance(store, SqliteEventLog) and store.path == url.removeprefix("sqlite://")
        store.close()
    reader = open_log(str(tmp_path / "b.db"), readonly=True)
    assert reader.readonly
    reader.close()
    with pytest.raises(StateStoreError, match="unsupported state store 'postgres://x'"):
        open_log("postgres://x")
    with pytest.raises(StateStoreError, match="memory event log"):
        open_log("memory://", readonly=True)


def test_the_state_path_defaults_to_the_home_directory_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOPFLOW_STATE", raising=False)
    assert default_state_path() == DEFAULT_STATE_PATH == str(Path.home() / ".sopflow" / "state.db")
    monkeypatch.setenv("SOPFLOW_STATE", "/srv/sopflow/state.db")
    assert default_state_path() == "/srv/sopflow/state.db"


# -- the group committer ---------------------------------------------------------------------------


class GatedLog(MemoryEventLog):
    """Holds its first commit until released, so later adds pile up behind it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[list[Event], list[ExecutionRecord]]] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def append(self, events: Any, records: Any = ()) -> int:
        self.calls.append((list(events), list(records)))
        if len(self.calls) == 1:
            self.entered.set()
            assert self.release.wait(WAIT_S)
        return super().append(events, records)


def test_a_commit_takes_everything_queued_while_the_previous_one_ran() -> None:
    store = GatedLog()

    async def main() -> GroupCommitter:
        committer = GroupCommitter(store)
        committer.add([ev("a", 1)], [rec("a", 1)])
        assert store.entered.wait(WAIT_S)
        for seq in range(2, 12):
            committer.add([ev("a", seq)], [rec("a", seq, status=f"v{seq}")])
        committer.add([], [rec("a", 5, status="stale")])
        store.release.set()
        await committer.flush()
        committer.close()
        return committer

    committer = run(main())
    assert [len(events) for events, _ in store.calls] == [1, 10]
    assert store.calls[1][1] == [rec("a", 11, status="v11")]  # one record per execution: the newest
    assert committer.stats == {"commits": 2, "events": 11, "max_batch": 10, "stalls": 0, "retries": 0}
    assert store.get("a") == rec("a", 11, status="v11")


def test_a_commit_holds_at_most_max_batch_events_but_never_splits_an_add() -> None:
    store = GatedLog()

    async def main() -> None:
        committer = GroupCommitter(store, max_batch=20)
        committer.add([ev("a", 1)])
        assert store.entered.wait(WAIT_S)
        seq = 1
        for size in [5] * 9 + [30]:
            committer.add([ev("a", s) for s in range(seq + 1, seq + 1 + size)])
            seq += size
        store.release.set()
        await committer.flush()
        committer.close()

    run(main())
    assert [len(events) for events, _ in store.calls] == [1, 20, 20, 5, 30]
    assert seqs(store.read("a")) == list(range(1, 77))


def test_a_barrier_resolves_once_its_events_are_durable(tmp_path: Path) -> None:
    store = SqliteEventLog(tmp_path / "state.db")
    reader = SqliteEventLog.open_readonly(tmp_path / "state.db")  # a second connection
    seen: list[tuple[int, int, int]] = []

    async def main() -> None:
        committer = GroupCommitter(store)
        for step in range(20):
            last = 5 * step + 5
            committer.add([ev("a", seq) for seq in range(last - 4, last + 1)], [rec("a", last)])
            barrier = committer.barrier()
            barrier.add_done_callback(
                lambda _, last=last: seen.append((last, len(reader.read("a")), reader.get("a").version)))
            await barrier
        committer.close()

    run(main())
    assert seen == [(n, n, n) for n in range(5, 101, 5)]
    reader.close()
    store.close()


def test_on_durable_runs_callbacks_in_the_order_they_were_registered(log: EventLog) -> None:
    order: list[Any] = []

    async def main() -> None:
        committer = GroupCommitter(log)
        committer.on_durable(lambda: order.append("nothing pending"))
        committer.add([ev("a", 1)])
        committer.on_durable(lambda: order.append(("first", len(log.read("a")) >= 1)))
        committer.add([ev("a", 2)])
        committer.on_durable(lambda: order.append(("second", len(log.read("a")))))
        committer.on_durable(lambda: order.append("third"))
        await committer.flush()
        committer.on_durable(lambda: order.append("after the flush"))
        await committer.flush()
        committer.close()

    run(main())
    assert order == ["nothing pending", ("first", True), ("second", 2), "third", "after the flush"]


def test_a_failing_callback_is_logged_and_the_others_still_run(caplog: pytest.LogCaptureFixture) -> None:
    ran: list[str] = []

    def broken() -> None:
        raise RuntimeError("callback bug")

    async def main() -> None:
        committer = GroupCommitter(MemoryEventLog())
        committer.add([ev("a", 1)])
        committer.on_durable(broken)
        committer.on_durable(lambda: ran.append("after"))
        await committer.flush()
        committer.close()

    with caplog.at_level(logging.ERROR, logger="sopflow.eventlog"):
        run(main())
    assert ran == ["after"] and "on_durable callback" in caplog.text and "callback bug" in caplog.text


def test_many_concurrent_executions_share_commits(log: EventLog) -> None:
    adds = 50 * 10

    async def execution(committer: GroupCommitter, i: int) -> None:
        for step in range(10):
            last = 5 * step + 5
            committer.add([ev(f"e{i}", seq) for seq in range(last - 4, last + 1)], [rec(f"e{i}", last)])
            if step % 3 == 0:  # as the coordinator does: a snapshot from the loop while the writer commits
                committer.on_durable(lambda i=i, last=last: log.put_snapshot(f"e{i}", last, b"state"))
            await committer.barrier()

    async def main() -> dict[str, int]:
        committer = GroupCommitter(log)
        await asyncio.gather(*(execution(committer, i) for i in range(50)))
        committer.close()
        return committer.stats

    stats = run(main())
    assert stats["events"] == 5 * adds and stats["commits"] < adds and stats["max_batch"] > 5
    assert log.stats() == {"executions": 50, "events": 5 * adds, "unfinished": 50}
    assert all(r.version == 50 for r in log.query())
    assert all(log.latest_snapshot(f"e{i}") == (50, b"state") for i in range(50))


def test_close_commits_what_is_queued_and_may_be_called_twice(log: EventLog) -> None:
    async def main() -> None:
        committer = GroupCommitter(log)
        committer.add([ev("a", 1), ev("a", 2)])
        committer.close()
        assert seqs(log.read("a")) == [1, 2]
        committer.close()
        await committer.barrier()  # nothing left to wait for
        with pytest.raises(StateStoreError, match="group committer is closed"):
            committer.add([ev("a", 3)])

    run(main())


def test_a_failing_commit_fails_its_barrier_and_everything_after(log: EventLog,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    ran: list[int] = []

    async def main() -> None:
        committer = GroupCommitter(log)
        committer.add([ev("a", 1)])
        await committer.flush()
        log.close()
        committer.add([ev("a", 2)])
        barrier = committer.barrier()
        committer.on_durable(lambda: ran.append(2))
        with pytest.raises(StateStoreError, match="closed"):
            await barrier
        with pytest.raises(StateStoreError, match="stopped accepting events"):
            committer.add([ev("a", 3)])
        with pytest.raises(StateStoreError, match="closed"):
            await committer.barrier()
        committer.close()

    with caplog.at_level(logging.ERROR, logger="sopflow.eventlog"):
        run(main())
    assert ran == [] and "group commit of 1 events failed" in caplog.text and "not running" in caplog.text


def test_an_unexpected_commit_error_reaches_the_barrier_as_a_state_store_error() -> None:
    # (A disk I/O error is not final any more: tests/runtime/test_store_stall.py.)
    class BrokenLog(MemoryEventLog):
        def append(self, events: Any, records: Any = ()) -> int:
            raise sqlite3.IntegrityError("a bug, not a disk")

    async def main() -> None:
        committer = GroupCommitter(BrokenLog())
        committer.add([ev("a", 1)])
        with pytest.raises(StateStoreError, match="a bug, not a disk") as err:
            await committer.barrier()
        assert isinstance(err.value.__cause__, sqlite3.IntegrityError)
        committer.close()

    run(main())


# -- histories ---------------------------------------------------------------------------------------


A = "exe-0000000000a1-0000000a"  # histories carry real execution ids (import checks them)
B = "exe-0000000000b1-0000000b"


def history_of(log: EventLog) -> dict[str, Any]:
    log.append([ev(A, 1, EventKind.SUBMITTED, zeta=1, alpha={"b": 2, "a": 1}), ev(A, 2)],
               [rec(A, 2, idempotency_key="k")])
    return export_history(log, A)


def test_export_writes_the_record_and_events_in_a_stable_order(log: EventLog) -> None:
    doc = history_of(log)
    assert doc["format"] == FORMAT == "sopflow.history/1"
    assert doc["execution"] == {"id": A, "sop": "orders", "status": "running", "submitted_at": 100.0,
                                "version": 2, "ended_at": None, "terminal": False, "idempotency_key": "k",
                                "parent": None}
    assert list(doc["events"][0]) == ["execution_id", "seq", "kind", "ts", "step", "attempt", "data", "schema"]
    text = dumps_history(doc)
    assert text.index('"alpha"') < text.index('"zeta"') and text.index('"a": 1') < text.index('"b": 2')
    assert text.index('"execution_id"') < text.index('"seq"') < text.index('"kind"')
    assert json.loads(text)["events"][0]["kind"] == "execution_submitted"
    assert dumps_history(export_history(log, A)) == text


def test_export_of_an_unknown_execution_names_it(log: EventLog) -> None:
    with pytest.raises(StateStoreError, match="no execution 'nobody'"):
        export_history(log, "nobody")


def test_export_never_includes_blobs(log: EventLog) -> None:
    doc = history_of(log)
    log.put_blob(A, "secrets", b"hunter2")
    assert set(doc) == {"format", "execution", "events"}
    assert "hunter2" not in dumps_history(export_history(log, A))


def test_dumps_history_names_the_event_json_cannot_hold(log: EventLog) -> None:
    log.append([ev(A, 1), ev(A, 2, amount=decimal.Decimal("1.5"))], [rec(A, 2)])
    with pytest.raises(StateStoreError, match=rf"events\[1\] \(seq 2, step_started\) of execution {A}"):
        dumps_history(export_history(log, A))


def test_import_refuses_an_existing_execution_unless_replacing(log: EventLog) -> None:
    doc = history_of(log)
    with pytest.raises(StateStoreError, match=f"execution {A} already exists.*replace=True"):
        import_history(log, doc)
    log.append([ev(A, 3)], [rec(A, 3, "completed")])
    assert import_history(log, doc, replace=True) == A
    assert seqs(log.read(A)) == [1, 2] and log.get(A).status == "running"


def test_import_refuses_an_idempotency_key_another_execution_holds(log: EventLog) -> None:
    doc = history_of(log)
    log.delete(A)
    log.append([], [rec(B, idempotency_key="k")])
    with pytest.raises(StateStoreError, match=f"key 'k' of execution {A} is already used by execution {B}"):
        import_history(log, doc)


def bad(path: str, value: Any) -> Any:
    def change(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = doc
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        if value is KeyError:
            del target[last]
        else:
            target[int(last) if last.isdigit() else last] = value
    return change


@pytest.mark.parametrize(("change", "message"), [
    (bad("format", "sopflow.history/9"), "format: expected 'sopflow.history/1', got 'sopflow.history/9'"),
    (bad("execution", None), "execution: expected an object"),
    (bad("execution.sop", KeyError), r"execution.sop: expected a value \(the field is required\)"),
    (bad("execution.colour", "red"), "execution.colour: expected no such field"),
    (bad("execution.version", "2"), "execution.version: expected an integer >= 0, got '2'"),
    (bad("execution.version", 3), r"execution.version: expected at most 2 \(the last event's seq\), got 3"),
    (bad("execution.terminal", 1), "execution.terminal: expected true or false, got 1"),
    (bad("events", {}), "events: expected a list of events"),
    (bad("events.1.seq", 3), r"events\[1\].seq: expected 2 \(seqs run from 1 without gaps.*got 3"),
    (bad("events.0.seq", True), r"events\[0\].seq: expected 1"),
    (bad("events.1.execution_id", B), rf"events\[1\].execution_id: expected '{A}' \(execution.id\), got '{B}'"),
    (bad("events.0.kind", "step_start"), r"events\[0\].kind: expected an event kind \(.*step_started"),
    (bad("events.0.ts", None), r"events\[0\].ts: expected a number"),
    (bad("events.0.data", [1]), r"events\[0\].data: expected an object, got \[1\]"),
    (bad("events.0.extra", 1), r"events\[0\].extra: expected no such field"),
])
def test_import_names_the_field_that_is_wrong_and_changes_nothing(change: Any, message: str) -> None:
    doc = json.loads(dumps_history(history_of(MemoryEventLog())))
    change(doc)
    target = MemoryEventLog()
    with pytest.raises(StateStoreError, match=f"invalid history: {message}"):
        import_history(target, doc)
    assert target.stats() == {"executions": 0, "events": 0, "unfinished": 0}


HOSTILE_IDS = ["../x'; DROP TABLE events; --", "a", "", f"{A}\n", f" {A}", "exe-../../etc-passwd", 7, None,
               A.upper()]


@pytest.mark.parametrize("bad_id", HOSTILE_IDS)
@pytest.mark.parametrize("field", ["execution.id", "execution.parent", "events.0.execution_id"])
def test_an_imported_history_with_a_malformed_execution_id_is_refused_and_the_store_is_unchanged(
        log: EventLog, field: str, bad_id: Any) -> None:
    log.append([ev(B, 1, EventKind.SUBMITTED)], [rec(B, 1)])  # something already stored
    before = (log.stats(), log.read(B), log.get(B))
    doc = json.loads(dumps_history(history_of(MemoryEventLog())))
    if field == "execution.id":  # keep the events consistent, so the id itself is what is refused
        for e in doc["events"]:
            e["execution_id"] = bad_id
    bad(field, bad_id)(doc)
    expected = {"execution.id": "execution.id: expected an execution id",
                "execution.parent": "execution.parent: expected an execution id .* or null",
                "events.0.execution_id": r"events\[0\].execution_id: expected"}[field]
    if field == "execution.parent" and bad_id is None:
        return  # null is a valid parent
    with pytest.raises(StateStoreError, match=f"invalid history: {expected}"):
        import_history(log, doc)
    assert (log.stats(), log.read(B), log.get(B)) == before
    assert log.get(str(bad_id)) is None


@pytest.mark.parametrize(("change", "message"), [
    (bad("execution.status", "done"), "execution.status: expected one of queued, running"),
    (bad("execution.sop", "../etc"), r"execution.sop: expected an SOP name"),
    (bad("events.1.step", "../s'; --"), r"events\[1\].step: expected a step id"),
    (bad("events.1.attempt", 0), r"events\[1\].attempt: expected an integer >= 1 or null, got 0"),
    (bad("events.1.kind", "child_submitted"), r"events\[1\].data.child: expected an execution id"),
    (bad("execution.idempotency_key", "k" * 2000), "execution.idempotency_key: expected a string of at most"),
])
def test_every_field_of_an_imported_history_is_type_checked_before_anything_is_written(
        change: Any, message: str) -> None:
    doc = json.loads(dumps_history(history_of(MemoryEventLog())))
    change(doc)
    with tempfile.TemporaryDirectory() as directory:
        target = SqliteEventLog(Path(directory) / "state.db")
        with pytest.raises(StateStoreError, match=f"invalid history: {message}"):
            import_history(target, doc)
        assert target.stats() == {"executions": 0, "events": 0, "unfinished": 0}
        target.close()


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=40))
def test_only_well_formed_execution_ids_are_accepted(text: str) -> None:
    import re

    from runtime.ids import ExecutionId

    try:
        ExecutionId(text)
    except ValueError:
        assert re.fullmatch(r"exe-[0-9a-f]{12}-[0-9a-f]{8}", text) is None
    else:
        assert re.fullmatch(r"exe-[0-9a-f]{12}-[0-9a-f]{8}", text) is not None


# -- properties -----------------------------------------------------------------------------------------


@st.composite
def duplicate_and_out_of_order_appends(draw: st.DrawFn) -> tuple[int, list[list[int]]]:
    n = draw(st.integers(1, 25))
    batches = draw(st.lists(st.lists(st.integers(1, n), max_size=10), max_size=6))
    batches.insert(draw(st.integers(0, len(batches))), list(draw(st.permutations(range(1, n + 1)))))
    return n, batches


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=40, deadline=None)
@given(plan=duplicate_and_out_of_order_appends())
def test_for_any_interleaving_of_duplicate_and_out_of_order_appends_read_returns_each_seq_once_in_order(
        backend: str, plan: tuple[int, list[list[int]]]) -> None:
    n, batches = plan
    with tempfile.TemporaryDirectory() as directory:
        store = make_log(backend, Path(directory))
        stored = sum(store.append([ev("a", seq, n=seq) for seq in batch]) for batch in batches)
        events = store.read("a")
        store.close()
    assert stored == n
    assert seqs(events) == list(range(1, n + 1)) and all(e.data == {"n": e.seq} for e in events)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=40, deadline=None)
@given(batches=st.lists(st.lists(st.integers(0, 20), min_size=1, max_size=5), min_size=1, max_size=8))
def test_for_any_sequence_of_record_versions_get_returns_the_highest_version(
        backend: str, batches: list[list[int]]) -> None:
    numbered = iter(range(10**6))
    applied = [[rec("a", version, status=f"s{next(numbered)}") for version in batch] for batch in batches]
    with tempfile.TemporaryDirectory() as directory:
        store = make_log(backend, Path(directory))
        for records in applied:
            store.append([], records)
        got = store.get("a")
        store.close()
    flat = [r for records in applied for r in records]
    assert got == next(r for r in flat if r.version == max(x.version for x in flat))  # the first to reach it


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**60), 2**60) | st.text(max_size=8)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8)
event_fields = st.tuples(  # kind, ts, step, attempt, data
    st.sampled_from([k for k in EventKind if k != EventKind.CHILD_SUBMITTED]), st.floats(0, 2e9),
    st.none() | st.from_regex(r"[A-Za-z_][A-Za-z0-9_\-]{0,7}", fullmatch=True),
    st.none() | st.integers(1, 50), st.dictionaries(st.text(max_size=6), json_values, max_size=3))


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=30, deadline=None)
@given(fields=st.lists(event_fields, min_size=1, max_size=10), key=st.none() | st.text(max_size=8),
       terminal=st.booleans())
def test_export_then_import_into_an_empty_log_reproduces_the_events_exactly(
        backend: str, fields: list[tuple[Any, ...]], key: str | None, terminal: bool) -> None:
    events = [Event(A, i + 1, *f) for i, f in enumerate(fields)]
    record = ExecutionRecord(A, "orders", "completed" if terminal else "running", 10.0, len(events),
                             20.0 if terminal else None, terminal, key, None)
    with tempfile.TemporaryDirectory() as directory:
        source, target = make_log(backend, Path(directory, "src")), make_log(backend, Path(directory, "dst"))
        source.append(events, [record])
        text = dumps_history(export_history(source, A))
        assert import_history(target, json.loads(text)) == A
        back, back_record = target.read(A), target.get(A)
        source.close()
        target.close()
    assert back == events and back_record == record
