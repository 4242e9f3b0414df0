"""Steps land on the nodes best fit chose, on a real multi-node Ray cluster (its own, in a subprocess).

``ray.cluster_utils.Cluster`` starts a head (no CPUs) and nodes of 1, 2 and 4 CPUs on this machine;
three 1-CPU steps running at once fill the 1-CPU node and then the 2-CPU node, leaving the 4-CPU node
free, and each step reports the node Ray ran it on (see ``multinode_driver.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.ray
def test_steps_run_on_the_nodes_bin_packing_chose(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "SOPFLOW_"))}
    env.update(PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0")
    done = subprocess.run([sys.executable, str(ROOT / "tests/runtime/multinode_driver.py"), str(tmp_path)],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    size = {node: cpus for node, cpus in out["nodes"].items()}
    managed = out["managed"]
    assert managed["status"] == "completed", managed
    # Best fit: the 1-CPU node first (nothing left), then the 2-CPU node twice; the 4-CPU node stays free.
    assert sorted(size[n] for n in managed["placed"].values()) == [1, 2, 2], managed["placed"]
    use = managed["resources"]["nodes"]
    assert {size.get(n): row["used"]["cpu"] for n, row in use.items() if n in size} == {1: 1.0, 2: 2.0, 4: 0.0}
    assert out["ray_default"]["status"] == "completed"  # the same SOP without the ResourceManager runs too
