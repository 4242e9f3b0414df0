"""Learned estimates (runtime.estimates, runtime.forecast), pure: property 32 (learned_allocation),
convergence on a stationary workload, edge cases (no history, one sample, outliers), persistence,
old events without measurements, and the queue position of the local admission."""

from __future__ import annotations

import asyncio
import math
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime import estimates as est
from runtime import events as ev
from runtime.admission import LocalAdmission
from runtime._log_types import ExecutionRecord
from runtime.eventlog import MemoryEventLog
from runtime.events import Event, new_event
from runtime.handlers import StepOutcome
from runtime.seams import Claim
from sop import Sop

EXE = "exe-000000000001-00000001"


def _succeeded(step: str, duration: float, cpu: float | None = None, mb: float | None = None,
               seq: int = 2) -> Event:
    return new_event(EXE, seq, ev.StepSucceeded(output=None, duration_s=duration, cpu_s=cpu, peak_mb=mb), step, 1)


def _resources(cpu: float = 1.0, memory_mb: int | None = None):
    from sop.model import Resources

    return Resources(cpu=cpu, memory_mb=memory_mb, learned=True)


samples = st.lists(st.tuples(st.floats(0.0, 1e4), st.one_of(st.none(), st.floats(0.0, 1e5)),
                             st.one_of(st.none(), st.floats(0.0, 1e5))), max_size=60)


@settings(max_examples=400, deadline=None)
@given(history=samples, cpu=st.sampled_from([0.0, 0.25, 1.0, 4.0]),
       memory=st.one_of(st.none(), st.integers(1, 1 << 16)))
def test_learned_allocation(history: list[tuple[float, float | None, float | None]], cpu: float,
                            memory: int | None) -> None:
    """Property 32: for any history, what attempts used shapes later allocations, within bounds: nothing
    is learned before MIN_SAMPLES successes; after, CPU lies in [MIN_CPU, declared] and covers the p95
    of cores used up to the declaration, memory never exceeds a declared reservation and covers the
    p95 peak up to it, GPUs and capabilities are never changed."""
    estimates = est.Estimates()
    for duration, cpu_s, mb in history:
        estimates.feed("s", _succeeded("a", duration, cpu_s, mb))
    declared = _resources(cpu, memory)
    shape = estimates.learned("s", "a", declared)
    if len(history) < est.MIN_SAMPLES:
        assert shape is None
        return
    assert shape is not None
    assert shape.gpu == declared.gpu and shape.capabilities == declared.capabilities
    cores = [c / max(d, 0.01) for d, c, _ in history if c is not None]
    peaks = [m for _, _, m in history if m is not None]
    if cpu == 0 or not cores:
        assert shape.cpu == cpu  # nothing measured, or a step declaring none: the declaration stands
    else:
        assert est.MIN_CPU - 1e-9 <= shape.cpu <= cpu
        assert shape.cpu >= min(cpu, est.percentile(cores, 95)) - 1e-9
    if not peaks:
        assert shape.memory_mb == (memory or 0)
    else:
        p95 = est.percentile(peaks, 95)
        assert shape.memory_mb >= est.MIN_MEMORY_MB or (memory is not None and shape.memory_mb == memory)
        assert shape.memory_mb >= min(memory or math.inf, p95)
        if memory is not None:
            assert shape.memory_mb <= memory


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), median=st.floats(0.05, 600.0), sigma=st.floats(0.05, 0.5),
       noise=st.lists(st.floats(0.0, 1e4), max_size=40))
def test_learned_allocation_converges_on_a_stationary_workload(seed: int, median: float, sigma: float,
                                                              noise: list[float]) -> None:
    """Property 32: whatever came before (``noise``), a window's worth of runs from one stationary
    distribution (log-normal, known median) gives a p50 within 20 % of the true median and a p95
    close to its true 95th percentile; the trend of a stationary workload is small."""
    rng = random.Random(seed)
    estimates = est.Estimates()
    for d in noise:
        estimates.feed("s", _succeeded("a", d))
    for _ in range(est.WINDOW):
        estimates.feed("s", _succeeded("a", rng.lognormvariate(math.log(median), sigma)))
    found = estimates.step("s", "a")
    assert found is not None and found.samples == est.WINDOW
    assert abs(found.p50_s / median - 1) < 0.2
    true_p95 = median * math.exp(1.645 * sigma)
    assert abs(found.p95_s / true_p95 - 1) < 0.35
    assert found.trend is not None and abs(found.trend) < 0.6


def test_no_history_one_sample_and_outliers() -> None:
    estimates = est.Estimates()
    sop = Sop.model_validate({"sop": "s", "steps": [{"id": "a", "uses": "x"}, {"id": "b", "uses": "x",
                                                                               "depends_on": ["a"]}]})
    assert estimates.step("s", "a") is None and estimates.expected_duration(sop) is None
    assert estimates.described("s", "a") == {"samples": 0, "failures": 0}
    estimates.feed("s", _succeeded("a", 2.0, cpu=1.0, mb=100.0))
    one = estimates.step("s", "a")
    assert (one.samples, one.p50_s, one.p95_s, one.trend) == (1, 2.0, 2.0, None)
    assert one.suggestion() == {"cpu": 0.65, "memory_mb": 128, "timeout_s": 4.0}
    assert estimates.learned("s", "a", _resources()) is None  # one sample: not enough to reserve by
    assert estimates.expected_duration(sop) is None  # b has no history and no declaration
    # One outlier among many: the p50 ignores it, the timeout still covers the longest success.
    for d in [1.0] * 30 + [100.0]:
        estimates.feed("s", _succeeded("b", d))
    b = estimates.step("s", "b")
    assert b.p50_s == 1.0 and b.p95_s == 1.0 and b.suggestion()["timeout_s"] == 120.0
    assert estimates.expected_duration(sop) == pytest.approx(3.0)  # critical path a -> b of p50s
    # Nonsense measurements (negative, NaN, booleans) are ignored, not learned.
    for bad in (-1.0, math.nan, math.inf):
        estimates.feed("s", _succeeded("c", bad))
    estimates.feed("s", _succeeded("c", 1.0, cpu=True, mb=-5.0))
    c = estimates.step("s", "c")
    assert c.samples == 1 and c.cores_p95 is None and c.memory_p95_mb is None


def test_a_step_never_run_in_completed_executions_counts_zero_and_failures_are_counted() -> None:
    estimates = est.Estimates()
    sop = Sop.model_validate({"sop": "s", "steps": [{"id": "a", "uses": "x"},
                                                    {"id": "maybe", "uses": "x", "when": "false"}]})
    estimates.feed("s", _succeeded("a", 4.0))
    assert estimates.expected_duration(sop) is None  # 'maybe' unknown until an execution completed
    estimates.feed("s", new_event(EXE, 3, ev.Finished(status="completed")))
    assert estimates.expected_duration(sop) == 4.0
    estimates.feed("s", new_event(EXE, 4, ev.StepFailed(error="x"), "a", 1))
    estimates.feed("s", new_event(EXE, 5, ev.StepFailed(error="never ran"), "a", 0))  # attempt 0: no run
    assert estimates.step("s", "a").failures == 1


def test_trend_says_when_recent_runs_are_slower() -> None:
    assert est.trend([1.0] * 5) is None
    assert est.trend([1.0] * 12 + [2.0] * 4) == pytest.approx(1.0)
    assert est.trend([2.0] * 12 + [1.0] * 4) == pytest.approx(-0.5)


def test_histories_are_bounded_and_survive_the_state_store() -> None:
    estimates = est.Estimates(window=10)
    for i in range(25):
        estimates.feed("s", _succeeded("a", float(i), cpu=0.5, mb=10.0 + i))
    assert estimates.step("s", "a").samples == 10 and estimates.step("s", "a").p50_s == 19.0
    log = MemoryEventLog()
    assert est.save(estimates, log, estimates.dirty) == 1
    again = est.load(log, window=10)
    assert again is not None and again.step("s", "a") == estimates.step("s", "a")
    log.put_setting(est.SETTING_PREFIX + "broken", b"{not json")
    assert est.load(log, window=10).step("s", "a") is not None  # a damaged entry does not lose the rest
    assert est.load(MemoryEventLog()) is None


def test_events_written_before_measurements_existed_still_load_and_feed() -> None:
    """Old events have no cpu_s / peak_mb (and failed ones no duration_s): they load, and only count
    towards durations."""
    old = Event.from_dict({"execution_id": EXE, "seq": 2, "kind": "step_succeeded", "ts": 1.0, "step": "a",
                           "attempt": 1, "data": {"output": 1, "duration_s": 0.5}, "schema": 1})
    payload = old.payload
    assert payload.cpu_s is None and payload.peak_mb is None and payload.duration_s == 0.5
    failed = Event.from_dict({"execution_id": EXE, "seq": 3, "kind": "step_failed", "ts": 1.0, "step": "a",
                              "attempt": 1, "data": {"error": "x"}})
    assert failed.payload.duration_s is None and failed.payload.cpu_s is None
    estimates = est.Estimates()
    estimates.feed("s", old)
    found = estimates.step("s", "a")
    assert found.samples == 1 and found.cores_p95 is None and found.suggestion()["cpu"] is None
    # and a new writer's fields are simply omitted when unmeasured
    assert "cpu_s" not in ev.StepSucceeded(duration_s=1.0).to_data()


def test_rebuilt_from_the_log_when_the_store_keeps_none() -> None:
    log = MemoryEventLog()
    events = [new_event(EXE, 1, ev.Submitted(sop="s", steps=["a"])), _succeeded("a", 3.0, 1.5, 50.0),
              new_event(EXE, 3, ev.Finished(status="completed"))]
    log.append(events, [ExecutionRecord(EXE, "s", "completed", 1.0, 3, 2.0, True)])
    rebuilt = est.rebuild(log)
    assert rebuilt.step("s", "a").p50_s == 3.0 and rebuilt.completed("s") == 1


def test_queue_position_follows_the_order_grants_go_in() -> None:
    """LocalAdmission.position: 1-based place of an execution's first queued claim; None when none."""
    granted: list[str] = []
    admission = LocalAdmission(lambda: 1)
    assert admission.acquire(Claim(execution="run"), lambda: granted.append("run"))
    for i, (cls, prio) in enumerate([("normal", 0), ("high", 0), ("normal", 5), ("low", 0)]):
        eid = f"e{i}"
        assert not admission.acquire(Claim(priority=prio, priority_class=cls, execution=eid),
                                     lambda e=eid: granted.append(e))
    order = [f"e{i}" for i in range(4)]
    places = {e: admission.position(e) for e in order}
    assert sorted(places.values()) == [1, 2, 3, 4] and admission.position("run") is None
    expected = sorted(order, key=places.__getitem__)
    for _ in order:
        admission.release()
    assert granted == expected  # the positions said exactly the order the grants went in
    assert all(admission.position(e) is None for e in order)


def test_the_forecast_travels_in_the_wire_the_cli_line_and_the_notebook_view() -> None:
    """A view's eta / expected_duration_s / queue_position survive the API's JSON, and show in
    ``sopflow status`` and the notebook header; an older server's JSON without them still loads."""
    from runtime._cli_exec import forecast_line
    from runtime._wire import view_from_dict, view_to_dict
    from runtime.display import execution_html
    from runtime.status import ExecutionStatus, ExecutionView

    view = ExecutionView(id="exe-000000000001-00000001", sop="s", version="1", mode="system_design",
                         status=ExecutionStatus.RUNNING, progress=0.5, submitted_at=1_000.0,
                         expected_duration_s=60.0, eta=1_045.0, queue_position=3)
    again = view_from_dict(view_to_dict(view))
    assert (again.expected_duration_s, again.eta, again.queue_position) == (60.0, 1_045.0, 3)
    old = view_to_dict(view)
    for key in ("expected_duration_s", "eta", "queue_position"):
        del old[key]
    assert view_from_dict(old).eta is None
    line = forecast_line(view, now=1_010.0)
    assert line == "eta 00:17:25 UTC (in 35 s) · expected 60 s · queue position 3"
    assert forecast_line(view, now=2_000.0).startswith("eta 00:17:25 UTC (overdue)")
    assert forecast_line(again.__class__(id=view.id, sop="s", version="1", mode="", status=view.status,
                                         progress=0.0)) == ""
    html = execution_html(view, now=1_010.0)
    assert "eta 1970-01-01 00:17:25Z" in html and "queue position 3" in html


def test_a_step_reporting_no_duration_is_timed_from_its_start() -> None:
    """A ``sop:`` step's success carries no handler duration: its wall time from the step's start counts."""
    estimates = est.Estimates()
    child = new_event(EXE, 5, ev.StepSucceeded(output=None), "child", 1, ts=1_030.0)
    estimates.feed("s", child, started_at=1_000.0)
    estimates.feed("s", _succeeded("handler", 2.0), started_at=0.0)  # a reported duration wins
    assert estimates.step("s", "child").p50_s == 30.0 and estimates.step("s", "handler").p50_s == 2.0


class _Measured:
    """A task runner whose attempts end at once with the given measurements (a step's recorded use)."""

    needs_slot = True

    def __init__(self, runs: list[tuple[float, float, float]]) -> None:
        self.runs = list(runs)

    def start(self, spec, report):
        duration, cpu_s, peak_mb = self.runs.pop(0) if self.runs else (1.0, None, None)
        report.settle(StepOutcome(f"{spec.execution.id}/{spec.step.id}/{spec.attempt}", True, None, None,
                                  duration, cpu_s=cpu_s, peak_mb=peak_mb))
        return self

    def cancel(self, force: bool) -> None:
        pass


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runs=st.lists(st.tuples(st.floats(0.01, 100.0), st.floats(0.0, 400.0), st.floats(1.0, 8000.0)),
                     max_size=6))
def test_learned_allocation_through_the_coordinator(runs: list[tuple[float, float, float]]) -> None:
    """Property 32 end to end (no Ray): what the attempts of earlier executions recorded is what the
    next execution's claim reserves, within the declared 2 CPUs / 4096 MiB; nothing before 3 runs."""
    from runtime.attempts import _claim
    from runtime.config import EngineConfig
    from runtime.coordinator import CoordinatorCore
    from runtime.request import SubmitRequest
    from runtime.seams import Demand

    sop = Sop.model_validate({"sop": "s", "defaults": {"resources": {"cpu": 2, "memory_mb": 4096, "learned": True}},
                              "steps": [{"id": "a", "uses": "x"}]})

    async def scenario() -> Demand:
        core = CoordinatorCore(EngineConfig(state="memory://"), task_runner=_Measured(runs))
        core.recovery = {}  # nothing to recover, no timers
        try:
            for _ in runs:
                await core.wait(await core.submit(SubmitRequest(sop)), 30)
            exe = core.executions[await core.submit(SubmitRequest(sop))]
            return _claim(exe, exe.steps_by_id["a"]).demand
        finally:
            await core.close_store()

    demand = asyncio.run(scenario())
    if len(runs) < est.MIN_SAMPLES:
        assert demand == Demand(2.0, 4096)
        return
    cores = est.percentile([c / max(d, 0.01) for d, c, _ in runs], 95)
    peak = est.percentile([m for _, _, m in runs], 95)
    assert min(2.0, cores) - 1e-9 <= demand.cpu <= 2.0 and demand.cpu >= est.MIN_CPU - 1e-9
    assert min(4096, peak) <= demand.memory_mb <= 4096
    assert demand.cpu <= max(est.MIN_CPU, cores * est.HEADROOM + est.MIN_CPU) + 1e-9  # it follows the use
    assert demand.memory_mb <= max(est.MIN_MEMORY_MB, peak * est.HEADROOM + est.MIN_MEMORY_MB)


def test_the_shared_sampler_keeps_the_peak_and_reads_once_more_only_when_asked() -> None:
    import threading

    from runtime.usage import PeakSampler

    readings, sampled = iter([5.0, 9.0, 3.0] + [1.0] * 10_000), threading.Event()
    calls = []

    def measure() -> float:
        calls.append(1)
        if len(calls) >= 3:
            sampled.set()
        return next(readings)

    stop = PeakSampler(every_s=0.001).track(measure)
    assert sampled.wait(30)  # the sampler's thread read it (the first reading is taken at once)
    assert stop(final=False) == 9.0
    spike = PeakSampler(every_s=3600).track(iter([1.0, 42.0]).__next__)  # ends before any sampling
    assert spike() == 42.0  # the final reading catches it
