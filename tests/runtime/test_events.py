"""Typed events: one payload class per kind, stored as data, read back typed; older schemas upcast (no Ray)."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime import events as ev
from runtime.eventlog import SCHEMA_VERSION, SqliteEventLog
from runtime.events import EVENT_SCHEMA, PAYLOADS, Event, EventKind, new_event, upcast
from runtime.history import FORMAT, events_from_doc
from runtime.state import fold

HISTORIES = Path(__file__).resolve().parent.parent / "histories"


def test_every_kind_has_a_documented_payload_class() -> None:
    assert set(PAYLOADS) == set(EventKind)
    for kind, cls in PAYLOADS.items():
        assert cls.kind == kind
        assert cls.__doc__ and cls.__doc__ != ev.Payload.__doc__, f"{cls.__name__} needs a docstring"
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen  # type: ignore[attr-defined]


json_values = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.text(max_size=6),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                         max_size=3),
                           max_leaves=6)


def payloads() -> st.SearchStrategy[ev.Payload]:
    """Any payload of any kind, its fields drawn by their declared types (None where allowed)."""
    def build(cls: type[ev.Payload]) -> st.SearchStrategy[ev.Payload]:
        fields = {}
        for f in dataclasses.fields(cls):
            hint = str(f.type)
            base = (st.text(max_size=12) if hint.startswith("str") else
                    st.booleans() if hint == "bool" else
                    st.integers(0, 10**6) if hint.startswith("int") else
                    st.floats(0, 1e6, allow_nan=False) if hint.startswith("float") else
                    st.lists(st.text(max_size=6), max_size=3) if hint == "list[str]" else
                    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3)
                    if hint.startswith("dict[str, str]") else
                    st.dictionaries(st.text(max_size=5), json_values, max_size=3) if hint.startswith("dict") else
                    st.lists(st.lists(json_values, max_size=2), max_size=2) if hint.startswith("list[list") else
                    st.lists(st.dictionaries(st.text(max_size=4), json_values, max_size=2), max_size=2)
                    if hint.startswith("list[dict") else json_values)
            fields[f.name] = base | st.none() if "None" in hint else base
        return st.fixed_dictionaries(fields).map(lambda kw: cls(**kw))
    return st.one_of([build(cls) for cls in PAYLOADS.values()])


@given(payloads(), st.integers(1, 10**6), st.none() | st.text(min_size=1, max_size=8), st.none() | st.integers(1, 9))
@settings(max_examples=400)
def test_for_any_payload_the_event_reads_back_the_same_payload(payload: ev.Payload, seq: int,
                                                               step: str | None, attempt: int | None) -> None:
    event = new_event("exe-1", seq, payload, step, attempt)
    assert event.kind == payload.kind and event.schema == EVENT_SCHEMA
    assert event.payload == payload
    assert None not in event.data.values()  # None is the absence of a field: stored compactly
    again = Event.from_dict(json.loads(json.dumps(event.to_dict())))
    assert again == event and again.payload == payload


def test_a_field_unknown_to_this_version_is_ignored_and_a_missing_one_gets_its_default() -> None:
    event = Event("exe-1", 3, EventKind.STEP_FAILED, 1.0, "a", 1, {"error": "boom", "from_the_future": 1})
    assert event.payload == ev.StepFailed(error="boom")
    assert event.payload.final is True


def test_a_schema_1_failure_without_final_is_upcast_to_a_final_failure() -> None:
    """Schema 1 wrote no ``final`` on failures that were never retried; the fold treated that as final."""
    old = {"execution_id": "exe-1", "seq": 4, "kind": "step_failed", "ts": 1.0, "step": "a", "attempt": 0,
           "data": {"error": "condition failed", "classification": "permanent"}}
    event = Event.from_dict(old)
    assert event.schema == EVENT_SCHEMA and event.data["final"] is True
    assert upcast(EventKind.STEP_FAILED, {"final": False}, 1) == {"final": False}  # only fills what is missing


def test_a_newer_schema_is_refused_with_what_to_do() -> None:
    with pytest.raises(ValueError, match=f"event schema {EVENT_SCHEMA + 1} is newer than this sopflow's"):
        upcast(EventKind.STARTED, {}, EVENT_SCHEMA + 1)
    with pytest.raises(ValueError, match="positive integer"):
        upcast(EventKind.STARTED, {}, 0)


@pytest.mark.parametrize("saved", sorted(HISTORIES.glob("*.json")), ids=lambda p: p.stem)
def test_the_saved_schema_1_histories_load_and_fold_as_before(saved: Path) -> None:
    doc = json.loads(saved.read_text())
    events = events_from_doc(doc)
    assert doc["format"] == FORMAT and all("schema" not in e for e in doc["events"])
    assert all(e.schema == EVENT_SCHEMA for e in events)
    assert fold(events).status.value == doc["execution"]["status"]


def test_a_state_file_of_schema_1_reads_upcast_and_is_stamped_with_the_new_version(tmp_path: Path) -> None:
    """A file written by sopflow <= 0.3: events encoded ``json`` with schema-1 payloads."""
    path = tmp_path / "state.db"
    SqliteEventLog(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
        db.execute("INSERT INTO events VALUES ('exe-01a1fffcf0cd-fde64fe9', 1, 'step_failed', 1.0, 'a', 0, 'json', ?)",
                   (json.dumps({"error": "x"}),))
    db.close()
    log = SqliteEventLog(path)
    try:
        [event] = log.read("exe-01a1fffcf0cd-fde64fe9")
        assert event.payload.final is True and event.schema == EVENT_SCHEMA
        log.append([new_event("exe-01a1fffcf0cd-fde64fe9", 2, ev.StepSucceeded(output=1), "a", 1)])
        assert [e.payload for e in log.read("exe-01a1fffcf0cd-fde64fe9", 1)] == [ev.StepSucceeded(output=1)]
    finally:
        log.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
            str(SCHEMA_VERSION),)
        assert db.execute("SELECT encoding FROM events ORDER BY seq").fetchall() == [("json",), ("json;2",)]
    db.close()


def test_history_lines_say_what_happened() -> None:
    lines = [new_event("e", 1, ev.StepFailed(error="boom", classification="transient"), "a", 1).describe(),
             new_event("e", 2, ev.RetryScheduled(delay_s=1.5), "a", 2).describe(),
             new_event("e", 3, ev.StepProgress(fraction=0.25, message="rows"), "a", 2).describe(),
             new_event("e", 4, ev.Finished(status="completed")).describe(),
             new_event("e", 5, ev.Started()).describe()]
    assert lines == ["#1 step_failed a (attempt 1): [transient] boom", "#2 retry_scheduled a (attempt 2): in 1.50 s",
                     "#3 step_progress a (attempt 2): 25% rows", "#4 execution_finished: completed",
                     "#5 execution_started"]
