"""For any interleaving of operator actions and attempt outcomes, the core keeps its invariants.

Hypothesis draws a sequence of actions (an attempt of either execution succeeds or fails,
an execution is paused, resumed, cancelled or force-cancelled, a step waiting for an operator
is decided, the coordinator crashes and a new one recovers from the log) and plays it against a
:class:`runtime.coordinator.CoordinatorCore` with the scripted runner of
``test_review_core``; then everything still open is let run to its end. Whatever the
order: every execution finishes exactly once and nothing follows its end; every step
ends exactly once; no attempt is handed to its runner twice, and a non-idempotent one
only once its ``step_started`` is durable; run slots never exceed capacity and all come
back; and the fold of the log equals the live state.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import event as note_case
from hypothesis import strategies as st

from runtime.errors import ExecutionError
from runtime.eventlog import MemoryEventLog
from runtime.events import EventKind
from runtime.hooks import Hook
from runtime.journal import load_state
from runtime.request import SubmitRequest
from runtime.state import ExecutionState, apply
from runtime.status import StepStatus
from tests.runtime.test_review_core import Script, core_of, quiesce, sop, step, stopped, until

SOPS = [
    sop("diamond", [step("a"), step("b", "a", idempotent=False), step("c", "a"), step("d", "b", "c")], retry=2),
    sop("fan", [step("x"), step("y", retry={"max_attempts": 3, "initial_delay_s": 0.02}),
                step("z", "x", trigger_rule="all_done")], retry=3),
]
WITH_CHILD = [SOPS[0], sop("parent", [step("x"), {"id": "sub", "uses": "sop:child.yaml", "depends_on": ["x"]},
                                      step("z", "sub", trigger_rule="all_done")], retry=2)]
CHILD = {"child.yaml": SubmitRequest(sop("child", [step("c1"), step("c2", "c1")], retry=2), source="child.yaml")}

ACTIONS = st.one_of(
    st.tuples(st.just("settle"), st.integers(0, 7), st.sampled_from(["ok", "retryable", "permanent"])),
    st.tuples(st.sampled_from(["pause", "resume", "cancel", "force"]), st.integers(0, 1)),
    st.tuples(st.just("decide"), st.integers(0, 1), st.sampled_from(["rerun", "succeed", "fail", "skip"])),
    st.tuples(st.just("restart")),
)


class Recorder(Hook):
    def __init__(self) -> None:
        self.before: list[tuple[str, str, int]] = []
        self.after: list[tuple[str, str, int, str]] = []

    def before_attempt(self, payload: dict[str, Any]) -> None:
        self.before.append((payload["execution_id"], payload["step"], payload["attempt"]))

    def after_attempt(self, payload: dict[str, Any]) -> None:
        self.after.append((payload["execution_id"], payload["step"], payload["attempt"], payload["status"]))


class DurableCheck(Script):
    """Notes, at each start, whether the attempt's step_started was already in the (committed) log."""

    def __init__(self) -> None:
        super().__init__()
        self.log: Any = None
        self.undurable: list[str] = []

    def start(self, spec: Any, report: Any) -> Any:
        attempt = super().start(spec, report)
        if not spec.step.idempotent:
            started = [e for e in self.log.read(spec.execution.id) if e.kind == EventKind.STEP_STARTED
                       and e.step == spec.step.id and e.attempt == spec.attempt]
            if not started:
                self.undurable.append(attempt.key)
        return attempt


async def play(capacity: int, actions: list[tuple[Any, ...]], sops: list[Any] = SOPS) -> None:
    log = MemoryEventLog()
    generations: list[tuple[DurableCheck, Any]] = []

    async def boot() -> tuple[Any, DurableCheck, Recorder]:
        script = DurableCheck()
        core = core_of(script, capacity=capacity, event_log=log, snapshot_every=10)  # snapshots checked too
        script.log = core.event_log
        hooks = Recorder()
        core.hooks.add("recorder", hooks)
        await core.ready()
        generations.append((script, hooks))
        return core, script, hooks

    core, script, hooks = await boot()
    ids = [await core.submit(SubmitRequest(s, priority=i, subsops=CHILD)) for i, s in enumerate(sops)]
    peak = 0

    async def crash() -> None:
        """The coordinator dies (everything it wrote is durable); a new one recovers from the log."""
        nonlocal core, script, hooks
        await quiesce(core)
        await stopped(core)
        for exe in core.executions.values():  # its timers die with it
            for timer in exe.waiting_retry.values():
                timer.cancel()
            for flight in exe.inflight.values():
                if flight.timer is not None:
                    flight.timer.cancel()
        for attempt in script.live():
            attempt.done = True  # its attempts' outcomes are lost with it
        core, script, hooks = await boot()

    async def act(action: tuple[Any, ...]) -> None:
        what = action[0]
        if what == "restart":
            await crash()
            return
        if what == "settle":
            live = script.live()
            if live:
                attempt = live[action[1] % len(live)]
                attempt.succeed() if action[2] == "ok" else attempt.fail(retryable=action[2] == "retryable")
            return
        eid = ids[action[1]]
        try:
            if what == "pause":
                await core.pause(eid)
            elif what == "resume":
                await core.resume(eid)
            elif what == "decide":
                waiting = [k for k, s in core.state_of(eid).steps.items() if s.status == StepStatus.NEEDS_DECISION]
                if waiting:
                    await core.decide(eid, waiting[0], action[2], "review", "by hand")
            else:
                await core.cancel(eid, force=what == "force")
        except ExecutionError:
            pass  # finished or cancelling already: refused, and that is fine

    try:
        for action in actions:
            await act(action)
            await quiesce(core)
            peak = max(peak, core.machine.admission.used)
        for _ in range(60):  # let everything still open run to its end
            if all(e.state.status.terminal for e in core.executions.values()):
                break
            for e in list(core.executions.values()):  # children too
                if e.state.paused and not e.state.status.terminal:
                    await core.resume(e.id)
            for i, eid in enumerate(ids):
                await act(("resume", i))
                await act(("decide", i, "succeed"))
            for attempt in script.live():
                attempt.succeed()
            await quiesce(core)
            if any(e.waiting_retry for e in core.executions.values()):
                await until(lambda: not any(e.waiting_retry for e in core.executions.values()), 5)
            peak = max(peak, core.machine.admission.used)
        await quiesce(core)
        await core.hooks.drain()

        admission = core.machine.admission
        assert peak <= capacity
        assert admission.used == 0 and admission.queued == 0, (admission.used, admission.queued)
        for generation, _ in generations:  # recovery may run an idempotent attempt again, in a new generation
            keys = [a.key for a in generation.started]
            assert len(keys) == len(set(keys)), f"an attempt was started twice: {keys}"
            assert generation.undurable == [], "non-idempotent attempts started before step_started was durable"
        once = [a.key for g, _ in generations for a in g.started if not a.spec.step.idempotent]
        assert len(once) == len(set(once)), f"a non-idempotent attempt ran again behind the operator's back: {once}"
        assert list(core.event_log.unfinished()) == []
        for eid in list(core.executions):  # children too
            events = core.event_log.read(eid)
            names = [e.kind.value for e in events]
            assert [e.seq for e in events] == list(range(1, len(events) + 1)), names
            assert names.count(EventKind.FINISHED.value) == 1 and names[-1] == EventKind.FINISHED.value, names
            # every step ends exactly once, and never leaves its end
            state = ExecutionState(eid)
            ended: dict[str, int] = {}
            for event in events:
                before = {k: s.status.terminal for k, s in state.steps.items()}
                apply(state, event)
                for k, s in state.steps.items():
                    if before.get(k) and not s.status.terminal:
                        raise AssertionError(f"step {k} left its end at {event.kind}: {names}")
                    if not before.get(k) and s.status.terminal:
                        ended[k] = ended.get(k, 0) + 1
            assert all(s.status.terminal for s in state.steps.values()), names
            assert all(n == 1 for n in ended.values()) and set(ended) == set(state.steps), (ended, names)
            assert load_state(core.event_log, eid) == core.state_of(eid)  # the fold is the live state
            for kind in ("operator_decided", "execution_recovered", "step_queued", "execution_paused", "retry_scheduled"):
                if kind in names:
                    note_case(kind)  # what the drawn interleavings reached (--hypothesis-show-statistics)
            note_case(f"ended {state.status.value}")
        for key in hooks.before:  # every attempt this coordinator handed to a runner is reported ended once
            assert sum(1 for a in hooks.after if a[:3] == key) == 1, (key, hooks.after)
    finally:
        for attempt in script.live():
            attempt.done = True
        for exe in core.executions.values():
            for timer in exe.waiting_retry.values():
                timer.cancel()
        core.journal.close()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(capacity=st.integers(1, 3), actions=st.lists(ACTIONS, max_size=14))
def test_review_for_any_interleaving_every_execution_and_step_ends_once_and_slots_come_back(
        capacity: int, actions: list[tuple[Any, ...]]) -> None:
    asyncio.run(play(capacity, actions))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(capacity=st.integers(1, 3), actions=st.lists(ACTIONS, max_size=14))
def test_review_for_any_interleaving_with_a_sub_sop_every_execution_parent_and_child_ends_once(
        capacity: int, actions: list[tuple[Any, ...]]) -> None:
    asyncio.run(play(capacity, actions, WITH_CHILD))
