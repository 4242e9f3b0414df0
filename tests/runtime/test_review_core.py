"""Hostile review of the execution core (issue 8): exact interleavings driven by a scripted runner.

Every test drives a :class:`runtime.coordinator.CoordinatorCore` on its own loop with
:class:`Script`, a :class:`runtime.seams.StepRunner` whose attempts end only when the
test says so (settled later, on the loop, once, as a real runner does), so each race
is played out deterministically, without sleeps. Tests marked ``xfail(strict=True)``
pin a bug found in the review; the reason names its cause.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from runtime import events as ev
from runtime.config import EngineConfig
from runtime.coordinator import CoordinatorCore
from runtime.eventlog import MemoryEventLog
from runtime.events import EventKind
from runtime.failure import ErrorInfo
from runtime.handlers import StepOutcome
from runtime.request import SubmitRequest
from runtime.status import ExecutionStatus, StepStatus
from sop import Sop

HANDLER = "python:tests.handlers_for_tests:echo"


# -- the scripted runner ----------------------------------------------------------------------------


class Attempt:
    """One attempt a :class:`Script` started; the test ends it with :meth:`succeed` or :meth:`fail`."""

    def __init__(self, spec: Any, report: Any) -> None:
        self.spec, self.report = spec, report
        self.cancels: list[bool] = []
        self.done = False

    @property
    def key(self) -> str:
        return f"{self.spec.execution.id}/{self.spec.step.id}/{self.spec.attempt}"

    def _settle(self, outcome: StepOutcome | None, error: ErrorInfo | None = None) -> None:
        assert not self.done, f"attempt {self.key} settled twice by the test"
        self.done = True
        self.report.settle(outcome, error)

    def succeed(self, output: Any = "ok") -> None:
        self._settle(StepOutcome(self.key, True, output))

    def fail(self, retryable: bool = True) -> None:
        error = ErrorInfo("RetryableError" if retryable else "PermanentError", "told to fail", retryable=retryable)
        self._settle(StepOutcome(self.key, False, error=error))

    def cancel(self, force: bool) -> None:
        """As a real runner: a forced cancel settles the attempt cancelled, later, on the loop."""
        self.cancels.append(force)
        if force:
            asyncio.get_running_loop().call_soon(self._cancelled)

    def _cancelled(self) -> None:
        if not self.done:
            self._settle(None, ErrorInfo("Cancelled", "the attempt was cancelled", retryable=False, origin="cancel"))


class Script:
    """A StepRunner whose attempts end when the test says so."""

    def __init__(self, needs_slot: bool = True) -> None:
        self.needs_slot = needs_slot
        self.started: list[Attempt] = []

    def start(self, spec: Any, report: Any) -> Attempt:
        attempt = Attempt(spec, report)
        self.started.append(attempt)
        return attempt

    def live(self, execution_id: str | None = None) -> list[Attempt]:
        return [a for a in self.started if not a.done and (execution_id is None or a.spec.execution.id == execution_id)]

    def of(self, execution_id: str, step: str) -> list[Attempt]:
        return [a for a in self.started if a.spec.execution.id == execution_id and a.spec.step.id == step]


def sop(name: str, steps: list[dict[str, Any]], retry: int = 1, **extra: Any) -> Sop:
    return Sop.model_validate({"sop": name, "defaults": {"timeout_s": 600, "retry": {
        "max_attempts": retry, "initial_delay_s": 0, "backoff": 1.0}}, "steps": steps, **extra})


def step(sid: str, *deps: str, **extra: Any) -> dict[str, Any]:
    return {"id": sid, "uses": HANDLER, "depends_on": list(deps), **extra}


def core_of(runner: Any, capacity: int = 4, event_log: Any = None, snapshot_every: int | None = None,
            **runners: Any) -> CoordinatorCore:
    config = EngineConfig(state="memory://", **({"snapshot_every": snapshot_every} if snapshot_every else {}))
    return CoordinatorCore(config, task_runner=runner, capacity=lambda: capacity,
                           event_log=event_log, runners=runners or None, service_name="sopflow-tests")


async def quiesce(core: CoordinatorCore) -> None:
    """Let the loop run until nothing is pending: commits, their callbacks, the machine's tasks, hooks."""
    for _ in range(200):
        await core.journal.durable()
        pending = [t for t in (*core.machine._tasks, *core.hooks.pending) if not t.done()]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            continue
        await asyncio.sleep(0)  # one turn: callbacks scheduled with call_soon run
        await core.journal.durable()
        if not [t for t in (*core.machine._tasks, *core.hooks.pending) if not t.done()] and \
                not core.journal._events:
            return
    raise AssertionError("the core never went quiet")


async def until(predicate: Callable[[], Any], timeout_s: float = 30.0) -> Any:
    """Wait on the loop for ``predicate`` (bounded polling of a condition)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not (value := predicate()):
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)  # polling interval of a bounded wait
    return value


def kinds(core: CoordinatorCore, execution_id: str) -> list[str]:
    return [e.kind.value for e in core.event_log.read(execution_id)]


def run(main: Callable[[], Any]) -> None:
    asyncio.run(main())


async def stopped(core: CoordinatorCore) -> None:
    """The coordinator 'crashes': its committer stops, the log stays (another core takes it over)."""
    await core.journal.durable()
    core.journal.committer.close()


# -- sub-SOP steps ----------------------------------------------------------------------------------


class GatedChildCore(CoordinatorCore):
    """A core whose child submissions wait for ``gate`` (a slow submit: the state store is busy)."""

    gate: asyncio.Event

    async def submit_child(self, request: SubmitRequest) -> str:
        await self.gate.wait()
        return await super().submit_child(request)


def test_review_child_submitted_after_the_sub_sop_attempt_timed_out_appends_nothing_to_a_finished_parent() -> None:
    async def main() -> None:
        script = Script()
        core = GatedChildCore(EngineConfig(state="memory://"), task_runner=script, capacity=lambda: 4,
                              service_name="sopflow-tests")
        core.gate = asyncio.Event()
        await core.ready()
        child = sop("child", [step("c")])
        parent = sop("parent", [{"id": "sub", "uses": "sop:child.yaml", "timeout_s": 0.05}])
        pid = await core.submit(SubmitRequest(parent, subsops={"child.yaml": SubmitRequest(child, source="child.yaml")}))
        await until(lambda: core.state_of(pid).status.terminal)  # the sub-SOP attempt timed out
        await quiesce(core)
        core.gate.set()  # the child submission, started before the timeout, goes through now
        await until(lambda: len(core.executions) == 2)
        await until(lambda: script.started)
        await quiesce(core)
        for attempt in script.live():
            attempt.succeed()
        await quiesce(core)
        seen = kinds(core, pid)
        core.journal.close()
        assert seen[-1] == EventKind.FINISHED.value, seen

    run(main)


def test_review_force_cancelling_a_parent_ends_its_sub_sop_step_cancelled_not_failed() -> None:
    async def main() -> None:
        script = Script()
        core = core_of(script)
        await core.ready()
        child = sop("child", [step("c")])
        parent = sop("parent", [{"id": "sub", "uses": "sop:child.yaml"}])
        pid = await core.submit(SubmitRequest(parent, subsops={"child.yaml": SubmitRequest(child, source="child.yaml")}))
        await until(lambda: script.live())
        await core.cancel(pid, force=True)
        await until(lambda: core.state_of(pid).status.terminal)
        await quiesce(core)
        state = core.state_of(pid)
        core.journal.close()
        assert state.status == ExecutionStatus.CANCELLED
        assert state.steps["sub"].status == StepStatus.CANCELLED, state.steps["sub"]

    run(main)


# -- cancel, pause and run slots ------------------------------------------------------------------


async def one_slot_two_executions() -> tuple[Script, CoordinatorCore, str, str]:
    """One run slot: ``busy`` holds it, ``waiting``'s only step is queued for it."""
    script = Script()
    core = core_of(script, capacity=1)
    await core.ready()
    busy = await core.submit(SubmitRequest(sop("busy", [step("a")])))
    waiting = await core.submit(SubmitRequest(sop("waiting", [step("b")])))
    await quiesce(core)
    assert core.state_of(waiting).steps["b"].status == StepStatus.QUEUED
    return script, core, busy, waiting


def test_review_cancel_of_an_execution_whose_steps_only_wait_for_a_slot_finishes_it_at_once() -> None:
    async def main() -> None:
        script, core, busy, waiting = await one_slot_two_executions()
        await core.cancel(waiting)
        await quiesce(core)
        status = core.state_of(waiting).status
        for attempt in script.live(busy):
            attempt.succeed()
        await quiesce(core)
        core.journal.close()
        assert status == ExecutionStatus.CANCELLED  # its step never started: nothing to wait for

    run(main)


def test_review_cancel_of_a_queued_execution_ends_it_once_a_slot_frees_and_gives_the_slot_back() -> None:
    async def main() -> None:
        script, core, busy, waiting = await one_slot_two_executions()
        await core.cancel(waiting)
        script.live(busy)[0].succeed()
        await quiesce(core)
        assert core.state_of(waiting).status == ExecutionStatus.CANCELLED
        assert core.state_of(busy).status == ExecutionStatus.COMPLETED
        assert script.of(waiting, "b") == []  # never handed to the runner
        assert core.machine.admission.used == 0 and core.machine.admission.queued == 0
        core.journal.close()

    run(main)


def test_review_recovering_a_paused_execution_starts_no_attempt_of_a_slotless_runner() -> None:
    async def main() -> None:
        log = MemoryEventLog()
        first = Script(needs_slot=False)
        core = core_of(first, event_log=log)
        await core.ready()
        eid = await core.submit(SubmitRequest(sop("slotless", [step("a")])))
        await quiesce(core)
        assert len(first.started) == 1
        await core.pause(eid)
        await stopped(core)

        second = Script(needs_slot=False)
        again = core_of(second, event_log=log)
        await again.ready()
        await quiesce(again)
        started_while_paused = len(second.started)
        status = again.state_of(eid).status
        await again.resume(eid)
        await quiesce(again)
        for attempt in second.live():
            attempt.succeed()
        await quiesce(again)
        final = again.state_of(eid).status
        again.journal.close()
        assert status == ExecutionStatus.PAUSED
        assert final == ExecutionStatus.COMPLETED
        assert started_while_paused == 0  # paused: the interrupted attempt runs again on resume

    run(main)


def test_review_recovering_a_paused_execution_holds_its_interrupted_attempt_until_resume() -> None:
    async def main() -> None:
        log = MemoryEventLog()
        first = Script()
        core = core_of(first, event_log=log)
        await core.ready()
        eid = await core.submit(SubmitRequest(sop("slotted", [step("a"), step("b", "a")])))
        await quiesce(core)
        await core.pause(eid)
        await stopped(core)

        second = Script()
        again = core_of(second, event_log=log)
        await again.ready()
        await quiesce(again)
        assert second.started == [] and again.state_of(eid).status == ExecutionStatus.PAUSED
        assert again.machine.admission.used == 0  # a held attempt holds no slot
        await again.resume(eid)
        await quiesce(again)
        second.live()[0].succeed()
        await quiesce(again)
        second.live()[0].succeed()
        await quiesce(again)
        assert again.state_of(eid).status == ExecutionStatus.COMPLETED
        assert [(a.spec.step.id, a.spec.attempt) for a in second.started] == [("a", 1), ("b", 1)]
        assert again.machine.admission.used == 0
        again.journal.close()

    run(main)


# -- rollback -------------------------------------------------------------------------------------


def test_review_a_requested_rollback_does_not_wait_for_nor_run_a_pending_retry() -> None:
    async def main() -> None:
        script = Script()
        core = core_of(script)
        await core.ready()
        definition = sop("rb", [step("a", on_failure="rollback"),
                                step("b", retry={"max_attempts": 3, "initial_delay_s": 600})],
                         rollback=[step("undo")])
        eid = await core.submit(SubmitRequest(definition))
        await quiesce(core)
        script.of(eid, "b")[0].fail(retryable=True)  # b waits 600 s for its second attempt
        await quiesce(core)
        script.of(eid, "a")[0].fail(retryable=False)  # a asks for rollback
        await quiesce(core)
        seen = kinds(core, eid)
        for attempt in script.live():
            attempt.succeed()
        await quiesce(core)
        for timer in core.executions[eid].waiting_retry.values():
            timer.cancel()
        core.journal.close()
        assert EventKind.ROLLBACK_STARTED.value in seen, seen

    run(main)


# -- replay of a recovered history ------------------------------------------------------------------


def test_review_replay_of_a_history_with_a_rerun_decision_is_deterministic() -> None:
    from runtime.replay import replay

    async def record() -> list[Any]:
        log = MemoryEventLog()
        first = Script()
        core = core_of(first, event_log=log)
        await core.ready()
        eid = await core.submit(SubmitRequest(sop("decided", [step("a", idempotent=False), step("b", "a")])))
        await quiesce(core)
        await stopped(core)  # attempt 1 of a was running: its outcome is unknown
        second = Script()
        again = core_of(second, event_log=log)
        await again.ready()
        await again.decide(eid, "a", "rerun")
        await quiesce(again)
        second.of(eid, "a")[0].succeed("a-out")
        await quiesce(again)
        second.of(eid, "b")[0].succeed("b-out")
        await quiesce(again)
        assert again.state_of(eid).status == ExecutionStatus.COMPLETED
        events = log.read(eid)
        again.journal.close()
        return events

    events = asyncio.run(record())
    report = replay(events)
    assert report.recorded_status == "completed"
    assert report.replayed_status == "completed", report.render()
    assert report.deterministic, report.render()


class CrashAfterChildCore(CoordinatorCore):
    """A core that 'crashes' right after its first child submission is durable (before the parent logs it)."""

    async def submit_child(self, request: SubmitRequest) -> str:
        await super().submit_child(request)
        await stopped(self)
        raise asyncio.CancelledError  # the coordinator is gone: nothing more happens here


def test_review_a_restart_between_child_submit_and_child_submitted_does_not_run_the_sub_sop_twice() -> None:
    async def main() -> None:
        log = MemoryEventLog()
        first = Script()
        core = CrashAfterChildCore(EngineConfig(state="memory://"), task_runner=first, capacity=lambda: 4,
                                   event_log=log, service_name="sopflow-tests")
        await core.ready()
        child = sop("child", [step("c")])
        parent = sop("parent", [{"id": "sub", "uses": "sop:child.yaml"}])
        pid = await core.submit(SubmitRequest(parent, subsops={"child.yaml": SubmitRequest(child, source="child.yaml")}))
        await until(lambda: core.journal.committer._closing)

        second = Script()
        again = core_of(second, event_log=log)
        await again.ready()
        await until(lambda: again.state_of(pid).children.get("sub"))  # the step has its child again
        await quiesce(again)
        children = sorted({a.spec.execution.id for a in second.started})
        for _ in range(5):
            for attempt in second.live():
                attempt.succeed()
            await quiesce(again)
        await until(lambda: again.state_of(pid).status.terminal)
        status = again.state_of(pid).status
        again.journal.close()
        assert status == ExecutionStatus.COMPLETED
        assert len(children) == 1, f"the sub-SOP ran as {len(children)} child executions: {children}"

    run(main)


def test_review_a_soft_cancel_of_a_parent_stops_its_child_from_starting_new_steps() -> None:
    async def main() -> None:
        script = Script()
        core = core_of(script)
        await core.ready()
        child = sop("child", [step("c1"), step("c2", "c1")])
        parent = sop("parent", [{"id": "sub", "uses": "sop:child.yaml"}])
        pid = await core.submit(SubmitRequest(parent, subsops={"child.yaml": SubmitRequest(child, source="child.yaml")}))
        await until(lambda: script.live())
        await core.cancel(pid)
        await quiesce(core)
        script.live()[0].succeed()  # c1 ends; c2 would be new work
        await quiesce(core)
        started = [a.spec.step.id for a in script.started]
        for attempt in script.live():
            attempt.succeed()
        await until(lambda: core.state_of(pid).status.terminal)
        await quiesce(core)
        core.journal.close()
        assert started == ["c1"], started

    run(main)


# -- progress -------------------------------------------------------------------------------------


def test_review_progress_of_a_cancelled_step_is_not_shown_after_it_ended() -> None:
    async def main() -> None:
        script = Script()
        core = core_of(script)
        await core.ready()
        eid = await core.submit(SubmitRequest(sop("prog", [step("a")])))
        await quiesce(core)
        script.live()[0].report.progress(0.5, "half way")
        await quiesce(core)
        assert core.state_of(eid).view().steps["a"].progress == 0.5
        await core.cancel(eid, force=True)
        await quiesce(core)
        view = core.state_of(eid).view()
        core.journal.close()
        assert view.steps["a"].status == StepStatus.CANCELLED
        assert view.steps["a"].progress is None, view.steps["a"]

    run(main)


def test_review_progress_reported_after_the_attempt_settled_is_dropped() -> None:
    async def main() -> None:
        script = Script()
        core = core_of(script)
        await core.ready()
        eid = await core.submit(SubmitRequest(sop("late", [step("a")], retry=2)))
        await quiesce(core)
        first = script.live()[0]
        first.fail(retryable=True)
        first.report.progress(0.9, "late")  # arrives after its attempt failed
        await quiesce(core)
        second = script.live()[0]
        assert second.spec.attempt == 2
        first.report.progress(0.1, "from attempt 1")  # while attempt 2 runs
        await quiesce(core)
        assert EventKind.STEP_PROGRESS.value not in kinds(core, eid)
        second.succeed()
        await quiesce(core)
        second.report.progress(1.0, "after the end")
        await quiesce(core)
        names = kinds(core, eid)
        core.journal.close()
        assert EventKind.STEP_PROGRESS.value not in names and names[-1] == EventKind.FINISHED.value

    run(main)



# -- an attempt that fails before its runner gets it ------------------------------------------------


class GatedPolicy:
    """The local failure policy, answering only once ``gate`` is set (a FailureHandler actor that is slow)."""

    def __init__(self) -> None:
        from runtime.coordinator import LocalFailurePolicy

        self.gate = asyncio.Event()
        self.local = LocalFailurePolicy()

    async def judge(self, exe: Any, step: Any, attempt: int, error: ErrorInfo) -> Any:
        await self.gate.wait()
        return await self.local.judge(exe, step, attempt, error)


def test_review_force_cancel_while_a_render_error_is_judged_ends_the_step_once_without_error() -> None:
    async def main() -> None:
        script = Script()
        policy = GatedPolicy()
        core = CoordinatorCore(EngineConfig(state="memory://"), task_runner=script, capacity=lambda: 4,
                               policy=policy, service_name="sopflow-tests")
        await core.ready()
        definition = sop("render", [step("a"), step("b", "a", **{"with": {"v": "${{ steps.a.output.nope }}"}})])
        eid = await core.submit(SubmitRequest(definition))
        await quiesce(core)
        script.of(eid, "a")[0].succeed("a plain string")  # b's argument cannot be rendered from it
        await core.journal.durable()
        pending = list(core.machine._tasks)
        assert pending, "b's failure should be waiting for the policy"
        await core.cancel(eid, force=True)
        policy.gate.set()
        results = await asyncio.gather(*pending, *core.machine._tasks, return_exceptions=True)
        await quiesce(core)
        names = [(e.kind.value, e.step) for e in core.event_log.read(eid)]
        core.journal.close()
        errors = [r for r in results if isinstance(r, BaseException)]
        assert errors == [], errors
        assert sum(1 for k, s in names if s == "b" and k in ("step_failed", "step_cancelled")) == 1, names

    run(main)


# -- operator calls that come before recovery -------------------------------------------------------


def test_review_a_cancel_that_arrives_before_recovery_is_not_lost() -> None:
    async def main() -> None:
        log = MemoryEventLog()
        first = Script()
        core = core_of(first, event_log=log)
        await core.ready()
        eid = await core.submit(SubmitRequest(sop("early", [step("a")])))
        await quiesce(core)
        await stopped(core)

        second = Script()
        again = core_of(second, event_log=log)
        view = await again.cancel(eid, force=True)  # the first call to the restarted coordinator
        await again.ready()
        await quiesce(again)
        status = again.state_of(eid).status
        again.journal.close()
        assert view.status in (ExecutionStatus.CANCELLING, ExecutionStatus.CANCELLED), view.status
        assert status == ExecutionStatus.CANCELLED, status

    run(main)


# -- decisions while paused -------------------------------------------------------------------------


def test_review_a_rerun_decided_while_paused_runs_as_the_next_attempt_after_resume() -> None:
    async def main() -> None:
        log = MemoryEventLog()
        first = Script()
        core = core_of(first, capacity=1, event_log=log)
        await core.ready()
        eid = await core.submit(SubmitRequest(sop("decide", [step("a", idempotent=False)])))
        await quiesce(core)
        await stopped(core)  # attempt 1 of a was running: its outcome is unknown

        second = Script()
        again = core_of(second, capacity=1, event_log=log)
        await again.ready()
        assert again.state_of(eid).steps["a"].status == StepStatus.NEEDS_DECISION
        await again.pause(eid)
        await again.decide(eid, "a", "rerun")  # held: the execution is paused
        other = await again.submit(SubmitRequest(sop("other", [step("f")])))  # takes the only slot
        await quiesce(again)
        await again.resume(eid)
        await quiesce(again)
        second.of(other, "f")[0].succeed()
        await quiesce(again)
        started = [(a.spec.step.id, a.spec.attempt) for a in second.of(eid, "a")]
        for attempt in second.live():
            attempt.succeed()
        await quiesce(again)
        again.journal.close()
        assert started == [("a", 2)], started

    run(main)


# -- a timeout racing a result ----------------------------------------------------------------------


class Deaf(Script):
    """A runner whose attempts ignore cancels (a Ray task that finishes while ray.cancel is on its way)."""

    def start(self, spec: Any, report: Any) -> Attempt:
        attempt = super().start(spec, report)
        attempt.cancel = attempt.cancels.append  # type: ignore[method-assign]
        return attempt


def test_review_a_result_that_arrives_after_the_timeout_changes_nothing_and_the_slot_is_given_back_once() -> None:
    async def main() -> None:
        script = Deaf()
        core = core_of(script, capacity=2)
        await core.ready()
        eid = await core.submit(SubmitRequest(sop("slow", [step("a", timeout_s=0.05), step("b")])))
        await until(lambda: core.state_of(eid).steps["a"].status.terminal)
        await quiesce(core)
        late = script.of(eid, "a")[0]
        assert late.cancels == [True]
        late.succeed("too late")
        await quiesce(core)
        script.of(eid, "b")[0].succeed()
        await quiesce(core)
        state = core.state_of(eid)
        assert state.steps["a"].status == StepStatus.FAILED and "timeout" in (state.steps["a"].error or "")
        assert state.status == ExecutionStatus.PARTIALLY_COMPLETED
        assert core.machine.admission.used == 0 and core.machine.admission.queued == 0
        names = kinds(core, eid)
        assert names.count("step_succeeded") == 1 and names[-1] == EventKind.FINISHED.value, names
        core.journal.close()

    run(main)


# -- hooks ------------------------------------------------------------------------------------------


class SlowStart:
    """A hook (an audit trail) whose before_attempt takes a while (an HTTP call, say)."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.seen: list[tuple[str, str]] = []


def test_review_one_hook_sees_an_attempts_start_before_its_end_even_when_its_start_is_slow() -> None:
    from runtime.hooks import Hook

    async def main() -> None:
        audit = SlowStart()

        class Audit(Hook):
            async def before_attempt(self, payload: dict[str, Any]) -> None:
                await audit.gate.wait()
                audit.seen.append(("before", payload["step"]))

            def after_attempt(self, payload: dict[str, Any]) -> None:
                audit.seen.append(("after", payload["step"]))

        script = Script()
        core = core_of(script)
        core.hooks.add("audit", Audit())
        await core.ready()
        await core.submit(SubmitRequest(sop("audited", [step("a")])))
        await until(lambda: script.live())
        script.live()[0].succeed()
        await core.journal.durable()
        await asyncio.gather(*core.machine._tasks)
        await core.journal.durable()
        audit.gate.set()
        await core.hooks.drain()
        core.journal.close()
        assert audit.seen == [("before", "a"), ("after", "a")], audit.seen

    run(main)


def test_review_a_failing_hook_neither_stops_the_execution_nor_the_hooks_after_it() -> None:
    from runtime.hooks import Hook

    async def main() -> None:
        seen: list[str] = []

        class Broken(Hook):
            def before_attempt(self, payload: dict[str, Any]) -> None:
                raise RuntimeError("broken hook")

            def on_end(self, payload: dict[str, Any]) -> None:
                raise RuntimeError("broken hook")

        class Noting(Hook):
            def before_attempt(self, payload: dict[str, Any]) -> None:
                seen.append("before")

            def on_end(self, payload: dict[str, Any]) -> None:
                seen.append(f"end {payload['status']}")

        script = Script()
        core = core_of(script)
        core.hooks.add("broken", Broken())
        core.hooks.add("noting", Noting())
        await core.ready()
        eid = await core.submit(SubmitRequest(sop("hooked", [step("a")])))
        await quiesce(core)
        script.live()[0].succeed()
        await quiesce(core)
        assert core.state_of(eid).status == ExecutionStatus.COMPLETED
        assert seen == ["before", "end completed"]  # before: broken first, then noting; end: reverse
        assert core.hooks.failures == {"broken": 2}
        core.journal.close()

    run(main)


# -- durability before a non-idempotent start -------------------------------------------------------


class Witness(Script):
    """Notes, when each attempt is handed over, whether its step_started is in the committed log."""

    def __init__(self, needs_slot: bool) -> None:
        super().__init__(needs_slot)
        self.log: Any = None
        self.durable_at_start: list[bool] = []

    def start(self, spec: Any, report: Any) -> Attempt:
        self.durable_at_start.append(any(
            e.kind == EventKind.STEP_STARTED and e.step == spec.step.id and e.attempt == spec.attempt
            for e in self.log.read(spec.execution.id)))
        return super().start(spec, report)


@pytest.mark.parametrize("needs_slot", [
    True,
    pytest.param(False),
])
def test_review_a_non_idempotent_attempt_is_handed_over_only_once_its_step_started_is_durable(needs_slot: bool) -> None:
    async def main() -> None:
        script = Witness(needs_slot)
        core = core_of(script)
        script.log = core.event_log
        await core.ready()
        await core.submit(SubmitRequest(sop("once", [step("pay", idempotent=False)])))
        await quiesce(core)
        for attempt in script.live():
            attempt.succeed()
        await quiesce(core)
        core.journal.close()
        assert script.durable_at_start == [True]

    run(main)
