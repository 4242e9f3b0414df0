"""``sopflow history``, ``export``, ``import``, ``replay`` and ``decide`` as a user runs them, without Ray.

Every command here works on a SQLite state file (``--state``) or an exported
``.json`` file directly; the state file is built by importing the saved
histories in ``tests/histories/``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from runtime.cli import main
from runtime.events import EVENT_SCHEMA
from runtime.eventlog import SqliteEventLog
from runtime.history import import_history

HISTORIES = Path(__file__).resolve().parents[1] / "histories"
LINEAR = HISTORIES / "linear-context.json"
FANOUT = HISTORIES / "fanout-retry.json"
NONDET = HISTORIES / "nondeterministic.json"


def execution_id(path: Path) -> str:
    return json.loads(path.read_text())["execution"]["id"]


@pytest.fixture(scope="module")
def state(tmp_path_factory) -> str:
    """A state file holding every saved history."""
    path = tmp_path_factory.mktemp("cli-log") / "state.db"
    log = SqliteEventLog(path)
    try:
        for saved in sorted(HISTORIES.glob("*.json")):
            import_history(log, json.loads(saved.read_text()))
    finally:
        log.close()
    return str(path)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def no_traceback(result) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output


# -- history -------------------------------------------------------------------------------------


def test_history_prints_one_line_per_event_in_order(runner: CliRunner, state: str) -> None:
    result = runner.invoke(main, ["history", execution_id(FANOUT), "--state", state])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == len(json.loads(FANOUT.read_text())["events"])
    assert lines[0].endswith("#1 execution_submitted")
    assert any("step_failed fetch (attempt 1): [transient] ConnectionError" in line for line in lines)
    assert any("retry_scheduled fetch (attempt 2)" in line for line in lines)
    assert any("step_skipped rare: condition is false" in line for line in lines)
    assert lines[-1].endswith("execution_finished: completed")


def test_history_as_json_is_one_event_object_per_line(runner: CliRunner, state: str) -> None:
    result = runner.invoke(main, ["history", execution_id(LINEAR), "--state", state, "--format", "json"])
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.output.splitlines()]
    saved = json.loads(LINEAR.read_text())["events"]
    assert [e["seq"] for e in events] == list(range(1, len(saved) + 1))
    assert [(e["kind"], e["step"], e["attempt"]) for e in events] == \
        [(e["kind"], e["step"], e["attempt"]) for e in saved]
    assert events[3]["data"]["output"] == saved[3]["data"]["output"]


def test_history_of_an_unknown_execution_says_so(runner: CliRunner, state: str) -> None:
    result = runner.invoke(main, ["history", "exe-nope", "--state", state])
    assert result.exit_code != 0
    assert f"no execution 'exe-nope' in {state}" in result.output
    no_traceback(result)


def test_a_missing_state_file_is_named(runner: CliRunner, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "state.db"
    for command in (["history", "exe-x"], ["export", "exe-x"], ["replay", "exe-x"]):
        result = runner.invoke(main, [*command, "--state", str(missing)])
        assert result.exit_code != 0, command
        assert f"state file {missing} does not exist" in result.output, command
        no_traceback(result)
    assert not missing.exists()  # reading never creates a state file


# -- export / import -----------------------------------------------------------------------------


@pytest.mark.parametrize("saved", [LINEAR, FANOUT, NONDET], ids=lambda p: p.stem)
def test_export_gives_back_the_saved_history_in_a_stable_order(runner: CliRunner, state: str,
                                                               saved: Path) -> None:
    """The saved histories were recorded with event schema 1 (no ``schema`` field): they come
    back as the same history at this sopflow's schema, upcast, in the same stable order."""
    first = runner.invoke(main, ["export", execution_id(saved), "--state", state])
    again = runner.invoke(main, ["export", execution_id(saved), "--state", state])
    assert first.exit_code == 0, first.output
    exported, recorded = json.loads(first.output), json.loads(saved.read_text())
    assert all("schema" not in e for e in recorded["events"])
    assert all(e.pop("schema") == EVENT_SCHEMA for e in exported["events"])
    assert exported == recorded
    assert first.output == again.output
    assert list(json.loads(first.output)) == ["format", "execution", "events"]
    assert list(json.loads(first.output)["events"][0]) == ["execution_id", "seq", "kind", "ts", "step",
                                                             "attempt", "data", "schema"]


def test_export_of_an_unknown_execution_says_so(runner: CliRunner, state: str) -> None:
    result = runner.invoke(main, ["export", "exe-nope", "--state", state])
    assert result.exit_code != 0
    assert "no execution 'exe-nope' in the state store" in result.output
    no_traceback(result)


def test_import_prints_the_id_and_refuses_to_import_twice(runner: CliRunner, tmp_path: Path) -> None:
    target = str(tmp_path / "other.db")
    eid = execution_id(LINEAR)

    first = runner.invoke(main, ["import", str(LINEAR), "--state", target])
    assert first.exit_code == 0, first.output
    assert first.output.strip() == eid

    second = runner.invoke(main, ["import", str(LINEAR), "--state", target])
    assert second.exit_code != 0
    assert f"execution {eid} already exists in the state store" in second.output
    assert "--replace" in second.output
    no_traceback(second)

    third = runner.invoke(main, ["import", str(LINEAR), "--state", target, "--replace"])
    assert third.exit_code == 0, third.output
    exported = json.loads(runner.invoke(main, ["export", eid, "--state", target]).output)
    for e in exported["events"]:
        assert e.pop("schema") == EVENT_SCHEMA  # upcast from the saved schema-1 history
    assert exported == json.loads(LINEAR.read_text())


def test_import_refuses_a_history_that_had_not_finished(runner: CliRunner, tmp_path: Path) -> None:
    doc = json.loads(LINEAR.read_text())
    doc["events"].pop()  # execution_finished
    doc["execution"].update(status="running", terminal=False, ended_at=None, version=len(doc["events"]))
    unfinished = tmp_path / "unfinished.json"
    unfinished.write_text(json.dumps(doc))
    result = runner.invoke(main, ["import", str(unfinished), "--state", str(tmp_path / "s.db")])
    assert result.exit_code != 0
    assert "had not finished when it was exported" in result.output
    no_traceback(result)


def test_import_of_an_invalid_history_names_the_field(runner: CliRunner, tmp_path: Path) -> None:
    doc = json.loads(LINEAR.read_text())
    doc["events"][2]["seq"] = 7
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    result = runner.invoke(main, ["import", str(bad), "--state", str(tmp_path / "s.db")])
    assert result.exit_code != 0
    assert "invalid history: events[2].seq: expected 3" in result.output
    no_traceback(result)


def test_import_of_a_history_with_a_hostile_execution_id_names_file_and_field_and_writes_nothing(
        runner: CliRunner, tmp_path: Path) -> None:
    state = tmp_path / "s.db"
    assert runner.invoke(main, ["import", str(LINEAR), "--state", str(state)]).exit_code == 0
    before = SqliteEventLog(state).stats()
    doc = json.loads(LINEAR.read_text())
    hostile = "../x'; DROP TABLE events; --"
    doc["execution"]["id"] = hostile
    for event in doc["events"]:
        event["execution_id"] = hostile
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    result = runner.invoke(main, ["import", str(bad), "--state", str(state)])
    assert result.exit_code != 0
    assert f"{bad}: invalid history: execution.id: expected an execution id (exe-<12 hex>-<8 hex>)" in result.output
    no_traceback(result)
    log = SqliteEventLog(state)
    assert log.stats() == before and log.get(hostile) is None
    log.close()


# -- replay ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("saved", [LINEAR, FANOUT, NONDET], ids=lambda p: p.stem)
def test_replay_of_a_saved_file_exits_0_when_it_matches(runner: CliRunner, saved: Path) -> None:
    result = runner.invoke(main, ["replay", str(saved)])
    assert result.exit_code == 0, result.output
    assert "identical: every step and the result match the recording" in result.output
    assert "0 handler run(s)" in result.output


def test_replay_from_a_checkpoint_of_a_saved_file(runner: CliRunner) -> None:
    result = runner.invoke(main, ["replay", str(LINEAR), "--from", "third"])
    assert result.exit_code == 0, result.output
    assert "from step 'third'" in result.output and "ran again: third, summary" in result.output


def test_replay_of_a_non_deterministic_step_exits_1_and_says_diverged(runner: CliRunner) -> None:
    result = runner.invoke(main, ["replay", str(NONDET), "--from", "draw"])
    assert result.exit_code == 1
    assert "DIVERGED in 2 step(s): draw, use" in result.output
    assert "non-deterministic handler" in result.output
    no_traceback(result)


def test_replay_by_id_from_the_state_file_as_json(runner: CliRunner, state: str) -> None:
    result = runner.invoke(main, ["replay", execution_id(FANOUT), "--state", state, "--format", "json",
                                  "--from", "left"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["deterministic"] is True
    assert report["rerun"] == ["left", "join"] and report["handlers_run"] == 2

    diverged = runner.invoke(main, ["replay", execution_id(NONDET), "--state", state, "--format", "json",
                                    "--from", "draw"])
    assert diverged.exit_code == 1
    report = json.loads(diverged.output)
    assert report["deterministic"] is False
    assert {d["step"] for d in report["diffs"]} == {"draw", "use"}


def test_replay_from_an_unknown_step_lists_the_steps(runner: CliRunner) -> None:
    result = runner.invoke(main, ["replay", str(LINEAR), "--from", "nope"])
    assert result.exit_code != 0
    assert "step 'nope' is not a step of execution" in result.output
    assert "(steps: first, second, third, summary)" in result.output
    no_traceback(result)


def test_replay_of_an_unfinished_or_non_json_file_says_why(runner: CliRunner, tmp_path: Path) -> None:
    doc = json.loads(LINEAR.read_text())
    doc["events"].pop()
    unfinished = tmp_path / "unfinished.json"
    unfinished.write_text(json.dumps(doc))
    result = runner.invoke(main, ["replay", str(unfinished)])
    assert result.exit_code != 0
    assert "is still running; replay it once it has finished" in result.output
    no_traceback(result)

    garbage = tmp_path / "garbage.json"
    garbage.write_text("not json {")
    result = runner.invoke(main, ["replay", str(garbage)])
    assert result.exit_code != 0
    assert f"{garbage} is not JSON: line 1 column 1" in result.output
    no_traceback(result)

    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    result = runner.invoke(main, ["replay", str(empty)])
    assert result.exit_code != 0
    assert "invalid history: format: expected 'sopflow.history/1'" in result.output
    no_traceback(result)


@pytest.mark.parametrize("events", [[{"seq": 1}], "nope", [{"execution_id": "x", "seq": 1, "kind": "bogus",
                                                             "ts": 1.0}]], ids=["missing-fields", "not-a-list",
                                                                                "unknown-kind"])
def test_replay_of_a_malformed_history_file_names_the_problem(runner: CliRunner, tmp_path: Path,
                                                              events) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "sopflow.history/1", "events": events}))
    result = runner.invoke(main, ["replay", str(bad)])
    assert result.exit_code != 0
    no_traceback(result)
    assert "invalid history" in result.output or "events" in result.output


def test_replay_of_a_missing_json_file_says_the_file_is_missing(runner: CliRunner, state: str,
                                                                 tmp_path: Path) -> None:
    missing = tmp_path / "run.json"
    result = runner.invoke(main, ["replay", str(missing), "--state", state])
    assert result.exit_code != 0
    assert "does not exist" in result.output and str(missing) in result.output


# -- decide ---------------------------------------------------------------------------------------


def test_decide_without_a_decision_is_a_usage_error(runner: CliRunner) -> None:
    result = runner.invoke(main, ["decide", "exe-x", "charge"])
    assert result.exit_code == 2
    assert "say what to do: --rerun, --succeed, --fail or --skip" in result.output


def test_decide_with_output_that_is_not_json_is_a_usage_error(runner: CliRunner) -> None:
    result = runner.invoke(main, ["decide", "exe-x", "charge", "--succeed", "--output", "{nope"])
    assert result.exit_code == 2
    assert "--output must be JSON" in result.output


def test_list_with_an_unknown_status_is_a_usage_error_not_a_traceback(runner: CliRunner) -> None:
    from runtime.cli import main

    result = runner.invoke(main, ["list", "--status", "bogus"])
    assert result.exit_code == 2  # before: a traceback from the monitor
    assert "Invalid value for '--status'" in result.output and "running" in result.output
    assert "Traceback" not in result.output
