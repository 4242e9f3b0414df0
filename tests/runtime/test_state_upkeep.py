"""Keeping a state file healthy: WAL checkpoints, ``sopflow backup``, ``sopflow check``, the check at start."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.cli import main
from runtime.eventlog import ExecutionRecord, SqliteEventLog
from runtime.events import Event, EventKind
from runtime.history import import_history
from tests.conftest import EXAMPLES, ROOT
from tests.sop_builders import wait_for


def fill(log: SqliteEventLog, executions: dict[str, int], finished: bool = True) -> None:
    """Executions with ``n`` events each, ending with execution_finished when ``finished``."""
    for eid, n in executions.items():
        kinds = [EventKind.SUBMITTED] + [EventKind.STARTED] * (n - 2) + [
            EventKind.FINISHED if finished else EventKind.STARTED]
        events = [Event(eid, i + 1, k, time.time(), None, None, {"pad": "x" * 200}) for i, k in enumerate(kinds)]
        log.append(events, [ExecutionRecord(eid, "s", "completed" if finished else "running", time.time(), n,
                                            time.time() if finished else None, finished)])


def wal(path: Path) -> int:
    return os.path.getsize(f"{path}-wal") if os.path.exists(f"{path}-wal") else 0


HISTORIES = Path(__file__).resolve().parents[1] / "histories"
LOST_ROW, GAP, CUT = "exe-01a1fffcf45b-cc948e27", "exe-01a1fffcf0cd-fde64fe9", "exe-01a1fffcf625-8a56abab"
"""Real finished histories (17, 11 and 9 events) that the damage below hits."""


@pytest.fixture
def damaged(tmp_path) -> Path:
    """What a damaged WAL leaves: a lost row, a lost event in the middle, lost last events."""
    path = tmp_path / "state.db"
    log = SqliteEventLog(path)
    for saved in sorted(HISTORIES.glob("*.json")):
        import_history(log, json.loads(saved.read_text()))
    log.close()
    raw = sqlite3.connect(path)
    raw.execute("DELETE FROM executions WHERE id = ?", (LOST_ROW,))
    raw.execute("DELETE FROM events WHERE execution_id = ? AND seq = 2", (GAP,))
    raw.execute("DELETE FROM events WHERE execution_id = ? AND seq >= 3", (CUT,))
    raw.commit()
    raw.close()
    return path


# -- checkpoints -----------------------------------------------------------------------------------


def test_closing_the_store_leaves_nothing_in_the_wal_even_with_a_reader_open(tmp_path) -> None:
    path = tmp_path / "state.db"
    log = SqliteEventLog(path, owner="a")
    reader = SqliteEventLog.open_readonly(path)  # the monitor keeps the file open
    fill(log, {f"e{i}": 20 for i in range(100)})
    assert reader.stats()["events"] == 2000
    log.close()
    assert wal(path) == 0
    reader.close()
    copy = tmp_path / "main-only.db"  # the main file alone holds everything
    copy.write_bytes(path.read_bytes())
    assert SqliteEventLog.open_readonly(copy).stats()["events"] == 2000


def test_the_wal_is_checkpointed_periodically_while_the_owner_runs(tmp_path) -> None:
    path = tmp_path / "state.db"
    log = SqliteEventLog(path, checkpoint_every_s=0.1)
    reader = SqliteEventLog.open_readonly(path)
    try:
        fill(log, {f"e{i}": 20 for i in range(50)})
        assert wal(path) > 0
        assert reader.stats()["events"] == 1000
        wait_for(lambda: wal(path) == 0, 30)
    finally:
        reader.close()
        log.close()


# -- backup ----------------------------------------------------------------------------------------


def test_backup_copies_a_store_while_its_owner_writes(tmp_path) -> None:
    path, dest = tmp_path / "state.db", tmp_path / "backups" / "copy.db"
    log = SqliteEventLog(path, owner="engine")
    try:
        fill(log, {f"e{i}": 10 for i in range(30)})
        result = CliRunner().invoke(main, ["backup", str(dest), "--state", str(path)])
        assert result.exit_code == 0, result.output
        assert f"to {dest}: 30 execution(s), 300 event(s)" in result.output
        fill(log, {"after": 3})  # the owner goes on writing, its lease untouched
        assert log.lease().holder == "engine"
    finally:
        log.close()
    copy = SqliteEventLog.open_readonly(dest)
    assert copy.stats() == {"executions": 30, "events": 300, "unfinished": 0} and copy.check() == []
    copy.close()
    assert not wal(dest) and oct(dest.stat().st_mode & 0o777) == "0o600"
    again = CliRunner().invoke(main, ["backup", str(dest), "--state", str(path)])
    assert again.exit_code == 1 and "exists; give --force" in again.output
    assert CliRunner().invoke(main, ["backup", str(dest), "--state", str(path), "--force"]).exit_code == 0


def test_backup_of_a_missing_state_file_says_where_it_looked(tmp_path) -> None:
    result = CliRunner().invoke(main, ["backup", str(tmp_path / "b.db"), "--state", str(tmp_path / "no.db")])
    assert result.exit_code == 1 and "no state store at" in result.output and "Traceback" not in result.output


# -- check -----------------------------------------------------------------------------------------


def test_check_of_a_clean_store_exits_0(tmp_path) -> None:
    path = tmp_path / "state.db"
    log = SqliteEventLog(path)
    fill(log, {"a": 3, "b": 4})
    fill(log, {"c": 3}, finished=False)
    log.close()
    result = CliRunner().invoke(main, ["check", "--state", str(path)])
    assert result.exit_code == 0, result.output
    assert "ok (3 execution(s), 10 event(s))" in result.output


def test_check_lists_every_execution_whose_events_and_row_disagree_and_exits_1(damaged) -> None:
    result = CliRunner().invoke(main, ["check", "--state", str(damaged)])
    assert result.exit_code == 1, result.output
    assert "4 problem(s) found" in result.output
    assert f"execution {LOST_ROW} has 17 event(s) but no state row" in result.output
    assert f"execution {GAP} has 10 event(s) numbered 1..11: 1 missing" in result.output
    assert f"execution {CUT}: its state row is at event #9 but its last event is #2" in result.output
    assert f"execution {CUT}: its state row says finished but its events do not end it" in result.output
    assert " ok" not in result.output


def test_check_of_a_file_that_is_no_store_exits_2(tmp_path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello\n" * 100)
    result = CliRunner().invoke(main, ["check", "--state", str(path)])
    assert result.exit_code == 2 and "is not a sopflow state store" in result.output


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(2, 8), min_size=1, max_size=5), data=st.data())
def test_check_reports_exactly_the_executions_that_lost_events(tmp_path_factory, sizes, data) -> None:
    path = tmp_path_factory.mktemp("prop") / "state.db"
    log = SqliteEventLog(path)
    fill(log, {f"e{i}": n for i, n in enumerate(sizes)})
    lost = {f"e{i}": data.draw(st.sets(st.integers(1, n), max_size=n), label=f"lost from e{i}")
            for i, n in enumerate(sizes)}
    raw = sqlite3.connect(path)
    for eid, seqs in lost.items():
        raw.executemany("DELETE FROM events WHERE execution_id = ? AND seq = ?", [(eid, s) for s in seqs])
    raw.commit()
    raw.close()
    found = log.check(deep=False)
    log.close()
    named = {p.split()[1].rstrip(":") for p in found}
    assert named == {eid for eid, seqs in lost.items() if seqs}


# -- with an engine --------------------------------------------------------------------------------


@pytest.mark.ray
def test_an_engine_starting_on_an_inconsistent_store_reports_it_and_stopping_checkpoints(
        ray_cluster, damaged, caplog) -> None:
    from tests.sop_builders import own_engine

    with own_engine("sopflow-upkeep-tests", damaged.parent) as engine:
        assert len(engine.store_problems) == 4
        assert any(LOST_ROW in p for p in engine.info()["recovery"]["store_problems"])
        assert "the state file" in caplog.text and "is inconsistent" in caplog.text
        eid = engine.submit(str(EXAMPLES / "hello-linear.yaml"))
        assert engine.wait(eid, timeout=120).status.value == "completed"
        assert wal(damaged) > 0
    assert wal(damaged) == 0  # the engine stopped: the main file holds everything, the monitor's reader
    # notwithstanding


@pytest.mark.ray
def test_sopflow_recover_warns_about_an_inconsistent_store(damaged) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SOPFLOW_STATE": str(damaged)}
    env["RAY_ADDRESS"] = "local"  # a cluster of its own, never one already on this machine
    done = subprocess.run([sys.executable, "-m", "runtime.cli", "recover"], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "warning: the state file is inconsistent (4 problem(s))" in done.stderr
    assert f"execution {LOST_ROW} has 17 event(s) but no state row" in done.stderr
