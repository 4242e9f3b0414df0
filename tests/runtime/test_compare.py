"""One SOP in both modes: the diff (pure), ``Engine.compare`` in process and on Ray, ``sopflow compare``
and ``sopflow run --mode``.

The CLI runs through click's ``CliRunner`` with ``_connect`` answering the test's engine (the
in-process one, or the shared Ray one), as the other CLI tests do.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.compare import ABSENT, Comparison, Difference, RunResult, compare_results, differences, same
from runtime.errors import ExecutionTimeout, SubmissionError
from runtime.status import ExecutionStatus, StepStatus

# A checklist: `a` echoes the mode it runs in (visible to expressions as `execution.mode`),
# `big` has a `when` that is false for n=3, `small` one that is true.
CHECKLIST = """
sop: both-modes
version: "1"
inputs:
  n: {type: integer, default: 3}
  say: {type: string, default: hello}
steps:
  - id: a
    run: "echo {echo}"
  - id: big
    when: ${{ inputs.n > 5 }}
    run: "echo big"
  - id: small
    when: ${{ inputs.n < 5 }}
    run: "echo small"
    depends_on: [a]
outputs:
  said: ${{ steps.a.output.stdout | trim }}
  small: ${{ steps.small.output.stdout | trim }}
"""
SAME = CHECKLIST.replace("{echo}", "${{ inputs.say }}")
PER_MODE = CHECKLIST.replace("{echo}", "${{ execution.mode }}")
FORK = """
sop: forked
version: "1"
steps:
  - {id: a, run: "echo a"}
  - {id: b, run: "echo b", depends_on: [a]}
  - {id: c, run: "echo c", depends_on: [a]}
"""
FORK_REASON = ("agent_centric needs a checklist an agent can follow in order, but step 'a' fans out to 2 steps; "
               "use mode: system_design (or auto) for branching dependencies")


# -- the diff (pure) ----------------------------------------------------------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                                 max_size=3), max_leaves=8)
STEP_IDS = st.sampled_from(["a", "b", "c", "d"])
STATUSES = st.sampled_from([s.value for s in StepStatus])


@st.composite
def results(draw, mode: str = "system_design") -> RunResult:
    steps = draw(st.dictionaries(STEP_IDS, STATUSES, max_size=4))
    outputs = {sid: draw(JSON) for sid, status in steps.items() if status == StepStatus.SUCCEEDED}
    return RunResult(draw(st.sampled_from(["exe-000000000001-00000001", "exe-000000000002-00000002"])), mode,
                     draw(st.sampled_from([s.value for s in ExecutionStatus if s.terminal])),
                     draw(st.dictionaries(st.sampled_from(["x", "y", "z"]), JSON, max_size=3)), steps, outputs)


@settings(max_examples=300, deadline=None)
@given(results(), results("agent_centric"))
def test_equivalent_exactly_when_there_is_no_difference_and_the_diff_is_symmetric(first, second) -> None:
    found = differences(first, second)
    comparison = compare_results("s", first, second)
    assert comparison.equivalent == (not found) == (not comparison.differences)
    assert compare_results("s", second, first).equivalent == comparison.equivalent
    mirrored = [Difference(d.what, d.where, d.agent_centric, d.system_design) for d in differences(second, first)]
    assert sorted(map(repr, mirrored)) == sorted(map(repr, found))
    assert not differences(first, first) and compare_results("s", first, first).equivalent
    if found:
        assert "not equivalent" in str(comparison) and all(d.where in str(comparison) for d in found)
    else:
        assert str(comparison).endswith("\nequivalent")


def test_same_is_json_equality() -> None:
    assert same(1, 1.0) and same([1, [2]], (1, (2,))) and same({"a": 1, "b": 2}, {"b": 2, "a": 1})
    assert same(float("nan"), float("nan")) and same(-0.0, 0) and same([math.inf], [float("inf")])
    assert not same(True, 1) and not same(None, ABSENT) and not same("1", 1) and not same({}, [])


def test_an_agents_skip_and_a_dags_false_condition_compare_equal() -> None:
    dag = RunResult("exe-000000000001-00000001", "system_design", "completed", {"x": 1},
                    {"a": "succeeded", "b": "skipped"}, {"a": {"n": 1}})
    agent = RunResult("exe-000000000002-00000002", "agent_centric", "completed", {"x": 1.0},
                      {"a": "succeeded", "b": "skipped"}, {"a": {"n": 1}})
    assert compare_results("s", dag, agent).equivalent


def test_the_differences_say_what_where_and_both_values() -> None:
    dag = RunResult("exe-000000000001-00000001", "system_design", "completed", {"x": 1, "gone": "g"},
                    {"a": "succeeded", "b": "skipped", "c": "succeeded"}, {"a": 1, "c": "same"})
    agent = RunResult("exe-000000000002-00000002", "agent_centric", "partially_completed", {"x": 2},
                      {"a": "succeeded", "b": "failed", "c": "succeeded", "d": "skipped"}, {"a": 3, "c": "same"})
    comparison = compare_results("s", dag, agent)
    assert [(d.what, d.where, d.system_design, d.agent_centric) for d in comparison.differences] == [
        ("status", "status", "completed", "partially_completed"),
        ("output", "outputs.x", 1, 2),
        ("output", "outputs.gone", "g", ABSENT),
        ("step_output", "steps.a.output", 1, 3),
        ("step_status", "steps.b.status", "skipped", "failed"),
        ("step_status", "steps.d.status", ABSENT, "skipped")]
    assert str(comparison).splitlines()[:6] == [
        "system_design  exe-000000000001-00000001  completed",
        "agent_centric  exe-000000000002-00000002  partially_completed",
        "not equivalent: 6 differences",
        "status", '  - system_design: "completed"', '  + agent_centric: "partially_completed"']
    assert "outputs.gone\n  - system_design: \"g\"\n  + agent_centric: (absent)" in str(comparison)
    data = comparison.to_dict()
    assert data["equivalent"] is False and data["agent_centric"] == {"id": "exe-000000000002-00000002",
                                                                      "status": "partially_completed"}
    assert data["differences"][2] == {"what": "output", "where": "outputs.gone", "system_design": "g",
                                      "agent_centric": None, "absent": ["agent_centric"]}


def test_equivalent_is_derived_never_given() -> None:
    with pytest.raises(TypeError):
        Comparison("s", "a", "b", [], equivalent=False)  # type: ignore[call-arg]
    assert Comparison("s", "a", "b").equivalent


# -- Engine.compare, in process -----------------------------------------------------------------------


def test_a_checklist_with_a_false_and_a_true_condition_is_equivalent_in_both_modes(inproc) -> None:
    comparison = inproc.compare(SAME, {"n": 3}, timeout=60)
    assert comparison.equivalent, str(comparison)
    assert comparison.differences == []
    assert comparison.system_design.steps == comparison.agent_centric.steps == {
        "a": "succeeded", "big": "skipped", "small": "succeeded"}
    assert comparison.agent_centric.outputs == {"said": "hello", "small": "small"}
    sd, ac = inproc.status(comparison.system_design_id), inproc.status(comparison.agent_centric_id)
    assert (sd.mode, ac.mode) == ("system_design", "agent_centric")
    assert ac.agent is not None and sd.agent is None
    assert [d["decision"] for d in ac.decisions if d["step"] == "big"] == ["skip"]  # the agent decided it


def test_a_failure_and_the_step_it_halts_end_the_same_in_both_modes(inproc) -> None:
    failing = """
sop: failing
version: "1"
steps:
  - {id: ok, run: "echo ok"}
  - {id: bad, run: "exit 3", retry: {max_attempts: 1}}
  - {id: after, run: "echo after", depends_on: [bad]}
"""
    comparison = inproc.compare(failing, timeout=60)
    assert comparison.equivalent, str(comparison)
    assert comparison.agent_centric.status == "partially_completed"
    assert comparison.agent_centric.steps == {"ok": "succeeded", "bad": "failed", "after": "upstream_failed"}


def test_a_step_that_behaves_differently_per_mode_makes_them_differ(inproc) -> None:
    comparison = inproc.compare(PER_MODE, timeout=60)
    assert not comparison.equivalent
    assert [(d.where, d.system_design, d.agent_centric) for d in comparison.differences] == [
        ("outputs.said", "system_design", "agent_centric"),
        ("steps.a.output", {"stdout": "system_design\n", "stderr": "", "exit_code": 0},
         {"stdout": "agent_centric\n", "stderr": "", "exit_code": 0})]


def test_an_sop_that_fits_one_mode_only_is_refused_saying_why_and_nothing_runs(inproc, sop_file) -> None:
    path = sop_file(FORK)
    with pytest.raises(SubmissionError) as caught:
        inproc.compare(path)
    assert str(caught.value) == (f"cannot compare {path} in both modes: it runs only as system_design, "
                                 f"not as agent_centric: {FORK_REASON}")
    assert list(inproc.list()) == []


def test_inputs_that_do_not_fit_submit_neither_run(inproc) -> None:
    with pytest.raises(SubmissionError, match="'n'"):
        inproc.compare(SAME, {"n": "many"})
    assert list(inproc.list()) == []


def test_a_comparison_that_outlasts_its_timeout_names_it(inproc) -> None:
    slow = "sop: slow\nversion: '1'\nsteps:\n  - {id: nap, run: 'sleep 30'}\n"
    with pytest.raises(ExecutionTimeout, match=r"after 0\.2 s"):
        inproc.compare(slow, timeout=0.2)
    for view in inproc.list():
        inproc.cancel(view.id, force=True)


# -- the CLI, in process ------------------------------------------------------------------------------


@pytest.fixture
def cli(monkeypatch):
    """Run ``sopflow`` with its commands connected to ``engine`` (None: connecting is a test failure)."""
    import runtime._cli_exec

    def run(engine, *args: str):
        def connect(address, start_if_missing, working_dir=None):
            assert engine is not None, "the command connected to a cluster though it had nothing to run"
            return engine, False

        monkeypatch.setattr(runtime._cli_exec, "_connect", connect)
        monkeypatch.setenv("COLUMNS", "200")
        from runtime.cli import main

        result = CliRunner().invoke(main, list(args))
        assert "Traceback" not in result.output, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
        return result

    return run


def test_compare_prints_both_ids_and_equivalent_and_exits_0(cli, inproc, sop_file) -> None:
    result = cli(inproc, "compare", sop_file(SAME), "--input", "n=3", "-i", "say=hi")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("system_design  exe-") and lines[0].endswith("completed")
    assert lines[1].startswith("agent_centric  exe-") and lines[2] == "equivalent"
    assert {v.mode for v in inproc.list()} == {"system_design", "agent_centric"}


def test_compare_prints_the_diff_and_exits_1_when_the_modes_differ(cli, inproc, sop_file) -> None:
    result = cli(inproc, "compare", sop_file(PER_MODE))
    assert result.exit_code == 1, result.output
    assert "not equivalent: 2 differences\noutputs.said\n  - system_design: \"system_design\"\n" \
           "  + agent_centric: \"agent_centric\"\nsteps.a.output\n" in result.stdout
    data = cli(inproc, "compare", sop_file(PER_MODE), "--format", "json")
    import json

    assert data.exit_code == 1
    doc = json.loads(data.stdout)
    assert doc["equivalent"] is False and [d["where"] for d in doc["differences"]] == [
        "outputs.said", "steps.a.output"]


def test_compare_refuses_an_sop_fitting_one_mode_with_exit_2_before_any_cluster(cli, sop_file) -> None:
    path = sop_file(FORK)
    result = cli(None, "compare", path)
    assert result.exit_code == 2
    assert (f"Error: cannot compare {path} in both modes: it runs only as system_design, not as "
            f"agent_centric: {FORK_REASON}") in result.output


def test_compare_of_an_invalid_sop_or_a_bad_input_is_a_usage_error(cli, inproc, sop_file) -> None:
    bad = cli(None, "compare", sop_file("sop: broken\nsteps: []\n"))
    assert bad.exit_code == 2 and "error" in bad.output
    missing = cli(None, "compare", "no/such/file.yaml")
    assert missing.exit_code == 2
    pair = cli(None, "compare", sop_file(SAME), "--input", "n")
    assert pair.exit_code == 2 and "expected NAME=VALUE, got 'n'" in pair.output
    value = cli(inproc, "compare", sop_file(SAME), "--input", "n=many")
    assert value.exit_code == 2 and "'n'" in value.output
    assert list(inproc.list()) == []


def test_run_with_mode_agent_centric_runs_the_agent_in_process(cli, inproc, sop_file) -> None:
    result = cli(inproc, "run", sop_file(SAME), "--mode", "agent_centric", "--input", "n=7", "--format", "json")
    assert result.exit_code == 0, result.output
    import json

    doc = json.loads(result.stdout)
    assert doc["mode"] == "agent_centric" and doc["status"] == "completed"
    assert {k: s["status"] for k, s in doc["steps"].items()} == {"a": "succeeded", "big": "succeeded",
                                                                 "small": "skipped"}
    assert [(d["step"], d["decision"]) for d in doc["agent"]["decisions"]] == [("big", "run"), ("small", "skip")]


def test_run_refuses_a_mode_that_does_not_fit_with_exit_2_and_the_reason(cli, sop_file) -> None:
    path = sop_file(FORK)
    result = cli(None, "run", path, "--mode", "agent_centric")
    assert result.exit_code == 2
    assert f"Error: cannot run {path} in mode agent_centric: {FORK_REASON}" in result.output


# -- on Ray -------------------------------------------------------------------------------------------


@pytest.mark.ray
def test_compare_on_ray_runs_the_agent_in_a_host_actor_and_matches_the_dag(engine, cli, sop_file) -> None:
    comparison = engine.compare(SAME, {"n": 9}, timeout=120)
    assert comparison.equivalent, str(comparison)
    assert comparison.agent_centric.steps == {"a": "succeeded", "big": "succeeded", "small": "skipped"}
    agent = engine.status(comparison.agent_centric_id).agent
    assert agent["host"] != "local" and agent["model_calls"] >= 2
    differing = engine.compare(PER_MODE, timeout=120)
    assert [d.where for d in differing.differences] == ["outputs.said", "steps.a.output"]
    result = cli(engine, "run", sop_file(SAME), "--mode", "agent_centric", "--format", "json")
    assert result.exit_code == 0, result.output
    assert '"mode": "agent_centric"' in result.stdout
