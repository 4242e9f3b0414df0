"""Ray's own messages stay out of the CLI user's terminal unless ``--verbose``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
RAYLET = {"lines": ["A worker died or was killed while executing a task"], "pid": "raylet", "is_err": False}


def test_raylet_messages_go_to_the_log_not_the_terminal_and_worker_logs_stay_off(monkeypatch, capsys) -> None:
    import ray._private.worker as ray_worker

    from runtime._cli_exec import quiet_raylet_messages, ray_options

    monkeypatch.setattr(ray_worker, "print_to_stdstream", ray_worker.print_to_stdstream)  # restored after
    assert ray_options(False)["log_to_driver"] is False and ray_options(True)["log_to_driver"] is True
    ray_worker.print_to_stdstream(dict(RAYLET), ignore_prefix=False)
    assert "A worker died" in capsys.readouterr().out  # Ray's behaviour without sopflow's filter
    quiet_raylet_messages()
    quiet_raylet_messages()  # twice is once
    ray_worker.print_to_stdstream(dict(RAYLET), ignore_prefix=False)
    out = capsys.readouterr()
    assert "A worker died" not in out.out + out.err


def test_the_verbose_flag_is_accepted_before_any_command(tmp_path) -> None:
    from runtime.cli import main

    sop = tmp_path / "s.yaml"
    sop.write_text("sop: s\nversion: '1'\nsteps:\n  - id: a\n    uses: shell\n    run: 'true'\n")
    assert CliRunner().invoke(main, ["--verbose", "validate", str(sop)]).exit_code == 0


@pytest.mark.ray
def test_a_crashing_worker_prints_no_raylet_warning_in_sopflow_run(tmp_path) -> None:
    """End to end: `sopflow run` on a temporary cluster, a step whose worker dies once."""
    sop = tmp_path / "crash.json"
    sop.write_text(json.dumps({"sop": "crash", "defaults": {"retry": {"max_attempts": 3, "initial_delay_s": 0.05}},
                               "steps": [{"id": "c", "uses": "python:tests.handlers_for_tests:crash_once",
                                          "with": {"marker": str(tmp_path / "marker")}}]}))
    # RAY_ADDRESS=local: a fresh cluster of its own, never another one running on this machine.
    env = {**os.environ, "SOPFLOW_STATE": str(tmp_path / "state.db"), "RAY_ADDRESS": "local"}
    proc = subprocess.run([sys.executable, "-m", "runtime.cli", "run", str(sop), "--format", "json"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "marker").exists()  # the worker did die once
    assert "(raylet)" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["status"] == "completed"
