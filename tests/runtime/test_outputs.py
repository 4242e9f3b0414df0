"""Outputs are data, big ones become artifacts, errors read in the user's terms. No Ray here:
:func:`run_task` is what a worker calls, and the history functions run on real SQLite files."""

from __future__ import annotations

import datetime
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.config import EngineConfig
from runtime.eventlog import ExecutionRecord, SqliteEventLog, StateStoreError
from runtime.events import Event, EventKind
from runtime.failure import Classification, ErrorInfo, classify, error_from_exception
from runtime.handlers import StepTask, run_task
from runtime.history import dumps_history, export_history, import_history
from runtime.outputs import (ARTIFACT_KEY, OutputNotData, as_data, blob_kind, cap, encode, is_descriptor,
                             resolve)

# -- JSON values, and values with one thing in them that is not ------------------------------------

scalars = st.none() | st.booleans() | st.integers(-10**30, 10**30) | st.floats(allow_nan=False,
                                                                              allow_infinity=False) | st.text()
keys = st.text(max_size=8).filter(lambda k: k != ARTIFACT_KEY)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(keys, inner,
                                                                                                max_size=5),
                           max_leaves=30)


def with_tuples(value: Any) -> Any:
    """The same data with every list turned into a tuple (what a handler might return)."""
    if isinstance(value, list):
        return tuple(with_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: with_tuples(v) for k, v in value.items()}
    return value


class Opaque:
    pass


def _generator() -> Any:
    yield 1


NOT_DATA = [(lambda x: x, "function"), (Opaque(), "tests.runtime.test_outputs.Opaque"), ({1, 2}, "set"),
            (b"raw", "bytes"), (_generator(), "generator"), (1j, "complex"),
            (datetime.date(2026, 1, 1), "datetime.date")]


EID = "exe-0123456789ab-01234567"
"""An execution id of the real shape (imported histories are checked)."""


def _store(value: Any, limit: int) -> tuple[SqliteEventLog, str]:
    """A finished execution whose one step returned ``value`` (capped at ``limit``), in a SQLite file."""
    log = SqliteEventLog(Path(tempfile.mkdtemp(prefix="sopflow-outputs-")) / "state.db")
    capped, spilled = cap(as_data(value), limit)
    if spilled is not None:
        log.put_blob(EID, blob_kind(spilled.sha256), spilled.data)
    events = [Event(EID, 1, EventKind.STEP_SUCCEEDED, 1.0, "s", 1, {"output": capped})]
    log.append(events, [ExecutionRecord(EID, "t", "completed", 1.0, 1, 2.0, True)])
    return log, EID


def _stored_output(log: SqliteEventLog, eid: str) -> Any:
    [event] = log.read(eid)
    return resolve(event.data["output"], lambda sha: log.get_blob(eid, blob_kind(sha)))


@settings(max_examples=300, deadline=None)
@given(json_values, st.sampled_from([1024, 64, 10**9]))
def test_any_json_value_is_accepted_and_round_trips_through_export_unchanged(value: Any, limit: int) -> None:
    assert as_data(with_tuples(value)) == value
    log, eid = _store(with_tuples(value), limit)
    doc = json.loads(dumps_history(export_history(log, eid)))
    log.close()
    other = SqliteEventLog(Path(tempfile.mkdtemp(prefix="sopflow-import-")) / "state.db")
    import_history(other, doc)
    assert _stored_output(other, eid) == value
    other.close()


path_steps = st.lists(st.one_of(keys, st.integers(0, 3)), max_size=5)


@settings(max_examples=300, deadline=None)
@given(path_steps, st.sampled_from(NOT_DATA), json_values)
def test_any_value_holding_something_that_is_not_data_is_refused_naming_where(
        path: list[Any], bad: tuple[Any, str], sibling: Any) -> None:
    obj, type_name = bad
    value, where = obj, ""
    for step in reversed(path):  # build the containers from the inside out
        value = {step: value, **({"~sibling": sibling} if step != "~sibling" else {})} \
            if isinstance(step, str) else [sibling] * step + [value]
    where = "output" + "".join(f"[{s!r}]" for s in path)
    with pytest.raises(OutputNotData) as caught:
        as_data(value)
    assert caught.value.path == where and caught.value.type_name == type_name
    assert str(caught.value).startswith(f"{where} is a {type_name}")


@pytest.mark.parametrize("value, where, says", [
    (float("nan"), "output", "JSON cannot represent"),
    ({"x": [math.inf]}, "output['x'][0]", "JSON cannot represent"),
    ({1: "a"}, "output key 1", "JSON object keys are strings"),
    ({ARTIFACT_KEY: "x"}, f"output[{ARTIFACT_KEY!r}]", "reserves"),
])
def test_nan_infinity_non_string_keys_and_the_reserved_key_are_refused(value, where, says) -> None:
    with pytest.raises(OutputNotData) as caught:
        as_data(value)
    assert caught.value.path == where and says in str(caught.value)


def test_a_cycle_is_refused_not_a_recursion_error() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(OutputNotData, match="contains itself"):
        as_data({"a": loop})


@settings(max_examples=300, deadline=None)
@given(json_values, st.integers(1024, 4096))
def test_a_capped_value_is_inline_when_it_fits_and_a_descriptor_of_its_exact_text_when_not(
        value: Any, limit: int) -> None:
    capped, spilled = cap(value, limit)
    if spilled is None:
        assert capped == value
    else:
        assert is_descriptor(capped) and capped["size"] == len(spilled.data) > limit
        assert len(encode(capped)) < 1024  # the event row stays small
        assert resolve(capped, {spilled.sha256: spilled.data}.get) == value


def test_an_export_whose_artifact_was_edited_is_refused_on_import() -> None:
    log, eid = _store({"rows": ["x" * 50] * 100}, 1024)
    doc = export_history(log, eid)
    [sha] = doc["artifacts"]
    doc["artifacts"][sha] = doc["artifacts"][sha].replace("x", "y")
    other = SqliteEventLog(Path(tempfile.mkdtemp(prefix="sopflow-import-")) / "state.db")
    with pytest.raises(StateStoreError, match=r"artifacts\[.*SHA-256 is its key"):
        import_history(other, doc)
    assert other.get(eid) is None  # nothing written


def test_a_missing_artifact_is_named_when_read() -> None:
    with pytest.raises(LookupError, match="output\\['big'\\] is stored as artifact"):
        resolve({"big": {ARTIFACT_KEY: "0" * 64, "size": 10, "preview": ""}}, lambda sha: None)


# -- in the worker ----------------------------------------------------------------------------------


def returns(value: Any) -> Any:
    return value


def _run(handler: Any, cap_bytes: int = 256 * 1024, **args: Any):
    return run_task(StepTask("exe-1", "orders", "ship", 1, "test", handler, args, output_cap=cap_bytes))


def test_the_worker_refuses_an_output_that_is_not_data_as_a_permanent_failure() -> None:
    out = _run(returns, value={"ok": 1, "when": datetime.datetime(2026, 1, 1)})
    assert not out.ok and out.output is None and out.spilled is None
    assert out.error.type == "OutputNotData" and classify(out.error) == Classification.PERMANENT
    assert "step 'ship'" in out.error.message and "output['when'] is a datetime.datetime" in out.error.message


def test_the_worker_turns_tuples_into_lists_and_spills_a_big_output() -> None:
    assert _run(returns, value=(1, (2, "x"))).output == [1, [2, "x"]]
    big = _run(returns, cap_bytes=1024, value=["y" * 100] * 100)
    assert big.ok and is_descriptor(big.output) and big.spilled is not None
    assert json.loads(big.spilled.data) == ["y" * 100] * 100


def exits(code: Any) -> None:
    sys.exit(code)


@pytest.mark.parametrize("code, exit_code, message, kind", [
    (3, 3, "the handler called sys.exit(3): exit code 3", Classification.TRANSIENT),
    (2, 2, "the handler called sys.exit(2): exit code 2", Classification.PERMANENT),
    (None, 0, "the handler called sys.exit(): exit code 0", Classification.TRANSIENT),
    ("bad config", 1, "the handler called sys.exit('bad config'): exit code 1", Classification.TRANSIENT),
])
def test_sys_exit_in_a_handler_is_caught_with_its_exit_code(code, exit_code, message, kind) -> None:
    out = _run(exits, code=code)
    assert not out.ok
    assert (out.error.type, out.error.exit_code, out.error.message) == ("SystemExit", exit_code, message)
    assert classify(out.error) == kind


def test_a_long_shell_output_keeps_its_tail_and_the_full_log_on_disk() -> None:
    out = run_task(StepTask("exe-tail", "orders", "sh", 1, "shell",
                            run="head -c 200000 /dev/zero | tr '\\0' x; printf END; echo oops >&2"))
    assert out.ok, out.error
    assert out.output["stdout"] == "x" * (64 * 1024 - 3) + "END" and out.output["stdout_bytes"] == 200003
    log_file = Path(out.output["stdout_log"])
    assert log_file.read_text() == "x" * 200000 + "END" and log_file.stat().st_mode & 0o777 == 0o600
    assert out.output["stderr"] == "oops\n" and "stderr_log" not in out.output
    log_file.unlink()


# -- errors never raise, never carry terminal codes ----------------------------------------------


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("broken __str__")


def test_an_exception_whose_str_raises_is_described_by_its_type() -> None:
    error = error_from_exception(Unprintable())
    assert (error.type, error.message) == ("Unprintable", "<unprintable Unprintable>")


ansi = st.sampled_from(["\x1b[36m", "\x1b[39m", "\x1b[1;31m", "\x1b]0;title\x07", "\x1b(B", "\r", "\x07"])


@settings(max_examples=300)
@given(st.lists(st.text(max_size=10) | ansi, max_size=12))
def test_any_exception_message_is_reported_as_one_line_without_terminal_codes(parts: list[str]) -> None:
    error = error_from_exception(ValueError("".join(parts)))
    assert "\x1b" not in error.message and "\n" not in error.message and "\x07" not in error.message
    assert len(error.message) <= 500 and isinstance(error, ErrorInfo)


def test_max_inline_output_bytes_is_validated_with_the_rule() -> None:
    assert EngineConfig(state="memory://").max_inline_output_bytes == 256 * 1024
    with pytest.raises(ValueError, match="max_inline_output_bytes must be >= 1024, got 10"):
        EngineConfig(state="memory://", max_inline_output_bytes=10)


def test_purging_an_execution_removes_its_artifacts() -> None:
    log, eid = _store({"rows": ["x" * 50] * 100}, 1024)
    [event] = log.read(eid)
    sha = event.data["output"][ARTIFACT_KEY]
    assert log.get_blob(eid, blob_kind(sha)) is not None
    assert log.purge(ended_before=3.0) == 1
    assert log.get_blob(eid, blob_kind(sha)) is None
