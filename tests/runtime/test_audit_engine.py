"""The audit log through the engine (in process, and on Ray) and ``sopflow logs``."""

from __future__ import annotations

import getpass
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from runtime import Engine
from runtime.audit import LogQueryError
from runtime.cli import main
from runtime.config import EngineConfig
from tests.sop_builders import H, sop_text, wait_for

A = "python:tests.audit_handlers"
SECRET = "tok-" + "s3cr3t" * 3


@pytest.fixture
def local(tmp_path: Path) -> Any:
    engine = Engine.in_process(state=str(tmp_path / "state.db"))
    yield engine
    engine.shutdown()


BODY = f"""\
steps:
  - id: chat
    uses: {A}:chatty
    with: {{lines: 3}}
  - id: sh
    depends_on: [chat]
    uses: shell
    run: "echo out-line; echo err-line >&2"
  - id: broken
    depends_on: [chat]
    uses: {A}:warn_then_fail
    retry: {{max_attempts: 2, initial_delay_s: 0.01}}
"""


def test_an_execution_is_audited_from_submit_to_end(local: Any, sop_file: Any) -> None:
    eid = local.submit(sop_file(sop_text(BODY, name="audited")), submitted_by="deploy-bot")
    local.wait(eid, timeout=60)
    got = local.logs(execution=eid)
    start, end = got[0], got[-1]
    assert (start.kind, start.sop, start.data["submitted_by"], start.data["version"], start.data["mode"]) == (
        "start", "audited", "deploy-bot", "1", "system_design")
    assert end.kind == "end" and end.status in ("partially_completed", "failed")
    assert end.data["duration_s"] > 0
    lines = [e.message for e in local.logs(execution=eid, step="chat", kind="handler")]
    assert lines == ["line 0 of 3", "line 1 of 3", "line 2 of 3"]
    shell = {(e.data["stream"], e.message, e.level_name) for e in local.logs(execution=eid, kind="output")}
    assert shell == {("stdout", "out-line", "info"), ("stderr", "err-line", "warning")}
    failed = local.logs(execution=eid, step="broken", status="failed")
    assert [e.attempt for e in failed] == [1, 2] and "bad input_value" in failed[0].message
    warned = local.logs(execution=eid, step="broken", kind="handler", level="warning")
    assert [e.message for e in warned] == ["about to fail: 100% sure"] * 2
    decisions = [e.status for e in local.logs(execution=eid, kind="decision")]
    assert decisions[0] == "retry" and "escalate" in decisions
    assert local.logs(execution=eid, text="100%")[0].message == "about to fail: 100% sure"
    with pytest.raises(LogQueryError, match="level must be one of"):
        local.logs(level="shouty")


def test_submitted_by_defaults_to_the_os_user_and_host(local: Any, sop_file: Any) -> None:
    eid = local.submit(sop_file(sop_text(f"steps:\n  - id: a\n    uses: {H}:echo\n")))
    local.wait(eid, timeout=60)
    start = local.logs(execution=eid, kind="start")[0]
    assert start.data["submitted_by"] == f"{getpass.getuser()}@{socket.gethostname()}"


def test_operator_actions_are_audited(local: Any, sop_file: Any, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    eid = local.submit(sop_file(sop_text(f"""\
steps:
  - id: hold
    uses: {H}:wait_for_file
    with: {{path: "{gate}"}}
  - id: after
    depends_on: [hold]
    uses: {H}:echo
""")))
    wait_for(lambda: local.status(eid).steps["hold"].status.value == "running")
    local.pause(eid, by="ops-oncall")
    local.resume(eid)
    local.cancel(eid, force=True, by="ops-oncall")
    gate.touch()  # a handler thread in process is not killed: let it return
    local.wait(eid, timeout=60)
    actions = [(e.status, e.data.get("by")) for e in local.logs(execution=eid, kind="operator")]
    me = f"{getpass.getuser()}@{socket.gethostname()}"
    assert actions == [("pause", "ops-oncall"), ("resume", me), ("cancel", "ops-oncall")]
    assert local.logs(execution=eid, kind="operator", text="(by ops-oncall)")[0].status == "pause"
    assert local.logs(execution=eid, kind="end")[0].status == "cancelled"


def test_a_secret_written_through_the_logger_is_masked_in_the_log_and_the_file(tmp_path: Path,
                                                                               sop_file: Any) -> None:
    state = tmp_path / "state.db"
    engine = Engine.in_process(state=str(state))
    try:
        eid = engine.submit(sop_file(sop_text(f"""\
steps:
  - id: use
    uses: {A}:log_token
    with: {{token: "${{{{ inputs.token }}}}"}}
  - id: sh
    run: "echo shell says $TOKEN"
    env: {{TOKEN: "${{{{ inputs.token }}}}"}}
""", inputs="inputs:\n  token: {type: string, secret: true, required: true}\n")), {"token": SECRET})
        engine.wait(eid, timeout=60)
        lines = [e.message for e in engine.logs(execution=eid) if e.kind in ("handler", "output")]
        assert "calling the API with token ***" in lines and "retrying with ***" in lines
        assert "shell says ***" in lines
        assert not any(SECRET in json.dumps(e.to_dict()) for e in engine.logs(execution=eid))
    finally:
        engine.shutdown()
    for path in state.parent.glob("state.db*"):
        assert SECRET.encode() not in path.read_bytes(), path


def test_a_log_flood_from_a_handler_is_bounded_and_counted(local: Any, sop_file: Any) -> None:
    eid = local.submit(sop_file(sop_text(f"steps:\n  - id: flood\n    uses: {A}:chatty\n"
                                         "    with: {lines: 50000}\n")))
    assert local.wait(eid, timeout=120).status.value == "completed"
    lines = local.logs(execution=eid, step="flood", kind="handler", limit=None)
    assert len(lines) == 201
    assert lines[0].message == "line 0 of 50000" and lines[-1].message == "line 49999 of 50000"
    assert "49800 line(s) dropped" in lines[100].message and lines[100].level_name == "warning"


def test_odd_bytes_and_control_characters_from_a_handler_are_stored_readably(local: Any, sop_file: Any) -> None:
    eid = local.submit(sop_file(sop_text(f"steps:\n  - id: w\n    uses: {A}:log_weird\n")))
    local.wait(eid, timeout=60)
    got = [e.message for e in local.logs(execution=eid, kind="handler")]
    assert got == ["raw bytes \\xff\\xfe end", "bell\\x07 escape\\x1b[31mred nul\\x00 cr\\x0d",
                   "lone surrogate \\udcff from a path", "tab\tand\nnewline stay"]


def test_log_retention_removes_old_entries_and_is_configurable(tmp_path: Path, sop_file: Any) -> None:
    with pytest.raises(ValueError, match="log_retention_days must be > 0"):
        EngineConfig(log_retention_days=0)
    assert EngineConfig().log_retention_days == 90.0
    engine = Engine.in_process(state=str(tmp_path / "s.db"), config=EngineConfig(log_retention_days=1e-9))
    try:
        eid = engine.submit(sop_file(sop_text(f"steps:\n  - id: a\n    uses: {H}:echo\n")))
        engine.wait(eid, timeout=60)
        assert engine.logs(execution=eid)
        engine._conn.call("coordinator", "purge")
        assert engine.logs(execution=eid) == []
        assert engine.status(eid).status.value == "completed"  # the execution itself is kept 90 days
    finally:
        engine.shutdown()


def test_handler_lines_from_a_ray_worker_reach_the_log(engine: Any, sop_file: Any) -> None:
    eid = engine.submit(sop_file(sop_text(f"steps:\n  - id: chat\n    uses: {A}:chatty\n    with: {{lines: 2}}\n",
                                          name="ray-audited")), submitted_by="ray-test")
    engine.wait(eid, timeout=120)
    got = engine.logs(execution=eid)
    assert [e.message for e in got if e.kind == "handler"] == ["line 0 of 2", "line 1 of 2"]
    assert got[0].data["submitted_by"] == "ray-test" and got[-1].status == "completed"
    assert all(e.sop == "ray-audited" for e in got)


# -- sopflow logs --------------------------------------------------------------------------------


@pytest.fixture
def state_file(tmp_path: Path, sop_file: Any) -> tuple[str, str]:
    path = tmp_path / "cli.db"
    engine = Engine.in_process(state=str(path))
    try:
        eid = engine.submit(sop_file(sop_text(BODY, name="audited")), submitted_by="cli-test")
        engine.wait(eid, timeout=60)
    finally:
        engine.shutdown()
    return str(path), eid


def test_logs_reads_a_state_file_with_filters(state_file: tuple[str, str]) -> None:
    path, eid = state_file
    result = CliRunner().invoke(main, ["logs", eid, "--state", path, "--step", "chat", "--kind", "handler"])
    assert result.exit_code == 0, result.output
    assert [line.split(": ", 1)[1] for line in result.output.splitlines()] == [
        "line 0 of 3", "line 1 of 3", "line 2 of 3"]
    result = CliRunner().invoke(main, ["logs", "--state", path, "--format", "json", "--level", "ERROR",
                                       "--since", "1h", "--text", "input_value"])
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert rows and all(r["level"] in ("error", "critical") and "input_value" in r["message"] for r in rows)


def test_logs_explains_bad_options_without_a_traceback(state_file: tuple[str, str], tmp_path: Path) -> None:
    path, _ = state_file
    for args, says in [(["--since", "last tuesday"], "is not a time"),
                       (["--level", "loud"], "'loud' is not one of"),
                       (["--limit", "-5"], "-5 is not in the range")]:
        result = CliRunner().invoke(main, ["logs", "--state", path, *args])
        assert result.exit_code == 2 and says in result.output and "Traceback" not in result.output, result.output
    result = CliRunner().invoke(main, ["logs", "--state", str(tmp_path / "nope.db")])
    assert result.exit_code == 1 and "does not exist" in result.output
    foreign = tmp_path / "notes.txt"
    foreign.write_text("not a database at all\n" * 100)
    result = CliRunner().invoke(main, ["logs", "--state", str(foreign)])
    assert result.exit_code == 1 and "is not a sopflow state store" in result.output, result.output


def test_logs_follow_prints_new_entries_as_they_are_written(state_file: tuple[str, str]) -> None:
    from runtime import events as ev
    from runtime.eventlog import SqliteEventLog

    path, _ = state_file
    proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "logs", "--state", path, "--follow",
                             "--format", "json", "--limit", "1"], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
                                 "PYTHONUNBUFFERED": "1"})
    seen: list[dict] = []
    reader = threading.Thread(target=lambda: seen.extend(json.loads(line) for line in proc.stdout), daemon=True)
    reader.start()
    try:
        wait_for(lambda: seen, timeout_s=60)  # the newest old entry: the follower has begun
        writer = SqliteEventLog(path)
        try:
            writer.append([ev.new_event("late-one", 1, ev.Submitted(sop="late", submitted_by="follower"))])
        finally:
            writer.close()
        wait_for(lambda: any(r["execution_id"] == "late-one" for r in seen), timeout_s=60)
        assert [r["kind"] for r in seen] == ["end", "start"]  # the newest old entry, then only what is new
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_sub_sop_says_who_started_and_who_cancelled_it(local: Any, sop_file: Any, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    sop_file(sop_text(f"steps:\n  - id: hold\n    uses: {H}:wait_for_file\n    with: {{path: \"{gate}\"}}\n",
                      name="child"), name="child.yaml")
    eid = local.submit(sop_file(sop_text("steps:\n  - id: sub\n    uses: sop:child.yaml\n", name="parent")),
                       submitted_by="parent-owner")
    child = wait_for(lambda: next((e.data["child"] for e in local.logs(execution=eid, status="child_submitted")),
                                  None))
    wait_for(lambda: local.status(child).steps["hold"].status.value == "running")
    local.cancel(eid, force=True, by="ops")
    gate.touch()
    local.wait(eid, timeout=60)
    local.wait(child, timeout=60)
    start = local.logs(execution=child, kind="start")[0]
    assert start.data["submitted_by"] == f"execution {eid}" and start.sop == "child"
    cancels = local.logs(execution=child, kind="operator", status="cancel")
    assert [e.data["by"] for e in cancels] == ["its parent execution"]
    assert [e.data["by"] for e in local.logs(execution=eid, kind="operator")] == ["ops"]
