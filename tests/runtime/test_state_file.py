"""The state file itself: an empty pre-created file is initialised, a foreign one is refused clearly."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from runtime.cli import main
from runtime.errors import StateStoreError
from runtime.eventlog import SqliteEventLog
from tests.conftest import EXAMPLES, ROOT


def foreign_sqlite(path: Path) -> Path:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.commit()
    conn.close()
    return path


def not_sqlite(path: Path) -> Path:
    path.write_text("name,amount\nada,12\n" * 200)
    return path


# -- the store, without Ray ------------------------------------------------------------------------


def test_an_empty_precreated_file_is_read_as_an_empty_store_then_initialised(tmp_path) -> None:
    path = tmp_path / "state.db"
    path.touch()
    reader = SqliteEventLog.open_readonly(path)  # the monitor opens it before the coordinator
    try:
        assert reader.read("x") == [] and reader.unfinished() == [] and reader.get("x") is None
        assert reader.stats() == {"executions": 0, "events": 0, "unfinished": 0}
        writer = SqliteEventLog(path)
        writer.close()
        assert reader.stats()["executions"] == 0  # now a real store, still readable
    finally:
        reader.close()


@pytest.mark.parametrize("readonly", [False, True])
def test_a_sqlite_file_of_another_application_is_refused_naming_its_tables(tmp_path, readonly) -> None:
    path = foreign_sqlite(tmp_path / "app.db")
    with pytest.raises(StateStoreError, match=r"app.db is not a sopflow state store: it holds other "
                                              r"tables \(customers\).*another file"):
        SqliteEventLog(path, readonly=readonly)
    assert [r[0] for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master")] == ["customers"]


@pytest.mark.parametrize("readonly", [False, True])
def test_a_file_that_is_not_sqlite_is_refused_and_left_unchanged(tmp_path, readonly) -> None:
    path = not_sqlite(tmp_path / "data.csv")
    before = path.read_bytes()
    with pytest.raises(StateStoreError, match=r"data.csv is not a sopflow state store: it is not a SQLite "
                                              r"database.*another file"):
        SqliteEventLog(path, readonly=readonly)
    assert path.read_bytes() == before
    assert not Path(f"{path}-wal").exists()


def test_history_with_state_on_an_empty_file_says_there_is_no_such_execution(tmp_path) -> None:
    path = tmp_path / "state.db"
    path.touch()
    result = CliRunner().invoke(main, ["history", "exe-1", "--state", str(path)])
    assert result.exit_code == 1 and "no execution 'exe-1'" in result.output
    assert "Traceback" not in result.output


# -- through the engine and the command line -------------------------------------------------------


@pytest.mark.ray
def test_an_engine_starts_on_an_empty_precreated_state_file(ray_cluster, tmp_path) -> None:
    from tests.sop_builders import own_engine

    (tmp_path / "state.db").touch()
    with own_engine("sopflow-empty-state-tests", tmp_path) as engine:
        eid = engine.submit(str(EXAMPLES / "hello-linear.yaml"))
        assert engine.wait(eid, timeout=120).status.value == "completed"


@pytest.mark.ray
@pytest.mark.parametrize("make", [foreign_sqlite, not_sqlite])
def test_an_engine_on_a_foreign_file_fails_to_start_with_the_reason(ray_cluster, tmp_path, make) -> None:
    from runtime import Engine
    from runtime.config import EngineConfig
    from runtime.errors import EngineStartError

    path = make(tmp_path / "foreign.db")
    with pytest.raises(EngineStartError, match="foreign.db is not a sopflow state store"):
        Engine(namespace="sopflow-foreign-state-tests", config=EngineConfig(state=str(path)))


def sopflow(*args: str, state: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SOPFLOW_STATE": str(state)}
    env["RAY_ADDRESS"] = "local"  # a cluster of its own, never one already on this machine
    return subprocess.run([sys.executable, "-m", "runtime.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)


@pytest.mark.ray
def test_sopflow_run_on_an_empty_precreated_state_file_completes(tmp_path) -> None:
    state = tmp_path / "state.db"
    state.touch()
    done = sopflow("run", str(EXAMPLES / "hello-linear.yaml"), "--format", "json", state=state)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr


@pytest.mark.ray
def test_sopflow_run_on_a_foreign_state_file_exits_2_with_the_reason(tmp_path) -> None:
    state = foreign_sqlite(tmp_path / "app.db")
    done = sopflow("run", str(EXAMPLES / "hello-linear.yaml"), state=state)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "app.db is not a sopflow state store" in done.stderr
    assert "Traceback" not in done.stderr and "RayTaskError" not in done.stderr
