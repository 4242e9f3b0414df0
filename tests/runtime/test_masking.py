"""Secret masking never alters other data; short secrets are refused; logs and the state file stay private."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.errors import SubmissionError
from runtime.eventlog import open_log
from runtime.handlers import StepTask, run_task
from runtime.inputs import resolve_inputs
from runtime.masking import MASK, MIN_SECRET_LENGTH, mask, redact, secret_values
from sop import loads

SOP = loads("sop: s\ninputs:\n  pin: {type: string, secret: true}\n  n: {type: integer, secret: true}\n"
            "steps:\n  - {id: a, run: echo}\n")

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                                max_size=4),
                    max_leaves=10)
SECRETS = st.lists(st.text(min_size=MIN_SECRET_LENGTH, max_size=20), min_size=1, max_size=3)


def texts_of(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in (*texts_of(k), *texts_of(v))]
    if isinstance(value, list):
        return [t for v in value for t in texts_of(v)]
    return []


@pytest.mark.parametrize("value", ["1", "1234567", 1234567])
def test_a_secret_shorter_than_the_minimum_is_refused_at_submit_naming_it(value: object) -> None:
    name = "pin" if isinstance(value, str) else "n"
    with pytest.raises(SubmissionError) as err:
        resolve_inputs(SOP, {name: value})
    message = str(err.value)
    assert f"secret input {name!r} must be at least {MIN_SECRET_LENGTH} characters" in message
    assert repr(str(value)) not in message and f"{value}:" not in message  # the value is not echoed


def test_a_secret_of_the_minimum_length_or_absent_is_accepted() -> None:
    assert resolve_inputs(SOP, {"pin": "12345678", "n": 12345678}) == {"pin": "12345678", "n": 12345678}
    assert resolve_inputs(SOP, {}) == {"pin": None, "n": None}


@settings(max_examples=500, deadline=None)
@given(data=JSON, secrets=SECRETS)
def test_masking_never_changes_data_that_holds_no_secret(data: object, secrets: list[str]) -> None:
    values = secret_values(range(len(secrets)), dict(enumerate(secrets)))
    if any(s in t for t in texts_of(data) for s in values):
        return
    assert redact(data, values) == json.loads(json.dumps(data))  # tuples become lists, nothing else


@settings(max_examples=500, deadline=None)
@given(data=JSON, secrets=SECRETS, where=st.integers(0, 100))
def test_no_secret_survives_masking_wherever_it_is_placed(data: object, secrets: list[str], where: int) -> None:
    values = secret_values(range(len(secrets)), dict(enumerate(secrets)))
    text = json.dumps(data)
    planted = text[:where % (len(text) + 1)] + secrets[0] + text[where % (len(text) + 1):]
    for masked in (mask(planted, values), *texts_of(redact([data, planted, {secrets[-1]: 1}], values))):
        assert not any(s in masked for s in values)


def test_the_one_character_secret_bug_cannot_come_back() -> None:
    """A stored output "build 1.2.1" was rewritten "build ***.2***" by a secret "1"."""
    with pytest.raises(SubmissionError):
        resolve_inputs(SOP, {"pin": "1"})
    assert redact({"out": "build 1.2.1"}, secret_values(["pin"], {"pin": "hunter2!x"})) == {"out": "build 1.2.1"}


@pytest.mark.parametrize("secret", [MASK, "*", "**", "1", "x" * MIN_SECRET_LENGTH])
def test_masking_ends_for_any_secret_even_the_mask_itself(secret: str) -> None:
    """A replay's secrets are "***" (the log keeps no value); old logs may hold short ones."""
    out = mask(f"a {secret} b *** {secret}{secret}", (secret,))
    assert secret == MASK or secret not in out.replace(MASK, "")


# -- context.logger in the worker ----------------------------------------------------------------


def test_lines_written_through_context_logger_are_masked(caplog: pytest.LogCaptureFixture) -> None:
    token = "tok-" + "s3cr3t" * 2
    task = StepTask("e1", "s", "a", 1, "python:tests.handlers_for_tests:log_secret",
                    args={"token": token, "marker": "MARK"}, secrets=(token,))
    with caplog.at_level(logging.INFO, logger="sopflow.step"):
        outcome = run_task(task)
    assert outcome.ok, outcome.error
    lines = [r.getMessage() + (logging.Formatter().formatException(r.exc_info) if r.exc_info else "")
             for r in caplog.records if "MARK" in r.getMessage()]
    assert len(lines) == 3
    assert all(token not in line and MASK in line for line in lines), lines
    assert "Traceback" in lines[2] and "ValueError: bad token ***" in lines[2]
    assert "secrets" not in repr(task) and token not in repr(task).replace(repr(task.args), "")


# -- the state file --------------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_the_state_file_and_its_wal_and_shm_are_private_when_sopflow_creates_them(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    old = os.umask(0o022)
    try:
        log = open_log(str(path))
    finally:
        os.umask(old)
    try:
        assert mode(path) == 0o600
        for companion in ("state.db-wal", "state.db-shm"):
            if (tmp_path / companion).exists():
                assert mode(tmp_path / companion) == 0o600, companion
    finally:
        log.close()


def test_a_state_file_found_readable_by_others_is_made_private(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    open_log(str(path)).close()  # a real state store, with WAL companions left behind by a writer
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS t(x)")
    for f in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        if f.exists():
            os.chmod(f, 0o644)
    log = open_log(str(path))
    try:
        assert mode(path) == 0o600
        for f in (Path(f"{path}-wal"), Path(f"{path}-shm")):
            if f.exists():
                assert mode(f) == 0o600, f.name
    finally:
        log.close()
        conn.close()
