"""``sopflow run --batch/--not-before/--deadline/--window`` and ``sopflow batch report``, on a real engine.

The commands run in this process (click's runner) against an in-process engine: what a user
types, what they read, and how the exit code reads.
"""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner

from runtime.cli import main
from tests.runtime.test_batch_engine import one_step


@pytest.fixture
def cli(inproc, monkeypatch):
    """Invoke ``sopflow ...`` with every command talking to the in-process engine."""
    import runtime._cli_exec

    monkeypatch.setenv("COLUMNS", "160")
    monkeypatch.setattr(runtime._cli_exec, "_connect", lambda address, start_if_missing, working_dir=None:
                        (inproc, False))
    monkeypatch.setattr(runtime._cli_exec, "_client", lambda address: inproc)
    return lambda *args: CliRunner().invoke(main, list(args))


@pytest.fixture
def sop_path(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(one_step(tmp_path, "job"))
    return str(path)


@pytest.mark.parametrize("args, option, words", [
    (["--not-before", "2026-12-01T22:00"], "--not-before", "no timezone"),
    (["--not-before", "tonight"], "--not-before", "ISO 8601"),
    (["--deadline", "2001-01-01T00:00:00Z"], "--deadline", "already past"),
    (["--window", "22:00-06:00 Nowhere/Land"], "--window", "unknown timezone"),
    (["--window", "late"], "--window", "HH:MM-HH:MM"),
    (["--batch", "../../etc/passwd"], "--batch", "letters, digits"),
    (["--batch", "x; rm -rf /"], "--batch", "letters, digits"),
])
def test_bad_batch_options_are_usage_errors_naming_the_option(cli, sop_path, inproc, args, option, words):
    result = cli("run", sop_path, "--detach", *args)
    assert result.exit_code == 2, result.output
    assert f"{option}: " in result.output and words in result.output
    assert "Traceback" not in result.output
    assert len(inproc.list()) == 0  # nothing was submitted


def test_run_detach_submits_batch_work_that_waits_for_its_window(cli, sop_path, inproc):
    later = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() + 3600))
    result = cli("run", sop_path, "--detach", "--batch", "nightly", "--not-before", later)
    assert result.exit_code == 0, result.output
    eid = result.output.strip()
    view = inproc.status(eid)
    assert view.schedule["batch"] == "nightly" and view.status.value == "queued"
    shown = cli("status", eid)
    assert "batch batch=nightly" in shown.output and "waiting batch window: waits for not_before" in shown.output
    as_json = json.loads(cli("status", eid, "--format", "json").output)
    assert as_json["waiting"]["until"] == pytest.approx(view.schedule["not_before"], abs=0.01)


def test_batch_report_text_json_and_exit_codes(cli, tmp_path, inproc):
    ok = inproc.submit_many(one_step(tmp_path, "rep"), [{}] * 2, schedule={"batch": "cli-rep"})
    bad = inproc.submit(one_step(tmp_path, "rep", fail=True), schedule={"batch": "cli-rep"})
    for eid in [*ok, bad]:
        inproc.wait(eid, timeout=30)
    text = cli("batch", "report", "cli-rep")
    assert text.exit_code == 1  # one execution did not complete
    assert "batch cli-rep  3 executions, finished  (2 completed, 1 failed)" in text.output
    assert bad in text.output and "asked to fail" in text.output
    found = json.loads(cli("batch", "report", "cli-rep", "--json").output)
    assert [r["id"] for r in found["results"]] == [*ok, bad] and found["failed"] == 1
    good = inproc.submit(one_step(tmp_path, "rep"), schedule={"batch": "cli-ok"})
    inproc.wait(good, timeout=30)
    assert cli("batch", "report", "cli-ok").exit_code == 0


@pytest.mark.parametrize("name", ["../x", "a b", "x" * 300, "'; DROP TABLE meta; --"])
def test_batch_report_refuses_bad_names(cli, name):
    result = cli("batch", "report", name)
    assert result.exit_code == 2 and "NAME: must be a name" in result.output


def test_batch_report_of_an_unknown_batch_says_so(cli):
    result = cli("batch", "report", "never-submitted")
    assert result.exit_code == 1 and "no batch 'never-submitted'" in result.output
