"""The real ``sopflow`` commands, run as subprocesses, answer through the HTTP API with today's output.

The expected output is what the same command prints over Ray (in-process, connected to the
test engine); the subprocess reaches the API actor the test engine started, named by
``$SOPFLOW_API``, and never opens a Ray connection of its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from runtime.status import ExecutionStatus
from tests.sop_builders import gated

pytestmark = pytest.mark.ray

UNKNOWN = "exe-000000000000-00000000"


@pytest.fixture(scope="module")
def api_env(engine) -> dict[str, str]:
    """The environment of a CLI that must use the engine's API actor."""
    import ray

    from actors._api import ray_auth_token

    info = ray.get(engine._conn.actors.api.ready.remote(), timeout=60)
    assert info["error"] is None, info["error"]
    token = ray_auth_token()
    if token is None:
        pytest.skip("this Ray runs without token auth")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOPFLOW_", "RAY_AUTH"))}
    # A fallback to Ray would land on this cluster, in the CLI's own namespace: the test checks it never does.
    return {**env, "SOPFLOW_API": info["url"], "SOPFLOW_API_TOKEN": token, "COLUMNS": "120",
            "RAY_ADDRESS": ray.get_runtime_context().gcs_address}


def sopflow(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime.cli", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def over_ray(engine, monkeypatch, *args: str):
    """The same command as today, over Ray (through the test engine), in this process."""
    import runtime._cli_exec
    from runtime.cli import main

    monkeypatch.setenv("SOPFLOW_API", "off")
    monkeypatch.setenv("COLUMNS", "120")
    monkeypatch.setattr(runtime._cli_exec, "_connect", lambda address, start_if_missing: (engine, False))
    return CliRunner().invoke(main, list(args))


@pytest.fixture(scope="module")
def finished(engine, examples_dir: Path) -> str:
    eid = engine.submit(str(examples_dir / "hello-linear.yaml"), {"name": "grace"})
    assert engine.wait(eid, timeout=120).status == ExecutionStatus.COMPLETED
    return eid


def test_status_list_history_and_result_print_exactly_what_they_print_over_ray(engine, api_env, finished,
                                                                                monkeypatch) -> None:
    commands = [["status", finished], ["status", finished, "--format", "json"],
                ["list", "--sop", "hello-linear"], ["list", "--status", "completed", "--format", "json"],
                ["history", finished], ["history", finished, "--format", "json"], ["result", finished],
                ["wait", finished], ["status", UNKNOWN], ["history", UNKNOWN], ["status", "not-an-id"]]
    for command in commands:
        expected = over_ray(engine, monkeypatch, *command)
        got = sopflow(api_env, *command)
        assert (got.returncode, got.stdout + got.stderr) == (expected.exit_code, expected.output), command
        assert "Traceback" not in got.stderr
    assert finished in sopflow(api_env, "list").stdout
    import ray

    with pytest.raises(ValueError):  # no command fell back to Ray (it would have created these)
        ray.get_actor("sopflow-coordinator", namespace="sopflow")


def test_cancel_pause_and_resume_through_the_api(engine, api_env, tmp_path) -> None:
    eid, _ = gated(engine, tmp_path, "cli-api-cancel")
    paused = sopflow(api_env, "pause", eid)
    assert (paused.returncode, paused.stdout) == (0, f"{eid}: paused\n"), paused.stderr
    resumed = sopflow(api_env, "resume", eid)
    assert (resumed.returncode, resumed.stdout) == (0, f"{eid}: running\n"), resumed.stderr
    cancelled = sopflow(api_env, "cancel", eid, "--force")
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout in (f"{eid}: cancelling\n", f"{eid}: cancelled\n")
    assert engine.wait(eid, timeout=60).status == ExecutionStatus.CANCELLED
    again = sopflow(api_env, "pause", eid)
    assert again.returncode == 1
    assert f"cannot pause execution {eid}" in again.stderr or "has finished" in again.stderr
    assert "Traceback" not in again.stderr


def test_a_wrong_token_is_named_and_never_printed(api_env, finished) -> None:
    got = sopflow({**api_env, "SOPFLOW_API_TOKEN": "wrong-token-123"}, "status", finished)
    assert got.returncode == 1
    assert "refused this client's token" in got.stderr and "SOPFLOW_API=off" in got.stderr
    assert "wrong-token-123" not in got.stderr + got.stdout and "Traceback" not in got.stderr


def test_list_with_an_unknown_status_is_a_usage_error(api_env) -> None:
    got = sopflow(api_env, "list", "--status", "bogus")
    assert got.returncode == 2 and "Invalid value for '--status'" in got.stderr and "Traceback" not in got.stderr


def test_the_cli_sends_a_json_body_the_api_accepts_for_decide(api_env, finished) -> None:
    got = sopflow(api_env, "decide", finished, "greet", "--skip", "--reason", "test")
    assert got.returncode == 1
    assert "is not waiting for a decision" in got.stderr or "can no longer be changed" in got.stderr
    assert "Traceback" not in got.stderr


def test_a_command_over_the_api_imports_neither_ray_nor_the_sop_model(api_env, finished) -> None:
    code = ("import sys; sys.argv = ['sopflow', 'status', sys.argv[1]]\n"
            "from runtime.cli import main\n"
            "try: main()\n"
            "except SystemExit: pass\n"
            "print(sorted(m for m in ('ray', 'pydantic', 'yaml', 'jinja2', 'sop.model') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code, finished], env=api_env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert finished in done.stdout and done.stdout.splitlines()[-1] == "[]", done.stdout


def test_the_cli_namespace_is_the_engines_default() -> None:
    from runtime._cli_exec import CLI_NAMESPACE
    from runtime.engine import DEFAULT_NAMESPACE

    assert CLI_NAMESPACE == DEFAULT_NAMESPACE


def test_help_still_lists_every_command() -> None:
    from runtime.cli import _COMMANDS, main

    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    listed = {line.split()[0] for line in result.output.split("Commands:")[1].splitlines() if line.strip()}
    assert listed == set(_COMMANDS)


def test_an_api_named_by_sopflow_api_that_does_not_answer_is_an_error_not_a_silent_fallback(api_env) -> None:
    got = sopflow({**api_env, "SOPFLOW_API": "http://127.0.0.1:1"}, "status", UNKNOWN)
    assert got.returncode == 1
    assert "sopflow's API at http://127.0.0.1:1 ($SOPFLOW_API) does not answer" in got.stderr
    assert "Traceback" not in got.stderr


def test_metrics_through_the_api_match_the_engine_and_import_neither_ray_nor_the_sop_model(engine, api_env,
                                                                                           finished) -> None:
    import json

    got = sopflow(api_env, "metrics", "--sop", "hello-linear", "--window", "all", "--format", "json")
    assert got.returncode == 0, got.stderr
    over_api, direct = json.loads(got.stdout), engine.metrics("all", sop="hello-linear")
    for key in ("executions", "duration_s", "steps", "queue", "step_duration_s"):
        assert over_api[key] == direct[key], key
    text = sopflow(api_env, "metrics", "--sop", "hello-linear")
    assert text.returncode == 0 and "success rate" in text.stdout and "p99" in text.stdout, text.stderr
    code = ("import sys; sys.argv = ['sopflow', 'metrics']\n"
            "from runtime.cli import main\n"
            "try: main()\n"
            "except SystemExit: pass\n"
            "print(sorted(m for m in ('ray', 'pydantic', 'yaml', 'jinja2', 'sop.model') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], env=api_env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.splitlines()[-1] == "[]", done.stdout + done.stderr
    bad = sopflow(api_env, "metrics", "--window", "later")
    assert bad.returncode == 1 and "window must be" in bad.stderr and "Traceback" not in bad.stderr


def test_suggest_prints_the_same_over_the_api_as_over_ray(engine, api_env, finished, examples_dir,
                                                         monkeypatch) -> None:
    """``sopflow suggest FILE``: the running engine's history of the SOP, per step (learned estimates)."""
    path = str(examples_dir / "hello-linear.yaml")
    for command in (["suggest", path], ["suggest", path, "--json"]):
        expected = over_ray(engine, monkeypatch, *command)
        got = sopflow(api_env, *command)
        assert (got.returncode, got.stdout + got.stderr) == (expected.exit_code, expected.output), command
    lines = got.stdout
    assert '"sop": "hello-linear"' in lines and '"suggested": {' in lines and '"timeout_s"' in lines
