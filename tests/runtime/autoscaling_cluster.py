"""A Ray cluster of its own with Ray's real autoscaler and the fake multi-node provider (simulated nodes).

This is what ``ray.cluster_utils.AutoscalingCluster`` sets up, minus what a shared machine cannot
take: it runs ``ray stop --force`` (every Ray on the host) and expects the GCS on the fixed port
6379. Here the head is ``ray start --head --block`` on free ports, with the autoscaling config
pointing the provider at it; a "node" the autoscaler launches is a real raylet on this machine
with the resources of its node type. Everything runs under a temp dir of its own, so stopping
it ends exactly this cluster's processes (by pid), the simulated nodes included.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from tests.cluster.local_node import _accepts, free_port, wait_until
from tests.runtime.separate_cluster import VENV_BIN

ROOT = Path(__file__).resolve().parents[2]


def fake_config(head: dict[str, float], workers: dict[str, dict[str, Any]], gcs: str,
                idle_timeout_minutes: float) -> dict[str, Any]:
    """The autoscaling config of the fake multi-node provider (Ray's ``fake_multi_node/example.yaml``)."""
    return {
        "cluster_name": "sopflow-fake", "max_workers": sum(w.get("max_workers", 0) for w in workers.values()),
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": gcs},
        "available_node_types": {"ray.head.default": {"resources": head, "node_config": {}, "max_workers": 0},
                                 **workers},
        "head_node_type": "ray.head.default", "auth": {}, "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_minutes, "docker": {}, "initialization_commands": [],
        "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
        "head_start_ray_commands": [], "worker_start_ray_commands": [], "file_mounts": {},
        "cluster_synced_files": [], "file_mounts_sync_continuously": False, "rsync_exclude": [],
        "rsync_filter": []}


class AutoscalingCluster:
    """A head node with an autoscaler that launches simulated worker nodes; ``stop()`` ends all of it.

    Args:
        head_cpus: CPUs of the head node.
        workers: Worker node types, as in a cluster config (``resources``, ``min_workers``, ``max_workers``).
        idle_timeout_minutes: How long a worker node stays idle before the autoscaler removes it.
    """

    def __init__(self, head_cpus: int, workers: dict[str, dict[str, Any]], idle_timeout_minutes: float) -> None:
        # Short: Ray's socket paths live under it (a Unix socket path has ~107 characters at most).
        self.temp_dir = Path(tempfile.mkdtemp(prefix="sfas-", dir="/tmp"))
        self.head_cpus, self.workers, self.idle = head_cpus, workers, idle_timeout_minutes
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.log = self.temp_dir / "ray-start.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """The cluster's and its clients' environment: no token auth, nothing of the test session's Ray."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "OTEL_", "SOPFLOW_"))}
        return {**env, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_FAKE_CLUSTER": "1",
                "AUTOSCALER_UPDATE_INTERVAL_S": "1", "PYTHONPATH": str(ROOT),
                "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"}

    def start(self) -> None:
        self.port = free_port()
        config = self.temp_dir / "autoscaling.json"
        config.write_text(json.dumps(fake_config({"CPU": self.head_cpus}, self.workers, self.address, self.idle)))
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "ray"), "start", "--head", "--block", "--port", str(self.port),
             "--node-ip-address", "127.0.0.1", "--num-cpus", str(self.head_cpus),
             f"--autoscaling-config={config}", "--temp-dir", str(self.temp_dir), "--include-dashboard", "false",
             "--dashboard-agent-listen-port", str(free_port()), "--disable-usage-stats"],
            cwd=self.temp_dir, env=self.env, stdout=subprocess.DEVNULL, stderr=self.log.open("ab"),
            start_new_session=True)
        # The GCS port opens before the head's raylet has registered; a client connecting in between
        # fails ("failed to get node info"): wait for the raylet's socket too.
        raylet = self.temp_dir / "session_latest" / "sockets" / "raylet"
        wait_until(lambda: (_accepts(self.port) and raylet.exists()) or self.proc.poll() is not None, 120,
                   "the autoscaling Ray cluster")
        if self.proc.poll() is not None:
            raise RuntimeError(f"ray start failed: {self.log.read_text()[-2000:]}")

    def own_pids(self) -> list[int]:
        """Processes of this cluster: every one names its temp dir on its command line (or runs in it)."""
        mine = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue
            if str(self.temp_dir) in cmdline or cwd.startswith(str(self.temp_dir)):
                mine.append(int(entry.name))
        return mine

    def stop(self) -> None:
        """SIGTERM to ``ray start --block`` (it stops the head's processes); then the simulated nodes,
        which the autoscaler started outside that process group, by their pids."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: only what it started
                self.proc.wait(timeout=30)
        for pid in self.own_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)
