"""Deterministic replay of saved histories, and of generated DAGs run on the in-process engine (no Ray).

The saved histories in ``tests/histories/`` were recorded on a real cluster by
``tests/histories/make_histories.py``; one of them must be reported as
non-deterministic when it is replayed from the step that reads randomness directly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.replay import replay
from runtime.errors import ExecutionError
from runtime.eventlog import SqliteEventLog
from runtime.events import Event, EventKind
from runtime.history import dumps_history, import_history
from tests.actors.test_scheduling_properties import dags
from tests.sop_builders import H

HISTORIES = Path(__file__).resolve().parents[1] / "histories"
SAVED = sorted(HISTORIES.glob("*.json"))


def load(name: str) -> dict[str, Any]:
    return json.loads((HISTORIES / f"{name}.json").read_text())


def events_of(doc: dict[str, Any]) -> list[Event]:
    return [Event.from_dict(e) for e in doc["events"]]


def outcome_event(doc: dict[str, Any], step: str, kind: str = "step_succeeded") -> dict[str, Any]:
    """The (last) event of ``kind`` for ``step`` in a history document, to read or edit in place."""
    return [e for e in doc["events"] if e["kind"] == kind and e["step"] == step][-1]


def diff(report, step: str, field: str = "output"):
    found = [d for d in report.diffs if d.step == step and d.field == field]
    assert found, f"no {step}.{field} diff in:\n{report.render()}"
    return found[0]


# -- saved histories, whole ------------------------------------------------------------------


def test_the_saved_histories_are_there_and_small() -> None:
    assert {p.stem for p in SAVED} >= {"linear-context", "fanout-retry", "nondeterministic"}
    for path in SAVED:
        assert path.stat().st_size < 30_000, path.name
        assert json.loads(path.read_text())["format"] == "sopflow.history/1"


@pytest.mark.parametrize("path", SAVED, ids=lambda p: p.stem)
def test_every_saved_history_replays_whole_exactly_without_running_a_handler(path: Path) -> None:
    doc = json.loads(path.read_text())
    report = replay(events_of(doc))

    assert report.deterministic, report.render()
    assert report.handlers_run == 0
    assert report.rerun == []
    assert report.recorded_status == report.replayed_status == doc["execution"]["status"]
    assert report.outputs_match
    assert report.execution_id == doc["execution"]["id"]
    assert "identical: every step and the result match the recording" in report.render()


def test_a_recorded_retry_skip_and_continued_failure_are_replayed_as_recorded() -> None:
    doc = load("fanout-retry")
    kinds = [(e["kind"], e["step"]) for e in doc["events"]]
    assert ("retry_scheduled", "fetch") in kinds and ("step_skipped", "rare") in kinds
    assert outcome_event(doc, "doomed", "step_failed")["data"]["final"] is True

    report = replay(events_of(doc))

    assert report.deterministic, report.render()
    assert report.handlers_run == 0  # fetch's two attempts come from the log, not from `flaky`


# -- saved histories, from a checkpoint -------------------------------------------------------


def test_linear_context_replays_exactly_from_a_middle_step_reusing_the_recorded_context_values() -> None:
    doc = load("linear-context")
    recorded = outcome_event(doc, "second")["data"]
    assert [kind for kind, _ in recorded["recorded"]] == ["now", "uuid4", "randint"]

    report = replay(events_of(doc), from_step="second")

    assert report.deterministic, report.render()
    assert report.rerun == ["second", "third", "summary"]
    assert report.handlers_run == 3
    assert "ran again: second, third, summary" in report.render()


def test_a_replayed_step_gets_the_recorded_context_values_not_fresh_ones() -> None:
    doc = load("linear-context")
    event = outcome_event(doc, "second")
    original = dict(event["data"]["output"])
    planted = "00000000-0000-4000-8000-000000000001"
    event["data"]["recorded"] = [[k, planted if k == "uuid4" else v] for k, v in event["data"]["recorded"]]

    report = replay(events_of(doc), from_step="second")

    replayed = diff(report, "second").replayed
    assert replayed["id"] == planted  # the handler's uuid4() returned the recorded value
    assert replayed["at"] == original["at"] and replayed["roll"] == original["roll"]
    assert {d.step for d in report.diffs} == {"second"}  # third/summary do not read second's id


@pytest.mark.parametrize("step", ["first", "second", "third", "summary"])
def test_linear_context_replays_exactly_from_any_step(step: str) -> None:
    report = replay(events_of(load("linear-context")), from_step=step)
    assert report.deterministic, report.render()
    assert report.handlers_run == len(report.rerun) > 0


@pytest.mark.parametrize("step", ["left", "right", "rare", "doomed", "join"])
def test_fanout_retry_replays_exactly_from_any_step_after_the_retried_one(step: str) -> None:
    report = replay(events_of(load("fanout-retry")), from_step=step)
    assert report.deterministic, report.render()
    assert step in report.rerun and "join" in report.rerun
    assert "fetch" not in report.rerun


def test_a_step_reading_randomness_directly_is_reported_as_non_deterministic() -> None:
    report = replay(events_of(load("nondeterministic")), from_step="draw")

    assert not report.deterministic
    assert report.nondeterministic_steps == ["draw", "use"]
    draw = diff(report, "draw")
    assert "non-deterministic handler" in draw.cause
    assert draw.recorded["value"] != draw.replayed["value"]
    use = diff(report, "use")
    assert "inputs changed" in use.cause and "draw" in use.cause
    assert not report.outputs_match
    text = report.render()
    assert "DIVERGED in 2 step(s): draw, use" in text
    assert "draw.output" in text and "non-deterministic handler" in text


def test_replaying_only_downstream_of_the_non_deterministic_step_is_exact() -> None:
    report = replay(events_of(load("nondeterministic")), from_step="use")
    assert report.deterministic, report.render()
    assert report.handlers_run == 1


# -- edited histories -------------------------------------------------------------------------


def test_a_history_edited_so_the_first_step_failed_diverges_downstream() -> None:
    doc = load("linear-context")
    event = outcome_event(doc, "first")
    event["kind"] = "step_failed"
    event["data"] = {"action": "fail", "classification": "permanent", "error": "PermanentError: edited",
                     "error_type": "PermanentError", "final": True, "output": None, "reason": "edited"}

    report = replay(events_of(doc))

    assert not report.deterministic
    assert report.nondeterministic_steps == ["second", "summary", "third"]
    assert diff(report, "second", "status").replayed == "upstream_failed"
    assert "edited by hand" in diff(report, "second", "status").cause
    assert "upstream step(s) second" in diff(report, "third", "status").cause
    assert report.replayed_status == "failed" and report.recorded_status == "completed"


def test_an_edited_output_that_a_condition_reads_diverges_whole() -> None:
    doc = load("fanout-retry")
    outcome_event(doc, "fetch")["data"]["output"] = {"attempt": 9}  # now `rare`'s when: is true

    report = replay(events_of(doc))

    assert not report.deterministic
    rare = diff(report, "rare", "status")
    assert (rare.recorded, rare.replayed) == ("skipped", "failed")  # ran, but has no recorded outcome
    assert "edited by hand" in rare.cause


def test_an_edited_output_of_the_first_step_diverges_downstream_in_a_whole_replay() -> None:
    doc = load("linear-context")
    output = outcome_event(doc, "first")["data"]["output"]
    output["id"], output["roll"] = "00000000-0000-4000-8000-000000000000", 6

    report = replay(events_of(doc))

    assert not report.deterministic
    assert {"second", "summary"} <= set(report.nondeterministic_steps)


# -- errors ---------------------------------------------------------------------------------


def test_an_unfinished_history_cannot_be_replayed() -> None:
    doc = load("linear-context")
    assert doc["events"][-1]["kind"] == "execution_finished"
    with pytest.raises(ExecutionError, match=r"is still running; replay it once it has finished"):
        replay(events_of(doc)[:-1])


def test_an_unknown_checkpoint_is_rejected_listing_the_steps() -> None:
    doc = load("linear-context")
    with pytest.raises(ExecutionError, match=r"step 'secnod' is not a step of execution exe-.*"
                                             r"\(steps: first, second, third, summary\)"):
        replay(events_of(doc), from_step="secnod")


@pytest.mark.parametrize("cut", [slice(0, 0), slice(1, None), slice(2, None)], ids=["empty", "no-submit", "tail"])
def test_a_history_without_its_submission_is_rejected(cut: slice) -> None:
    events = events_of(load("linear-context"))[cut]
    with pytest.raises(ExecutionError, match="a replay needs a history that starts with execution_submitted"):
        replay(events)


def test_a_garbled_submission_is_rejected_clearly() -> None:
    events = events_of(load("linear-context"))
    garbled = [Event(events[0].execution_id, 1, EventKind.SUBMITTED, events[0].ts, None, None, {}), *events[1:]]
    with pytest.raises(ExecutionError):
        replay(garbled)


# -- runs of the engine ------------------------------------------------------------------------


def dag_sop(deps: dict[int, list[int]], ok: list[bool]) -> str:
    steps = []
    for i, ds in deps.items():
        upstream = "${{ " + " ~ '+' ~ ".join(f"steps.s{d}.output" for d in ds) + " }}" if ds else None
        steps.append({"id": f"s{i}", "uses": f"{H}:chain", "depends_on": [f"s{d}" for d in ds],
                      "with": {"name": f"s{i}", "ok": ok[i], "upstream": upstream}})
    return json.dumps({"sop": "replay-dag", "defaults": {"retry": {"max_attempts": 1}, "timeout_s": 60,
                                                         "resources": {"cpu": 0.25}}, "steps": steps})


@given(dags(max_steps=5), st.data())
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_dag_run_replays_exactly_whole_and_from_any_step(inproc, dag, data) -> None:
    """For any DAG of steps that succeed or fail, run on the in-process inproc: a whole replay and a
    replay from any step are exact."""
    deps, ok = dag
    eid = inproc.submit(dag_sop(deps, ok))
    view = inproc.wait(eid, timeout=60)
    assert view.status.terminal

    whole = inproc.replay(eid)
    assert whole.deterministic, whole.render()
    assert whole.handlers_run == 0
    assert whole.replayed_status == view.status.value

    step = data.draw(st.sampled_from(sorted(view.steps)), label="from_step")
    partial = inproc.replay(eid, from_step=step)
    assert partial.deterministic, partial.render()
    assert partial.rerun[0] == step
    ran = [sid for sid in partial.rerun if view.steps[sid].attempts > 0]  # not halted below a failure
    assert partial.handlers_run == len(ran)


def test_an_exported_run_imported_elsewhere_replays_exactly(inproc, tmp_path: Path) -> None:
    definition = load("linear-context")["events"][0]["data"]["request"]["definition"]
    eid = inproc.submit(json.dumps(definition), {"name": "grace"})
    assert inproc.wait(eid, timeout=60).status.value == "completed"

    text = dumps_history(inproc.export(eid))
    log = SqliteEventLog(tmp_path / "elsewhere.db")
    try:
        assert import_history(log, json.loads(text)) == eid
        events = log.read(eid)
    finally:
        log.close()

    assert events == inproc.history(eid)
    for from_step in (None, "second"):
        report = replay(events, from_step)
        assert report.deterministic, report.render()
    assert outcome_event(json.loads(text), "first")["data"]["output"]["label"] == "grace"
