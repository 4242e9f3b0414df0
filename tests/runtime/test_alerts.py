"""Alert rules (runtime.alerts) with a controllable clock: property 23 (long_run_alert), the waiting rules,
the coordinator's check (event, status flag, hooks, metrics) and the configuration's validation."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime import events as ev
from runtime.alerts import AlertRule, due_alerts, expected_duration
from runtime.config import EngineConfig
from runtime.coordinator import CoordinatorCore
from runtime.events import new_event
from runtime.handlers import StepOutcome
from runtime.hooks import Hook
from runtime.request import SubmitRequest
from runtime.runners import InProcessRunner
from runtime.state import apply, fold
from sop import Sop
from tests.sop_builders import H, sop_text, wait_for

T0 = 1_700_000_000.0


def _state(*payloads: tuple[ev.Payload, str | None, int | None], at: list[float] | None = None):
    events = [new_event("exe-000000000001-00000001", i + 1, p, step, attempt, ts=(at[i] if at else T0))
              for i, (p, step, attempt) in enumerate(payloads)]
    return fold(events)


def _raise(state, alerts) -> None:
    """Fold the alerts' events into ``state``, as the coordinator does."""
    for a in alerts:
        apply(state, new_event(state.id, state.last_seq + 1, ev.Alerted(rule=a.rule.value, reason=a.reason),
                               a.step, a.attempt, ts=T0))


@settings(max_examples=400, deadline=None)
@given(declared=st.one_of(st.none(), st.floats(0.01, 1e5)), default=st.sampled_from([0.0, 1.0, 600.0]),
       factor=st.floats(1.0, 10.0), checks=st.lists(st.floats(0.0, 1e6), min_size=1, max_size=8),
       ends_at=st.one_of(st.none(), st.floats(0.0, 1e6)))
def test_long_run_alert(declared: float | None, default: float, factor: float, checks: list[float],
                        ends_at: float | None) -> None:
    """Property 23: an execution running over ``factor`` (2 by default) times the expected duration of its
    kind (the SOP's declaration, else the configured default) raises one alert and is flagged; one that
    ended before, or has no expectation, raises none."""
    config = EngineConfig(state="memory://", expected_duration_s=default, alert_overdue_factor=factor)
    state = _state((ev.Submitted(sop="s", steps=["a"]), None, None), (ev.Started(), None, None))
    expected = expected_duration(declared, config)
    assert expected == (declared or default or None)
    raised_at = []
    for offset in sorted(checks):
        if ends_at is not None and offset >= ends_at and not state.status.terminal:
            apply(state, new_event(state.id, state.last_seq + 1, ev.Finished(status="completed"), ts=T0 + ends_at))
        alerts = due_alerts(state, expected, config, T0 + offset)
        if alerts:
            raised_at.append(offset)
            assert [a.rule for a in alerts] == [AlertRule.OVERDUE]
            assert alerts[0].elapsed_s > alerts[0].threshold_s == pytest.approx(factor * expected)
        _raise(state, alerts)
    limit = factor * expected if expected else None
    should = [o for o in sorted(checks)
              if limit is not None and (T0 + o) - T0 > limit and (ends_at is None or o < ends_at)]
    assert raised_at == should[:1]  # once, at the first check past the limit
    assert state.view().alerting == bool(should)
    if should:
        assert state.view().alerts[0]["rule"] == "overdue" and state.view().alerts[0]["step"] is None


@pytest.mark.parametrize("rule,before,payload,limit_field", [
    (AlertRule.QUEUED, ev.Started(), ev.StepQueued(reason="no slot"), "alert_queued_s"),
    (AlertRule.DECISION, ev.StepStarted(), ev.DecisionRequired(reason="interrupted"), "alert_decision_s")])
def test_a_step_waiting_too_long_alerts_once_per_attempt(rule: AlertRule, before: ev.Payload, payload: ev.Payload,
                                                        limit_field: str) -> None:
    config = EngineConfig(state="memory://", **{limit_field: 60.0})
    state = _state((ev.Submitted(sop="s", steps=["a", "b"]), None, None), (before, "a", 1),
                   (payload, "a", 1), at=[T0, T0, T0 + 10])
    assert due_alerts(state, None, config, T0 + 70) == []  # waiting 60 s: not over the limit yet
    alerts = due_alerts(state, None, config, T0 + 71)
    assert [(a.rule, a.step, a.attempt) for a in alerts] == [(rule, "a", 1)]
    assert "step 'a' waiting" in alerts[0].reason and "limit 60 s" in alerts[0].reason
    _raise(state, alerts)
    assert due_alerts(state, None, config, T0 + 10_000) == []
    off = dataclasses.replace(config, **{limit_field: 0.0})
    assert due_alerts(_state((ev.Submitted(sop="s", steps=["a"]), None, None), (payload, "a", 1)), None, off,
                      T0 + 1e9) == []  # 0 turns the rule off


@pytest.mark.parametrize("field,value,says", [
    ("alert_overdue_factor", 0.5, "alert_overdue_factor must be a number >= 1"),
    ("alert_overdue_factor", float("nan"), "alert_overdue_factor must be"),
    ("expected_duration_s", -1, "expected_duration_s must be a number of seconds >= 0"),
    ("alert_queued_s", float("inf"), "alert_queued_s must be"),
    ("alert_decision_s", "1h", "alert_decision_s must be"),
    ("alert_check_every_s", 0, "alert_check_every_s must be a number of seconds > 0"),
    ("metrics_sop_labels", 0, "metrics_sop_labels must be an integer >= 1")])
def test_alert_configuration_is_validated_naming_the_rule(field: str, value: Any, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        EngineConfig(**{field: value})


@pytest.mark.parametrize("value", [0, -5, "soon", float("inf")])
def test_a_bad_expected_duration_in_an_sop_is_refused(value: Any) -> None:
    from sop import check_text

    report = check_text(f"sop: s\nexpected_duration_s: {value}\nsteps:\n  - id: a\n    run: echo hi\n")
    assert report.problems and any("expected_duration_s" in str(p) for p in report.problems), report.problems


# -- the coordinator's check, with a controllable clock --------------------------------------------------


class HeldRunner:
    """Holds every attempt until the test releases it: a step that runs as long as the test wants."""

    needs_slot = True

    def __init__(self) -> None:
        self.held: dict[str, Any] = {}

    def start(self, spec: Any, report: Any) -> HeldRunner:
        self.held[spec.step.id] = (spec, report)
        return self

    def cancel(self, force: bool) -> None:
        pass

    def release(self, step: str) -> None:
        spec, report = self.held.pop(step)
        report.settle(StepOutcome(f"{spec.execution.id}/{step}/{spec.attempt}", True, "done"))


class Recorder(Hook):
    def __init__(self) -> None:
        self.alerts: list[dict[str, Any]] = []

    def on_alert(self, payload: dict[str, Any]) -> None:
        self.alerts.append(payload)


def _core(runner: HeldRunner, **config: Any) -> CoordinatorCore:
    """A coordinator (on the running loop) feeding a monitor (``core.test_monitor``)."""
    from runtime.local import _LocalFeed
    from runtime.monitor import ExecutionMonitor

    settings_ = EngineConfig(state="memory://", **config)
    monitor = ExecutionMonitor(settings_)
    core = CoordinatorCore(settings_, task_runner=runner, monitor=_LocalFeed(monitor, asyncio.get_running_loop()))
    core.recovery = {}  # nothing to recover; and no timers: the test calls check_alerts itself
    core.test_monitor = monitor  # type: ignore[attr-defined]
    return core


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expected=st.floats(1.0, 1e4), offsets=st.lists(st.floats(0.0, 5e4), min_size=1, max_size=5))
def test_long_run_alert_in_the_coordinator(expected: float, offsets: list[float]) -> None:
    """Property 23 through the coordinator: for any declared duration and check times, one overdue alert
    event, the status flag and one ``on_alert`` call, exactly when a check is past twice the duration."""
    sop = Sop.model_validate({"sop": "slow", "expected_duration_s": expected, "steps": [{"id": "a", "uses": "x"}]})
    runner, hook = HeldRunner(), Recorder()

    async def scenario() -> tuple[Any, list[int], float]:
        core = _core(runner)
        core.hooks.add("recorder", hook)
        try:
            eid = await core.submit(SubmitRequest(sop))
            t0 = core.state_of(eid).submitted_at
            counts = []
            for offset in sorted(offsets):
                core.clock = lambda: t0 + offset
                counts.append(await core.check_alerts())
            await core.hooks.drain()
            return core.state_of(eid).view(), counts, t0
        finally:
            await core.close_store()

    view, counts, t0 = asyncio.run(scenario())
    past = [o for o in sorted(offsets) if (t0 + o) - t0 > 2 * expected]
    assert sum(counts) == (1 if past else 0)
    assert view.alerting == bool(past)
    assert len(hook.alerts) == (1 if past else 0)
    if past:
        assert counts.index(1) == sorted(offsets).index(past[0])
        payload = hook.alerts[0]
        assert payload["notification"] == "alert" and payload["rule"] == "overdue" and payload["sop"] == "slow"
        assert payload["threshold_s"] == pytest.approx(2 * expected)


def test_a_step_queued_too_long_is_flagged_and_counted_once() -> None:
    sop = Sop.model_validate({"sop": "busy", "steps": [{"id": "first", "uses": "x"}, {"id": "second", "uses": "x"}]})
    runner = HeldRunner()

    async def scenario() -> Any:
        core = _core(runner, max_running_steps=1, alert_queued_s=30.0)
        try:
            eid = await core.submit(SubmitRequest(sop))
            steps = core.state_of(eid).steps
            (waiting,) = [k for k, st_ in steps.items() if st_.status.value == "queued"]  # one slot: one waits
            (holding,) = [k for k in steps if k != waiting]
            queued_since = steps[waiting].waiting_since
            core.clock = lambda: queued_since + 30.0
            assert await core.check_alerts() == 0
            core.clock = lambda: queued_since + 31.0
            assert await core.check_alerts() == 1
            assert await core.check_alerts() == 0  # raised once
            runner.release(holding)
            wait_start = asyncio.get_running_loop().time()
            while waiting not in runner.held and asyncio.get_running_loop().time() - wait_start < 10:
                await asyncio.sleep(0.01)  # polling interval of a bounded wait for the queued attempt to start
            runner.release(waiting)
            view = await core.wait(eid, 30)
            await core.flush()
            return view, (await core.test_monitor.metrics(None)), waiting
        finally:
            await core.close_store()

    view, metrics, waiting = asyncio.run(scenario())
    assert view.status.value == "completed"  # an alert changes nothing about the run
    assert [(a["rule"], a["step"], a["attempt"]) for a in view.alerts] == [("queued_too_long", waiting, 1)]
    assert metrics["alerts"] == 1


def test_in_process_engine_alerts_in_status_events_metrics_and_hooks(tmp_path: Path) -> None:
    """An SOP declaring expected_duration_s, checked with a controllable clock on Engine.in_process()."""
    from runtime import Engine

    engine = Engine.in_process(config=EngineConfig(alert_check_every_s=3600.0))  # the test checks, not the timer
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir()
    where = str(hook_dir)

    def page(payload: dict) -> None:  # a copy of it runs in the engine, as it would in an actor
        import json as _json
        from pathlib import Path as _Path

        (_Path(where) / f"{payload['rule']}-{payload['execution_id']}.json").write_text(_json.dumps(payload))

    try:
        engine.add_escalation_hook("pager", fn=page)
        gate = tmp_path / "gate"
        eid = engine.submit(f"sop: slowish\nexpected_duration_s: 5\nsteps:\n  - id: hold\n    uses: {H}:wait_for_file\n"
                            f"    with: {{path: \"{gate}\", timeout_s: 60}}\n")
        wait_for(lambda: engine.status(eid).steps["hold"].status.value == "running")
        coordinator = engine._conn.coordinator
        t0 = engine.status(eid).submitted_at
        coordinator.clock = lambda: t0 + 10.0  # exactly twice: not over
        assert engine._conn.call("coordinator", "check_alerts") == 0
        coordinator.clock = lambda: t0 + 10.5
        assert engine._conn.call("coordinator", "check_alerts") == 1
        engine.flush()
        engine.drain_hooks()
        status = engine.status(eid)
        assert status.alerting and status.alerts[0]["rule"] == "overdue"
        assert "over 2 x its expected 5 s" in status.alerts[0]["reason"]
        kinds = [e.kind.value for e in engine.history(eid)]
        assert kinds.count("alert_raised") == 1
        calls = [json.loads(p.read_text()) for p in hook_dir.glob("*.json")]
        assert [c["rule"] for c in calls] == ["overdue"] and calls[0]["execution_id"] == eid
        assert calls[0]["notification"] == "alert" and calls[0]["sop"] == "slowish"
        gate.write_text("go")
        final = engine.wait(eid, 60)
        assert final.status.value == "completed" and final.alerting  # the flag stays in the record
        assert engine.metrics("1h", sop="slowish")["alerts"] == 1
    finally:
        engine.shutdown()


def test_sopflow_status_shows_the_alerts(capsys) -> None:
    from runtime._cli_exec import _print_view, _view_dict
    from runtime._wire import view_from_dict, view_to_dict
    from runtime.status import ExecutionStatus, ExecutionView

    alert = {"rule": "overdue", "step": None, "attempt": None, "reason": "running for 700 s, over 2 x its "
             "expected 300 s", "at": T0}
    view = ExecutionView("exe-000000000001-00000001", "slow", "1", "system_design", ExecutionStatus.RUNNING, 0.5,
                         submitted_at=T0, alerts=[alert])
    _print_view(view, "text")
    assert "alert overdue: running for 700 s, over 2 x its expected 300 s" in capsys.readouterr().out
    assert _view_dict(view)["alerts"] == [alert]
    assert view_from_dict(json.loads(json.dumps(view_to_dict(view)))) == view  # the HTTP API carries them


def test_a_step_waiting_for_a_decision_after_a_restart_alerts(tmp_path: Path) -> None:
    """A non-idempotent step interrupted by a coordinator stop waits for a decision; past
    ``alert_decision_s`` the restarted coordinator raises needs_decision_too_long."""
    sop = Sop.model_validate({"sop": "charge", "steps": [{"id": "charge", "uses": "x", "idempotent": False}]})
    config = EngineConfig(state=str(tmp_path / "state.db"), alert_decision_s=120.0, alert_check_every_s=3600.0)

    async def first_life() -> str:
        core = CoordinatorCore(config, task_runner=HeldRunner())
        eid = await core.submit(SubmitRequest(sop))
        await core.flush()
        await core.close_store()  # stops with the attempt in flight: its outcome is unknown
        return eid

    async def second_life(eid: str) -> tuple[Any, list[int]]:
        core = CoordinatorCore(config, task_runner=HeldRunner())
        try:
            await core.ready()  # recovery: the interrupted non-idempotent step needs a decision
            state = core.state_of(eid)
            assert state.steps["charge"].status.value == "needs_decision"
            since = state.steps["charge"].waiting_since
            counts = []
            for offset in (120.0, 121.0, 500.0):
                core.clock = lambda: since + offset
                counts.append(await core.check_alerts())
            return core.state_of(eid).view(), counts
        finally:
            await core.close_store()

    eid = asyncio.run(first_life())
    view, counts = asyncio.run(second_life(eid))
    assert counts == [0, 1, 0]
    assert view.status.value == "needs_decision"
    assert [(a["rule"], a["step"]) for a in view.alerts] == [("needs_decision_too_long", "charge")]
    assert "waiting for an operator's decision for 121 s (limit 120 s)" in view.alerts[0]["reason"]
