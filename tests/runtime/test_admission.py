"""The coordinator keeps at most ``max_running_steps`` step attempts running; the rest wait by priority.

The queue's rules run on an in-process engine with one run slot (``one_slot``); a monitor's view
for the dashboard and a coordinator actor's restart are Ray's, tested on a Ray engine of its own.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.seams import Claim
from runtime.status import ExecutionStatus
from tests.sop_builders import H, own_engine, wait_for

@pytest.fixture
def one_slot():
    """An in-process engine with a single run slot (``max_running_steps=1``)."""
    from runtime import Engine
    from runtime.config import EngineConfig

    engine = Engine.in_process(config=EngineConfig(max_running_steps=1))
    try:
        yield engine
    finally:
        engine.shutdown()


@pytest.fixture(scope="module")
def one_at_a_time(ray_cluster, tmp_path_factory):
    with own_engine("sopflow-admission-tests", tmp_path_factory.mktemp("admission"), max_running_steps=1) as e:
        yield e


def one_step(name: str, runs, gate=None) -> str:
    return json.dumps({"sop": name, "steps": [
        {"id": "s", "uses": f"{H}:record_run", "resources": {"cpu": 0.25},
         "with": {"runs_dir": str(runs), "name": name, **({"gate": str(gate)} if gate else {})}}]})


def queued_behind_a_blocker(engine, tmp_path, name: str) -> tuple:
    """An execution holding the only slot (until its gate opens) and ``name`` queued behind it."""
    from runtime.status import StepStatus

    gate = tmp_path / "gate"
    blocker = engine.submit(one_step("blocker", tmp_path, gate))
    wait_for(lambda: (tmp_path / "blocker.runs").exists())  # holds the only slot
    queued = engine.submit(one_step(name, tmp_path))
    wait_for(lambda: engine.status(queued).steps["s"].status == StepStatus.QUEUED)
    return blocker, gate, queued


def test_queued_steps_start_highest_priority_first_when_a_slot_frees(one_slot, tmp_path) -> None:
    gate = tmp_path / "gate"
    blocker = one_slot.submit(one_step("blocker", tmp_path, gate))
    wait_for(lambda: (tmp_path / "blocker.runs").exists())  # holds the only slot
    low = one_slot.submit(one_step("low", tmp_path), priority=0)
    high = one_slot.submit(one_step("high", tmp_path), priority=10)
    assert not (tmp_path / "low.runs").exists() and not (tmp_path / "high.runs").exists()
    gate.write_text("open")

    for eid in (blocker, low, high):
        assert one_slot.wait(eid, timeout=60).status == ExecutionStatus.COMPLETED
    started = {n: float((tmp_path / f"{n}.runs").read_text().split()[3]) for n in ("low", "high")}
    assert started["high"] < started["low"]


def test_a_queued_step_of_a_force_cancelled_execution_never_starts(one_slot, tmp_path) -> None:
    gate = tmp_path / "gate"
    blocker = one_slot.submit(one_step("blocker", tmp_path, gate))
    wait_for(lambda: (tmp_path / "blocker.runs").exists())
    queued = one_slot.submit(one_step("queued", tmp_path))
    view = one_slot.cancel(queued, force=True)
    assert one_slot.wait(queued, timeout=60).status == ExecutionStatus.CANCELLED
    gate.write_text("open")
    assert one_slot.wait(blocker, timeout=60).status == ExecutionStatus.COMPLETED
    assert not (tmp_path / "queued.runs").exists(), view


@pytest.mark.ray
def test_a_step_waiting_for_a_slot_is_queued_not_running(one_at_a_time, tmp_path) -> None:
    """Status tells the truth: a step held back by max_running_steps is queued, and says so."""
    from runtime.events import EventKind
    from runtime.status import StepStatus
    from tests.sop_builders import events_of

    gate = tmp_path / "gate"
    blocker = one_at_a_time.submit(one_step("blocker", tmp_path, gate))
    wait_for(lambda: (tmp_path / "blocker.runs").exists())
    waiting = one_at_a_time.submit(one_step("waiting", tmp_path))
    view = wait_for(lambda: (v := one_at_a_time.status(waiting)).steps["s"].status != StepStatus.PENDING and v)
    assert view.steps["s"].status == StepStatus.QUEUED, view
    assert one_at_a_time.status(blocker).steps["s"].status == StepStatus.RUNNING
    import ray

    def monitor_counts() -> dict:  # what a dashboard reads (the monitor gets events in batches)
        steps = ray.get(one_at_a_time._conn.actors.monitor.counts.remote())["steps_by_status"]
        return steps if steps.get("queued", 0) >= 1 else {}

    assert wait_for(monitor_counts, timeout_s=30).get("running", 0) >= 1
    kinds = [e.kind for e in events_of(one_at_a_time, waiting)]
    assert EventKind.STEP_QUEUED in kinds and EventKind.STEP_STARTED not in kinds, kinds
    gate.write_text("open")
    assert one_at_a_time.wait(waiting, timeout=60).status == ExecutionStatus.COMPLETED
    events = events_of(one_at_a_time, waiting)
    queued = next(e for e in events if e.kind == EventKind.STEP_QUEUED)
    started = next(e for e in events if e.kind == EventKind.STEP_STARTED)
    assert queued.seq < started.seq and started.data.get("inputs") and "inputs" not in queued.data
    assert "queued" in queued.describe() and "waiting for a run slot" in queued.describe()
    # A step that got a slot at once has no step_queued event (one event per start on the hot path).
    assert EventKind.STEP_QUEUED not in [e.kind for e in events_of(one_at_a_time, blocker)]


@pytest.mark.ray
def test_a_queued_step_is_queued_again_after_a_coordinator_restart_not_interrupted(one_at_a_time,
                                                                                      tmp_path) -> None:
    """A step that never reached Ray is re-queued on recovery, even when it is not idempotent."""
    import ray

    from runtime.events import EventKind
    from runtime.status import StepStatus
    from tests.sop_builders import events_of

    gate = tmp_path / "gate"
    blocker = one_at_a_time.submit(one_step("blocker", tmp_path, gate))
    wait_for(lambda: (tmp_path / "blocker.runs").exists())
    doc = json.loads(one_step("careful", tmp_path))
    doc["steps"][0]["idempotent"] = False  # interrupted, it would wait for an operator
    waiting = one_at_a_time.submit(json.dumps(doc))
    wait_for(lambda: one_at_a_time.status(waiting).steps["s"].status == StepStatus.QUEUED)
    ray.kill(one_at_a_time._conn.actors.coordinator, no_restart=False)
    gate.write_text("open")
    assert one_at_a_time.wait(waiting, timeout=90).status == ExecutionStatus.COMPLETED
    assert one_at_a_time.wait(blocker, timeout=90).status == ExecutionStatus.COMPLETED
    events = events_of(one_at_a_time, waiting)
    kinds = [e.kind for e in events]
    assert EventKind.RECOVERED in kinds
    assert EventKind.ATTEMPT_INTERRUPTED not in kinds and EventKind.DECISION_REQUIRED not in kinds, kinds
    recovered = next(e for e in events if e.kind == EventKind.RECOVERED)
    assert recovered.data["queued"] == ["s"]
    assert len((tmp_path / "careful.runs").read_text().splitlines()) == 1  # ran once


def test_a_queued_step_of_a_cancelled_execution_never_starts(one_slot, tmp_path) -> None:
    """A graceful cancel lets running steps finish; a step still queued for a slot is cancelled."""
    from runtime.status import StepStatus

    blocker, gate, queued = queued_behind_a_blocker(one_slot, tmp_path, "queued")
    one_slot.cancel(queued)
    gate.write_text("open")
    assert one_slot.wait(blocker, timeout=60).status == ExecutionStatus.COMPLETED
    view = one_slot.wait(queued, timeout=60)
    assert view.status == ExecutionStatus.CANCELLED and view.steps["s"].status == StepStatus.CANCELLED
    assert not (tmp_path / "queued.runs").exists()


def test_a_queued_step_of_a_paused_execution_waits_for_resume(one_slot, tmp_path) -> None:
    """Pausing means no new attempt starts: not even one that was queued for a slot."""
    from runtime.status import StepStatus

    blocker, gate, paused = queued_behind_a_blocker(one_slot, tmp_path, "paused")
    second_gate = tmp_path / "gate2"
    one_slot.pause(paused)
    later = one_slot.submit(one_step("later", tmp_path, second_gate))  # queued behind it
    gate.write_text("open")  # the slot frees: the paused execution's step must not take it
    assert one_slot.wait(blocker, timeout=60).status == ExecutionStatus.COMPLETED
    wait_for(lambda: (tmp_path / "later.runs").exists())  # the next one in line got the slot
    assert not (tmp_path / "paused.runs").exists()
    assert one_slot.status(paused).steps["s"].status == StepStatus.QUEUED

    one_slot.resume(paused)
    second_gate.write_text("open")
    assert one_slot.wait(paused, timeout=60).status == ExecutionStatus.COMPLETED
    assert one_slot.wait(later, timeout=60).status == ExecutionStatus.COMPLETED
    assert (tmp_path / "paused.runs").exists()


def test_cancelling_a_paused_execution_with_a_held_step_ends_it(one_slot, tmp_path) -> None:
    blocker, gate, held = queued_behind_a_blocker(one_slot, tmp_path, "held")
    one_slot.pause(held)
    gate.write_text("open")
    assert one_slot.wait(blocker, timeout=60).status == ExecutionStatus.COMPLETED
    one_slot.cancel(held)
    assert one_slot.wait(held, timeout=60).status == ExecutionStatus.CANCELLED
    assert not (tmp_path / "held.runs").exists()


class _StartOrder(__import__("runtime").Hook):
    """Notes every attempt as it starts, in order (a file: hooks run in the coordinator)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def before_attempt(self, payload: dict) -> None:
        with open(self.path, "a") as f:
            f.write(f"{payload['execution_id']} {payload['step']}\n")


def test_executions_under_way_finish_before_new_ones_start(one_slot, tmp_path) -> None:
    """With one slot and a flood of two-step executions, each one's second step goes before the next
    execution's first (today's unfairness: every follow-up queued behind all the first steps)."""
    order = tmp_path / "order.txt"
    one_slot.add_hook("order", _StartOrder(str(order)))
    two_steps = json.dumps({"sop": "flood", "steps": [
        {"id": "first", "uses": f"{H}:echo", "with": {"value": 1}},
        {"id": "then", "uses": f"{H}:echo", "with": {"value": 2}, "depends_on": ["first"]}]})
    ids = one_slot.submit_many(two_steps, [{} for _ in range(5)])
    for eid in ids:
        assert one_slot.wait(eid, timeout=60).status == ExecutionStatus.COMPLETED
    one_slot.drain_hooks()
    started = [tuple(line.split()) for line in order.read_text().splitlines()]
    assert started == [(eid, step) for eid in ids for step in ("first", "then")]


def test_a_higher_priority_still_goes_before_an_execution_under_way(one_slot, tmp_path) -> None:
    from runtime.seams import Claim

    assert Claim(5, False, 2.0).key() < Claim(1, True, 1.0).key()  # priority first
    assert Claim(1, True, 9.0).key() < Claim(1, False, 1.0).key()  # then under way before new
    assert Claim(1, True, 1.0).key() < Claim(1, True, 9.0).key()  # then oldest


# -- priority classes: weighted fair share --------------------------------------------------------

CLASSES = ("critical", "high", "normal", "low")


def _backlogged_grants(weights: dict[str, int], rounds: int) -> list[str]:
    """Every class always has work waiting; one slot; the classes of the grants, in order."""
    from runtime.admission import LocalAdmission
    from runtime.seams import Claim

    adm = LocalAdmission(lambda: 1, tuple(weights.items()))
    order: list[str] = []
    assert adm.acquire(Claim(priority_class="normal"), lambda: None)  # the one slot is taken
    for cls in CLASSES:
        for _ in range(rounds * weights[cls] + 2):
            adm.acquire(Claim(priority_class=cls), lambda c=cls: order.append(c))
    for _ in range(rounds * sum(weights.values())):
        adm.release()  # the slot holder ends: the next one gets it
    return order


@given(st.fixed_dictionaries({c: st.integers(1, 9) for c in CLASSES}), st.integers(1, 6))
@settings(max_examples=300, deadline=None)
def test_for_any_weights_backlogged_classes_share_the_slots_by_weight_and_none_starves(weights, rounds) -> None:
    order = _backlogged_grants(weights, rounds)
    window = sum(weights.values())
    for start in range(0, len(order) - window + 1):
        got = {c: order[start:start + window].count(c) for c in CLASSES}
        for cls in CLASSES:  # in any run of sum(weights) grants, each class gets its weight, give or take one
            assert abs(got[cls] - weights[cls]) <= 1, (start, got, weights)


def test_a_class_that_was_idle_gets_no_credit_for_it() -> None:
    """low waited alone for a long time, then critical arrives: critical gets its 8:1 share at once."""
    from runtime.admission import LocalAdmission
    from runtime.seams import Claim

    adm = LocalAdmission(lambda: 1)
    order: list[str] = []
    adm.acquire(Claim(priority_class="low"), lambda: None)
    for _ in range(50):
        adm.acquire(Claim(priority_class="low"), lambda: order.append("low"))
    for _ in range(20):
        adm.release()
    for _ in range(30):
        adm.acquire(Claim(priority_class="critical"), lambda: order.append("critical"))
    order.clear()
    for _ in range(18):
        adm.release()
    # no credit: low does not get the next 20 grants for having waited alone; the share is 8:1 at once
    assert order.count("low") in (1, 2) and "low" in order[:10], order


def test_the_priority_class_comes_from_the_submission_or_the_sop(one_slot) -> None:
    from runtime import SubmissionError

    sop = {"sop": "classy", "priority": "high", "steps": [{"id": "a", "uses": f"{H}:echo", "with": {"value": 1}}]}
    by_sop = one_slot.submit(json.dumps(sop))
    by_call = one_slot.submit(json.dumps(sop), priority="low")
    by_number = one_slot.submit(json.dumps(sop), priority=7)
    views = {eid: one_slot.wait(eid, timeout=30) for eid in (by_sop, by_call, by_number)}
    assert (views[by_sop].priority_class, views[by_sop].priority) == ("high", 0)
    assert (views[by_call].priority_class, views[by_call].priority) == ("low", 0)
    assert (views[by_number].priority_class, views[by_number].priority) == ("normal", 7)
    with pytest.raises(SubmissionError, match="priority must be one of critical, high, normal, low"):
        one_slot.submit(json.dumps(sop), priority="urgent")


def test_with_one_slot_a_critical_flood_does_not_starve_low_work(one_slot, tmp_path) -> None:
    order = tmp_path / "order.txt"
    one_slot.add_hook("order", _StartOrder(str(order)))
    gate = tmp_path / "gate"
    blocker = one_slot.submit(one_step("blocker", tmp_path / "runs", gate))  # holds the slot while the rest queue
    wait_for(lambda: one_slot.status(blocker).steps["s"].status.value == "running")
    step = json.dumps({"sop": "work", "steps": [{"id": "s", "uses": f"{H}:echo", "with": {"value": 1}}]})
    low = one_slot.submit_many(step, [{} for _ in range(3)], priority="low")
    critical = one_slot.submit_many(step, [{} for _ in range(20)], priority="critical")
    gate.write_text("open")
    for eid in [*low, *critical]:
        one_slot.wait(eid, timeout=60)
    one_slot.drain_hooks()
    started = [line.split()[0] for line in order.read_text().splitlines()][1:]  # after the blocker
    first_low = min(started.index(eid) for eid in low)
    assert first_low <= 9, started  # 8 critical for every low: low's first step within the first 9


# -- properties 17 and 18 of PROPERTIES.md, on the local admission (no Ray) ------------------------

claims = st.builds(Claim, st.integers(-5, 5), st.booleans(), st.floats(0, 100, allow_nan=False))


@given(st.integers(1, 6), st.lists(claims, min_size=1, max_size=40))
@settings(max_examples=300, deadline=None)
def test_queue_when_exhausted(capacity: int, asked: list) -> None:
    """For any requests beyond the free slots: they queue, and each starts once a slot frees, never over capacity."""
    from runtime.admission import LocalAdmission

    adm = LocalAdmission(lambda: capacity)
    granted: list[int] = []
    now = [i for i, claim in enumerate(asked) if adm.acquire(claim, lambda i=i: granted.append(i))]
    assert now == list(range(min(capacity, len(asked))))  # the free slots are taken at once, the rest queue
    assert adm.used == len(now) <= capacity and adm.queued == len(asked) - len(now)
    for _ in range(len(asked)):
        adm.release()
        assert adm.used <= capacity
    assert sorted(now + granted) == list(range(len(asked))) and len(set(granted)) == len(granted)
    assert adm.used == 0 and adm.queued == 0


@given(st.lists(claims, min_size=1, max_size=40))
@settings(max_examples=300, deadline=None)
def test_priority_order(queued: list) -> None:
    """For any set of queued executions' attempts: as slots free, higher priority starts first (then, at one
    priority, executions under way, then the oldest, then arrival order)."""
    from runtime.admission import LocalAdmission

    adm = LocalAdmission(lambda: 1)
    assert adm.acquire(Claim(), lambda: None)  # the one slot is busy: everything below queues
    order: list[int] = []
    for i, claim in enumerate(queued):
        assert not adm.acquire(claim, lambda i=i: order.append(i))
    for _ in queued:
        adm.release()
    assert order == sorted(range(len(queued)), key=lambda i: (queued[i].key(), i))
