"""Snapshots are versioned JSON; one this version cannot read is skipped, never a crash (no Ray)."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.eventlog import MemoryEventLog, SqliteEventLog
from runtime.events import Event
from runtime.journal import load_state
from runtime.recovery import rebuild
from runtime.shipped import HandlersUnloadable, pack_callables, unpack_callables
from runtime.snapshots import SNAPSHOT_VERSION, SnapshotUnreadable, decode_snapshot, encode_snapshot
from runtime.state import ExecutionState, StepState, fold
from runtime.status import ExecutionStatus, StepStatus

HISTORY = Path(__file__).resolve().parent.parent / "histories" / "fanout-retry.json"


def recorded_events(upto: int | None = None) -> list[Event]:
    """A real execution's events (recorded on Ray), cut short so it looks unfinished."""
    events = [Event.from_dict(e) for e in json.loads(HISTORY.read_text())["events"]]
    return events[:upto] if upto else events


json_data = st.recursive(st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.text(max_size=8)
                         | st.floats(allow_nan=False, allow_infinity=False),
                         lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                         max_leaves=8)
step_states = st.builds(StepState, status=st.sampled_from(StepStatus), attempts=st.integers(0, 9),
                        output=json_data, error=st.none() | st.text(max_size=20),
                        classification=st.none() | st.sampled_from(["transient", "permanent"]),
                        started_at=st.none() | st.floats(0, 2e9), ended_at=st.none() | st.floats(0, 2e9))
states = st.builds(ExecutionState, id=st.text(min_size=1, max_size=12), sop=st.text(max_size=8),
                   version=st.text(max_size=4), mode=st.sampled_from(["system_design", "agent_centric"]),
                   status=st.sampled_from(ExecutionStatus), priority=st.integers(-5, 5),
                   steps=st.dictionaries(st.text(min_size=1, max_size=6), step_states, max_size=5),
                   rollback_steps=st.lists(st.text(min_size=1, max_size=6), max_size=2),
                   submitted_at=st.floats(0, 2e9), ended_at=st.none() | st.floats(0, 2e9),
                   outputs=st.none() | st.dictionaries(st.text(max_size=5), json_data, max_size=3),
                   idempotency_key=st.none() | st.text(max_size=10), paused=st.booleans(),
                   cancel_requested=st.booleans(), force_cancel=st.booleans(), rolling_back=st.booleans(),
                   last_seq=st.integers(0, 10**6),
                   added=st.lists(st.dictionaries(st.text(max_size=4), st.text(max_size=4)), max_size=2),
                   memory_mb=st.dictionaries(st.text(max_size=4), st.integers(1, 10**5), max_size=2),
                   retry_due=st.dictionaries(st.text(max_size=4),
                                             st.tuples(st.integers(1, 9), st.floats(0, 2e9)).map(list), max_size=2),
                   children=st.dictionaries(st.text(max_size=4), st.text(max_size=8), max_size=2))


@given(states)
@settings(max_examples=300)
def test_for_any_state_a_snapshot_reads_back_equal(state: ExecutionState) -> None:
    blob = encode_snapshot(state)
    assert blob is not None
    assert decode_snapshot(blob) == state


def test_a_version_1_snapshot_with_its_separate_recovery_part_is_upcast_into_the_state() -> None:
    """Version 1 (sopflow before the state machine moved to runtime/) kept added steps, raised
    memory, retries due and children beside the state; they are part of the state now."""
    events = recorded_events(upto=10)
    v2 = json.loads(encode_snapshot(fold(events)))
    state = {k: v for k, v in v2["state"].items() if k not in ("added", "memory_mb", "retry_due", "children")}
    v1 = {"format": "sopflow.snapshot", "version": 1, "state": state,
          "aux": {"added": [{"id": "late", "run": "true"}], "memory_mb": {"b": 512},
                  "retry_due": {"b": [2, 1234.5]}, "children": {"sub": "exe-child"}}}
    back = decode_snapshot(json.dumps(v1).encode())
    assert back.added == [{"id": "late", "run": "true"}] and back.memory_mb == {"b": 512}
    assert back.retry_due == {"b": [2, 1234.5]} and back.children == {"sub": "exe-child"}
    assert back.steps == fold(events).steps and back.last_seq == events[-1].seq


def test_a_state_json_cannot_carry_exactly_gets_no_snapshot_rather_than_a_wrong_one() -> None:
    state = ExecutionState("exe-1", steps={"a": StepState(output=(1, 2))})  # a tuple reads back as a list
    assert encode_snapshot(state) is None
    assert encode_snapshot(ExecutionState("exe-1", outputs={"x": float("nan")})) is None


def test_a_snapshot_of_the_old_shape_still_recovers_after_the_state_changed() -> None:
    """Written before a field was added (no 'priority', no step 'classification'), and with a
    field a newer sopflow added: it loads with defaults, and recovery folds the tail onto it."""
    events = recorded_events(upto=10)
    at = 6
    partial = fold(events[:at])
    doc = json.loads(encode_snapshot(partial))
    del doc["state"]["priority"]
    for step in doc["state"]["steps"].values():
        del step["classification"]
        step["queue_position"] = 3  # unknown here: ignored
    doc["state"]["added_in_a_newer_version"] = {"x": 1}
    log = MemoryEventLog()
    log.append(events)
    log.put_snapshot(events[0].execution_id, at, json.dumps(doc).encode())

    exe = rebuild(log, events[0].execution_id)
    # What the old snapshot could not say comes back as the default; the tail folds onto it.
    expected = fold(events[:at])
    expected.priority = 0
    for step in expected.steps.values():
        step.classification = None
    assert any(e.data.get("classification") for e in events[:at])  # the test loses something real
    assert exe.state == fold(events[at:], expected)
    assert exe.state.last_seq == events[-1].seq


@pytest.mark.parametrize("blob, why", [
    (pickle.dumps((ExecutionState("x"), {})), "not a JSON snapshot"),
    (json.dumps({"format": "sopflow.snapshot", "version": SNAPSHOT_VERSION + 1, "state": {}}).encode(), "newer"),
    (json.dumps({"format": "sopflow.snapshot", "version": 1, "state": {"steps": {}}}).encode(), "damaged"),
    (b'{"format": "sopflow.snap', "not a JSON snapshot"),
    (json.dumps({"format": "other"}).encode(), "not a sopflow snapshot"),
])
def test_a_snapshot_this_version_cannot_read_is_named(blob: bytes, why: str) -> None:
    with pytest.raises(SnapshotUnreadable, match=why):
        decode_snapshot(blob)


@pytest.mark.parametrize("kind", ["legacy pickle", "future version", "damaged"])
def test_an_unreadable_snapshot_is_skipped_and_the_state_folded_from_the_events(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str) -> None:
    events = recorded_events(upto=12)
    eid, at = events[0].execution_id, 8
    partial = fold(events[:at])
    blob = {"legacy pickle": pickle.dumps((partial, {}), protocol=pickle.HIGHEST_PROTOCOL),
            "future version": json.dumps({"format": "sopflow.snapshot", "version": 99, "state": {}}).encode(),
            "damaged": b"\x00\x01garbage"}[kind]
    log = SqliteEventLog(tmp_path / "state.db")
    try:
        log.append(events)
        log.put_snapshot(eid, at, blob)
        with caplog.at_level(logging.WARNING, logger="sopflow.snapshots"):
            assert load_state(log, eid) == fold(events)
            assert rebuild(log, eid).state == fold(events)
        assert f"ignoring the snapshot of {eid}" in caplog.text
    finally:
        log.close()


def add(a: int, b: int) -> int:
    return a + b


def test_shipped_callables_round_trip_and_name_the_versions_that_wrote_them() -> None:
    blob = pack_callables({"adder": lambda x: x + 1})
    assert unpack_callables(blob, "exe-1")["adder"](1) == 2
    assert json.loads(blob.split(b"\n")[1])["python"].count(".") == 2
    legacy = pickle.dumps({"add": add})  # sopflow 0.1 stored a bare cloudpickle
    assert unpack_callables(legacy, "exe-1")["add"](1, 2) == 3


def test_shipped_callables_that_cannot_be_loaded_are_refused_with_the_versions() -> None:
    header = json.dumps({"python": "3.99.0", "cloudpickle": "9.9"}).encode()
    blob = b"sopflow.callables\n" + header + b"\n" + b"\x80\x05not a pickle"
    with pytest.raises(HandlersUnloadable) as caught:
        unpack_callables(blob, "exe-7")
    message = str(caught.value)
    assert "exe-7" in message and "Python 3.99.0 with cloudpickle 9.9" in message
    assert "module:function" in message
    assert pickle.loads(pickle.dumps(caught.value)).args == caught.value.args
