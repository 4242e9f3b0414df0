"""Triggers on the in-process engine with a controllable clock: cron fires, catch-up, dedup across a
restart of the trigger actor, event filters, pause/resume, max_concurrent; and the hostile cases."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import pytest

from runtime import Engine
from runtime._trigger_state import CoreHost, Deployed
from runtime.errors import StateStoreInUseError, SubmissionError, TriggerError
from runtime.triggers import TriggerCore

T0 = dt.datetime(2026, 12, 1, 1, 59, 30, tzinfo=dt.timezone.utc).timestamp()  # 30 s before a 02:00 UTC fire

SOP = """
sop: intake
inputs:
  path: {type: string, required: true}
  gate: {type: string, default: ""}
steps:
  - id: look
    run: 'printf "%s" "$P"'
    env: {P: "${{ inputs.path }}"}
triggers:
  - name: nightly
    cron: "0 2 * * *"
    catch_up: CATCH_UP
    inputs: {path: "${{ trigger.fire_time }}"}
  - name: upload
    event: file.uploaded
    filter: "trigger.payload.size >= 1024"
    inputs: {path: "${{ trigger.payload.path }}"}
"""


class Clocked:
    """Trigger cores on an in-process engine's loop with a clock the test moves."""

    def __init__(self, engine: Engine, now: float = T0) -> None:
        self.engine, self.conn, self.now = engine, engine._conn, now
        self.core = self.new_core()

    def new_core(self) -> TriggerCore:
        """A fresh core, as Ray would start after the trigger actor died: it knows only the store."""
        return TriggerCore(CoreHost(self.conn.coordinator), self.conn.config, clock=lambda: self.now, run=False)

    def run(self, coro: Any) -> Any:
        return self.conn._run(coro, timeout=30)

    def deploy(self, text: str, core: TriggerCore | None = None) -> list[str]:
        return self.run((core or self.core).deploy(self.engine._deployment(text)))

    def tick(self, at: float, core: TriggerCore | None = None) -> list[str]:
        self.now = at
        return self.run((core or self.core).tick())

    def executions(self) -> list[Any]:
        return self.engine.list(sop="intake")


@pytest.fixture
def clocked(inproc: Engine) -> Clocked:
    return Clocked(inproc)


def sop(catch_up: str = "skip", **extra: str) -> str:
    text = SOP.replace("CATCH_UP", catch_up)
    for old, new in extra.items():
        text = text.replace(old, new)
    return text


def at(hour: int, minute: int = 0, day: int = 1) -> float:
    return dt.datetime(2026, 12, day, hour, minute, tzinfo=dt.timezone.utc).timestamp()


def test_a_cron_trigger_fires_on_time_with_its_fire_time_as_input(clocked: Clocked) -> None:
    clocked.deploy(sop())
    assert clocked.tick(at(1, 59)) == []
    [eid] = clocked.tick(at(2, 0) + 1)
    view = clocked.engine.wait(eid, 30)
    assert view.status.value == "completed"
    assert clocked.engine.history(eid)[0].data["inputs"] == {"path": "2026-12-01T02:00:00+00:00", "gate": ""}
    assert clocked.engine.history(eid)[0].data["idempotency_key"] == "trigger:intake/nightly:2026-12-01T02:00:00Z"
    assert clocked.tick(at(2, 0) + 5) == []  # the same fire never twice
    [(row)] = [r for r in clocked.run(clocked.core.list()) if r["name"] == "nightly"]
    assert row["next_fire"] == at(2, day=2) and row["fired"] == 1 and row["last_execution"] == eid


@pytest.mark.parametrize("policy, started", [("skip", 0), ("once", 1), ("all", 3)])
def test_catch_up_after_downtime(clocked: Clocked, policy: str, started: int) -> None:
    """Down from before the 02:00 fire of Dec 1 until after the one of Dec 3 (noon): three fires missed."""
    clocked.deploy(sop(policy))
    ids = clocked.tick(at(12, day=3))
    assert len(ids) == started
    assert len(clocked.executions()) == started
    if policy == "once":  # one execution, for the latest missed fire
        assert clocked.engine.history(ids[0])[0].data["inputs"]["path"] == "2026-12-03T02:00:00+00:00"
    row = next(r for r in clocked.run(clocked.core.list()) if r["name"] == "nightly")
    assert row["next_fire"] == at(2, day=4)


def test_skip_still_fires_a_fire_missed_by_less_than_the_grace(clocked: Clocked) -> None:
    clocked.deploy(sop("skip"))
    assert len(clocked.tick(at(2, 0) + 30)) == 1  # a 30 s restart of the actor loses nothing


def test_a_restarted_trigger_actor_resumes_from_the_store_and_never_starts_a_fire_twice(clocked: Clocked) -> None:
    """The actor dies after submitting a fire but before recording it: its successor sends it again,
    and the coordinator's idempotency key gives back the same execution."""
    clocked.deploy(sop("all"))

    class DiesAfterSubmit(CoreHost):
        async def put_trigger_setting(self, key: str, value: bytes) -> None:
            if getattr(self, "submitted", False):
                raise RuntimeError("the trigger actor died here")
            await super().put_trigger_setting(key, value)

        async def submit(self, request: Any) -> str:
            eid = await super().submit(request)
            self.submitted = True
            return eid

    dying = TriggerCore(DiesAfterSubmit(clocked.conn.coordinator), clocked.conn.config, clock=lambda: clocked.now,
                        run=False)
    with pytest.raises(RuntimeError, match="died here"):
        clocked.tick(at(2, 0) + 1, dying)
    [first] = [v.id for v in clocked.executions()]

    successor = clocked.new_core()
    assert clocked.tick(at(2, 0) + 2, successor) == [first]  # delivered again: the same execution
    assert [v.id for v in clocked.executions()] == [first]
    assert clocked.tick(at(2, 0) + 3, successor) == []
    row = next(r for r in clocked.run(successor.list()) if r["name"] == "nightly")
    assert (row["waiting"], row["fired"], row["next_fire"]) == (0, 1, at(2, day=2))


def test_two_trigger_actors_on_one_store_never_fire_twice(clocked: Clocked) -> None:
    clocked.deploy(sop("all"))
    other = clocked.new_core()
    clocked.run(other.list())  # both have read the same record: both see the 02:00 fire as due
    a = clocked.tick(at(2, 0) + 1)
    b = clocked.tick(at(2, 0) + 1, other)
    assert a == b and len(a) == 1
    assert len(clocked.executions()) == 1


def test_a_second_engine_on_the_same_state_file_is_refused_so_its_triggers_never_fire(tmp_path: Path) -> None:
    state = str(tmp_path / "state.db")
    first = Engine.in_process(state=state)
    try:
        first.deploy(sop())
        with pytest.raises(StateStoreInUseError):
            Engine.in_process(state=state)
    finally:
        first.shutdown()
    again = Engine.in_process(state=state)  # the records outlive the engine, in the state file
    try:
        assert sorted(t["id"] for t in again.triggers()) == ["intake/nightly", "intake/upload"]
    finally:
        again.shutdown()


def test_event_filter_and_inputs_from_the_payload(inproc: Engine) -> None:
    inproc.deploy(sop())
    small = inproc.emit("file.uploaded", {"size": 10, "path": "/in/a"})
    assert small["fired"] == [] and small["not_fired"] == [{"trigger": "intake/upload", "reason": "filter is false"}]
    missing = inproc.emit("file.uploaded", {"path": "/in/a"})
    assert "filter failed" in missing["not_fired"][0]["reason"] and "size" in missing["not_fired"][0]["reason"]
    big = inproc.emit("file.uploaded", {"size": 4096, "path": "/in/b.csv"})
    eid = big["fired"][0]["execution"]
    assert inproc.wait(eid, 30).status.value == "completed"
    assert inproc.history(eid)[0].data["inputs"]["path"] == "/in/b.csv"
    assert inproc.emit("other.event", {"size": 4096})["fired"] == []
    unusable = inproc.emit("file.uploaded", {"size": 4096, "name": "no path"})
    assert unusable["fired"] == []
    [why] = unusable["not_fired"]
    assert why["trigger"] == "intake/upload" and "not started" in why["reason"] and "path" in why["reason"]
    assert next(r for r in inproc.triggers() if r["name"] == "upload")["last_error"] == why["reason"]


def test_pause_and_resume(clocked: Clocked) -> None:
    clocked.deploy(sop())
    paused = clocked.run(clocked.core.pause("nightly"))
    assert paused["paused"] is True
    assert clocked.tick(at(2, 0) + 1) == []  # paused: nothing fires
    resumed = clocked.run(clocked.core.resume("intake/nightly"))
    assert resumed["paused"] is False and resumed["next_fire"] == at(2, day=2)  # no catch-up for the pause
    assert len(clocked.tick(at(2, day=2) + 1)) == 1
    clocked.run(clocked.core.pause("upload"))
    out = clocked.run(clocked.core.emit("file.uploaded", {"size": 4096, "path": "x"}))
    assert out["fired"] == [] and out["not_fired"] == [{"trigger": "intake/upload", "reason": "paused"}]


def test_max_concurrent_keeps_further_fires_waiting_durably_until_one_ends(inproc: Engine, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    text = sop(**{
        "    filter: \"trigger.payload.size >= 1024\"\n": "    max_concurrent: 1\n",
        "inputs: {path: \"${{ trigger.payload.path }}\"}": "inputs: {path: \"${{ trigger.payload.path }}\", "
                                                            "gate: \"${{ trigger.payload.gate }}\"}",
        "  - id: look\n": "  - id: hold\n    uses: python:tests.handlers_for_tests:wait_for_file\n"
                          "    with: {path: \"${{ inputs.gate }}\", timeout_s: 60}\n  - id: look\n"
                          "    depends_on: [hold]\n"})
    inproc.deploy(text)
    fires = [inproc.emit("file.uploaded", {"path": f"/in/{i}", "gate": str(gate)}, key=f"k{i}")["fired"][0]
             for i in range(3)]
    assert fires[0]["execution"] is not None and [f["execution"] for f in fires[1:]] == [None, None]
    row = next(r for r in inproc.triggers() if r["name"] == "upload")
    assert (row["running"], row["waiting"]) == (1, 2)
    stored = inproc._conn._run(inproc._conn.coordinator.trigger_settings())["trigger:intake/upload"]
    assert [f.payload["path"] for f in Deployed.from_blob(stored).pending] == ["/in/1", "/in/2"]  # durable
    assert len(inproc.list(sop="intake")) == 1
    inproc.pause_trigger("upload")
    gate.write_text("go")
    inproc.wait(fires[0]["execution"], 60)
    assert inproc._conn._run(inproc._conn.triggers.tick()) == []  # paused: its waiting fires wait too
    assert len(inproc.list(sop="intake")) == 1
    inproc.resume_trigger("upload")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        views = inproc.list(sop="intake")
        if len(views) == 3 and all(v.status.terminal for v in views):
            break
        time.sleep(0.1)  # polling a condition (the trigger loop starts the next one when one ends)
    views = inproc.list(sop="intake")
    assert len(views) == 3 and all(v.status.value == "completed" for v in views)
    starts = sorted((inproc.history(v.id)[0].ts, inproc.history(v.id)[-1].ts) for v in views)
    assert all(later[0] >= earlier[1] - 0.05 for earlier, later in zip(starts, starts[1:]))  # one at a time


def test_deploying_a_new_version_replaces_the_old_ones_triggers_and_undeploy_removes_them(inproc: Engine) -> None:
    assert inproc.deploy(sop()) == ["intake/nightly", "intake/upload"]
    v2 = sop().replace("  - name: upload\n", "  - name: upload-v2\n").replace('sop: intake\n', 'sop: intake\nversion: "2"\n')
    assert inproc.deploy(v2) == ["intake/nightly", "intake/upload-v2"]
    rows = inproc.triggers()
    assert [r["id"] for r in rows] == ["intake/nightly", "intake/upload-v2"] and {r["version"] for r in rows} == {"2"}
    assert inproc.undeploy("intake") == ["intake/nightly", "intake/upload-v2"]
    assert inproc.triggers() == []
    with pytest.raises(TriggerError, match="SOP 'intake' has no deployed triggers"):
        inproc.undeploy("intake")
    with pytest.raises(SubmissionError, match="has no triggers to deploy"):
        inproc.deploy("sop: plain\nsteps:\n  - {id: a, run: 'true'}\n")


def test_an_unknown_trigger_name_is_named_with_a_suggestion(inproc: Engine) -> None:
    inproc.deploy(sop())
    with pytest.raises(TriggerError, match="no deployed trigger 'nightlly'; did you mean 'nightly'"):
        inproc.pause_trigger("nightlly")


def test_manual_fire_starts_one_execution(inproc: Engine) -> None:
    inproc.deploy(sop())
    fired = inproc.fire_trigger("intake/upload", {"path": "/by/hand", "size": 1}, key="m1")
    assert inproc.wait(fired["execution"], 30).status.value == "completed"
    assert inproc.fire_trigger("upload", {"path": "/by/hand", "size": 1}, key="m1")["execution"] == fired["execution"]


# -- hostile ---------------------------------------------------------------------------------


def test_an_oversized_payload_is_refused_with_a_clear_error_and_starts_nothing(inproc: Engine) -> None:
    inproc.deploy(sop())
    with pytest.raises(TriggerError, match=r"payload of event 'file.uploaded' is 7\d,\d{3} bytes of JSON, more than "
                                           r"the 65,536 allowed \(EngineConfig.trigger_payload_max_bytes\)"):
        inproc.emit("file.uploaded", {"size": 4096, "path": "x" * 70_000})
    with pytest.raises(TriggerError, match="is not JSON data"):
        inproc.emit("file.uploaded", {"size": float("nan"), "path": "x"})
    with pytest.raises(TriggerError, match="the key must be printable text of 1 to 200 characters"):
        inproc.emit("file.uploaded", {"size": 4096, "path": "x"}, key="k" * 201)
    with pytest.raises(TriggerError, match="the event name must be 1 to 128 letters"):
        inproc.emit("file.uploaded\n", {"size": 4096, "path": "x"})
    with pytest.raises(TriggerError, match="must be a JSON object \\(or nothing\\), got list"):
        inproc.emit("file.uploaded", [1, 2])  # the same rule as the webhook's
    assert inproc.list(sop="intake") == []


def test_replayed_emits_with_the_same_key_start_one_execution(inproc: Engine) -> None:
    inproc.deploy(sop())
    results = [inproc.emit("file.uploaded", {"size": 4096, "path": "/in/a"}, key="upload-1") for _ in range(5)]
    ids = {r["fired"][0]["execution"] for r in results}
    assert len(ids) == 1 and len(inproc.list(sop="intake")) == 1
    # Same key, another payload: the key names the event, which was delivered once already.
    again = inproc.emit("file.uploaded", {"size": 9999, "path": "/in/other"}, key="upload-1")
    assert again["fired"][0]["execution"] in ids and len(inproc.list(sop="intake")) == 1


def test_a_payload_with_shell_syntax_stays_data_in_a_shell_step(inproc: Engine, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    hostile = f'$(touch {marker}); `touch {marker}` "; touch {marker}; echo "'
    inproc.deploy(sop().replace("    run: 'printf \"%s\" \"$P\"'\n    env: {P: \"${{ inputs.path }}\"}\n",
                                "    run: 'printf \"%s\" ${{ inputs.path }}'\n"))
    eid = inproc.emit("file.uploaded", {"size": 4096, "path": hostile})["fired"][0]["execution"]
    view = inproc.wait(eid, 30)
    assert view.status.value == "completed"
    assert not marker.exists()
    out = inproc.history(eid)
    stdout = next(e.data["output"]["stdout"] for e in out if e.kind.value == "step_succeeded")
    assert stdout == hostile


def test_trigger_records_hold_only_json_data(clocked: Clocked) -> None:
    clocked.deploy(sop())
    blobs = clocked.run(clocked.conn.coordinator.trigger_settings())
    assert sorted(blobs) == ["trigger:intake/nightly", "trigger:intake/upload"]
    for blob in blobs.values():
        assert isinstance(json.loads(blob), dict)


def test_the_coordinator_keeps_other_settings_out_of_reach_of_trigger_writes(clocked: Clocked) -> None:
    with pytest.raises(ValueError, match="starts with 'trigger:'"):
        clocked.run(clocked.conn.coordinator.put_trigger_setting("hook:evil", b"x"))


def test_a_flood_of_events_beyond_the_waiting_cap_is_refused_per_trigger(tmp_path: Path) -> None:
    from runtime.config import EngineConfig

    gate = tmp_path / "gate"
    engine = Engine.in_process(config=EngineConfig(trigger_max_waiting=1))
    try:
        engine.deploy(sop(**{
            "    filter: \"trigger.payload.size >= 1024\"\n": "    max_concurrent: 1\n",
            "  - id: look\n": "  - id: hold\n    uses: python:tests.handlers_for_tests:wait_for_file\n"
                              f"    with: {{path: {gate}, timeout_s: 60}}\n  - id: look\n    depends_on: [hold]\n"}))
        first, second, third = (engine.emit("file.uploaded", {"path": f"/in/{i}"}) for i in range(3))
        assert first["fired"][0]["execution"] and second["fired"][0]["execution"] is None
        assert third["fired"] == []
        assert "intake/upload already has 1 fires waiting for a run slot (max_concurrent: 1)" in \
            third["not_fired"][0]["reason"]
        gate.write_text("go")
    finally:
        engine.shutdown()


# -- property: at least once, never twice, through restarts and crashes ------------------------


class MemoryHost:
    """The in-memory :class:`TriggerHost` (like the in-memory event log): a coordinator reduced to its
    idempotency keys and settings, so hundreds of histories run in a second."""

    def __init__(self) -> None:
        self.settings: dict[str, bytes] = {}
        self.by_key: dict[str, str] = {}
        self.crash: str | None = None
        """``after-submit``: the next record written after a submission fails; ``next-write``: the next one."""
        self._submitted = False

    async def submit(self, request: Any) -> str:
        self._submitted = True
        return self.by_key.setdefault(request.idempotency_key, f"exe-{len(self.by_key)}")

    async def ended(self, execution_ids: list[str]) -> list[str]:
        return list(execution_ids)

    async def trigger_settings(self) -> dict[str, bytes]:
        return dict(self.settings)

    async def put_trigger_setting(self, key: str, value: bytes) -> None:
        if self.crash == "next-write" or (self.crash == "after-submit" and self._submitted):
            self.crash = None
            raise ConnectionError("the trigger actor died before recording what it did")
        self.settings[key] = value

    async def drop_trigger_setting(self, key: str) -> None:
        self.settings.pop(key, None)


@pytest.fixture(scope="module")
def every_ten_minutes() -> dict[str, Any]:
    engine = Engine.in_process()
    try:
        return engine._deployment(sop("all").replace('"0 2 * * *"', '"*/10 * * * *"'))
    finally:
        engine.shutdown()


from hypothesis import HealthCheck, given, settings  # noqa: E402 - the property's own imports
from hypothesis import strategies as st  # noqa: E402

STEPS = st.lists(st.tuples(st.floats(min_value=1, max_value=3 * 3600), st.sampled_from(["tick", "restart", "after-submit",
                                                                                "next-write"])),
                 min_size=1, max_size=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(STEPS)
def test_every_cron_fire_starts_exactly_one_execution_through_restarts_and_crashes(
        every_ten_minutes: dict[str, Any], steps: list[tuple[float, str]]) -> None:
    """For any history of ticks, actor restarts and crashes between submit and record: with
    ``catch_up: all`` every fire time up to the last tick started exactly one execution."""
    import asyncio

    from runtime import cron
    from runtime.config import EngineConfig

    config = EngineConfig(state="memory://", trigger_catch_up_max=100_000)
    host, now = MemoryHost(), T0

    def core() -> TriggerCore:
        return TriggerCore(host, config, clock=lambda: now, run=False)

    async def history() -> None:
        nonlocal now
        current = core()
        await current.deploy(every_ten_minutes)
        for advance, what in steps:
            now += advance
            if what == "restart":
                current = core()
            elif what != "tick":
                host.crash, host._submitted = what, False
            try:
                await current.tick()
            except ConnectionError:
                current = core()  # it died: Ray starts a new one, which knows only the store
        await core().tick()  # a last, healthy look delivers what a crash left waiting

    asyncio.run(history())
    expected, t = [], T0
    while (t := cron.next_fire("*/10 * * * *", "UTC", t)) <= now:
        expected.append(cron.fire_key("intake/nightly", t))
    assert sorted(host.by_key) == sorted(expected)


def test_the_example_runs_from_an_event(inproc: Engine) -> None:
    root = Path(__file__).resolve().parents[2]
    assert inproc.deploy(str(root / "examples" / "file-intake.yaml")) == ["file-intake/nightly-sweep",
                                                                          "file-intake/on-upload"]
    out = inproc.emit("file.uploaded", {"path": "/in/a.csv", "size": 2048}, key="k7")
    eid = out["fired"][0]["execution"]
    assert inproc.result(eid, 30)["outputs"] == {"report": "UPLOAD K7: /IN/A.CSV!"}


def test_the_trigger_actor_enforces_the_sandbox_and_the_cron_check_itself(clocked: Clocked) -> None:
    """A deployment sent straight to the actor (not through Engine.deploy's validation) gets no further."""
    deployment = clocked.engine._deployment(sop())
    hostile = dict(deployment, triggers=[
        {"name": "upload", "event": "file.uploaded", "filter": "trigger.payload.__class__.__mro__",
         "inputs": {"path": "${{ trigger.payload.path }}"}}])
    clocked.run(clocked.core.deploy(hostile))
    out = clocked.run(clocked.core.emit("file.uploaded", {"path": "x"}))
    assert out["fired"] == [] and "reads private attribute" in out["not_fired"][0]["reason"]
    sneaky = dict(deployment, triggers=[{"name": "upload", "event": "file.uploaded",
                                         "inputs": {"path": "${{ cycler.__init__.__globals__ }}"}}])
    clocked.run(clocked.core.deploy(sneaky))
    out = clocked.run(clocked.core.emit("file.uploaded", {"path": "x"}))
    assert out["fired"] == [] and "not started" in out["not_fired"][0]["reason"]
    assert clocked.executions() == []
    bad_cron = dict(deployment, triggers=[{"name": "nightly", "cron": "0 2 * *", "inputs": {"path": "x"}}])
    with pytest.raises(TriggerError, match="trigger intake/nightly: cron '0 2 \\* \\*' has 4 fields"):
        clocked.run(clocked.core.deploy(bad_cron))


def test_an_older_state_file_keeps_triggers_without_a_schema_change(tmp_path: Path) -> None:
    """Trigger records live in the ``meta`` table every sopflow state file has (no new table)."""
    import sqlite3

    from runtime.eventlog import SqliteEventLog

    path = tmp_path / "old.db"
    SqliteEventLog(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    try:  # as sopflow <= schema 2 left it
        conn.execute("DROP TABLE logs")
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    finally:
        conn.close()
    engine = Engine.in_process(state=str(path))
    try:
        engine.deploy(sop())
    finally:
        engine.shutdown()
    engine = Engine.in_process(state=str(path))
    try:
        assert [t["id"] for t in engine.triggers()] == ["intake/nightly", "intake/upload"]
    finally:
        engine.shutdown()


@pytest.mark.parametrize("field, value, says", [
    ("trigger_payload_max_bytes", 10, "trigger_payload_max_bytes must be an integer from 1024 to"),
    ("trigger_catch_up_max", 0, "trigger_catch_up_max must be an integer from 1 to 100000, got 0"),
    ("trigger_max_waiting", True, "trigger_max_waiting must be an integer from 1 to 1000000, got True"),
    ("trigger_grace_s", -1, "trigger_grace_s must be a number of seconds >= 0, got -1"),
])
def test_trigger_settings_of_the_engine_config_are_checked(field: str, value: Any, says: str) -> None:
    from runtime.config import EngineConfig

    with pytest.raises(ValueError, match=says):
        EngineConfig(**{field: value})
