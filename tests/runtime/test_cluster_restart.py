"""A whole local Ray cluster stops with executions unfinished; a new one on the same state file resumes them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.ray


def phase(name: str, state: Path, work: Path, stdin: str = "") -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "tests.runtime.cluster_restart_driver", name, str(state),
                           str(work)], input=stdin, capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_restarted_cluster_resumes_every_unfinished_execution_from_the_state_file(tmp_path) -> None:
    state, work = tmp_path / "state.db", tmp_path / "work"
    started = phase("start", state, work)
    resumed = phase("resume", state, work, json.dumps(started))

    assert resumed["recovery"]["executions"] == 2
    assert resumed["recovery"]["redispatched"] == 2  # the two gated attempts that died with the cluster
    for n, eid in enumerate(started["ids"]):
        result = resumed["results"][eid]
        assert result["status"] == "completed"
        assert result["outputs"]["steps"] == {"a": "a", "b": "b<a>", "c": "c<b<a>>"}
        runs = {s: len((work / str(n) / f"{s}.runs").read_text().splitlines()) for s in "abc"}
        assert runs == {"a": 1, "b": 2, "c": 1}  # only the interrupted step ran again
