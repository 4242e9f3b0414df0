"""Failures: retries, classification, escalation, halting, rollback.

The state machine's decisions run on the in-process engine (``inproc``); what is Ray's
(a crashed worker, a timed-out task killed, hooks shipped to the coordinator actor) on the
shared cluster.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from runtime.errors import ExecutionNotFound
from runtime.events import EventKind
from runtime.status import ExecutionStatus, StepStatus
from tests.sop_builders import H, events_of, sop_text


def of_kind(events: list, kind: EventKind, step: str | None = None) -> list:
    return [e for e in events if e.kind == kind and (step is None or e.step == step)]


# -- retries ------------------------------------------------------------------------------------


def test_a_transient_failure_is_retried_with_backoff_until_it_succeeds(inproc, sop_file, tmp_path) -> None:
    counter = tmp_path / "attempts"
    path = sop_file(sop_text(f"""\
        steps:
          - id: fetch
            uses: {H}:flaky
            with: {{fail_times: 2, counter_dir: "{counter}"}}
            retry: {{max_attempts: 4, initial_delay_s: 0.05, backoff: 2.0}}
        outputs:
          attempt: "${{{{ steps.fetch.output.attempt }}}}"
        """, name="flaky"))
    eid = inproc.submit(path)
    view = inproc.wait(eid, timeout=60)

    assert view.status == ExecutionStatus.COMPLETED
    assert view.steps["fetch"].attempts == 3
    assert sorted(p.name for p in counter.iterdir()) == ["attempt-1", "attempt-2", "attempt-3"]
    assert inproc.result(eid)["outputs"]["attempt"] == 3
    events = events_of(inproc, eid)
    failed = of_kind(events, EventKind.STEP_FAILED, "fetch")
    assert [(e.attempt, e.data["classification"], e.data["final"]) for e in failed] == [
        (1, "transient", False), (2, "transient", False)]
    assert all("ConnectionError" in e.data["error"] for e in failed)
    retries = of_kind(events, EventKind.RETRY_SCHEDULED, "fetch")
    assert [(e.attempt, e.data["delay_s"]) for e in retries] == [(2, 0.05), (3, 0.1)]
    assert [e.attempt for e in of_kind(events, EventKind.STEP_STARTED, "fetch")] == [1, 2, 3]
    assert not of_kind(events, EventKind.ESCALATED)


@pytest.mark.parametrize("kind, error_type", [("permanent", "PermanentError"), ("value", "ValueError")])
def test_a_permanent_failure_is_not_retried(inproc, sop_file, kind, error_type) -> None:
    path = sop_file(sop_text(f"""\
        steps:
          - id: parse
            uses: {H}:fail
            with: {{message: "column 'amount' is missing", kind: {kind}}}
            retry: {{max_attempts: 5}}
        """, name="permanent"))
    eid = inproc.submit(path)
    view = inproc.wait(eid, timeout=60)

    assert view.status == ExecutionStatus.FAILED
    step = view.steps["parse"]
    assert step.status == StepStatus.FAILED
    assert step.attempts == 1
    assert step.classification == "permanent"
    assert error_type in step.error and "amount" in step.error
    events = events_of(inproc, eid)
    assert not of_kind(events, EventKind.RETRY_SCHEDULED)
    assert not of_kind(events, EventKind.ESCALATED)
    [failed] = of_kind(events, EventKind.STEP_FAILED, "parse")
    assert failed.data["final"] is True and failed.data["action"] == "fail"


# -- escalation ----------------------------------------------------------------------------------


class _Recorder(BaseHTTPRequestHandler):
    received: list[dict] = []
    lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.lock:
            self.received.append({"path": self.path, "headers": dict(self.headers),
                                  "body": json.loads(body)})
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def webhook_server() -> Iterator[tuple[str, list[dict]]]:
    """A real HTTP server on 127.0.0.1 recording every JSON payload POSTed to it."""
    handler = type("Recorder", (_Recorder,), {"received": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/escalations", handler.received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.mark.ray
def test_exhausted_retries_escalate_to_python_and_webhook_hooks(
        engine, sop_file, tmp_path, webhook_server) -> None:
    url, received = webhook_server
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir()
    hook_dir_name = str(hook_dir)

    def record(payload: dict) -> None:  # runs inside the coordinator actor process
        import json as _json
        from pathlib import Path as _Path

        (_Path(hook_dir_name) / f"{payload['execution_id']}.json").write_text(_json.dumps(payload))

    py_hook, web_hook = f"py-{uuid.uuid4().hex[:8]}", f"web-{uuid.uuid4().hex[:8]}"
    assert py_hook in engine.add_escalation_hook(py_hook, fn=record)
    assert web_hook in engine.add_escalation_hook(web_hook, url=url, headers={"X-Token": "t0k"})
    try:
        path = sop_file(sop_text(f"""\
            steps:
              - id: call_bank
                uses: {H}:fail
                with: {{message: "bank API answered 503", kind: transient}}
                retry: {{max_attempts: 2, initial_delay_s: 0.05}}
            """, name="escalate"))
        eid = engine.submit(path)
        view = engine.wait(eid, timeout=60)
        engine.drain_hooks()
    finally:
        engine.remove_escalation_hook(py_hook)
        assert py_hook not in engine.remove_escalation_hook(web_hook)

    assert view.status == ExecutionStatus.FAILED
    assert view.steps["call_bank"].attempts == 2
    events = events_of(engine, eid)
    [escalated] = of_kind(events, EventKind.ESCALATED, "call_bank")
    assert escalated.attempt == 2
    assert escalated.data["classification"] == "transient"
    assert "2 attempt" in escalated.data["reason"]
    assert of_kind(events, EventKind.STEP_FAILED, "call_bank")[-1].data["action"] == "escalate"

    written = json.loads((hook_dir / f"{eid}.json").read_text())
    assert written["execution_id"] == eid
    assert written["step"] == "call_bank" and written["attempt"] == 2
    assert written["classification"] == "transient"
    assert "503" in written["error"]["message"]

    mine = [r for r in received if r["body"].get("execution_id") == eid]
    assert len(mine) == 1
    assert mine[0]["path"] == "/escalations"
    assert mine[0]["headers"].get("X-Token") == "t0k"
    assert mine[0]["body"]["step"] == "call_bank" and mine[0]["body"]["sop"] == "escalate"
    assert "policy" not in mine[0]["body"]
    assert engine.failure_stats()["escalations"] >= 1


def test_hooks_removed_are_no_longer_called(inproc, sop_file, tmp_path) -> None:
    hook_dir = str(tmp_path)

    def record(payload: dict) -> None:
        from pathlib import Path as _Path

        (_Path(hook_dir) / f"{payload['execution_id']}.json").write_text("called")

    name = f"gone-{uuid.uuid4().hex[:8]}"
    inproc.add_escalation_hook(name, fn=record)
    assert name not in inproc.remove_escalation_hook(name)
    path = sop_file(sop_text(f"""\
        steps:
          - id: a
            uses: {H}:fail
            retry: {{max_attempts: 1}}
        """, name="no-hook"))
    eid = inproc.submit(path)
    inproc.wait(eid, timeout=60)
    inproc.drain_hooks()
    assert of_kind(events_of(inproc, eid), EventKind.ESCALATED)
    assert not (tmp_path / f"{eid}.json").exists()


def test_an_escalation_payload_never_contains_a_secret_input(inproc, sop_file, tmp_path) -> None:
    secret = f"hook-s3cret-{uuid.uuid4().hex}"
    hook_dir = str(tmp_path)

    def record(payload: dict) -> None:
        import json as _json
        from pathlib import Path as _Path

        (_Path(hook_dir) / f"{payload['execution_id']}.json").write_text(_json.dumps(payload))

    name = f"secret-{uuid.uuid4().hex[:8]}"
    inproc.add_escalation_hook(name, fn=record)
    try:
        path = sop_file(sop_text(f"""\
            steps:
              - id: login
                uses: {H}:fail
                with: {{message: "login refused for ${{{{ inputs.password }}}}", kind: transient}}
                retry: {{max_attempts: 1}}
            """, name="secret-escalation",
            inputs="inputs:\n  password: {type: string, secret: true, required: true}\n"))
        eid = inproc.submit(path, {"password": secret})
        inproc.wait(eid, timeout=60)
        inproc.drain_hooks()
    finally:
        inproc.remove_escalation_hook(name)

    assert secret not in json.dumps([e.to_dict() for e in events_of(inproc, eid)])
    payload = (tmp_path / f"{eid}.json").read_text()
    assert "login refused" in payload
    assert secret not in payload, f"the secret leaked into the escalation payload: {payload}"


# -- crashes, timeouts, shell exit codes --------------------------------------------------------


@pytest.mark.ray
def test_a_crashed_worker_is_retried_on_a_fresh_worker(engine, sop_file, tmp_path) -> None:
    marker = tmp_path / "crashed-once"
    path = sop_file(sop_text(f"""\
        steps:
          - id: fragile
            uses: {H}:crash_once
            with: {{marker: "{marker}"}}
        """, name="crash"))
    eid = engine.submit(path)
    view = engine.wait(eid, timeout=60)

    assert view.status == ExecutionStatus.COMPLETED, view.errors
    step = view.steps["fragile"]
    assert step.attempts == 2
    assert step.classification == "crash"
    events = events_of(engine, eid)
    [failed] = of_kind(events, EventKind.STEP_FAILED, "fragile")
    assert failed.attempt == 1 and failed.data["classification"] == "crash" and not failed.data["final"]
    output = engine.result(eid)["steps"]["fragile"]
    assert output["pid"] != output["crashed_pid"]  # a fresh worker process


@pytest.mark.ray
def test_an_attempt_running_past_its_timeout_is_stopped_and_retried(engine, sop_file) -> None:
    # timeout_s counts from dispatch, so it includes starting a fresh worker for attempt 2
    # (the timed-out one is killed); 3 s leaves room for that on a busy machine.
    path = sop_file(sop_text(f"""\
        steps:
          - id: slow
            uses: {H}:slow_first_attempt
            with: {{seconds: 30}}
            timeout_s: 3
            retry: {{max_attempts: 2, initial_delay_s: 0.05}}
        """, name="timeout"))
    eid = engine.submit(path)
    view = engine.wait(eid, timeout=60)

    assert view.status == ExecutionStatus.COMPLETED, view.errors
    assert view.steps["slow"].attempts == 2
    [failed] = of_kind(events_of(engine, eid), EventKind.STEP_FAILED, "slow")
    assert failed.attempt == 1
    assert failed.data["error_type"] == "Timeout" and "timeout_s=3" in failed.data["error"]
    assert failed.data["classification"] == "transient"


def test_a_timeout_with_a_single_attempt_escalates(inproc, sop_file) -> None:
    # In process the timed-out handler's thread sleeps on to its end (its result dropped): keep it short.
    path = sop_file(sop_text(f"""\
        steps:
          - id: slow
            uses: {H}:slow_first_attempt
            with: {{seconds: 3}}
            timeout_s: 1
            retry: {{max_attempts: 1}}
        """, name="timeout-once"))
    eid = inproc.submit(path)
    view = inproc.wait(eid, timeout=60)

    assert view.status == ExecutionStatus.FAILED
    assert view.steps["slow"].attempts == 1
    assert "Timeout" in view.steps["slow"].error
    [escalated] = of_kind(events_of(inproc, eid), EventKind.ESCALATED, "slow")
    assert escalated.data["classification"] == "transient"


@pytest.mark.parametrize("code, classification, attempts", [
    (127, "permanent", 1),
    (2, "permanent", 1),
    (1, "transient", 2),
])
def test_a_shell_step_exit_code_decides_whether_it_is_retried(
        inproc, sop_file, code, classification, attempts) -> None:
    path = sop_file(sop_text(f"""\
        steps:
          - id: sh
            run: "echo partial result; echo something broke >&2; exit {code}"
            retry: {{max_attempts: 2, initial_delay_s: 0.05}}
        """, name=f"exit-{code}"))
    eid = inproc.submit(path)
    view = inproc.wait(eid, timeout=60)

    step = view.steps["sh"]
    assert step.status == StepStatus.FAILED
    assert step.attempts == attempts
    assert step.classification == classification
    assert f"status {code}" in step.error and "something broke" in step.error
    failed = of_kind(events_of(inproc, eid), EventKind.STEP_FAILED, "sh")
    assert len(failed) == attempts
    assert failed[-1].data["output"] == {"stdout": "partial result\n", "stderr": "something broke\n",
                                         "exit_code": code}


# -- what a failure does to the rest ------------------------------------------------------------


def test_a_failure_halts_only_its_dependents_and_the_execution_is_partially_completed(
        inproc, sop_file) -> None:
    path = sop_file(sop_text(f"""\
        steps:
          - id: a
            uses: {H}:fail
            with: {{kind: permanent}}
          - id: b
            uses: {H}:echo
            depends_on: [a]
          - id: c
            uses: {H}:echo
            depends_on: [b]
          - id: d
            uses: {H}:echo
            depends_on: [a, x]
          - id: x
            uses: {H}:echo
            with: {{value: x}}
          - id: y
            uses: {H}:echo
            depends_on: [x]
            with: {{value: y}}
        """, name="halt"))
    eid = inproc.submit(path)
    view = inproc.wait(eid, timeout=60)

    assert view.status == ExecutionStatus.PARTIALLY_COMPLETED
    got = {sid: s.status.value for sid, s in view.steps.items()}
    assert got == {"a": "failed", "b": "upstream_failed", "c": "upstream_failed", "d": "upstream_failed",
                   "x": "succeeded", "y": "succeeded"}
    events = events_of(inproc, eid)
    assert not of_kind(events, EventKind.STEP_STARTED, "b") and not of_kind(events, EventKind.STEP_STARTED, "c")
    [halted] = of_kind(events, EventKind.STEP_HALTED, "b")
    assert "'a'" in halted.data["reason"]


def test_an_execution_whose_steps_all_fail_is_failed(inproc, sop_file) -> None:
    path = sop_file(sop_text(f"""\
        steps:
          - id: a
            uses: {H}:fail
            with: {{kind: permanent}}
          - id: b
            uses: {H}:fail
            with: {{kind: value}}
          - id: c
            uses: {H}:echo
            depends_on: [a, b]
        """, name="all-fail"))
    eid = inproc.submit(path)
    view = inproc.wait(eid, timeout=60)
    assert view.status == ExecutionStatus.FAILED
    assert {sid: s.status.value for sid, s in view.steps.items()} == {
        "a": "failed", "b": "failed", "c": "upstream_failed"}


def test_rollback_steps_run_when_the_execution_fails(inproc, sop_file, tmp_path) -> None:
    undone = tmp_path / "undone"
    path = sop_file(sop_text(f"""\
        steps:
          - id: reserve
            uses: {H}:fail
            with: {{kind: permanent}}
          - id: charge
            uses: {H}:echo
            depends_on: [reserve]
        rollback:
          - id: release
            uses: {H}:touch
            with: {{path: "{undone}", text: "released"}}
          - id: notify
            uses: {H}:echo
            depends_on: [release]
            with: {{value: notified}}
        """, name="rollback-on-failed"))
    eid = inproc.submit(path)
    view = inproc.wait(eid, timeout=60)

    assert view.status == ExecutionStatus.FAILED
    assert undone.read_text() == "released"
    assert view.steps["release"].status == StepStatus.SUCCEEDED
    assert view.steps["notify"].status == StepStatus.SUCCEEDED
    kinds = [e.kind for e in events_of(inproc, eid)]
    assert kinds.index(EventKind.ROLLBACK_STARTED) < kinds.index(EventKind.FINISHED)


def test_a_rollback_step_failure_asks_for_rollback_even_when_other_branches_succeed(
        inproc, sop_file, tmp_path) -> None:
    undone = tmp_path / "undone"
    path = sop_file(sop_text(f"""\
        steps:
          - id: fine
            uses: {H}:echo
            with: {{value: ok}}
          - id: transfer
            uses: {H}:fail
            depends_on: [fine]
            with: {{kind: permanent}}
            on_failure: rollback
        rollback:
          - id: reverse
            uses: {H}:touch
            with: {{path: "{undone}", text: "reversed"}}
        """, name="rollback-requested"))
    eid = inproc.submit(path)
    view = inproc.wait(eid, timeout=60)

    assert view.status == ExecutionStatus.FAILED  # not partially_completed: it was rolled back
    assert undone.read_text() == "reversed"
    assert view.steps["reverse"].status == StepStatus.SUCCEEDED
    [started] = of_kind(events_of(inproc, eid), EventKind.ROLLBACK_STARTED)
    assert "rollback" in started.data["reason"]


def test_on_failure_rollback_starts_no_new_main_steps(inproc, sop_file, tmp_path) -> None:
    """After a step asks for rollback, steps not yet started must not start."""
    gate = tmp_path / "gate"
    path = sop_file(sop_text(f"""\
        steps:
          - id: transfer
            uses: {H}:fail
            with: {{kind: permanent}}
            on_failure: rollback
          - id: slow
            uses: {H}:wait_for_file
            with: {{path: "{gate}", timeout_s: 30}}
          - id: after_slow
            uses: {H}:echo
            depends_on: [slow]
            with: {{value: should-not-run}}
        rollback:
          - id: reverse
            uses: {H}:echo
            with: {{value: reversed}}
        """, name="rollback-stops"))
    eid = inproc.submit(path)
    _until(lambda: _step_status(inproc, eid, "transfer") == StepStatus.FAILED)
    gate.write_text("go")
    view = inproc.wait(eid, timeout=60)

    assert view.status == ExecutionStatus.FAILED
    assert view.steps["reverse"].status == StepStatus.SUCCEEDED
    assert not of_kind(events_of(inproc, eid), EventKind.STEP_STARTED, "after_slow"), \
        "a main step started after on_failure: rollback was triggered"
    assert view.steps["after_slow"].status == StepStatus.CANCELLED


def test_on_failure_continue_lets_dependents_run(inproc, sop_file) -> None:
    path = sop_file(sop_text(f"""\
        steps:
          - id: optional_enrich
            uses: {H}:fail
            with: {{kind: permanent}}
            on_failure: continue
          - id: publish
            uses: {H}:echo
            depends_on: [optional_enrich]
            with: {{value: "${{{{ steps.optional_enrich.status }}}}"}}
        """, name="continue"))
    eid = inproc.submit(path)
    view = inproc.wait(eid, timeout=60)

    assert view.steps["optional_enrich"].status == StepStatus.FAILED
    assert view.steps["publish"].status == StepStatus.SUCCEEDED
    assert view.status == ExecutionStatus.COMPLETED
    assert inproc.result(eid)["steps"]["publish"] == "failed"


def _until(predicate, timeout_s: float = 30.0) -> None:
    """Bounded polling for a condition observed through the engine."""
    import time

    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def _step_status(engine, eid: str, step: str) -> StepStatus | None:
    try:
        return engine.status(eid).steps[step].status
    except ExecutionNotFound:  # the monitor may lag the coordinator by a few ms
        return None
