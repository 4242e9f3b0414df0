"""A Ray cluster of its own for one test module: `ray start --head --block` in a subprocess, stopped by pid.

Unlike the shared test cluster it has a dashboard (job submission, the state API) and a
Ray Client server (``ray://``), and nothing of the test session on its workers' import
path: sopflow comes from the installed package, handlers only from what a client ships.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.cluster.local_node import _accepts, free_port, wait_until

VENV_BIN = Path(sys.executable).parent


class SeparateCluster:
    """One head node on 127.0.0.1 with free ports; ``start()``/``stop()`` may be called again (a restart)."""

    def __init__(self, home: Path, state: Path) -> None:
        self.home, self.state = home, state
        self.home.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self._log = home / "ray-start.log"
        self.gcs_port = self.dashboard_port = self.client_port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def client_address(self) -> str:
        return f"ray://127.0.0.1:{self.client_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def env(self) -> dict[str, str]:
        """The environment of the cluster and of its clients: no token auth, no test paths."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RAY_", "PYTHONPATH", "OTEL_", "SOPFLOW_"))}  # nothing of the session's
        return {**env, "RAY_AUTH_MODE": "disabled", "SOPFLOW_STATE": str(self.state),
                "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", "RAY_USAGE_STATS_ENABLED": "0"}

    def start(self) -> None:
        self.gcs_port, self.dashboard_port, self.client_port = free_port(), free_port(), free_port()
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "ray"), "start", "--head", "--block", "--port", str(self.gcs_port),
             "--num-cpus", "2", "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
             "--dashboard-port", str(self.dashboard_port), "--ray-client-server-port", str(self.client_port),
             # The agent's HTTP port is a fixed 52365 by default: another cluster on this machine may hold it
             # (then this one's job server has "no available agent").
             "--dashboard-agent-listen-port", str(free_port()), "--disable-usage-stats"],
            cwd=self.home, env=self.env, stdout=subprocess.DEVNULL, stderr=self._log.open("ab"),
            start_new_session=True)
        wait_until(lambda: self._up() or self.proc.poll() is not None, 120, "the separate Ray cluster")
        if self.proc.poll() is not None:
            raise RuntimeError(f"ray start failed: {self._log.read_text()[-2000:]}")

    def _up(self) -> bool:
        if not (_accepts(self.gcs_port) and _accepts(self.client_port)):
            return False
        try:
            with urllib.request.urlopen(f"{self.dashboard}/api/version", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM to `ray start --block` (its pid): it stops the cluster's processes and exits."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: only what it started
            self.proc.wait(timeout=30)
