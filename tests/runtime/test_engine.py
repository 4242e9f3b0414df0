"""The System Design Run end to end: shapes, rules, the API.

The state machine and the client API run on the in-process engine (``inproc``); what is
Ray's (a second client finding the actors, the actors' names, their state file) on the
shared cluster.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from runtime.errors import ExecutionFailed, ExecutionNotFound, SubmissionError
from runtime.events import EventKind
from runtime.status import ExecutionStatus, StepStatus
from sop import SopValidationError
from tests.sop_builders import H, events_of, sop_text


def statuses(view) -> dict[str, str]:
    return {sid: s.status.value for sid, s in view.steps.items()}


# -- shapes --------------------------------------------------------------------------------------


def test_a_linear_sop_runs_its_steps_in_order_and_returns_its_outputs(inproc, sop_file) -> None:
    path = sop_file(sop_text(f"""\
        steps:
          - id: greet
            uses: {H}:echo
            with: {{value: "hello, ${{{{ inputs.name }}}}"}}
          - id: shout
            uses: {H}:echo
            depends_on: [greet]
            with: {{value: "${{{{ steps.greet.output | upper }}}}!"}}
          - id: count
            depends_on: [shout]
            run: "printf '%s' '${{{{ steps.shout.output }}}}' | wc -c"
        outputs:
          greeting: "${{{{ steps.shout.output }}}}"
          letters: "${{{{ steps.count.output.stdout | trim | int }}}}"
        """, name="linear", inputs="inputs:\n  name: {type: string, default: world}\n"))
    eid = inproc.submit(path, {"name": "ray"})
    view = inproc.wait(eid, timeout=60)

    assert view.status == ExecutionStatus.COMPLETED
    assert statuses(view) == {"greet": "succeeded", "shout": "succeeded", "count": "succeeded"}
    assert all(s.attempts == 1 for s in view.steps.values())
    started = [e.step for e in events_of(inproc, eid) if e.kind == EventKind.STEP_STARTED]
    assert started == ["greet", "shout", "count"]
    assert view.steps["greet"].ended_at <= view.steps["shout"].started_at
    assert view.steps["shout"].ended_at <= view.steps["count"].started_at
    result = inproc.result(eid)
    assert result["outputs"] == {"greeting": "HELLO, RAY!", "letters": 11}
    assert result["steps"]["greet"] == "hello, ray"


def test_fan_out_steps_run_in_parallel_and_the_fan_in_step_sees_every_output(
        inproc, sop_file, tmp_path: Path) -> None:
    barrier_dir = tmp_path / "barrier"
    probes = "".join(f"""
  - id: probe_{r}
    uses: {H}:barrier
    depends_on: [start]
    with: {{directory: "{barrier_dir}", name: "{r}", parties: 3}}""" for r in ("eu", "us", "ap"))
    path = sop_file(sop_text(f"""\
steps:
  - id: start
    uses: {H}:echo
    with: {{value: go}}{probes}
  - id: merge
    uses: {H}:echo
    depends_on: [probe_eu, probe_us, probe_ap]
    with:
      value: ["${{{{ steps.probe_eu.output }}}}", "${{{{ steps.probe_us.output }}}}", "${{{{ steps.probe_ap.output }}}}"]
outputs:
  merged: "${{{{ steps.merge.output }}}}"
""", name="fan"))
    eid = inproc.submit(path)
    view = inproc.wait(eid, timeout=60)

    assert view.status == ExecutionStatus.COMPLETED, view.errors
    assert inproc.result(eid)["outputs"]["merged"] == ["eu", "us", "ap"]
    probe_views = [view.steps[f"probe_{r}"] for r in ("eu", "us", "ap")]
    # every probe started before any probe ended: they overlapped in time (the barrier
    # handler only returns once all three are running at once)
    assert max(p.started_at for p in probe_views) < min(p.ended_at for p in probe_views)
    assert all(view.steps["start"].ended_at <= p.started_at for p in probe_views)
    assert all(p.ended_at <= view.steps["merge"].started_at for p in probe_views)


@pytest.mark.parametrize("go, expected", [(True, "succeeded"), (False, "skipped")])
def test_a_conditional_step_runs_only_when_its_condition_holds(inproc, sop_file, go, expected) -> None:
    path = sop_file(sop_text(f"""\
        steps:
          - id: check
            uses: {H}:echo
            with: {{value: {{down: ["ap"]}}}}
          - id: page
            uses: {H}:echo
            depends_on: [check]
            when: "inputs.go and steps.check.output.down | length > 0"
            with: {{value: paged}}
          - id: after_page
            uses: {H}:echo
            depends_on: [page]
            with: {{value: done}}
          - id: report
            uses: {H}:echo
            depends_on: [check]
            with: {{value: reported}}
        """, name="cond", inputs="inputs:\n  go: {type: boolean, required: true}\n"))
    eid = inproc.submit(path, {"go": go})
    view = inproc.wait(eid, timeout=60)

    assert view.status == ExecutionStatus.COMPLETED
    assert view.steps["page"].status.value == expected
    # a skipped step skips its all_success dependents too; the sibling branch is unaffected
    assert view.steps["after_page"].status.value == expected
    assert view.steps["report"].status == StepStatus.SUCCEEDED
    if not go:
        skipped = [e for e in events_of(inproc, eid) if e.kind == EventKind.STEP_SKIPPED and e.step == "page"]
        assert "condition is false" in skipped[0].data["reason"]
        assert view.steps["page"].attempts == 0


@pytest.mark.parametrize("rule, after_failure, after_skip", [
    ("all_success", "upstream_failed", "skipped"),
    ("all_done", "succeeded", "succeeded"),
    ("one_success", "succeeded", "succeeded"),
    ("none_failed", "upstream_failed", "succeeded"),
])
def test_trigger_rules_decide_what_runs_after_a_failed_or_skipped_upstream(
        inproc, sop_file, rule, after_failure, after_skip) -> None:
    path = sop_file(sop_text(f"""\
        steps:
          - id: ok
            uses: {H}:echo
            with: {{value: 1}}
          - id: broken
            uses: {H}:fail
            with: {{kind: permanent}}
          - id: never
            uses: {H}:echo
            when: "false"
          - id: after_failure
            uses: {H}:echo
            depends_on: [ok, broken]
            trigger_rule: {rule}
            with: {{value: ran}}
          - id: after_skip
            uses: {H}:echo
            depends_on: [ok, never]
            trigger_rule: {rule}
            with: {{value: ran}}
        """, name=f"rule-{rule.replace('_', '-')}"))
    eid = inproc.submit(path)
    view = inproc.wait(eid, timeout=60)

    assert view.steps["broken"].status == StepStatus.FAILED
    assert view.steps["never"].status == StepStatus.SKIPPED
    assert view.steps["after_failure"].status.value == after_failure
    assert view.steps["after_skip"].status.value == after_skip
    assert view.status == ExecutionStatus.PARTIALLY_COMPLETED


# -- shell steps ----------------------------------------------------------------------------------


def test_a_shell_step_captures_stdout_stderr_and_exit_code(inproc, sop_file) -> None:
    path = sop_file(sop_text("""\
        steps:
          - id: sh
            run: "echo to-out; echo to-err >&2; echo $GREETING"
            env: {GREETING: "${{ inputs.who }}"}
        outputs:
          out: "${{ steps.sh.output.stdout }}"
        """, name="shell-ok", inputs="inputs:\n  who: {type: string, default: hi}\n"))
    eid = inproc.submit(path)
    result = inproc.result(eid, timeout=60)
    assert result["steps"]["sh"] == {"stdout": "to-out\nhi\n", "stderr": "to-err\n", "exit_code": 0}
    assert result["outputs"]["out"] == "to-out\nhi\n"


# -- the client API -------------------------------------------------------------------------------


def test_result_of_a_failed_execution_raises_execution_failed_naming_the_step(inproc, sop_file) -> None:
    path = sop_file(sop_text(f"""\
        steps:
          - id: doomed
            uses: {H}:fail
            with: {{message: "bad invoice 42", kind: value}}
        """, name="doomed"))
    eid = inproc.submit(path)
    with pytest.raises(ExecutionFailed) as info:
        inproc.result(eid, timeout=60)
    assert info.value.status == "failed"
    assert info.value.execution_id == eid
    assert "doomed" in info.value.errors and "bad invoice 42" in info.value.errors["doomed"]
    assert "bad invoice 42" in str(info.value)


def test_status_of_an_unknown_execution_raises_execution_not_found(inproc) -> None:
    missing = f"no-such-{uuid.uuid4().hex[:8]}"
    with pytest.raises(ExecutionNotFound) as info:
        inproc.status(missing)
    assert missing in str(info.value)
    with pytest.raises(ExecutionNotFound):
        inproc.wait(missing, timeout=1)
    with pytest.raises(ExecutionNotFound):
        list(inproc.events(missing, follow=False))
    with pytest.raises(ExecutionNotFound):
        inproc.cancel(missing)


def test_submitting_without_a_required_input_names_the_input(inproc, sop_file) -> None:
    path = sop_file(sop_text(f"""\
        steps:
          - id: a
            uses: {H}:echo
            with: {{value: "${{{{ inputs.account_id }}}}"}}
        """, name="needs-input", inputs="inputs:\n  account_id: {type: string, required: true}\n"))
    with pytest.raises(SubmissionError, match="account_id"):
        inproc.submit(path, {})
    with pytest.raises(SubmissionError, match="accont_id"):
        inproc.submit(path, {"account_id": "x", "accont_id": "typo"})


def test_submit_many_starts_one_execution_per_inputs_in_one_call(inproc, sop_file) -> None:
    path = sop_file(sop_text(f"""\
        steps:
          - id: a
            uses: {H}:echo
            with: {{value: "${{{{ inputs.n * 2 }}}}"}}
        """, name="many", inputs="inputs:\n  n: {type: integer, required: true}\n"))
    ids = inproc.submit_many(path, [{"n": n} for n in range(5)])
    assert len(set(ids)) == 5
    assert [inproc.result(i, timeout=60)["steps"]["a"] for i in ids] == [0, 2, 4, 6, 8]
    before = {v.id for v in inproc.list(sop="many", limit=100_000)}
    with pytest.raises(SubmissionError, match="'n'"):  # one bad inputs mapping: nothing is submitted
        inproc.submit_many(path, [{"n": 1}, {}])
    assert {v.id for v in inproc.list(sop="many", limit=100_000)} == before
    keys = [f"batch-{uuid.uuid4().hex}-{n}" for n in range(2)]
    assert inproc.submit_many(path, [{"n": 1}, {"n": 2}], idempotency_keys=keys) == \
        inproc.submit_many(path, [{"n": 1}, {"n": 2}], idempotency_keys=keys)


def test_submitting_an_invalid_sop_raises_sop_validation_error_listing_the_problem(inproc, sop_file) -> None:
    path = sop_file(sop_text(f"""\
        steps:
          - id: a
            uses: {H}:echo
          - id: b
            uses: {H}:echo
            depends_on: [pack]
        """, name="invalid"))
    before = {v.id for v in inproc.list(limit=100_000)}
    with pytest.raises(SopValidationError) as info:
        inproc.submit(path)
    assert "pack" in str(info.value)
    assert any("pack" in p.message for p in info.value.errors)
    assert {v.id for v in inproc.list(limit=100_000)} == before


def test_resubmitting_with_the_same_idempotency_key_returns_the_same_execution(inproc, sop_file) -> None:
    path = sop_file(sop_text(f"""\
        steps:
          - id: a
            uses: {H}:echo
            with: {{value: once}}
        """, name="idem"))
    key = f"order-{uuid.uuid4().hex}"
    first = inproc.submit(path, idempotency_key=key)
    second = inproc.submit(path, idempotency_key=key)
    other = inproc.submit(path, idempotency_key=f"{key}-other")
    assert first == second
    assert other != first
    inproc.wait(first, timeout=60)
    inproc.wait(other, timeout=60)
    assert sum(1 for v in inproc.list(sop="idem", limit=100_000) if v.id == first) == 1


@pytest.mark.ray
def test_a_second_client_sees_the_same_executions(engine, sop_file) -> None:
    from runtime import Engine
    from tests.conftest import NAMESPACE

    path = sop_file(sop_text(f"""\
        steps:
          - id: a
            uses: {H}:echo
            with: {{value: shared}}
        """, name="shared"))
    eid = engine.submit(path)
    engine.wait(eid, timeout=60)

    other = Engine(namespace=NAMESPACE)
    view = other.status(eid)
    assert view.id == eid and view.status == ExecutionStatus.COMPLETED
    assert eid in {v.id for v in other.list(sop="shared")}
    assert eid in {v.id for v in other.list(status="completed")}
    assert other.result(eid)["steps"]["a"] == "shared"
    assert [e.kind for e in other.events(eid, follow=False)] == [e.kind for e in events_of(engine, eid)]


def test_events_follow_an_execution_to_its_end_in_order(inproc, sop_file) -> None:
    path = sop_file(sop_text(f"""\
        steps:
          - id: a
            uses: {H}:echo
            with: {{value: 1}}
          - id: b
            uses: {H}:echo
            depends_on: [a]
            with: {{value: 2}}
        """, name="follow"))
    eid = inproc.submit(path)
    events = list(inproc.events(eid, follow=True, poll_s=0.5))  # ends at execution_finished
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[0].kind == EventKind.SUBMITTED and events[-1].kind == EventKind.FINISHED
    assert events[-1].data["status"] == "completed"


# -- secrets ---------------------------------------------------------------------------------------


def test_a_secret_input_never_appears_in_events_even_in_errors_and_outputs(inproc, sop_file) -> None:
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    path = sop_file(sop_text(f"""\
        steps:
          - id: use_it
            uses: {H}:return_secret
            with: {{token: "${{{{ inputs.token }}}}"}}
          - id: leak
            uses: {H}:leak_secret
            with: {{token: "${{{{ inputs.token }}}}"}}
          - id: shell_leak
            run: "echo token=$TOKEN; echo bad token $TOKEN >&2; exit 3"
            env: {{TOKEN: "${{{{ inputs.token }}}}"}}
            retry: {{max_attempts: 1}}
        """, name="secret", inputs="inputs:\n  token: {type: string, secret: true, required: true}\n"))
    eid = inproc.submit(path, {"token": secret})
    view = inproc.wait(eid, timeout=60)

    assert view.steps["use_it"].status == StepStatus.SUCCEEDED
    assert view.steps["leak"].status == StepStatus.FAILED
    assert view.steps["shell_leak"].status == StepStatus.FAILED
    dumped = json.dumps([e.to_dict() for e in events_of(inproc, eid)], default=str)
    assert secret not in dumped
    assert "***" in dumped  # redacted, not dropped
    assert secret not in json.dumps(view.errors)
    assert secret not in repr(inproc.status(eid))


@pytest.mark.ray
def test_joining_running_actors_with_another_state_file_is_refused(engine, tmp_path) -> None:
    from runtime import Engine
    from runtime.config import EngineConfig

    with pytest.raises(SubmissionError, match="already runs with the state file"):
        Engine(namespace=engine.namespace, config=EngineConfig(state=str(tmp_path / "other.db")))


@pytest.mark.ray
def test_a_state_file_that_cannot_be_created_is_a_clear_error_not_a_hang(ray_cluster) -> None:
    from runtime import Engine
    from runtime.config import EngineConfig
    from runtime.errors import EngineStartError

    with pytest.raises(EngineStartError, match="cannot create the state store /proc/nope/state.db.*SOPFLOW_STATE"):
        Engine(namespace="sopflow-bad-state-tests", config=EngineConfig(state="/proc/nope/state.db"))


def test_list_with_an_unknown_status_names_the_statuses(inproc) -> None:
    with pytest.raises(ValueError, match="status must be one of queued, running.*got 'bogus'"):
        inproc.list(status="bogus")


@pytest.mark.ray
def test_the_actors_have_plain_names_in_ray_and_a_useful_repr(engine) -> None:
    """What the dashboard's actor list and the process titles show (ray::Coordinator ...)."""
    import ray

    actors = engine._conn.actors
    assert [h._ray_actor_creation_function_descriptor.class_name
            for h in (actors.coordinator, actors.monitor, actors.failure_handler)] == \
        ["Coordinator", "ExecutionMonitor", "FailureHandler"]
    described = ray.get(actors.coordinator.__ray_call__.remote(lambda self: repr(self)))
    assert described.startswith("Coordinator(") and "executions" in described
