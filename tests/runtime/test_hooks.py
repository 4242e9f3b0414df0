"""Hooks: order, failure isolation, coroutines, zero cost when unused, and durable escalation hooks."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from pathlib import Path
from typing import Any

import pytest

from runtime.events import EventKind
from runtime.execution import Execution
from runtime.hooks import Hook, Hooks
from runtime.request import SubmitRequest
from runtime.status import ExecutionStatus
from sop import Sop
from tests.sop_builders import H, events_of, sop_text, wait_for

NOTIFICATIONS = ("before_attempt", "after_attempt", "on_retry", "on_escalate", "on_end")


def an_execution(secret: str | None = None) -> Execution:
    sop = Sop.model_validate({"sop": "hooked", "version": "3", "steps": [{"id": "s", "uses": f"{H}:echo"}],
                              "inputs": {"token": {"type": "string", "secret": True}}})
    inputs = {"token": secret} if secret else {}
    return Execution("hook-exe", SubmitRequest(sop, inputs, secrets=("token",) if secret else ()))


def notify_all(hooks: Hooks, exe: Execution) -> None:
    hooks.before_attempt(exe, "s", 1)
    hooks.after_attempt(exe, "s", 1, "failed", error={"type": "RuntimeError", "message": "no"})
    hooks.on_retry(exe, "s", 2, 0.5, "transient failure; retrying")
    hooks.on_escalate(exe, "s", 2, {"type": "RuntimeError", "message": "no"}, "transient", "exhausted")
    hooks.on_end(exe, "failed")


class Noting(Hook):
    """Notes (name, notification) for every notification into a shared list."""

    def __init__(self, name: str, calls: list[tuple[str, str]]) -> None:
        self.name, self.calls = name, calls

    def _note(self, method: str, payload: dict[str, Any]) -> None:
        self.calls.append((self.name, method))

    def before_attempt(self, payload: dict[str, Any]) -> None:
        self._note("before_attempt", payload)

    def after_attempt(self, payload: dict[str, Any]) -> None:
        self._note("after_attempt", payload)

    def on_retry(self, payload: dict[str, Any]) -> None:
        self._note("on_retry", payload)

    def on_escalate(self, payload: dict[str, Any]) -> None:
        self._note("on_escalate", payload)

    def on_end(self, payload: dict[str, Any]) -> None:
        self._note("on_end", payload)


def test_before_hooks_run_in_the_order_added_and_after_hooks_in_reverse() -> None:
    calls: list[tuple[str, str]] = []

    async def main() -> None:
        hooks = Hooks()
        for name in ("first", "second", "third"):
            hooks.add(name, Noting(name, calls))
        notify_all(hooks, an_execution())
        assert await hooks.drain() == len(NOTIFICATIONS)

    asyncio.run(main())
    by_method = {m: [name for name, method in calls if method == m] for m in NOTIFICATIONS}
    forward, backward = ["first", "second", "third"], ["third", "second", "first"]
    assert by_method == {"before_attempt": forward, "on_retry": forward, "on_escalate": forward,
                         "after_attempt": backward, "on_end": backward}


def test_a_hook_added_again_under_its_name_replaces_the_old_one_and_moves_to_the_end() -> None:
    calls: list[tuple[str, str]] = []

    async def main() -> None:
        hooks = Hooks()
        hooks.add("a", Noting("a-old", calls))
        hooks.add("b", Noting("b", calls))
        hooks.add("a", Noting("a-new", calls))
        assert hooks.names == ["b", "a"]
        hooks.before_attempt(an_execution(), "s", 1)
        await hooks.drain()
        assert hooks.remove("b") and not hooks.remove("b")

    asyncio.run(main())
    assert calls == [("b", "before_attempt"), ("a-new", "before_attempt")]


class Raising(Hook):
    def before_attempt(self, payload: dict[str, Any]) -> None:
        raise RuntimeError("hook bug")

    async def after_attempt(self, payload: dict[str, Any]) -> None:
        raise ValueError("async hook bug")


def test_a_hook_that_raises_is_logged_and_counted_and_later_hooks_still_run(caplog) -> None:
    calls: list[tuple[str, str]] = []

    async def main() -> Hooks:
        hooks = Hooks()
        hooks.add("before", Noting("before", calls))
        hooks.add("broken", Raising())
        hooks.add("after", Noting("after", calls))
        hooks.before_attempt(an_execution(), "s", 1)
        hooks.after_attempt(an_execution(), "s", 1, "succeeded")
        await hooks.drain()
        return hooks

    with caplog.at_level(logging.WARNING, logger="sopflow.hooks"):
        hooks = asyncio.run(main())
    assert calls == [("before", "before_attempt"), ("after", "before_attempt"),
                     ("after", "after_attempt"), ("before", "after_attempt")]
    assert hooks.failures == {"broken": 2}
    messages = [r.getMessage() for r in caplog.records if r.name == "sopflow.hooks"]
    assert any("broken" in m and "before_attempt" in m and "RuntimeError" in m for m in messages), messages
    assert any("broken" in m and "after_attempt" in m and "ValueError" in m for m in messages), messages
    assert not any("hook bug" in m for m in messages)  # the type is logged, not the message (it may hold data)


def test_a_coroutine_hook_and_a_plain_one_both_run_and_get_the_payload() -> None:
    got: dict[str, dict[str, Any]] = {}

    class Plain(Hook):
        def on_retry(self, payload: dict[str, Any]) -> None:
            got["plain"] = payload

    class Coroutine(Hook):
        async def on_retry(self, payload: dict[str, Any]) -> None:
            await asyncio.sleep(0)  # really suspends: the chain awaits it
            got["coroutine"] = payload

    async def main() -> None:
        hooks = Hooks()
        hooks.add("coroutine", Coroutine())
        hooks.add("plain", Plain())
        hooks.on_retry(an_execution(), "s", 2, 0.25, "transient failure; retrying")
        await hooks.drain()

    asyncio.run(main())
    expected = {"execution_id": "hook-exe", "sop": "hooked", "version": "3", "step": "s", "attempt": 2,
                "delay_s": 0.25, "reason": "transient failure; retrying"}
    assert got == {"plain": expected, "coroutine": expected}


def test_a_hook_payload_masks_secret_inputs() -> None:
    secret = f"tok-{uuid.uuid4().hex}"
    got: list[dict[str, Any]] = []

    class Keep(Hook):
        def on_escalate(self, payload: dict[str, Any]) -> None:
            got.append(payload)

    async def main() -> None:
        hooks = Hooks({"keep": Keep()})
        hooks.on_escalate(an_execution(secret), "s", 1, {"type": "E", "message": f"refused {secret}"},
                          "permanent", f"failed with {secret}")
        await hooks.drain()

    asyncio.run(main())
    assert secret not in json.dumps(got) and "refused ***" in json.dumps(got)


def test_a_hook_that_overrides_nothing_costs_nothing() -> None:
    """No task is created for a notification no hook overrides (the hot path stays light)."""
    async def main() -> None:
        class EscalationsOnly(Hook):
            def on_escalate(self, payload: dict[str, Any]) -> None:
                pass

        exe = an_execution()
        empty = Hooks()
        notify_all(empty, exe)
        assert await empty.drain() == 0
        idle = Hooks({"idle": Hook(), "escalations": EscalationsOnly()})
        idle.before_attempt(exe, "s", 1)
        idle.after_attempt(exe, "s", 1, "succeeded")
        idle.on_retry(exe, "s", 2, 0.1, "again")
        idle.on_end(exe, "completed")
        assert await idle.drain() == 0  # nothing was scheduled
        idle.on_escalate(exe, "s", 1, {}, "transient", "exhausted")
        assert await idle.drain() == 1
        assert idle.escalations == empty.escalations == 1

    asyncio.run(main())


# -- escalation hooks survive restarts ------------------------------------------------------------


def escalating_sop(name: str) -> str:
    return sop_text(f"""\
        steps:
          - id: call_bank
            uses: {H}:fail
            with: {{message: "bank API answered 503", kind: transient}}
            retry: {{max_attempts: 1}}
        """, name=name)


def recorder(directory: Path) -> Any:
    """A hook function writing each payload to ``directory/<execution>.json`` (works in any process)."""
    where = str(directory)

    def record(payload: dict) -> None:
        import json as _json
        from pathlib import Path as _Path

        (_Path(where) / f"{payload['execution_id']}.json").write_text(_json.dumps(payload))

    return record


def test_an_escalation_hook_of_an_in_process_engine_survives_a_restart_on_its_state_file(
        tmp_path, sop_file) -> None:
    from runtime import Engine

    state, calls = str(tmp_path / "state.db"), tmp_path / "calls"
    calls.mkdir()
    first = Engine.in_process(state=state)
    try:
        assert "pager" in first.add_escalation_hook("pager", fn=recorder(calls))
    finally:
        first.shutdown()

    second = Engine.in_process(state=state)
    try:
        assert "pager" in second.failure_stats()["hooks"]
        eid = second.submit(sop_file(escalating_sop("escalate-after-restart")))
        assert second.wait(eid, timeout=60).status == ExecutionStatus.FAILED
        second.drain_hooks()
        payload = json.loads(wait_for(lambda: (calls / f"{eid}.json").exists() and
                                      (calls / f"{eid}.json").read_text(), 30))
        assert payload["step"] == "call_bank" and "503" in payload["error"]["message"]
        assert second.remove_escalation_hook("pager") == []
    finally:
        second.shutdown()

    third = Engine.in_process(state=state)  # a removed hook stays removed
    try:
        assert third.failure_stats()["hooks"] == []
    finally:
        third.shutdown()


@pytest.mark.ray
def test_an_escalation_hook_still_fires_after_the_coordinator_actor_is_restarted(
        ray_cluster, tmp_path, sop_file) -> None:
    import ray

    from runtime.errors import EngineUnavailable
    from tests.sop_builders import own_engine

    calls = tmp_path / "calls"
    calls.mkdir()
    with own_engine(f"sopflow-hooks-{uuid.uuid4().hex[:8]}", tmp_path) as engine:
        engine.add_escalation_hook("pager", fn=recorder(calls))
        ray.kill(engine._conn.actors.coordinator, no_restart=False)  # Ray restarts it; it reloads from the log

        def restarted() -> list[str] | None:
            try:
                return engine.failure_stats()["hooks"]
            except EngineUnavailable:  # still restarting
                return None

        assert wait_for(restarted, 90) == ["pager"]
        eid = engine.submit(sop_file(escalating_sop("escalate-after-actor-restart")))
        assert engine.wait(eid, timeout=90).status == ExecutionStatus.FAILED
        engine.drain_hooks()
        assert EventKind.ESCALATED in [e.kind for e in events_of(engine, eid)]
        payload = json.loads(wait_for(lambda: (calls / f"{eid}.json").exists() and
                                      (calls / f"{eid}.json").read_text(), 30))
        assert payload["execution_id"] == eid and payload["step"] == "call_bank"


class _Journal(Hook):
    """Appends what it saw to a file (hooks run in the coordinator: files are how a test hears them)."""

    def __init__(self, path: str, name: str) -> None:
        self.path, self.name = path, name

    def _note(self, what: str, payload: dict) -> None:
        with open(self.path, "a") as f:
            f.write(f"{self.name} {what} {payload.get('step', '-')} {payload.get('status', '-')}\n")

    def before_attempt(self, payload: dict) -> None:
        self._note("before", payload)

    def after_attempt(self, payload: dict) -> None:
        self._note("after", payload)

    def on_end(self, payload: dict) -> None:
        self._note("end", payload)


def test_a_hook_added_through_the_engine_runs_in_order_and_survives_a_restart(tmp_path) -> None:
    from runtime import Engine, SubmissionError

    state, seen = str(tmp_path / "state.db"), tmp_path / "seen.txt"
    sop = ("sop: hooked\nversion: '1'\nsteps:\n  - id: a\n    uses: python:tests.handlers_for_tests:echo\n"
           "    with: {value: 1}\n")
    first = Engine.in_process(state=state)
    try:
        assert first.add_hook("one", _Journal(str(seen), "one")) == ["one"]
        assert first.add_hook("two", _Journal(str(seen), "two")) == ["one", "two"]
        with pytest.raises(SubmissionError, match="must be an instance of a runtime.Hook subclass"):
            first.add_hook("bad", lambda payload: None)
    finally:
        first.shutdown()
    again = Engine.in_process(state=state)  # a new engine on the same file: the hooks come back, in order
    try:
        assert again.wait(again.submit(sop), timeout=30).status.value == "completed"
        again.drain_hooks()
        lines = seen.read_text().splitlines()
        assert lines[:2] == ["one before a -", "two before a -"]  # "before" hooks in the order added
        assert lines[2:4] == ["two after a succeeded", "one after a succeeded"]  # "after" hooks in reverse
        assert lines[4:] == ["two end - completed", "one end - completed"]
        assert again.remove_hook("one") == ["two"]
    finally:
        again.shutdown()
