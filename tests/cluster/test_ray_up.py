"""`ray up` a cluster with the local provider, submit an SOP from outside it, `ray down`.

The whole path a user takes with `cluster.yaml`, on this machine: a real sshd
(tests/cluster/local_node.py), the real cluster launcher, sopflow's CLI as a
client with its own home directory, and a teardown that must leave nothing behind.
"""

from __future__ import annotations

import json
import os
import string
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.local_node import LocalNode, free_port, listening_address, wait_until

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/unshare").exists(),
                                reason="the local node needs root and unshare (namespaces)")


def launcher(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    return subprocess.run([str(BIN / "ray"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def node() -> Iterator[LocalNode]:
    with LocalNode() as n:
        yield n


def test_ray_up_submit_from_outside_then_ray_down_leaves_nothing(node: LocalNode, tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("gcs_port", "dashboard_port", "client_port")}
    state = node.dir / "head-state" / "state.db"
    config = tmp_path / "cluster.yaml"
    config.write_text(string.Template((Path(__file__).parent / "cluster-local.yaml").read_text()).substitute(
        suffix=uuid.uuid4().hex[:8], ssh_key=node.key, ssh_port=node.port, state=state, num_cpus=2,
        temp_dir=node.dir / "ray", **ports))

    up = launcher("up", "-y", "--no-config-cache", str(config), cwd=tmp_path)
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        assert any("raylet" in p for p in node.processes())
        # The dashboard is reached by port-forward, never exposed.
        assert listening_address(ports["dashboard_port"]) == "127.0.0.1"

        # A client elsewhere: its own home directory, the head's token copied to it.
        client_home = tmp_path / "client-home"
        client_home.mkdir()
        env = {**{k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "SOPFLOW_STATE")},
               "HOME": str(client_home), "RAY_AUTH_TOKEN_PATH": str(Path("/root/.ray/auth_token"))}
        run = subprocess.run([str(BIN / "sopflow"), "run", "examples/hello-linear.yaml",
                              "--address", f"127.0.0.1:{ports['gcs_port']}", "--input", "name=ada",
                              "--format", "json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        view = json.loads(run.stdout)
        assert view["status"] == "completed"
        assert "ada" in json.dumps(view["outputs"])
        # The state file is where the head's configuration puts it, not in the client's home.
        assert state.exists()
        assert not (client_home / ".sopflow").exists()
    finally:
        down = launcher("down", "-y", str(config), cwd=tmp_path)
    assert down.returncode == 0, down.stdout[-3000:] + down.stderr[-3000:]
    # `ray down` reports success even when `ray stop` failed on the node: check for ourselves.
    wait_until(lambda: not [p for p in node.processes() if "ray" in p], 60, "the head's Ray processes to end")
    assert listening_address(ports["gcs_port"]) is None
