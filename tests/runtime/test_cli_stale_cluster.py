"""A cluster that died without `ray stop` leaves its address behind: the CLI says so at once (no minutes of retries)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nothing listens there


def test_a_read_command_names_the_dead_cluster_instead_of_hanging(tmp_path: Path) -> None:
    (tmp_path / "ray").mkdir()
    dead = f"127.0.0.1:{_closed_port()}"
    (tmp_path / "ray" / "ray_current_cluster").write_text(dead)  # what a killed `ray start --head` leaves
    env = {**{k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "SOPFLOW_API")},
           "RAY_TMPDIR": str(tmp_path), "SOPFLOW_API": "off", "HOME": str(tmp_path)}
    got = subprocess.run([str(BIN / "sopflow"), "status", "exe-01a1fffcf0cd-fde64fe9"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert got.returncode == 1, got.stdout + got.stderr
    assert f"the Ray cluster last started on this machine ({dead}, recorded by `ray start`) is not running" \
        in got.stderr
    assert "Traceback" not in got.stderr
