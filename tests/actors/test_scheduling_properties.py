"""Scheduling properties over generated DAGs and outcomes.

The pure properties drive :func:`runtime.scheduling.verdict` and
:func:`runtime.state.final_status` with a simulated scheduler; one property
runs generated SOPs through the real state machine (the in-process engine) and
checks the same things on the real run.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.events import EventKind
from runtime.scheduling import Verdict, verdict
from runtime.state import final_status
from runtime.status import ExecutionStatus, StepStatus
from sop.model import TriggerRule


@st.composite
def dags(draw, max_steps: int = 8) -> tuple[dict[int, list[int]], list[bool]]:
    """A DAG (edges only from a lower to a higher index) and whether each step succeeds."""
    n = draw(st.integers(1, max_steps))
    deps = {i: sorted(draw(st.sets(st.integers(0, i - 1), max_size=3)) if i else []) for i in range(n)}
    ok = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    return deps, ok


def descendants(deps: dict[int, list[int]], roots: set[int]) -> set[int]:
    out: set[int] = set()
    changed = True
    while changed:
        changed = False
        for s, ds in deps.items():
            if s not in out and any(d in roots or d in out for d in ds):
                out.add(s)
                changed = True
    return out


def expected_final(statuses: dict[str, StepStatus]) -> ExecutionStatus:
    values = set(statuses.values())
    if not values & {StepStatus.FAILED, StepStatus.UPSTREAM_FAILED}:
        return ExecutionStatus.COMPLETED
    if StepStatus.SUCCEEDED in values:
        return ExecutionStatus.PARTIALLY_COMPLETED
    return ExecutionStatus.FAILED


def check_run(deps: dict[int, list[int]], ok: list[bool], statuses: dict[str, StepStatus],
              started_after: dict[str, set[str]]) -> None:
    """The three properties, given final statuses and which steps were terminal when each started."""
    name = {i: f"s{i}" for i in deps}
    # 1. no step starts before all of its dependencies are terminal
    for i, ds in deps.items():
        if name[i] in started_after:
            assert {name[d] for d in ds} <= started_after[name[i]], f"s{i} started too early"
    # 2. exactly the descendants of failed steps end upstream_failed; the rest ran as told
    failed = {i for i in deps if statuses[name[i]] == StepStatus.FAILED}
    below = descendants(deps, failed)
    for i in deps:
        if i in below:
            assert statuses[name[i]] == StepStatus.UPSTREAM_FAILED, (i, statuses)
            assert name[i] not in started_after, f"s{i} ran below a failure"
        else:
            want = StepStatus.SUCCEEDED if ok[i] else StepStatus.FAILED
            assert statuses[name[i]] == want, (i, statuses)
    # 3. how the execution ended follows from how its steps ended
    got = final_status(statuses)
    assert got == expected_final(statuses)


# -- pure: a simulated scheduler ---------------------------------------------------------------


@given(dags(), st.randoms(use_true_random=False))
@settings(max_examples=300)
def test_a_scheduler_driven_by_verdict_respects_dependencies_and_failures(dag, rnd) -> None:
    deps, ok = dag
    names = {i: f"s{i}" for i in deps}
    depnames = {names[i]: [names[d] for d in ds] for i, ds in deps.items()}
    statuses = {names[i]: StepStatus.PENDING for i in deps}
    started_after: dict[str, set[str]] = {}
    running: list[str] = []
    while True:
        progressed = True
        while progressed:  # decide every pending step that can be decided now
            progressed = False
            for sid in sorted(statuses, key=lambda _: rnd.random()):
                if statuses[sid] != StepStatus.PENDING:
                    continue
                what, _ = verdict(TriggerRule.ALL_SUCCESS, depnames[sid], statuses, set())
                if what == Verdict.RUN:
                    started_after[sid] = {s for s, v in statuses.items() if v.terminal}
                    statuses[sid] = StepStatus.RUNNING
                    running.append(sid)
                elif what == Verdict.HALT:
                    statuses[sid] = StepStatus.UPSTREAM_FAILED
                    progressed = True
                elif what == Verdict.SKIP:
                    statuses[sid] = StepStatus.SKIPPED
                    progressed = True
        if not running:
            break
        sid = running.pop(rnd.randrange(len(running)))  # steps finish in any order
        statuses[sid] = StepStatus.SUCCEEDED if ok[int(sid[1:])] else StepStatus.FAILED

    assert all(s.terminal for s in statuses.values()), statuses
    check_run(deps, ok, statuses, started_after)


@given(st.dictionaries(st.sampled_from([f"s{i}" for i in range(8)]),
                       st.sampled_from([StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.SKIPPED,
                                        StepStatus.UPSTREAM_FAILED]), min_size=1))
def test_final_status_follows_the_rule(statuses) -> None:
    assert final_status(statuses) == expected_final(statuses)


@given(st.lists(st.sampled_from(list(StepStatus)), min_size=1, max_size=5), st.sampled_from(list(TriggerRule)))
def test_verdict_waits_while_any_dependency_is_unfinished(dep_statuses, rule) -> None:
    statuses = {f"d{i}": s for i, s in enumerate(dep_statuses)}
    what, _ = verdict(rule, list(statuses), statuses, set())
    assert (what == Verdict.WAIT) == (not all(s.terminal for s in dep_statuses))


# -- on the engine ------------------------------------------------------------------------------

H = "python:tests.handlers_for_tests"


@given(dags(max_steps=6))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_generated_dag_runs_respecting_dependencies_and_failures(inproc, dag) -> None:
    """For any DAG of steps that succeed or fail, run by the state machine (in-process inproc): no step
    starts before its dependencies ended, failures halt exactly their dependents, the status follows."""
    deps, ok = dag
    steps = [{"id": f"s{i}", "uses": f"{H}:outcome", "depends_on": [f"s{d}" for d in ds],
              "with": {"ok": ok[i], "name": f"s{i}"}} for i, ds in deps.items()]
    text = json.dumps({"sop": "generated-dag",
                       "defaults": {"retry": {"max_attempts": 1}, "timeout_s": 60,
                                    "resources": {"cpu": 0.25}},
                       "steps": steps})
    eid = inproc.submit(text)
    view = inproc.wait(eid, timeout=60)

    statuses = {sid: s.status for sid, s in view.steps.items()}
    started_after: dict[str, set[str]] = {}
    terminal: set[str] = set()
    ends = {EventKind.STEP_SUCCEEDED, EventKind.STEP_HALTED, EventKind.STEP_SKIPPED, EventKind.STEP_CANCELLED}
    for event in inproc.events(eid, follow=False):
        if event.kind == EventKind.STEP_STARTED:
            started_after[event.step] = set(terminal)
        elif event.kind in ends or (event.kind == EventKind.STEP_FAILED and event.data.get("final")):
            terminal.add(event.step)
    check_run(deps, ok, statuses, started_after)
    assert view.status == expected_final(statuses)
