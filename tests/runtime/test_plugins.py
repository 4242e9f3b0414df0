"""Step runners plug in by kind through entry points; ``runtime`` finds them without importing them (no Ray)."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from pathlib import Path

import pytest

from runtime.config import EngineConfig
from runtime.coordinator import CoordinatorCore
from runtime.errors import EngineStartError
from runtime.plugins import load, step_runners
from runtime.request import SubmitRequest
from runtime.runners import InProcessRunner
from runtime.seams import StepRunner
from sop import Sop


@pytest.fixture
def plugin_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An installed distribution (a ``.dist-info`` on sys.path) announcing two step runners."""
    module = f"echo_runner_{tmp_path.name.replace('-', '_')}"  # a fresh module for every test
    (tmp_path / f"{module}.py").write_text(textwrap.dedent('''
        import asyncio
        from runtime.handlers import StepOutcome

        class EchoRunner:
            needs_slot = True
            def __init__(self, host):
                self.host = host
            def start(self, spec, report):
                key = f"{spec.execution.id}/{spec.step.id}/{spec.attempt}"
                asyncio.get_running_loop().call_soon(report.settle, StepOutcome(key, True, {"echo": spec.args}))
                return self
            def cancel(self, force):
                pass

        def broken(host):
            raise RuntimeError("this plugin cannot start")
    '''))
    info = tmp_path / "echo_runner-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-runner\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[sopflow.step_runners]\nmcp = {module}:EchoRunner\nbroken = {module}:broken\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    # sopflow's own runners (agents.mcp) announce the same kinds: leave them out, so the echo one is seen
    import runtime.plugins

    found = runtime.plugins.entry_points
    monkeypatch.setattr(runtime.plugins, "entry_points", lambda group: [
        ep for ep in found(group=group) if not ep.value.startswith("agents.")])
    yield tmp_path
    sys.modules.pop(module, None)


def test_installed_step_runners_are_found_by_kind_and_a_broken_one_is_left_out(plugin_dist: Path,
                                                                              caplog) -> None:
    runners = step_runners(host="the host")
    assert set(runners) == {"mcp"} and runners["mcp"].host == "the host"
    assert isinstance(runners["mcp"], StepRunner)
    assert "the step runner plugin broken (echo_runner_" in caplog.text and "cannot be loaded" in caplog.text


def test_a_step_of_a_plugged_in_kind_runs_through_its_runner(plugin_dist: Path) -> None:
    sop = Sop.model_validate({"sop": "plugged", "steps": [
        {"id": "ask", "uses": "mcp:files/read", "with": {"path": "a.txt"}}]})

    async def scenario():
        core = CoordinatorCore(EngineConfig(state="memory://"), task_runner=InProcessRunner(),
                               runners=step_runners(None))
        core.recovery = {}
        try:
            eid = await core.submit(SubmitRequest(sop))
            return await core.wait(eid, 30)
        finally:
            await core.close_store()

    view = asyncio.run(scenario())
    assert view.status.value == "completed"
    assert view.outputs["steps"]["ask"] == {"echo": {"path": "a.txt"}}


def test_a_step_whose_kind_has_no_runner_fails_naming_the_kind() -> None:
    sop = Sop.model_validate({"sop": "unplugged", "steps": [{"id": "ask", "uses": "mcp:files/read"}]})

    async def scenario():
        core = CoordinatorCore(EngineConfig(state="memory://"), task_runner=InProcessRunner())
        core.recovery = {}
        try:
            return await core.wait(await core.submit(SubmitRequest(sop)), 30)
        finally:
            await core.close_store()

    view = asyncio.run(scenario())
    assert view.status.value == "failed"
    assert "this engine has no runner for 'mcp' steps (step 'ask' uses mcp:files/read)" in view.steps["ask"].error


def test_a_missing_connection_plugin_says_how_to_install() -> None:
    with pytest.raises(EngineStartError, match="is sopflow installed"):
        load("sopflow.connections", "no-such-thing")


def test_the_ray_connection_is_announced_by_the_installed_package() -> None:
    from actors.fronts import RayConnection

    assert load("sopflow.connections", "ray") is RayConnection

