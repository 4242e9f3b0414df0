"""The trigger actor on the shared Ray cluster: deploy, emit, kill it (Ray restarts it from the
state store: definitions, pauses and fires delivered are kept), and the CLI commands."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner

pytestmark = pytest.mark.ray

SOP = """
sop: ray-intake
inputs:
  path: {type: string, required: true}
steps:
  - id: look
    run: 'printf "%s" "$P"'
    env: {P: "${{ inputs.path }}"}
triggers:
  - name: upload
    event: ray.file.uploaded
    filter: "trigger.payload.size >= 1024"
    inputs: {path: "${{ trigger.payload.path }}"}
  - name: hourly
    cron: "0 * * * *"
    timezone: Europe/Paris
    inputs: {path: "${{ trigger.fire_time }}"}
"""


@pytest.fixture
def deployed(engine: Any, sop_file: Any) -> Iterator[str]:
    path = sop_file(SOP, "ray-intake.yaml")
    assert engine.deploy(path) == ["ray-intake/hourly", "ray-intake/upload"]
    yield path
    try:
        engine.undeploy("ray-intake")
    except Exception:  # noqa: BLE001 - the test removed them itself
        pass


def _restart_trigger_actor(engine: Any) -> None:
    """Kill the trigger actor as a crash would; Ray starts it again (max_restarts=-1)."""
    import ray

    handle = ray.get_actor("sopflow-triggers", namespace=engine.namespace)
    ray.kill(handle, no_restart=False)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            ray.get(handle.list.remote(), timeout=10)
            return
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError):
            time.sleep(0.2)  # back-off while Ray restarts it
    raise AssertionError("the trigger actor did not come back within 60 s")


def test_an_emit_starts_an_execution_and_a_killed_trigger_actor_comes_back_from_the_store(
        engine: Any, deployed: str) -> None:
    first = engine.emit("ray.file.uploaded", {"size": 2048, "path": "/in/a; rm -rf /"}, key="ray-k1")
    eid = first["fired"][0]["execution"]
    assert engine.wait(eid, 60).status.value == "completed"
    engine.pause_trigger("ray-intake/hourly")

    _restart_trigger_actor(engine)

    rows = {r["id"]: r for r in engine.triggers()}
    assert sorted(rows) == ["ray-intake/hourly", "ray-intake/upload"]
    assert rows["ray-intake/hourly"]["paused"] is True  # the pause survived the restart
    assert rows["ray-intake/upload"]["last_execution"] == eid
    again = engine.emit("ray.file.uploaded", {"size": 2048, "path": "/in/a; rm -rf /"}, key="ray-k1")
    assert again["fired"][0]["execution"] == eid  # the same fire never starts a second execution
    assert len(engine.list(sop="ray-intake")) == 1
    fresh = engine.emit("ray.file.uploaded", {"size": 2048, "path": "/in/b"})["fired"][0]["execution"]
    assert fresh != eid and engine.wait(fresh, 60).status.value == "completed"


def test_an_oversized_payload_is_refused_through_ray_with_our_error(engine: Any, deployed: str) -> None:
    from runtime.errors import TriggerError

    with pytest.raises(TriggerError, match="more than the 65,536 allowed"):
        engine.emit("ray.file.uploaded", {"size": 2048, "path": "x" * 100_000})


@pytest.fixture
def cli(engine: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The ``sopflow`` CLI in this process, connected to the test engine (its namespace and state file)."""
    import runtime._cli_exec
    import runtime._cli_triggers as commands
    from runtime.cli import main

    monkeypatch.setattr(commands, "_connect", lambda address, start_if_missing: (engine, False))
    monkeypatch.setattr(runtime._cli_exec, "_connect", lambda address, start_if_missing: (engine, False))
    monkeypatch.setenv("SOPFLOW_API", "off")  # over Ray here; tests/runtime/test_cli_api_ops.py: over the API
    monkeypatch.setenv("COLUMNS", "200")  # a wide "terminal": table cells are not cut short
    runner = CliRunner()
    return lambda *args: runner.invoke(main, list(args), catch_exceptions=False)


def test_the_trigger_commands(cli: Any, engine: Any, sop_file: Any) -> None:
    path = sop_file(SOP, "ray-intake.yaml")
    out = cli("deploy", path)
    assert out.exit_code == 0 and out.output.strip() == "deployed 2 trigger(s): ray-intake/hourly, ray-intake/upload"
    try:
        listed = json.loads(cli("triggers", "list", "--format", "json").output)
        assert {r["id"]: r["kind"] for r in listed if r["sop"] == "ray-intake"} == {
            "ray-intake/hourly": "cron", "ray-intake/upload": "event"}
        text = cli("triggers", "list").output
        assert "cron 0 * * * * (Europe/Paris)" in text and "event ray.file.uploaded" in text
        assert cli("triggers", "pause", "hourly").output.strip() == "ray-intake/hourly: paused"
        assert cli("triggers", "resume", "ray-intake/hourly").output.strip() == "ray-intake/hourly: active"
        small = cli("emit", "ray.file.uploaded", "--data", '{"size": 1, "path": "/x"}')
        assert small.exit_code == 0 and "ray-intake/upload: not fired (filter is false)" in small.output
        big = cli("emit", "ray.file.uploaded", "--data", '{"size": 4096, "path": "/x"}', "--key", "cli-1")
        assert big.exit_code == 0 and big.output.startswith("ray-intake/upload: exe-")
        eid = big.output.split(": ", 1)[1].strip()
        assert engine.wait(eid, 60).status.value == "completed"
        fired = cli("triggers", "fire", "ray-intake/upload", "--data", '{"path": "/by/hand"}')
        assert fired.exit_code == 0 and "exe-" in fired.output
        nothing = cli("emit", "nobody.listens")
        assert "no deployed trigger listens to event 'nobody.listens'" in nothing.output
        bad = cli("emit", "ray.file.uploaded", "--data", "{not json")
        assert bad.exit_code == 2 and "--data" in bad.output and "not JSON" in bad.output
        unknown = cli("triggers", "pause", "nope")
        assert unknown.exit_code == 1 and "no deployed trigger 'nope'" in unknown.output
    finally:
        out = cli("undeploy", "ray-intake")
    assert out.output.strip() == "removed 2 trigger(s): ray-intake/hourly, ray-intake/upload"
    gone = cli("undeploy", "ray-intake")
    assert gone.exit_code == 1 and "has no deployed triggers" in gone.output


def test_deploy_of_a_bad_cron_names_the_trigger(cli: Any, sop_file: Any) -> None:
    path = sop_file(SOP.replace('"0 * * * *"', '"0 * * *"'), "bad.yaml")
    out = cli("deploy", path)
    assert out.exit_code == 1
    assert "triggers[1].cron" in out.output and "trigger 'hourly'" in out.output and "needs five" in out.output


def test_the_trigger_actor_fires_a_cron_trigger_on_the_real_clock(engine: Any, sop_file: Any) -> None:
    """Every minute: within about a minute of deploying, one execution, keyed by its fire time."""
    text = SOP.replace("ray-intake", "ray-minutely").replace('"0 * * * *"', '"* * * * *"')
    engine.deploy(sop_file(text, "minutely.yaml"))
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not engine.list(sop="ray-minutely"):
            time.sleep(0.5)  # polling a condition: the next minute's fire
        [first] = engine.list(sop="ray-minutely")[-1:]
        submitted = engine.history(first.id)[0]
        assert submitted.data["idempotency_key"].startswith("trigger:ray-minutely/hourly:")
        assert submitted.data["idempotency_key"].endswith(":00Z")
        assert submitted.data["submitted_by"] == "trigger ray-minutely/hourly"
        assert engine.wait(first.id, 60).status.value == "completed"
    finally:
        engine.undeploy("ray-minutely")
