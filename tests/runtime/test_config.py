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


def test_the_default_state_file_is_resolved_where_the_actors_run_not_by_the_client(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SOPFLOW_STATE", str(tmp_path / "client.db"))
    config = EngineConfig()
    assert config.state == "" and config.durable  # travels unresolved to the head node
    monkeypatch.setenv("SOPFLOW_STATE", str(tmp_path / "from-head-env.db"))  # the head's environment
    assert config.on_this_node().state == str(tmp_path / "from-head-env.db")
    monkeypatch.delenv("SOPFLOW_STATE")
    assert config.on_this_node().state == os.path.expanduser("~/.sopflow/state.db")
    explicit = EngineConfig(state=str(tmp_path / "mine.db"))
    assert explicit.on_this_node() is explicit


@pytest.mark.parametrize("field, value, message", [
    ("synchronous", "SOMETIMES", "synchronous must be OFF, NORMAL, FULL or EXTRA, got 'SOMETIMES'"),
    ("retention_days", 0, "retention_days must be > 0, got 0"),
    ("snapshot_every", 5, "snapshot_every must be >= 10, got 5"),
    ("keep_finished", -1, "keep_finished must be >= 0, got -1"),
    ("max_running_steps", -2, "max_running_steps must be >= 0 (0: automatic), got -2"),
    ("lease_ttl_s", 0, "lease_ttl_s must be > 0, got 0"),
    ("checkpoint_every_s", -1.0, "checkpoint_every_s must be > 0, got -1.0"),
    ("max_package_mb", 0, "max_package_mb must be an integer >= 1, got 0"),
])
def test_a_bad_setting_names_the_rule(field, value, message) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        EngineConfig(state="memory://", **{field: value})


def test_a_client_given_an_address_sends_the_token_it_has(tmp_path, monkeypatch) -> None:
    """Ray 2.60 enables token auth only for clusters it finds itself; given an address, a client
    with the token still sent none and was refused ("InvalidAuthToken")."""
    from runtime.engine import use_token_auth_if_available

    token = tmp_path / "auth_token"
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    assert not use_token_auth_if_available("10.0.0.5:6379")  # no token at hand: nothing to send
    token.write_text("x" * 64)
    assert not use_token_auth_if_available("auto")  # Ray handles a cluster it finds itself
    assert not use_token_auth_if_available("ray://head:10001")  # Ray Client has its own channel
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert not use_token_auth_if_available("10.0.0.5:6379")  # the user's explicit choice stands
    monkeypatch.delenv("RAY_AUTH_MODE")
    assert use_token_auth_if_available("10.0.0.5:6379")
    assert os.environ["RAY_AUTH_MODE"] == "token"
