"""Traces leave by OTLP/HTTP out of the box: a local receiver decodes them, one execution is one trace."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (ExportTraceServiceRequest,
                                                                      ExportTraceServiceResponse)

from tests.conftest import ROOT

pytestmark = pytest.mark.ray


class Receiver(ThreadingHTTPServer):
    """An OTLP/HTTP trace receiver on 127.0.0.1: keeps every span it is sent, decoded from protobuf."""

    def __init__(self) -> None:
        self.spans: list[dict] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def spans_of(self, execution_id: str) -> list[dict]:
        with self.lock:
            return [s for s in self.spans if s["attributes"].get("sopflow.execution_id") == execution_id]


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest.FromString(body)
        with self.server.lock:
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        self.server.spans.append({
                            "name": span.name, "trace_id": span.trace_id.hex(), "status": span.status.code,
                            "service": resource.get("service.name"),
                            "attributes": {a.key: a.value.string_value or a.value.int_value for a in span.attributes}})
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: object) -> None:  # keep the test output quiet
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_one_execution_arrives_as_one_trace_over_otlp(receiver: Receiver, tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OTEL_TRACES_EXPORTER": "otlp",
           "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.server_address[1]}",
           "OTEL_BSP_SCHEDULE_DELAY": "100", "RAY_ADDRESS": "local"}
    env.pop("SOPFLOW_TRACE_FILE", None)
    driver = subprocess.Popen([sys.executable, "-m", "tests.runtime.otlp_driver", str(tmp_path / "state.db")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=ROOT, env=env)
    try:
        line = driver.stdout.readline().split()
        assert line and line[1] == "completed", driver.stderr.read()[-3000:] if driver.poll() is not None else line
        eid = line[0]
        # execution + 3 step attempts + 3 handler spans, exported from the coordinator and the workers
        deadline = time.monotonic() + 60
        while len(receiver.spans_of(eid)) < 7 and time.monotonic() < deadline:
            time.sleep(0.05)  # polling interval of a bounded wait for the exporters' batches
        spans = receiver.spans_of(eid)
    finally:
        driver.communicate(input="", timeout=120)
    names = sorted(s["name"] for s in spans)
    assert names == sorted(["execution hello-linear", "step greet", "step shout", "step count",
                            "step.handler", "step.handler", "step.handler"]), names
    assert len({s["trace_id"] for s in spans}) == 1  # one execution, one trace
    assert {s["service"] for s in spans if s["name"] == "step.handler"} == {"sopflow-worker"}
    assert {s["service"] for s in spans if s["name"].startswith(("execution", "step "))} == {"sopflow-coordinator"}
