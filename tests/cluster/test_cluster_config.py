"""cluster.yaml is a config `ray up` accepts, and keeps the rules sopflow relies on (no cluster needed)."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[2]


def configs() -> dict[str, dict]:
    local = string.Template((ROOT / "tests" / "cluster" / "cluster-local.yaml").read_text()).substitute(
        suffix="t", ssh_key="/k", ssh_port=2222, state="/srv/state.db", num_cpus=2, temp_dir="/tmp/r",
        gcs_port=6379, dashboard_port=8265, client_port=10001)
    return {"cluster.yaml": yaml.safe_load((ROOT / "cluster.yaml").read_text()), "local": yaml.safe_load(local)}


@pytest.mark.parametrize("name", ["cluster.yaml", "local"])
def test_ray_accepts_the_cluster_config(name: str) -> None:
    validate_config(prepare_config(configs()[name]))  # Ray's own schema, as `ray up` checks it


@pytest.mark.parametrize("name", ["cluster.yaml", "local"])
def test_the_head_keeps_the_dashboard_on_loopback_and_names_its_state_file(name: str) -> None:
    head = " ".join(configs()[name]["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert "SOPFLOW_STATE=" in head  # the head's setting, never a connecting client's home directory


def test_nodes_put_sopflow_on_the_path_of_login_shells_so_ray_down_can_stop_ray() -> None:
    setup = " ".join(configs()["cluster.yaml"]["setup_commands"])
    assert "/etc/profile.d/sopflow.sh" in setup and "sopflow-venv/bin" in setup
