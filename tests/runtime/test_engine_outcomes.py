"""Honest results and errors through the real engine: outputs are data, big outputs are artifacts,
and a failure reads as the user's own exception (or exit code), never as a Ray wrapper.

Most run on the in-process engine; a worker's crash, Ray's exception wrapping and handlers
rebuilt in a worker are Ray's, tested on the shared cluster.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from runtime.events import EventKind
from runtime.history import artifacts_from_doc, dumps_history, import_history
from runtime.eventlog import MemoryEventLog
from runtime.outputs import is_descriptor, resolve
from runtime.status import ExecutionStatus, StepStatus
from tests.conftest import STATE_FILE
from tests.sop_builders import H, events_of, sop_text


def run(engine, sop_file, body: str, name: str):
    eid = engine.submit(sop_file(sop_text(body, name=name)))
    return eid, engine.wait(eid, timeout=90)


def failed_events(engine, eid: str, step: str) -> list:
    return [e for e in events_of(engine, eid) if e.kind == EventKind.STEP_FAILED and e.step == step]


def assert_readable(text: str) -> None:
    assert "\x1b" not in text and "ray::" not in text and "RayTaskError" not in text, text


# -- outputs must be data ------------------------------------------------------------------------


@pytest.mark.parametrize("handler, where, type_name", [
    ("returns_lambda", "output['fn']", "function"),
    ("returns_socket", "output['conn']", "socket.socket"),
    ("returns_generator", "output", "generator"),
])
def test_an_output_that_is_not_data_fails_the_step_permanently_naming_where_and_what(
        inproc, sop_file, handler, where, type_name) -> None:
    eid, view = run(inproc, sop_file, f"""\
        steps:
          - id: produce
            uses: {H}:{handler}
          - id: consume
            uses: {H}:echo
            with: {{value: "${{{{ steps.produce.output }}}}"}}
            depends_on: [produce]
        """, f"not-data-{handler}")

    assert view.status == ExecutionStatus.FAILED
    step = view.steps["produce"]
    assert step.status == StepStatus.FAILED and step.attempts == 1  # no useless retries
    assert step.classification == "permanent"
    assert "'produce'" in step.error and f"{where} is a {type_name}" in step.error
    assert "return the data itself" in step.error
    assert_readable(step.error)
    assert view.steps["consume"].status != StepStatus.SUCCEEDED  # nothing live went downstream
    [failed] = failed_events(inproc, eid, "produce")
    assert failed.data["error_type"] == "OutputNotData" and failed.payload.output is None
    dumps_history(inproc.export(eid))  # the history stays exportable


# -- errors in the user's terms ------------------------------------------------------------------


@pytest.mark.parametrize("code, classification, attempts", [(3, "transient", 2), (2, "permanent", 1)])
def test_sys_exit_in_a_handler_is_reported_with_its_exit_code(
        inproc, sop_file, code, classification, attempts) -> None:
    eid, view = run(inproc, sop_file, f"""\
        steps:
          - id: quits
            uses: {H}:exits
            with: {{code: {code}}}
            retry: {{max_attempts: 2, initial_delay_s: 0.05}}
        """, f"sys-exit-{code}")

    step = view.steps["quits"]
    assert step.attempts == attempts and step.classification == classification
    assert step.error == f"SystemExit: the handler called sys.exit({code}): exit code {code}"
    assert all(e.data["error_type"] == "SystemExit" for e in failed_events(inproc, eid, "quits"))


@pytest.mark.ray
def test_a_worker_killed_by_os_exit_is_a_crash_whose_message_says_the_exit_code_is_unknown(
        engine, sop_file) -> None:
    eid, view = run(engine, sop_file, f"""\
        steps:
          - id: dies
            uses: {H}:hard_exit
            with: {{code: 1}}
            retry: {{max_attempts: 1}}
        """, "os-exit")

    step = view.steps["dies"]
    assert step.classification == "crash"
    assert step.error.startswith("WorkerCrashed: the worker process running step 'dies' died")
    assert "does not report its exit code" in step.error
    assert_readable(step.error)


def test_an_exception_whose_message_cannot_be_printed_is_described_by_its_type(inproc, sop_file) -> None:
    eid, view = run(inproc, sop_file, f"""\
        steps:
          - id: odd
            uses: {H}:raises_unprintable
            retry: {{max_attempts: 1}}
        """, "unprintable")

    step = view.steps["odd"]
    assert step.error == "UnprintableError: <unprintable UnprintableError>"
    assert step.classification == "transient"  # the user's exception, classified as such: not a crash


@pytest.mark.ray
def test_a_ray_wrapped_exception_is_unwrapped_to_the_users_type_and_message(ray_cluster) -> None:
    import ray

    from actors._ray_errors import ray_error

    @ray.remote(max_retries=0)
    def broken() -> None:
        raise TypeError("amount must be a number, got 'ten'")

    with pytest.raises(ray.exceptions.RayTaskError) as caught:
        ray.get(broken.remote())
    assert "\x1b[" in str(caught.value)  # what Ray hands over: ANSI codes and a ray:: banner
    error = ray_error(caught.value, "charge")
    assert error.type == "TypeError"
    assert "amount must be a number, got 'ten'" in error.message and "'charge'" in error.message
    assert error.retryable is False  # failed outside the handler: sending data, the same bytes fail again
    assert_readable(error.message)


# -- big outputs become artifacts ---------------------------------------------------------------


def _event_bytes(state: Path, eid: str) -> int:
    with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as db:
        return db.execute("SELECT SUM(LENGTH(data)) FROM events WHERE execution_id = ?", (eid,)).fetchone()[0]


def _artifact_blobs(state: Path, eid: str) -> list[tuple[str, int]]:
    with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as db:
        return db.execute("SELECT kind, LENGTH(value) FROM blobs WHERE execution_id = ? AND kind LIKE "
                          "'artifact:%'", (eid,)).fetchall()


@pytest.fixture(params=["in_process", pytest.param("ray", marks=pytest.mark.ray)])
def engine_and_state(request: pytest.FixtureRequest, tmp_path: Path) -> tuple:
    """An engine and its state file: in process, or on Ray (where a big output also crosses the object store)."""
    if request.param == "ray":
        return request.getfixturevalue("engine"), STATE_FILE
    return request.getfixturevalue("inproc_file"), tmp_path / "state.db"


def test_a_big_output_is_stored_once_as_an_artifact_and_read_back_transparently(
        engine_and_state, sop_file) -> None:
    engine, state = engine_and_state
    n = 2_000_000  # ~2 MB of JSON: well over the 256 KiB inline cap
    eid, view = run(engine, sop_file, f"""\
        steps:
          - id: big
            uses: {H}:big_output
            with: {{n: {n}}}
          - id: use
            uses: {H}:size_of
            with: {{value: "${{{{ steps.big.output }}}}"}}
            depends_on: [big]
        outputs:
          everything: "${{{{ steps.big.output }}}}"
          count: "${{{{ steps.use.output.count }}}}"
        """, "big-output")

    assert view.status == ExecutionStatus.COMPLETED, view.errors
    rows = [f"row-{i:08d}" for i in range(n // 15)]
    assert is_descriptor(view.outputs["steps"]["big"])  # status views show the descriptor
    [succeeded] = [e for e in events_of(engine, eid) if e.kind == EventKind.STEP_SUCCEEDED and e.step == "big"]
    descriptor = succeeded.data["output"]
    assert is_descriptor(descriptor) and descriptor["size"] > n and descriptor["preview"].startswith('{"rows"')
    # the downstream step got the real value; the SOP outputs and result() too
    result = engine.result(eid)
    assert result["steps"]["use"] == {"count": len(rows), "first": rows[0], "last": rows[-1]}
    assert result["outputs"]["count"] == len(rows)
    assert result["steps"]["big"] == {"rows": rows, "n": n} == result["outputs"]["everything"]
    # stored once: one blob (the SOP output is the same value, same hash), events stay small
    [(kind, size)] = _artifact_blobs(state, eid)
    assert kind == f"artifact:{descriptor['$artifact']}" and size == descriptor["size"]
    assert _event_bytes(state, eid) < 64 * 1024

    # export embeds it, import restores it, replay from a step that reads it gets it
    doc = engine.export(eid)
    assert list(artifacts_from_doc(doc)) == [descriptor["$artifact"]]
    copy = MemoryEventLog()
    import_history(copy, json.loads(dumps_history(doc)))
    [again] = [e for e in copy.read(eid) if e.kind == EventKind.STEP_SUCCEEDED and e.step == "big"]
    assert resolve(again.data["output"], lambda sha: copy.get_blob(eid, f"artifact:{sha}")) == {"rows": rows,
                                                                                               "n": n}
    report = engine.replay(eid, from_step="use")
    assert report.deterministic, report.render()


def test_a_shell_step_keeps_the_tail_of_a_long_stdout_and_the_path_of_the_full_log(
        inproc_file, sop_file, tmp_path) -> None:
    size = 5_000_000
    eid, view = run(inproc_file, sop_file, f"""\
        steps:
          - id: chatty
            run: "yes 0123456789abcdef | head -c {size}; echo done >&2"
        """, "shell-tail")

    assert view.status == ExecutionStatus.COMPLETED, view.errors
    out = inproc_file.result(eid)["steps"]["chatty"]
    full = ("0123456789abcdef\n" * (size // 17 + 1))[:size]
    assert out["stdout"] == full[-64 * 1024:]
    assert out["stdout_bytes"] == size and Path(out["stdout_log"]).stat().st_size == size
    assert oct(Path(out["stdout_log"]).stat().st_mode & 0o777) == "0o600"
    assert out["stderr"] == "done\n" and "stderr_log" not in out and out["exit_code"] == 0
    assert _event_bytes(tmp_path / "state.db", eid) < 200 * 1024
    os.unlink(out["stdout_log"])


def test_a_sub_sops_big_output_reaches_the_parent_and_its_result(inproc_file, sop_file, tmp_path) -> None:
    n = 600_000
    sop_file(sop_text(f"""\
        steps:
          - id: big
            uses: {H}:big_output
            with: {{n: {n}}}
        outputs:
          everything: "${{{{ steps.big.output }}}}"
        """, name="big-child"), name="child.yaml")
    eid, view = run(inproc_file, sop_file, f"""\
        steps:
          - id: sub
            uses: sop:child.yaml
          - id: use
            uses: {H}:size_of
            with: {{value: "${{{{ steps.sub.output.everything }}}}"}}
            depends_on: [sub]
        """, "big-parent")

    assert view.status == ExecutionStatus.COMPLETED, view.errors
    rows = [f"row-{i:08d}" for i in range(n // 15)]
    result = inproc_file.result(eid)
    assert result["steps"]["use"] == {"count": len(rows), "first": rows[0], "last": rows[-1]}
    assert result["steps"]["sub"]["everything"] == {"rows": rows, "n": n}
    assert len(_artifact_blobs(tmp_path / "state.db", eid)) == 1  # the parent holds its own copy


def test_a_secret_in_a_big_output_is_redacted_in_its_artifact_too(inproc_file, sop_file, tmp_path) -> None:
    import uuid

    secret = f"s3cr3t-{uuid.uuid4().hex}"
    path = sop_file(sop_text(f"""\
        steps:
          - id: big
            uses: {H}:big_secret_output
            with: {{token: "${{{{ inputs.token }}}}", n: 400000}}
        """, name="big-secret", inputs="inputs:\n  token: {type: string, secret: true, required: true}\n"))
    eid = inproc_file.submit(path, {"token": secret})
    assert inproc_file.wait(eid, timeout=60).status == ExecutionStatus.COMPLETED
    [(kind, _)] = _artifact_blobs(tmp_path / "state.db", eid)
    with sqlite3.connect(f"file:{tmp_path / 'state.db'}?mode=ro", uri=True) as db:
        [(blob,)] = db.execute("SELECT value FROM blobs WHERE execution_id = ? AND kind = ?", (eid, kind))
    assert secret.encode() not in blob and b"Bearer ***" in blob
    assert inproc_file.result(eid)["steps"]["big"]["header"] == "Bearer ***"
    assert secret not in dumps_history(inproc_file.export(eid))


@pytest.mark.ray
def test_a_handler_that_cannot_be_rebuilt_in_the_worker_fails_permanently_with_its_own_error(
        engine, sop_file) -> None:
    import uuid

    from tests.handlers_for_tests import Unshippable

    name = f"unshippable-{uuid.uuid4().hex[:8]}"
    engine.registry.register("handler", name, {"description": "cannot be rebuilt in a worker"}, Unshippable())
    eid, view = run(engine, sop_file, f"""\
        steps:
          - id: price
            uses: {name}
        """, "unshippable")

    step = view.steps["price"]
    assert step.attempts == 1 and step.classification == "permanent"
    assert step.error.startswith("ModuleNotFoundError: step 'price': ")
    assert "No module named 'pricing_engine'" in step.error
    assert_readable(step.error)


def test_a_shell_steps_coloured_error_output_is_reported_without_terminal_codes(inproc, sop_file) -> None:
    eid, view = run(inproc, sop_file, """\
        steps:
          - id: lint
            run: "printf '\\\\033[31merror:\\\\033[0m 3 files need formatting\\\\n' >&2; exit 2"
        """, "ansi-shell")

    step = view.steps["lint"]
    assert step.error == "ExitCode: command exited with status 2: error: 3 files need formatting", step.error
    assert_readable(step.error)
