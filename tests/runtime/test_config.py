"""EngineConfig: where state lives, and clear messages for bad settings."""

from __future__ import annotations

import os

import pytest

from runtime.config import EngineConfig


def test_a_relative_state_path_is_made_absolute_for_the_actors(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert EngineConfig(state="state.db").state == str(tmp_path / "state.db")
    assert EngineConfig(state="sqlite://run/state.db").state == str(tmp_path / "run" / "state.db")
    assert EngineConfig(state="memory://").state == "memory://" and not EngineConfig(state="memory://").durable


def test_the_default_state_file_follows_sopflow_state(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SOPFLOW_STATE", str(tmp_path / "from-env.db"))
    assert EngineConfig().state == str(tmp_path / "from-env.db")
    monkeypatch.delenv("SOPFLOW_STATE")
    assert EngineConfig().state == os.path.expanduser("~/.sopflow/state.db")


@pytest.mark.parametrize("field, value, message", [
    ("synchronous", "SOMETIMES", "synchronous must be OFF, NORMAL, FULL or EXTRA, got 'SOMETIMES'"),
    ("retention_days", 0, "retention_days must be > 0, got 0"),
    ("snapshot_every", 5, "snapshot_every must be >= 10, got 5"),
    ("keep_finished", -1, "keep_finished must be >= 0, got -1"),
    ("max_running_steps", -2, "max_running_steps must be >= 0 (0: automatic), got -2"),
    ("lease_ttl_s", 0, "lease_ttl_s must be > 0, got 0"),
    ("checkpoint_every_s", -1.0, "checkpoint_every_s must be > 0, got -1.0"),
])
def test_a_bad_setting_names_the_rule(field, value, message) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        EngineConfig(state="memory://", **{field: value})
