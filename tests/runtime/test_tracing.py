"""OpenTelemetry traces of an execution: one trace, execution -> step attempt -> handler in the worker.

Spans come from every process of the test cluster as JSON lines (the console
exporter, see tests/conftest.py); a span looks like
``{"name", "context": {"trace_id", "span_id"}, "parent_id", "status": {"status_code"},
"attributes": {...}, "resource": {"attributes": {"service.name"}}}``.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest

from runtime.status import ExecutionStatus
from tests.conftest import read_spans
from tests.sop_builders import H
from tests.sop_builders import sop_text as _sop_text


def sop_text(body: str, name: str, inputs: str = "") -> str:
    return _sop_text(body, name, inputs, version="2.1")

pytestmark = pytest.mark.ray


def spans_of(execution_id: str, expected: int, timeout_s: float = 20.0) -> list[dict]:
    """The execution's spans, polling (bounded) until ``expected`` of them were exported."""
    deadline = time.monotonic() + timeout_s
    while True:
        spans = [s for s in read_spans() if s["attributes"].get("sopflow.execution_id") == execution_id]
        if len(spans) >= expected or time.monotonic() > deadline:
            return spans
        time.sleep(0.05)


def test_an_execution_is_one_trace_of_execution_step_and_handler_spans(engine, sop_file, tmp_path) -> None:
    path = sop_file(sop_text(f"""\
        steps:
          - id: fetch
            uses: {H}:flaky
            with: {{fail_times: 1, counter_dir: "{tmp_path / 'attempts'}"}}
          - id: report
            uses: {H}:echo
            depends_on: [fetch]
            with: {{value: done}}
        """, name="traced"))
    eid = engine.submit(path)
    assert engine.wait(eid, timeout=60).status == ExecutionStatus.COMPLETED
    engine.flush()
    # 1 execution + 3 step attempts (fetch x2, report) + 3 handler spans
    spans = spans_of(eid, expected=7)

    roots = [s for s in spans if s["name"] == "execution traced"]
    assert len(roots) == 1, [s["name"] for s in spans]
    root = roots[0]
    assert root["parent_id"] is None
    assert root["attributes"]["sopflow.sop"] == "traced"
    assert root["attributes"]["sopflow.version"] == "2.1"
    assert root["attributes"]["sopflow.status"] == "completed"
    trace_id, root_id = root["context"]["trace_id"], root["context"]["span_id"]
    assert all(s["context"]["trace_id"] == trace_id for s in spans)

    steps = {(s["attributes"]["sopflow.step"], s["attributes"]["sopflow.attempt"]): s
             for s in spans if s["name"].startswith("step ") and s["name"] != "step.handler"}
    assert set(steps) == {("fetch", 1), ("fetch", 2), ("report", 1)}
    for (step, _), span in steps.items():
        assert span["name"] == f"step {step}"
        assert span["parent_id"] == root_id
        assert span["attributes"]["sopflow.sop"] == "traced"
        assert span["attributes"]["sopflow.version"] == "2.1"

    failed = steps[("fetch", 1)]
    assert failed["attributes"]["sopflow.status"] == "failed"
    assert failed["attributes"]["sopflow.error_class"] == "transient"
    assert failed["attributes"]["sopflow.error_type"] == "ConnectionError"
    assert failed["status"]["status_code"] == "ERROR"
    assert steps[("fetch", 2)]["attributes"]["sopflow.status"] == "succeeded"
    assert "sopflow.error_class" not in steps[("fetch", 2)]["attributes"]
    assert steps[("report", 1)]["attributes"]["sopflow.status"] == "succeeded"

    handlers = [s for s in spans if s["name"] == "step.handler"]
    assert len(handlers) == 3
    for span in handlers:
        key = (span["attributes"]["sopflow.step"], span["attributes"]["sopflow.attempt"])
        assert span["parent_id"] == steps[key]["context"]["span_id"], key
    # the handler span comes from the worker process, not the coordinator
    services = {s["resource"]["attributes"].get("service.name") for s in handlers}
    assert "sopflow-coordinator" not in services
    handler_for_failure = next(s for s in handlers if s["attributes"]["sopflow.attempt"] == 1
                               and s["attributes"]["sopflow.step"] == "fetch")
    assert handler_for_failure["attributes"]["sopflow.error_type"] == "ConnectionError"


def test_a_skipped_step_has_no_span_and_a_halted_one_neither(engine, sop_file) -> None:
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
            when: "false"
        """, name="traced-halt"))
    eid = engine.submit(path)
    assert engine.wait(eid, timeout=60).status == ExecutionStatus.FAILED
    engine.flush()
    spans = spans_of(eid, expected=3)
    names = sorted(s["name"] for s in spans)
    assert names == ["execution traced-halt", "step a", "step.handler"]
    root = next(s for s in spans if s["name"] == "execution traced-halt")
    assert root["attributes"]["sopflow.status"] == "failed"
    step_a = next(s for s in spans if s["name"] == "step a")
    assert step_a["attributes"]["sopflow.error_class"] == "permanent"


def test_a_secret_input_never_appears_in_any_span(engine, sop_file) -> None:
    secret = f"tr4ce-s3cret-{uuid.uuid4().hex}"
    path = sop_file(sop_text(f"""\
        steps:
          - id: login
            uses: {H}:leak_secret
            with: {{token: "${{{{ inputs.token }}}}"}}
        """, name="traced-secret", inputs="inputs:\n  token: {type: string, secret: true, required: true}\n"))
    eid = engine.submit(path, {"token": secret})
    assert engine.wait(eid, timeout=60).status == ExecutionStatus.FAILED
    engine.flush()
    spans = spans_of(eid, expected=3)
    assert len(spans) == 3
    dumped = json.dumps(spans)
    assert secret not in dumped, "the secret input leaked into a span"


def test_a_failed_execution_is_an_error_span_and_its_trace_id_is_in_status(engine, sop_file) -> None:
    path = sop_file(sop_text(f"""\
        steps:
          - id: ok
            uses: {H}:echo
            with: {{value: 1}}
          - id: broken
            uses: {H}:fail
            depends_on: [ok]
            with: {{message: "the ledger is locked", kind: permanent}}
        """, name="traced-failure"))
    eid = engine.submit(path)
    view = engine.wait(eid, timeout=60)
    assert view.status == ExecutionStatus.FAILED or view.status == ExecutionStatus.PARTIALLY_COMPLETED
    engine.flush()
    spans = spans_of(eid, expected=5)
    root = next(s for s in spans if s["name"] == "execution traced-failure")
    assert root["status"]["status_code"] == "ERROR"
    assert "step 'broken' failed" in root["status"]["description"]
    assert "the ledger is locked" in root["status"]["description"]
    handler = next(s for s in spans if s["name"] == "step.handler" and s["attributes"]["sopflow.step"] == "broken")
    assert handler["status"]["status_code"] == "ERROR" and "the ledger is locked" in handler["status"]["description"]
    # A user can jump from `sopflow status` to the trace in their tracing tool.
    assert view.trace_id is not None and root["context"]["trace_id"] == "0x" + view.trace_id
    assert engine.status(eid).trace_id == view.trace_id
