"""Running a step's handler: values taken from the context are recorded and replayed exactly.

No Ray here: :func:`run_task` is what a worker calls, so it is called directly.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from runtime.handlers import StepContext, StepOutcome, StepTask, run_task

ROOT = Path(__file__).resolve().parents[2]

Call = tuple[Any, ...]


def perform(calls: list[Call], context: StepContext) -> list[Any]:
    """Make each call (``("randint", 1, 6)`` ...) on the context; return what it gave, as data
    (an output must be JSON: a datetime is returned as ``{"utc": tzinfo is UTC, "ts": timestamp}``)."""
    return [_as_data(getattr(context, name)(*args)) for name, *args in calls]


def _as_data(value: Any) -> Any:
    if isinstance(value, datetime.datetime):
        return {"utc": value.tzinfo is datetime.UTC, "ts": value.timestamp()}
    return value


def perform_then_fail(calls: list[Call], context: StepContext) -> None:
    perform(calls, context)
    raise ConnectionError("ledger unreachable")


async def perform_async(calls: list[Call], context: StepContext) -> list[Any]:
    return perform(calls, context)


def run(calls: list[Call], recorded: Any = (), handler: Any = perform) -> StepOutcome:
    task = StepTask("exe-1", "orders", "ship", 1, "test-handler", handler, {"calls": calls},
                    recorded=recorded)
    return run_task(task)


def through_json(recorded: tuple[tuple[str, Any], ...]) -> Any:
    """The recording as it comes back from the event log: JSON, pairs as lists."""
    return json.loads(json.dumps(recorded))


EVERY_METHOD: list[Call] = [("now",), ("utcnow",), ("random",), ("randint", 1, 6), ("uuid4",),
                            ("choice", ["red", "green", "blue"])]

calls_st = st.lists(st.one_of(
    st.sampled_from([("now",), ("utcnow",), ("random",), ("uuid4",)]),
    st.integers(-10**6, 10**6).flatmap(
        lambda a: st.tuples(st.just("randint"), st.just(a), st.integers(a, a + 1000))),
    st.tuples(st.just("choice"), st.lists(st.integers() | st.text(max_size=5), min_size=1, max_size=5)),
), max_size=12)


# -- recording ---------------------------------------------------------------------------------


def test_every_context_method_records_its_kind_and_value_in_order() -> None:
    out = run(EVERY_METHOD)
    assert out.ok, out.error
    assert [kind for kind, _ in out.recorded] == ["now", "utcnow", "random", "randint", "uuid4", "choice"]
    now, utcnow, rnd, dice, uid, colour = out.output
    values = dict(out.recorded)
    assert values["now"] == now and isinstance(now, float)
    assert utcnow["utc"] and values["utcnow"] == utcnow["ts"]
    assert 0.0 <= rnd < 1.0 and values["random"] == rnd
    assert 1 <= dice <= 6 and values["randint"] == dice
    assert str(uuid.UUID(uid)) == uid and uuid.UUID(uid).version == 4 and values["uuid4"] == uid
    assert ["red", "green", "blue"][values["choice"]] == colour
    assert out.replay_diverged is None


def test_the_recording_is_plain_json() -> None:
    out = run(EVERY_METHOD)
    assert through_json(out.recorded) == [list(pair) for pair in out.recorded]
    assert all(type(value) in (float, int, str) for _, value in out.recorded)


def test_an_async_handler_records_too() -> None:
    out = run([("uuid4",), ("now",)], handler=perform_async)
    assert out.ok, out.error
    assert [kind for kind, _ in out.recorded] == ["uuid4", "now"]


def test_a_handler_that_takes_nothing_from_the_context_records_nothing() -> None:
    assert run([]).recorded == ()
    shell = run_task(StepTask("exe-1", "orders", "ship", 1, "shell", run="true"))
    assert shell.ok and shell.recorded == () and shell.replay_diverged is None


def test_choice_from_an_empty_sequence_fails_the_step_like_random_choice() -> None:
    out = run([("now",), ("choice", [])])
    assert not out.ok and out.error.type == "IndexError"
    assert [kind for kind, _ in out.recorded] == ["now"]


def test_a_failing_handler_keeps_what_it_recorded() -> None:
    out = run([("now",), ("uuid4",)], handler=perform_then_fail)
    assert not out.ok and out.error.type == "ConnectionError"
    assert [kind for kind, _ in out.recorded] == ["now", "uuid4"]

    again = run([("now",), ("uuid4",)], recorded=through_json(out.recorded), handler=perform_then_fail)
    assert not again.ok and again.recorded == out.recorded and again.replay_diverged is None

    changed = run([("now",), ("random",)], recorded=through_json(out.recorded), handler=perform_then_fail)
    assert not changed.ok
    assert changed.replay_diverged == "call 2 asked for random but the recording has uuid4"


# -- replaying ---------------------------------------------------------------------------------


@given(calls_st)
def test_for_any_sequence_of_context_calls_replaying_the_recording_returns_the_same_values(
        calls: list[Call]) -> None:
    first = run(calls)
    assert first.ok, first.error
    replay = run(calls, recorded=through_json(first.recorded))
    assert replay.ok, replay.error
    assert replay.output == first.output
    assert replay.recorded == first.recorded
    assert replay.replay_diverged is None


@given(calls_st.filter(bool), st.data())
def test_for_any_recording_asking_for_another_kind_is_reported_at_that_call(
        calls: list[Call], data: st.DataObject) -> None:
    recorded = run(calls).recorded
    i = data.draw(st.integers(0, len(calls) - 1))
    other = data.draw(st.sampled_from([c for c in [("now",), ("uuid4",)] if c[0] != calls[i][0]]))
    out = run(calls[:i] + [other] + calls[i + 1:], recorded=through_json(recorded))
    assert out.replay_diverged == f"call {i + 1} asked for {other[0]} but the recording has {calls[i][0]}"
    assert out.output[:i] == run(calls[:i], recorded=through_json(recorded[:i])).output


def test_after_a_divergence_the_handler_gets_fresh_values() -> None:
    recording = [["now", 100.0], ["random", 0.5], ["random", 0.25]]
    out = run([("now",), ("uuid4",), ("random",)], recorded=recording)
    assert out.replay_diverged == "call 2 asked for uuid4 but the recording has random"
    now, _, rnd = out.output
    assert now == 100.0 and rnd != 0.25
    assert [kind for kind, _ in out.recorded] == ["now", "uuid4", "random"]


def test_asking_for_more_values_than_were_recorded_is_reported_with_the_first_extra_call() -> None:
    out = run([("now",), ("random",), ("uuid4",)], recorded=[["now", 100.0]])
    assert out.output[0] == 100.0
    assert out.replay_diverged == "asked for 2 more values than the 1 recorded (call 2 asked for random)"


def test_asking_for_fewer_values_than_were_recorded_is_reported() -> None:
    out = run([("now",)], recorded=[["now", 100.0], ["uuid4", str(uuid.uuid4())]])
    assert out.ok
    assert out.replay_diverged == ("asked for only 1 of the 2 recorded values "
                                   "(call 2, uuid4, was never asked for)")


def test_a_recorded_value_that_cannot_be_what_the_call_returns_is_a_divergence() -> None:
    out = run([("choice", ["a", "b"])], recorded=[["choice", 5]])
    assert out.ok and out.output[0] in ("a", "b")
    assert out.replay_diverged is not None
    assert out.replay_diverged.startswith("call 1 asked for choice but the recorded value 5 does not fit")
    assert "outside [0, 1]" in out.replay_diverged


def test_replayed_values_come_back_as_the_types_the_handler_got() -> None:
    at = datetime.datetime(2024, 5, 1, 12, 30, 15, 250000, tzinfo=datetime.UTC)
    out = run([("utcnow",), ("choice", ["x", "y", "z"]), ("randint", 0, 9)],
              recorded=[["utcnow", at.timestamp()], ["choice", 2], ["randint", 7]])
    assert out.output == [_as_data(at), "z", 7] and out.replay_diverged is None


# -- import cost of the step task in a fresh worker ----------------------------------------------


def test_a_worker_importing_the_step_task_loads_neither_the_sop_model_nor_its_parsers() -> None:
    """Every Ray worker imports ``actors.step_task``; it must not pay for pydantic or jinja2.

    PyYAML is checked against what Ray itself imports (Ray loads it for its own labels).
    """
    script = (
        "import sys, json, ray\n"
        "before = set(sys.modules)\n"
        "import actors.step_task\n"
        "print(json.dumps({'all': sorted(sys.modules), 'new': sorted(set(sys.modules) - before)}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    modules = json.loads(done.stdout.strip().splitlines()[-1])
    heavy = ("pydantic", "pydantic_core", "jinja2", "sop.model", "sop.validate", "sop.expressions",
             "actors.fronts", "actors._coordinator")
    loaded = [m for m in modules["all"] if m.split(".")[0] in heavy or m in heavy]
    assert loaded == [], f"importing actors.step_task loaded {loaded}"
    assert [m for m in modules["new"] if m.split(".")[0] == "yaml"] == []

