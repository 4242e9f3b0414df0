"""A store that stops taking writes (a full disk) stalls commits, which resume by themselves once it does.

The disk is "full" for real: SQLite's ``max_page_count`` on the writer's
connection makes every commit that would grow the file fail with SQLITE_FULL.
"""

from __future__ import annotations

import asyncio
import time

from runtime.eventlog import ExecutionRecord, GroupCommitter, SqliteEventLog
from runtime.events import Event, EventKind


def events(execution_id: str, first: int, n: int) -> list[Event]:
    return [Event(execution_id, seq, EventKind.STARTED, time.time(), None, None, {"pad": "x" * 2000})
            for seq in range(first, first + n)]


def disk_full(log: SqliteEventLog, full: bool) -> None:
    """Cap the file at its current size (real SQLITE_FULL on growth), or lift the cap."""
    with log._write_lock:  # the writer connection is the committer's: change it between commits
        (pages,), = log._writer.execute("PRAGMA page_count").fetchall()
        log._writer.execute(f"PRAGMA max_page_count = {pages if full else 1_000_000_000}")


async def until(predicate, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)  # polling interval of a bounded wait for a condition


def test_commits_on_a_full_disk_are_held_and_land_in_order_once_space_is_back(tmp_path) -> None:
    log = SqliteEventLog(tmp_path / "state.db")
    told: list[str | None] = []
    committer = GroupCommitter(log, retry_s=(0.01, 0.05), on_stall=lambda e: told.append(e and str(e)))

    async def scenario() -> None:
        committer.add(events("a", 1, 5), [ExecutionRecord("a", "s", "running", time.time(), 5)])
        await committer.barrier()
        log.checkpoint()
        disk_full(log, True)
        committer.add(events("a", 6, 50), [ExecutionRecord("a", "s", "running", time.time(), 55)])
        held = committer.barrier()
        await until(lambda: committer.stalled is not None)
        assert "database or disk is full" in str(committer.stalled)
        committer.add(events("a", 56, 5))  # still accepted while stalled, kept in order
        later = committer.barrier()
        await until(lambda: committer.stats["retries"] >= 5)  # the disk is still full: retries fail
        assert not held.done() and not later.done() and committer.error is None
        disk_full(log, False)
        await asyncio.wait_for(asyncio.gather(held, later), 30)
        assert committer.stalled is None and committer.stats["stalls"] == 1
        assert len(told) == 2 and "database or disk is full" in told[0] and told[1] is None  # once each
        committer.add(events("a", 61, 1))
        await committer.barrier()

    try:
        asyncio.run(scenario())
        assert [e.seq for e in log.read("a")] == list(range(1, 62))  # nothing lost, no gap
        assert log.get("a").version == 55
    finally:
        committer.close()
        log.close()


def test_closing_a_stalled_committer_gives_up_and_says_why(tmp_path) -> None:
    log = SqliteEventLog(tmp_path / "state.db")
    committer = GroupCommitter(log, retry_s=(0.01, 0.05))

    async def scenario() -> None:
        committer.add(events("a", 1, 1))
        await committer.barrier()
        disk_full(log, True)
        committer.add(events("a", 2, 50))
        held = committer.barrier()
        await until(lambda: committer.stalled is not None)
        await asyncio.to_thread(committer.close)
        try:
            await asyncio.wait_for(held, 10)
        except Exception as e:  # noqa: BLE001 - the error is what we check
            assert "database or disk is full" in str(e)
        else:
            raise AssertionError("a commit given up at close must not be reported durable")

    try:
        asyncio.run(scenario())
    finally:
        log.close()


SKIPPED_ONLY = """
sop: stall
version: "1"
steps:
  - id: never
    run: "echo never"
    when: "1 == 2"
"""


def request():
    from runtime.request import SubmitRequest, sop_definition
    from sop import check_text

    model = check_text(SKIPPED_ONLY).raise_for_problems()
    # A big input: its submission needs new pages, which the "full disk" refuses.
    return SubmitRequest(model, {"note": "x" * 20_000}, definition=sop_definition(model))


def test_a_stalled_coordinator_refuses_new_work_says_so_and_resumes_by_itself(tmp_path) -> None:
    from runtime.config import EngineConfig
    from runtime.coordinator import CoordinatorCore
    from runtime.errors import StateStoreError
    from runtime.runners import InProcessRunner

    log = SqliteEventLog(tmp_path / "state.db")
    coordinator = CoordinatorCore(EngineConfig(state="memory://"), task_runner=InProcessRunner(), event_log=log)
    coordinator.journal.committer.retry_s = (0.01, 0.05)
    coordinator.recovery = {}  # a fresh store: nothing to recover

    async def scenario() -> None:
        first = await coordinator.submit(request())
        log.checkpoint()
        disk_full(log, True)
        pending = asyncio.get_running_loop().create_task(coordinator.submit(request()))
        await until(lambda: coordinator.journal.committer.stalled is not None)
        assert (await coordinator.info())["stalled"].startswith("cannot append events")
        try:
            await coordinator.submit(request())
        except StateStoreError as e:
            assert "sopflow is stalled: its state store takes no writes now" in str(e)
            assert "resumes by itself" in str(e)
        else:
            raise AssertionError("a submission while stalled must be refused")
        assert not pending.done()  # answered only once its events are durable
        disk_full(log, False)
        second = await asyncio.wait_for(pending, 30)
        assert (await coordinator.info())["stalled"] is None
        third = await coordinator.submit(request())  # new work is taken again at once
        for eid in (first, second, third):
            assert (await coordinator.wait(eid, 30)).status.value == "completed"
        await coordinator.journal.durable()

    try:
        asyncio.run(scenario())
        assert len(log.query()) == 3 and log.check() == []
    finally:
        coordinator.journal.close()


def test_the_monitor_shows_running_executions_as_stalled_while_the_store_takes_no_writes(tmp_path) -> None:
    from runtime.monitor import ExecutionMonitor as _ExecutionMonitor
    from runtime.events import Event as E

    monitor = _ExecutionMonitor()
    submitted = E("x", 1, EventKind.SUBMITTED, time.time(), None, None,
                  {"sop": "s", "version": "1", "mode": "system_design", "steps": ["a"], "inputs": {}})

    async def scenario() -> list[str]:
        await monitor.apply([submitted, E("x", 2, EventKind.STARTED, time.time(), None, None, {})])
        seen = [(await monitor.status("x")).status.value]
        await monitor.set_stalled("cannot append events in the state store: database or disk is full")
        seen += [(await monitor.status("x")).status.value, (await monitor.list())[0].status.value]
        await monitor.set_stalled(None)
        return seen + [(await monitor.status("x")).status.value]

    assert asyncio.run(scenario()) == ["running", "stalled", "stalled", "running"]
