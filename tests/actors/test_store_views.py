"""The monitor and coordinator read from the state store (no Ray: the plain classes on a SQLite file)."""

from __future__ import annotations

import asyncio
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.config import EngineConfig
from runtime.coordinator import CoordinatorCore
from runtime.journal import load_state
from runtime.monitor import ExecutionMonitor
from runtime.runners import InProcessRunner
from runtime.eventlog import ExecutionRecord, MemoryEventLog, SqliteEventLog
from runtime.events import Event, EventKind
from runtime.snapshots import encode_snapshot
from runtime.state import ExecutionState, apply


def history(eid: str, sop: str, *, at: float, steps: int = 2, finished: bool = True,
            fail_last: bool = False) -> list[Event]:
    names = [f"s{i}" for i in range(steps)]
    events = [Event(eid, 1, EventKind.SUBMITTED, at, data={"sop": sop, "version": "1", "mode": "system_design",
                                                           "steps": names, "rollback": []}),
              Event(eid, 2, EventKind.STARTED, at)]
    for name in names:
        events.append(Event(eid, len(events) + 1, EventKind.STEP_STARTED, at, name, 1))
        failed = fail_last and name == names[-1]
        kind = EventKind.STEP_FAILED if failed else EventKind.STEP_SUCCEEDED
        data = {"error": "boom", "classification": "permanent", "final": True} if failed else {"output": name}
        events.append(Event(eid, len(events) + 1, kind, at + 1, name, 1, data))
    if finished:
        status = "partially_completed" if fail_last else "completed"
        events.append(Event(eid, len(events) + 1, EventKind.FINISHED, at + 2,
                            data={"status": status, "outputs": {"outputs": {}, "steps": {}}}))
    return events


def store(log, events: list[Event]) -> None:
    state = ExecutionState(events[0].execution_id)
    for e in events:
        apply(state, e)
    log.append(events, [ExecutionRecord(state.id, state.sop, state.status.value, state.submitted_at,
                                        state.last_seq, state.ended_at, state.status.terminal)])


def test_the_monitor_answers_for_executions_it_no_longer_holds_from_the_store(tmp_path) -> None:
    path = tmp_path / "state.db"
    log = SqliteEventLog(path)
    now = time.time()
    for i in range(5):
        store(log, history(f"exe-{i}", "billing" if i % 2 else "hr", at=now - 100 + i, fail_last=i == 3))
    store(log, history("exe-running", "hr", at=now, finished=False))
    monitor = ExecutionMonitor(EngineConfig(state=str(path), keep_finished=2))

    async def scenario() -> None:
        assert set(monitor.states) == {"exe-3", "exe-4", "exe-running"}  # newest finished + unfinished
        assert (await monitor.status("exe-0")).status.value == "completed"  # folded from the log
        listed = await monitor.list(limit=10)
        assert [v.id for v in listed][:1] == ["exe-running"] and len(listed) == 6
        assert [v.id for v in await monitor.list(sop="billing")] == ["exe-3", "exe-1"]
        assert [v.id for v in await monitor.list(status="partially_completed")] == ["exe-3"]
        assert [v.id for v in await monitor.list(since=now - 99, until=now - 97)] == ["exe-2", "exe-1"]
        assert [e.seq for e in await monitor.events("exe-0")] == list(range(1, 8))

    asyncio.run(scenario())
    log.close()


def test_a_monitor_that_missed_events_refills_the_gap_from_the_store(tmp_path) -> None:
    path = tmp_path / "state.db"
    log = SqliteEventLog(path)
    events = history("exe-gap", "hr", at=time.time())
    store(log, events)
    monitor = ExecutionMonitor(EngineConfig(state=str(path)))
    monitor.states.clear()
    monitor.history.clear()

    async def scenario() -> None:
        await monitor.apply(events[:2])
        await monitor.apply(events[-1:])  # events 3..6 never arrived
        assert [e.seq for e in await monitor.events("exe-gap")] == [e.seq for e in events]
        assert (await monitor.status("exe-gap")).status.value == "completed"

    asyncio.run(scenario())
    log.close()


def test_the_coordinator_purges_finished_executions_older_than_the_retention() -> None:
    log = MemoryEventLog()
    day = 86_400.0
    store(log, history("exe-old", "hr", at=time.time() - 100 * day))
    store(log, history("exe-recent", "hr", at=time.time() - 10 * day))
    store(log, history("exe-old-running", "hr", at=time.time() - 100 * day, finished=False))
    coordinator = CoordinatorCore(EngineConfig(state="memory://", retention_days=90), task_runner=InProcessRunner(),
                                  event_log=log)
    coordinator.recovery = {}  # keep the unfinished one unrecovered: this test is about the store only

    async def scenario() -> int:
        return await coordinator.purge()

    assert asyncio.run(scenario()) == 1
    assert log.get("exe-old") is None and not log.read("exe-old")
    assert log.get("exe-recent") is not None and log.get("exe-old-running") is not None
    coordinator.journal.close()


@given(st.integers(2, 12), st.data())
@settings(max_examples=60)
def test_for_any_snapshot_point_snapshot_plus_tail_folds_to_the_same_state(steps, data) -> None:
    events = history("exe-snap", "hr", at=1000.0, steps=steps, fail_last=data.draw(st.booleans()))
    at = data.draw(st.integers(1, len(events)))
    log = MemoryEventLog()
    log.append(events)
    partial = ExecutionState("exe-snap")
    for e in events[:at]:
        apply(partial, e)
    log.put_snapshot("exe-snap", at, encode_snapshot(partial))
    full = ExecutionState("exe-snap")
    for e in events:
        apply(full, e)
    assert load_state(log, "exe-snap") == full
