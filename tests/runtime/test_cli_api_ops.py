"""``sopflow emit``, ``triggers``, ``batch report`` and ``resources`` as real subprocesses answer through the
HTTP API with what they print over Ray (the pattern of ``tests/runtime/test_cli_api.py``)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.status import ExecutionStatus
from tests.runtime.test_cli_api import api_env, over_ray, sopflow  # noqa: F401 - api_env is a fixture

pytestmark = pytest.mark.ray

SOP = """
sop: cli-hook
inputs:
  path: {type: string, required: true}
steps:
  - id: look
    run: 'printf "%s" "$P"'
    env: {P: "${{ inputs.path }}"}
triggers:
  - name: upload
    event: cli.file.uploaded
    filter: "trigger.payload.size >= 1024"
    inputs: {path: "${{ trigger.payload.path }}"}
  - name: nightly
    cron: "0 3 * * *"
    timezone: Europe/Paris
    inputs: {path: "${{ trigger.fire_time }}"}
"""


@pytest.fixture(scope="module")
def deployed(engine, tmp_path_factory) -> Iterator[str]:
    path = tmp_path_factory.mktemp("cli-api-ops") / "cli-hook.yaml"
    path.write_text(SOP)
    engine.deploy(str(path))
    yield str(path)
    engine.undeploy("cli-hook")


@pytest.fixture(scope="module")
def batch(engine, examples_dir: Path) -> str:
    eid = engine.submit(str(examples_dir / "hello-linear.yaml"), {"name": "cli"}, schedule={"batch": "cli-api-batch"})
    assert engine.wait(eid, timeout=120).status == ExecutionStatus.COMPLETED
    return "cli-api-batch"


def same(engine, api_env, monkeypatch, *command: str) -> subprocess.CompletedProcess:  # noqa: F811
    expected = over_ray(engine, monkeypatch, *command)
    got = sopflow(api_env, *command)
    assert (got.returncode, got.stdout + got.stderr) == (expected.exit_code, expected.output), command
    assert "Traceback" not in got.stderr
    return got


def test_triggers_list_pause_resume_and_errors_print_what_they_print_over_ray(engine, api_env, deployed,
                                                                              monkeypatch) -> None:  # noqa: F811
    for command in (["triggers", "list"], ["triggers", "list", "--format", "json"],
                    ["triggers", "pause", "cli-hook/upload"], ["triggers", "list"],
                    ["triggers", "resume", "upload"], ["triggers", "pause", "nope"],
                    ["emit", "cli.file.uploaded", "--data", '{"size": 1}'], ["emit", "nobody.listens"],
                    ["emit", "cli.file.uploaded", "--data", json.dumps({"blob": "x" * 70_000})]):
        same(engine, api_env, monkeypatch, *command)
    assert "no deployed trigger 'nope'" in sopflow(api_env, "triggers", "pause", "nope").stderr
    import ray

    with pytest.raises(ValueError):  # no command fell back to Ray (it would have created this)
        ray.get_actor("sopflow-coordinator", namespace="sopflow")


def test_emit_and_fire_with_a_key_start_one_execution_and_print_it_both_ways(engine, api_env, deployed,
                                                                             monkeypatch) -> None:  # noqa: F811
    data = json.dumps({"path": "/in/cli.csv", "size": 4096})
    first = sopflow(api_env, "emit", "cli.file.uploaded", "--data", data, "--key", "cli-1")
    assert first.returncode == 0 and first.stdout.startswith("cli-hook/upload: exe-"), first.stderr
    eid = first.stdout.split(": ")[1].strip()
    same(engine, api_env, monkeypatch, "emit", "cli.file.uploaded", "--data", data, "--key", "cli-1")
    assert engine.wait(eid, timeout=120).status == ExecutionStatus.COMPLETED
    fired = sopflow(api_env, "triggers", "fire", "cli-hook/upload", "--data", data, "--key", "hand-1")
    assert fired.returncode == 0 and fired.stdout.startswith("cli-hook/upload: exe-"), fired.stderr
    same(engine, api_env, monkeypatch, "triggers", "fire", "cli-hook/upload", "--data", data, "--key", "hand-1")
    assert [v.id for v in engine.list(sop="cli-hook")].count(eid) == 1


def test_batch_report_and_resources_print_what_they_print_over_ray(engine, api_env, batch,
                                                                   monkeypatch) -> None:  # noqa: F811
    for command in (["batch", "report", batch], ["batch", "report", batch, "--json"],
                    ["batch", "report", "never-submitted"],
                    ["resources", "--format", "json"]):
        got = same(engine, api_env, monkeypatch, *command) if command[0] == "batch" else \
            sopflow(api_env, *command)
        assert "Traceback" not in got.stderr
    view = json.loads(got.stdout)  # resources move while steps run: same shape, not the same numbers
    assert view.keys() == engine.resources().keys()
    bad = sopflow(api_env, "batch", "report", "bad name")  # refused before any call, as over Ray
    assert bad.returncode == 2 and "NAME: must be a name of letters" in bad.stderr and "Traceback" not in bad.stderr
    text = sopflow(api_env, "resources")
    assert text.returncode == 0 and "running" in text.stdout, text.stderr


def test_triggers_list_over_the_api_imports_no_ray(api_env) -> None:  # noqa: F811
    code = ("import sys; sys.argv = ['sopflow', 'triggers', 'list']\n"
            "from runtime.cli import main\n"
            "try: main()\n"
            "except SystemExit: pass\n"
            "print(sorted(m for m in ('ray',) if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], env=api_env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.splitlines()[-1] == "[]", done.stdout + done.stderr
