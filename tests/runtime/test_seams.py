"""Contract tests of the state machine's seams, each run against every implementation.

One suite per seam (:mod:`runtime.seams`): StepRunner, Admission, FailurePolicy,
MonitorFeed and ExecutionHost. An implementation that passes its suite can be
plugged into the :class:`runtime.machine.StateMachine` without it noticing.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.config import EngineConfig
from runtime import events as ev
from runtime.events import Event, EventKind
from runtime.execution import Execution
from runtime.failure import ErrorInfo, decide
from runtime.handlers import StepTask
from runtime.request import SubmitRequest
from runtime.seams import AttemptSpec
from sop import Sop
from tests.sop_builders import H

RUNNER_KINDS = ["in_process", pytest.param("ray_task", marks=pytest.mark.ray), "sub_sop", "recorded",
                "recorded_fresh"]


async def until(predicate: Callable[[], Any], timeout_s: float = 60.0) -> Any:
    """Wait on the loop for ``predicate`` to hold (bounded polling of a condition)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not (value := predicate()):
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)  # polling interval of a bounded wait
    return value



def _no_decision(*args: object) -> None:
    raise AssertionError(f"no recorded operator decision here, yet one was replayed: {args}")

def sop_of(name: str, steps: list[dict[str, Any]], outputs: dict[str, str] | None = None) -> Sop:
    return Sop.model_validate({"sop": name, "defaults": {"timeout_s": 60, "resources": {"cpu": 0.25},
                                                          "retry": {"max_attempts": 1}},
                               "steps": steps, **({"outputs": outputs} if outputs else {})})


# -- StepRunner -----------------------------------------------------------------------------------


class Recorder:
    """An :class:`runtime.seams.AttemptReport` that notes every call, where and when it came."""

    def __init__(self) -> None:
        self.settles: list[tuple[Any, ErrorInfo | None]] = []
        self.children: list[str] = []
        self.starting = False
        """True while the runner's ``start`` runs: a settle then would be synchronous."""
        self.during_start: list[bool] = []
        self.threads: list[int] = []

    def settle(self, outcome: Any, error: ErrorInfo | None = None) -> None:
        self.settles.append((outcome, error))
        self.during_start.append(self.starting)
        self.threads.append(threading.get_ident())

    def child_started(self, child_id: str) -> None:
        self.children.append(child_id)

    def error(self, index: int = 0) -> ErrorInfo | None:
        """The error of a settle: the runner's own, or the failed outcome's."""
        outcome, error = self.settles[index]
        return error if error is not None else (outcome.error if outcome is not None else None)


@dataclass
class RunnerSubject:
    """One StepRunner implementation, set up to run the three attempts of the contract."""

    runner: Any
    exe: Execution
    ok_output: Any
    fail_type: str
    running: Callable[[str], bool]
    """Whether the blocking attempt has started running (its handler noted its run)."""
    quiet: Callable[[], bool]
    """Whether everything the runner started has ended (so no late settle can come any more)."""
    cleanup: list[Callable[[], Any]] = field(default_factory=list)
    handles: list[Any] = field(default_factory=list)
    """What ``start`` returned, in order."""

    def spec(self, step_id: str, attempt: int = 1) -> AttemptSpec:
        step = self.exe.steps_by_id[step_id]
        task = None if step.handler.startswith("sop:") else StepTask(
            self.exe.id, self.exe.sop.sop, step.id, attempt, step.handler, None, dict(step.with_), None, {},
            self.exe.sop.effective_timeout(step), {})
        return AttemptSpec(self.exe, step, attempt, task, dict(step.with_))

    def start(self, step_id: str, report: Recorder) -> Any:
        report.starting = True
        try:
            handle = self.runner.start(self.spec(step_id), report)
        finally:
            report.starting = False
        self.handles.append(handle)
        return handle


def _handler_steps(runs: Path, gate: Path) -> list[dict[str, Any]]:
    return [
        {"id": "ok", "uses": f"{H}:record_run", "with": {"runs_dir": str(runs), "name": "ok"}},
        {"id": "bad", "uses": f"{H}:record_run", "with": {"runs_dir": str(runs), "name": "bad", "ok": False}},
        {"id": "slow", "uses": f"{H}:record_run",
         "with": {"runs_dir": str(runs), "name": "slow", "gate": str(gate)}},
    ]


async def runner_subject(kind: str, tmp_path: Path) -> RunnerSubject:
    from runtime.replay import Recording, RecordedRunner
    from runtime.runners import InProcessRunner

    runs, gate = tmp_path / "runs", tmp_path / "gate"
    started = lambda name: (runs / f"{name}.runs").exists()  # noqa: E731
    if kind in ("in_process", "recorded_fresh", "ray_task"):
        exe = Execution("seams-exe", SubmitRequest(sop_of("seams", _handler_steps(runs, gate))))
        if kind == "ray_task":
            import ray

            from actors._ray_runner import RayTaskRunner

            handles: list[Any] = []

            def tasks_ended() -> bool:
                refs = [h.ref for h in handles]
                return not refs or len(ray.wait(refs, num_returns=len(refs), timeout=0)[0]) == len(refs)

            subject = RunnerSubject(RayTaskRunner(), exe, "ok", "PermanentError", started, tasks_ended)
            subject.handles = handles
            return subject
        fresh = InProcessRunner()
        runner = fresh if kind == "in_process" else RecordedRunner(Recording([], {"ok", "bad", "slow"}), fresh, _no_decision)
        return RunnerSubject(runner, exe, "ok", "PermanentError", started,
                             lambda: fresh.runs == sum(started(n) for n in ("ok", "bad", "slow")))
    if kind == "recorded":  # replayed attempts: every outcome comes from the recording
        exe = Execution("seams-exe", SubmitRequest(sop_of("seams", _handler_steps(runs, gate))))
        events = [Event(exe.id, 1, EventKind.STEP_SUCCEEDED, 1.0, "ok", 1, {"output": "ok"}),
                  Event(exe.id, 2, EventKind.STEP_FAILED, 2.0, "bad", 1,
                        {"error": "PermanentError: told to fail", "error_type": "PermanentError"}),
                  Event(exe.id, 3, EventKind.STEP_SUCCEEDED, 3.0, "slow", 1, {"output": "slow"})]
        return RunnerSubject(RecordedRunner(Recording(events, set()), InProcessRunner(), _no_decision), exe, "ok",
                             "PermanentError", lambda name: True, lambda: True)
    assert kind == "sub_sop"
    from runtime.coordinator import CoordinatorCore

    children = {"ok": sop_of("child-ok", [_handler_steps(runs, gate)[0]], {"value": "${{ steps.ok.output }}"}),
                "bad": sop_of("child-bad", [_handler_steps(runs, gate)[1]]),
                "slow": sop_of("child-slow", [_handler_steps(runs, gate)[2]])}
    parent = sop_of("seams-parent", [{"id": sid, "uses": f"sop:{sid}.yaml"} for sid in children])
    request = SubmitRequest(parent, subsops={f"{sid}.yaml": SubmitRequest(child, source=f"{sid}.yaml")
                                             for sid, child in children.items()})
    threads = InProcessRunner()
    core = CoordinatorCore(EngineConfig(state="memory://"), task_runner=threads, service_name="sopflow-tests")
    await core.ready()
    exe = Execution("seams-parent-exe", request)

    def quiet() -> bool:
        return all(e.state.status.terminal for e in core.executions.values()) and \
            threads.runs == sum(started(n) for n in children)

    subject = RunnerSubject(core.machine.runners["sop"], exe, {"value": "ok"}, "SubSopFailed", started, quiet)
    subject.cleanup.append(core.journal.close)
    return subject


@pytest.fixture(params=RUNNER_KINDS)
def runner_kind(request: pytest.FixtureRequest) -> str:
    if request.param == "ray_task":
        request.getfixturevalue("ray_cluster")
    return request.param


def run_contract(kind: str, tmp_path: Path, scenario: Callable[[RunnerSubject], Any]) -> None:
    async def main() -> None:
        subject = await runner_subject(kind, tmp_path)
        try:
            await scenario(subject)
        finally:
            (tmp_path / "gate").write_text("open")  # no thread or task stays blocked on it
            await until(subject.quiet)
            for done in subject.cleanup:
                done()

    asyncio.run(main())


def test_runner_an_attempt_that_succeeds_settles_exactly_once_with_its_output(runner_kind, tmp_path) -> None:
    async def scenario(subject: RunnerSubject) -> None:
        report = Recorder()
        subject.start("ok", report)
        await until(lambda: report.settles)
        await until(subject.quiet)
        await asyncio.sleep(0)  # a late duplicate would be scheduled by now
        [(outcome, error)] = report.settles
        assert error is None and outcome is not None and outcome.ok, report.settles
        assert outcome.output == subject.ok_output
        assert report.during_start == [False]
        assert report.threads == [threading.get_ident()]  # on the machine's loop

    run_contract(runner_kind, tmp_path, scenario)


def test_runner_an_attempt_that_fails_settles_exactly_once_with_the_error(runner_kind, tmp_path) -> None:
    async def scenario(subject: RunnerSubject) -> None:
        report = Recorder()
        subject.start("bad", report)
        await until(lambda: report.settles)
        await until(subject.quiet)
        await asyncio.sleep(0)
        assert len(report.settles) == 1, report.settles
        outcome, _ = report.settles[0]
        assert outcome is None or not outcome.ok
        error = report.error()
        assert error is not None and error.type == subject.fail_type, error
        assert report.during_start == [False]
        assert report.threads == [threading.get_ident()]

    run_contract(runner_kind, tmp_path, scenario)


def test_runner_a_force_cancelled_running_attempt_settles_exactly_once(runner_kind, tmp_path) -> None:
    async def scenario(subject: RunnerSubject) -> None:
        report = Recorder()
        handle = subject.start("slow", report)
        if subject.runner.__class__.__name__ == "SubSopRunner":
            await until(lambda: report.children)  # the child execution exists: cancel reaches it
        await until(lambda: subject.running("slow"))
        handle.cancel(True)
        await until(lambda: report.settles)
        (tmp_path / "gate").write_text("open")  # a thread that could not be killed may now end
        await until(subject.quiet)
        await asyncio.sleep(0)
        assert len(report.settles) == 1, report.settles
        assert report.during_start == [False]
        assert report.threads == [threading.get_ident()]

    run_contract(runner_kind, tmp_path, scenario)


def test_runner_never_settles_inside_start(runner_kind, tmp_path) -> None:
    """The machine keeps the handle ``start`` returns before it takes the outcome: never synchronous."""
    async def scenario(subject: RunnerSubject) -> None:
        reports = {sid: Recorder() for sid in ("ok", "bad")}
        for sid, report in reports.items():
            subject.start(sid, report)
            assert report.settles == [], f"{sid}: settled inside start()"
        await until(lambda: all(r.settles for r in reports.values()))
        assert all(r.during_start == [False] for r in reports.values())

    run_contract(runner_kind, tmp_path, scenario)


def test_sub_sop_runner_settles_with_the_error_when_its_child_cannot_be_submitted(tmp_path) -> None:
    """A child refused at submission (here: the state store is full, so nothing new is taken) is a
    failed attempt, not an attempt that never ends."""
    from runtime.coordinator import CoordinatorCore
    from runtime.runners import InProcessRunner
    from tests.runtime.test_store_stall import disk_full

    async def main() -> None:
        core = CoordinatorCore(EngineConfig(state=str(tmp_path / "full.db")), task_runner=InProcessRunner(),
                               service_name="sopflow-tests")
        await core.ready()
        child = sop_of("child", [{"id": "c", "uses": f"{H}:echo", "with": {"value": 1}}])
        parent = sop_of("parent", [{"id": "sub", "uses": "sop:child.yaml"}])
        exe = Execution("full-parent", SubmitRequest(parent, subsops={"child.yaml": SubmitRequest(child)}))
        core.adopt(exe)
        try:
            await core.journal.durable()
            core.event_log.checkpoint()
            disk_full(core.event_log, True)
            core.emit(exe, ev.Submitted(sop="parent", version="1", steps=["sub"],
                                        inputs={"pad": "x" * 200_000}))  # more than the file has room for
            await until(lambda: core.journal.committer.stalled is not None, 30)  # the store takes no writes
            subject = RunnerSubject(core.machine.runners["sop"], exe, None, "", lambda name: True, lambda: True)
            report = Recorder()
            subject.start("sub", report)
            await until(lambda: report.settles, 30)
            error = report.error()
            assert error is not None and error.type == "StateStoreError", report.settles
            assert "stalled" in error.message and report.children == []
        finally:
            disk_full(core.event_log, False)
            await core.close_store()

    asyncio.run(main())


# -- Admission ------------------------------------------------------------------------------------

ADMISSION_OPS = st.lists(st.one_of(
    st.tuples(st.just("acquire"), st.integers(-3, 3), st.booleans()),  # priority, gives its slot straight back
    st.tuples(st.just("release")),
    st.tuples(st.just("withdraw"), st.integers(0, 50)),
    st.tuples(st.just("grow"), st.integers(1, 3)),
), max_size=60)


class AdmissionModel:
    """Drives a :class:`LocalAdmission` and checks every grant against a reference queue."""

    def __init__(self, capacity: int) -> None:
        import runtime.admission as admission

        self.capacity = capacity
        self.adm = admission.LocalAdmission(lambda: self.capacity)
        self.queued: dict[int, tuple[int, int]] = {}  # caller -> (priority, arrival)
        self.grants: dict[int, Callable[[], None]] = {}
        self.granted: list[int] = []
        self.holding: list[int] = []
        self.withdrawn: set[int] = set()
        self.arrivals = 0

    def grant_for(self, caller: int, bounce: bool) -> Callable[[], None]:
        def grant() -> None:
            assert caller in self.queued, f"caller {caller} granted but not queued (or granted twice)"
            best = min(self.queued, key=lambda c: (-self.queued[c][0], self.queued[c][1]))
            assert caller == best, f"granted {caller} {self.queued[caller]} before {best} {self.queued[best]}"
            del self.queued[caller]
            self.granted.append(caller)
            assert self.adm.used <= self.capacity
            if bounce:
                self.adm.release()  # gives its slot straight back, from inside the grant
            else:
                self.holding.append(caller)
        return grant

    def acquire(self, priority: int, bounce: bool) -> None:
        caller = self.arrivals
        self.arrivals += 1
        grant = self.grant_for(caller, bounce)
        self.grants[caller] = grant
        # The queue is drained first (capacity may have grown); the caller joins it after that.
        if self.adm.acquire(priority, grant):
            assert not self.queued, f"caller {caller} took a slot while {sorted(self.queued)} waited"
            self.granted.append(caller)
            if bounce:
                self.adm.release()
            else:
                self.holding.append(caller)
        else:
            self.queued[caller] = (priority, caller)

    def release(self) -> None:
        if self.holding:
            self.holding.pop(0)
            self.adm.release()

    def check(self) -> None:
        assert 0 <= self.adm.used <= self.capacity
        assert self.adm.used == len(self.holding)
        assert self.adm.queued == len(self.queued)
        if self.queued:
            assert self.adm.used == self.capacity, "a caller waits while a slot is free"


@pytest.fixture
def refresh_capacity_always(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read the capacity on every call (the engine re-reads it once a minute), so growth shows at once."""
    import runtime.admission

    monkeypatch.setattr(runtime.admission, "CAPACITY_REFRESH_S", -1.0)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(1, 4), ADMISSION_OPS)
def test_property_admission_never_oversubscribes_and_grants_by_priority_then_arrival(
        refresh_capacity_always, capacity: int, ops: list[tuple]) -> None:
    """For any capacity and any acquires, releases, withdrawals and growth: used <= capacity, no caller
    waits while a slot is free, grants go highest priority first and FIFO within a priority, and every
    queued caller is granted exactly once after enough releases."""
    model = AdmissionModel(capacity)
    for op in ops:
        if op[0] == "acquire":
            model.acquire(op[1], op[2])
        elif op[0] == "release":
            model.release()
        elif op[0] == "withdraw":
            if model.queued:
                caller = sorted(model.queued)[op[1] % len(model.queued)]
                assert model.adm.withdraw(model.grants[caller]) is True
                del model.queued[caller]
                model.withdrawn.add(caller)
                assert model.adm.withdraw(model.grants[caller]) is False  # once out, it is not queued
        else:
            model.capacity += op[1]
            model.acquire(0, True)  # the next call sees the new capacity: the queue drains first
        model.check()
    while model.holding:  # release until everyone has had a slot
        model.release()
        model.check()
    assert not model.queued and model.adm.queued == 0 and model.adm.used == 0
    assert sorted(model.granted) == sorted(set(range(model.arrivals)) - model.withdrawn)


def test_admission_capacity_growth_drains_the_queue_in_priority_order(refresh_capacity_always) -> None:
    model = AdmissionModel(1)
    model.acquire(0, False)  # holds the only slot
    for priority in (1, 5, 5, 3):
        model.acquire(priority, False)
    assert model.granted == [0] and model.adm.queued == 4
    model.capacity = 4
    model.acquire(-1, False)  # any call sees the new capacity
    assert model.granted == [0, 2, 3, 4] and model.adm.queued == 2  # 5, 5 (FIFO), 3; then 1 and -1 wait
    model.check()


def test_admission_withdraw_of_a_caller_not_queued_is_false() -> None:
    from runtime.admission import LocalAdmission

    adm = LocalAdmission(lambda: 1)
    assert adm.withdraw(lambda: None) is False
    assert adm.acquire(0, lambda: None) is True
    assert adm.withdraw(lambda: None) is False


# -- FailurePolicy --------------------------------------------------------------------------------

POLICY_KINDS = ["local", "failure_handler", pytest.param("ray_failure_handler", marks=pytest.mark.ray),
                "recorded_not_replayed"]

ERRORS = st.builds(
    ErrorInfo,
    type=st.sampled_from(["RuntimeError", "ValueError", "ConnectionError", "MemoryError", "ExitCode",
                          "Timeout", "WorkerCrashed", "KeyError", "SystemExit"]),
    message=st.text(max_size=20),
    retryable=st.sampled_from([None, True, False]),
    exit_code=st.sampled_from([None, 0, 1, 2, 127, 137, -9]),
    origin=st.sampled_from(["handler", "timeout", "crash", "oom", "shell"]),
)
RETRIES = st.fixed_dictionaries({
    "max_attempts": st.integers(1, 6), "initial_delay_s": st.sampled_from([0.0, 0.05, 1.0, 2.5]),
    "backoff": st.sampled_from([1.0, 1.5, 2.0, 3.0]), "max_delay_s": st.sampled_from([0.0, 1.0, 60.0]),
    "memory_growth": st.sampled_from([1.0, 1.5, 2.0])})


@pytest.fixture(params=POLICY_KINDS)
def policy_kind(request: pytest.FixtureRequest) -> tuple[str, Any]:
    if request.param == "ray_failure_handler":
        import ray

        request.getfixturevalue("ray_cluster")
        from actors._ray_runner import RayFailurePolicy
        from runtime.failure_handler import FailureHandler

        actor = ray.remote(FailureHandler).options(num_cpus=0).remote()  # the real handler, private to the test
        yield request.param, RayFailurePolicy(actor)
        ray.kill(actor)
        return
    if request.param == "local":
        from runtime.coordinator import LocalFailurePolicy

        yield request.param, LocalFailurePolicy()
    elif request.param == "failure_handler":
        from runtime.failure_handler import FailureHandler

        yield request.param, FailureHandler()
    else:
        from runtime.replay import Recording, RecordedPolicy

        yield request.param, RecordedPolicy(Recording([], {"step"}))  # the step runs afresh: not replayed


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(error=ERRORS, attempt=st.integers(1, 7), retry=RETRIES, memory=st.sampled_from([None, 256, 1000]))
def test_property_every_failure_policy_decides_as_the_pure_rules(policy_kind, error: ErrorInfo, attempt: int,
                                                                  retry: dict, memory: int | None) -> None:
    """For any error, attempt, retry policy and memory: every FailurePolicy gives ``failure.decide``'s answer."""
    _, policy = policy_kind
    step = {"id": "step", "uses": f"{H}:echo", "retry": retry,
            **({"resources": {"memory_mb": memory}} if memory else {})}
    exe = Execution("policy-exe", SubmitRequest(sop_of("policy", [step])))
    sop_step = exe.steps_by_id["step"]
    expected = decide(error, attempt, exe.sop.effective_retry(sop_step), memory)
    got = asyncio.run(policy.judge(exe, sop_step, attempt, error))
    assert got == expected


# -- MonitorFeed ----------------------------------------------------------------------------------

FEED_KINDS = ["local", pytest.param("ray", marks=pytest.mark.ray)]


@pytest.fixture(params=FEED_KINDS)
def feed_kind(request: pytest.FixtureRequest) -> str:
    if request.param == "ray":
        request.getfixturevalue("ray_cluster")
    return request.param


async def feed_and_status(kind: str) -> tuple[Any, Callable[[str], Any], Callable[[], None]]:
    """The feed, an async ``status(execution_id)`` reading the monitor behind it, and a cleanup."""
    from runtime.monitor import ExecutionMonitor

    config = EngineConfig(state="memory://")
    if kind == "local":
        from runtime.local import _LocalFeed

        monitor = ExecutionMonitor(config)
        return _LocalFeed(monitor, asyncio.get_running_loop()), monitor.status, lambda: None
    import ray

    from actors._ray_runner import RayMonitorFeed

    actor = ray.remote(ExecutionMonitor).options(num_cpus=0).remote(config)

    async def status(execution_id: str) -> Any:
        return await actor.status.remote(execution_id)

    return RayMonitorFeed(actor), status, lambda: ray.kill(actor)


def _running_events(execution_id: str) -> list[Event]:
    return [Event(execution_id, 1, EventKind.SUBMITTED, 1.0,
                  data={"sop": "fed", "version": "1", "mode": "system_design", "steps": ["a"]}),
            Event(execution_id, 2, EventKind.STARTED, 2.0),
            Event(execution_id, 3, EventKind.STEP_STARTED, 3.0, "a", 1, {"inputs": "x"})]


def test_feed_a_batch_applied_shows_in_status(feed_kind) -> None:
    async def main() -> None:
        feed, status, cleanup = await feed_and_status(feed_kind)
        try:
            await feed.apply(_running_events("fed-1"))
            view = await status("fed-1")
            assert view.status.value == "running" and view.steps["a"].status.value == "running"
            await feed.apply([Event("fed-1", 4, EventKind.STEP_SUCCEEDED, 4.0, "a", 1, {"output": 1}),
                              Event("fed-1", 5, EventKind.FINISHED, 5.0, data={"status": "completed"})])
            assert (await status("fed-1")).status.value == "completed"
        finally:
            cleanup()

    asyncio.run(main())


def test_feed_set_stalled_from_another_thread_shows_stalled(feed_kind) -> None:
    async def main() -> None:
        feed, status, cleanup = await feed_and_status(feed_kind)
        try:
            await feed.apply(_running_events("fed-2"))
            writer = threading.Thread(target=feed.set_stalled, args=("disk full",))  # as the store's writer
            writer.start()
            writer.join(timeout=30)

            async def shown() -> str:
                return (await status("fed-2")).status.value

            deadline = asyncio.get_running_loop().time() + 30
            while await shown() != "stalled":
                assert asyncio.get_running_loop().time() < deadline, "never shown stalled"
                await asyncio.sleep(0.01)
            feed.set_stalled(None)
            while await shown() != "running":
                assert asyncio.get_running_loop().time() < deadline, "still shown stalled"
                await asyncio.sleep(0.01)
        finally:
            cleanup()

    asyncio.run(main())


# -- ExecutionHost ----------------------------------------------------------------------------------


async def host_with_execution(tmp_path: Path) -> tuple[Any, Execution]:
    from runtime.coordinator import CoordinatorCore
    from runtime.runners import InProcessRunner

    core = CoordinatorCore(EngineConfig(state=str(tmp_path / "host.db")), task_runner=InProcessRunner(),
                           service_name="sopflow-tests")
    await core.ready()
    exe = Execution("host-exe", SubmitRequest(sop_of("host", [{"id": "a", "uses": f"{H}:echo"}])))
    core.adopt(exe)
    return core, exe


def test_host_emit_folds_the_event_before_it_returns(tmp_path) -> None:
    async def main() -> None:
        core, exe = await host_with_execution(tmp_path)
        try:
            event = core.emit(exe, ev.Submitted(sop="host", version="1", steps=["a"]))
            assert event.seq == 1 and exe.state.last_seq == 1 and exe.state.status.value == "queued"
            core.emit(exe, ev.Started())
            assert exe.state.status.value == "running"
            core.emit(exe, ev.StepStarted(inputs="x"), "a", 1)
            assert exe.state.steps["a"].status.value == "running" and exe.state.last_seq == 3
        finally:
            await core.close_store()

    asyncio.run(main())


def test_host_on_durable_fires_after_the_commit_in_order(tmp_path) -> None:
    from runtime.eventlog import SqliteEventLog

    async def main() -> None:
        core, exe = await host_with_execution(tmp_path)
        fired: list[tuple[int, int]] = []
        reader = SqliteEventLog(tmp_path / "host.db", readonly=True)
        try:
            def committed(label: int) -> Callable[[], None]:
                def callback() -> None:  # another connection sees the events: they are committed
                    fired.append((label, len(reader.read(exe.id))))
                return callback

            core.emit(exe, ev.Submitted(sop="host", version="1", steps=["a"]))
            core.on_durable(committed(1))
            core.on_durable(committed(2))
            core.emit(exe, ev.Started())
            core.on_durable(committed(3))
            await until(lambda: len(fired) == 3, 30)
            assert [label for label, _ in fired] == [1, 2, 3]
            assert all(seen >= want for (_, seen), want in zip(fired, (1, 1, 2)))
        finally:
            reader.close()
            await core.close_store()

    asyncio.run(main())


def test_host_call_later_fires_with_its_arguments_and_can_be_cancelled(tmp_path) -> None:
    async def main() -> None:
        core, _ = await host_with_execution(tmp_path)
        try:
            fired: list[tuple[str, int]] = []
            core.call_later(0.01, lambda *args: fired.append(args), "go", 1)
            cancelled = core.call_later(0.01, lambda *args: fired.append(args), "never", 2)
            cancelled.cancel()
            await until(lambda: fired, 10)
            core.call_later(0.0, lambda *args: fired.append(args), "end", 3)
            await until(lambda: len(fired) == 2, 10)
            assert fired == [("go", 1), ("end", 3)]
        finally:
            await core.close_store()

    asyncio.run(main())


# -- every implementation has the seam's methods -------------------------------------------------------


def _members(protocol: type) -> set[str]:
    """The public names a Protocol declares (methods, properties and annotated attributes)."""
    names = {n for n in vars(protocol) if not n.startswith("_")}
    return names | {n for n in getattr(protocol, "__annotations__", {}) if not n.startswith("_")}


def _implementations(seam: str) -> list[Any]:
    from actors._ray_runner import RayFailurePolicy, RayMonitorFeed, RayTaskRunner
    from runtime.admission import LocalAdmission
    from runtime.coordinator import CoordinatorCore, LocalFailurePolicy
    from runtime.failure_handler import FailureHandler
    from runtime.local import _LocalFeed
    from runtime.replay import RecordedPolicy, RecordedRunner
    from runtime.runners import InProcessRunner, SubSopRunner

    return {"StepRunner": [InProcessRunner, RayTaskRunner, SubSopRunner, RecordedRunner],
            "Admission": [LocalAdmission],
            "FailurePolicy": [LocalFailurePolicy, FailureHandler, RayFailurePolicy, RecordedPolicy],
            "MonitorFeed": [_LocalFeed, RayMonitorFeed],
            "ExecutionHost": [CoordinatorCore]}[seam]


@pytest.mark.parametrize("seam", ["StepRunner", "Admission", "MonitorFeed", "ExecutionHost"])
def test_every_implementation_has_every_method_its_seam_declares(seam: str) -> None:
    import runtime.journal
    import runtime.seams

    protocol = getattr(runtime.seams, seam, None) or getattr(runtime.journal, seam)
    # Attributes set in __init__ (needs_slot, config, artifacts) are not on the class: skip them.
    wanted = {n for n in _members(protocol) if callable(getattr(protocol, n, None))
              or isinstance(getattr(protocol, n, None), property)}
    for cls in _implementations(seam):
        missing = sorted(n for n in wanted if not hasattr(cls, n))
        assert not missing, f"{cls.__name__} lacks {missing} of {seam}"


def test_every_failure_policy_has_the_method_the_seam_declares() -> None:
    import runtime.seams

    wanted = {n for n in _members(runtime.seams.FailurePolicy) if callable(getattr(runtime.seams.FailurePolicy, n))}
    for cls in _implementations("FailurePolicy"):
        missing = sorted(n for n in wanted if not hasattr(cls, n))
        assert not missing, f"{cls.__name__} lacks {missing} of FailurePolicy"
