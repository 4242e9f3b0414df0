"""The API's trigger, event, batch and resource endpoints: hostile requests first, then each one
against the shared Ray cluster's real trigger actor and coordinator.

The server is the real ``_Api`` on an event loop of this process (see ``tests/runtime/test_api.py``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime._api_client import ApiClient
from runtime._api_discovery import Endpoint
from runtime.errors import BatchNotFound, TriggerError, TriggerNotFound
from runtime.status import ExecutionStatus
from tests.runtime.test_api import TOKEN, Server, request

pytestmark = pytest.mark.ray

SOP = """
sop: api-hook
inputs:
  path: {type: string, required: true}
steps:
  - id: look
    run: 'printf "%s" "$P"'
    env: {P: "${{ inputs.path }}"}
triggers:
  - name: upload
    event: api.file.uploaded
    filter: "trigger.payload.size >= 1024"
    inputs: {path: "${{ trigger.payload.path }}"}
  - name: nightly
    cron: "0 3 * * *"
    inputs: {path: "${{ trigger.fire_time }}"}
"""
EVENT = "api.file.uploaded"
OPS_ROUTES = [("POST", f"/v1/events/{EVENT}"), ("GET", "/v1/triggers"),
              ("POST", "/v1/triggers/api-hook%2Fupload/pause"), ("POST", "/v1/triggers/api-hook%2Fupload/resume"),
              ("POST", "/v1/triggers/api-hook%2Fupload/fire"), ("GET", "/v1/batches/nightly/report"),
              ("GET", "/v1/resources")]
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def server(engine, tmp_path_factory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("api-ops-discovery"))
    assert s.url is not None, s.api.error
    yield s
    s.close()


@pytest.fixture(scope="module")
def client(server: Server) -> ApiClient:
    return ApiClient(Endpoint(server.url, TOKEN))


@pytest.fixture(scope="module")
def deployed(engine, tmp_path_factory) -> Iterator[str]:
    path = tmp_path_factory.mktemp("api-ops-sop") / "api-hook.yaml"
    path.write_text(SOP)
    assert engine.deploy(str(path)) == ["api-hook/nightly", "api-hook/upload"]
    yield str(path)
    engine.undeploy("api-hook")


def emit(server: Server, payload: Any, *, key: str | None = None, name: str = EVENT,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    path = f"/v1/events/{name}" + (f"?key={quote(key, safe='')}" if key is not None else "")
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return request(server.url, "POST", path, body=body, headers={**JSON, **(headers or {})})


def stdout(engine, eid: str) -> str:
    return next(e.data["output"]["stdout"] for e in engine.history(eid) if e.kind.value == "step_succeeded")


def executions(engine) -> list[str]:
    return [v.id for v in engine.list(sop="api-hook")]


# -- hostile requests -------------------------------------------------------------------------------


@pytest.mark.parametrize("method,path", OPS_ROUTES)
@pytest.mark.parametrize("token", [None, "", "wrong", TOKEN[:-1], f"{TOKEN} {TOKEN}"],
                         ids=["none", "empty", "wrong", "prefix", "twice"])
def test_every_new_endpoint_refuses_a_missing_or_wrong_token(server, method, path, token) -> None:
    status, headers, answer = request(server.url, method, path, token=token, body=b"{}" if method == "POST" else None)
    assert status == 401 and answer["error"]["type"] == "Unauthorized"
    assert headers["WWW-Authenticate"].startswith("Bearer") and TOKEN not in json.dumps(answer)


def test_a_body_over_the_apis_cap_is_413_and_fires_nothing(server, engine, deployed) -> None:
    before = executions(engine)
    status, _, answer = emit(server, b'{"size": 2048, "path": "' + b"x" * (2 << 20) + b'"}')
    assert status == 413 and "larger than 1048576 bytes" in answer["error"]["message"]
    assert executions(engine) == before


def test_a_payload_over_the_trigger_limit_is_413_naming_the_setting_and_fires_nothing(server, engine,
                                                                                       deployed) -> None:
    before = executions(engine)
    status, _, answer = emit(server, {"size": 2048, "path": "x" * 70_000})
    assert status == 413, answer
    assert answer["error"]["type"] == "TriggerPayloadTooLarge"
    assert "trigger_payload_max_bytes" in answer["error"]["message"] and "x" * 100 not in answer["error"]["message"]
    assert executions(engine) == before


@pytest.mark.parametrize("body,says", [
    (b"{nope", "the request body is not JSON: Expecting property name"),
    (b"\xff\xfe", "the request body is not JSON"),
    (b"[1, 2]", "must be a JSON object"), (b'"text"', "must be a JSON object"), (b"42", "must be a JSON object"),
    (b'{"size": NaN}', "the request body is not JSON"),
])
def test_a_body_that_is_not_a_json_object_is_a_400(server, deployed, body, says) -> None:
    for path in (f"/v1/events/{EVENT}", "/v1/triggers/api-hook%2Fupload/fire"):
        status, _, answer = request(server.url, "POST", path, body=body, headers=JSON)
        assert status == 400 and says in answer["error"]["message"], (path, answer)


_BAD_NAMES = ["..%2F..%2Fetc%2Fpasswd", "%0A", "a%00b", "x" * 10_000, "a%20b", quote("x' OR 1=1 --", safe=""),
              "%E2%80%AE"]
_BAD_IDS = ["nope", "..", "x" * 10_000, "..%2F..%2Fetc%2Fpasswd"]


@pytest.mark.parametrize("bad", _BAD_NAMES, ids=["traversal", "newline", "nul", "10kb", "space", "sql", "rtl"])
def test_a_bad_event_name_is_a_400_naming_the_rule_without_echoing_it_whole(server, bad) -> None:
    status, _, answer = request(server.url, "POST", f"/v1/events/{bad}", body=b"{}", headers=JSON)
    assert status == 400, answer
    assert "event name must be" in answer["error"]["message"] and len(answer["error"]["message"]) < 300


@pytest.mark.parametrize("bad", [b"..%2F..%2Fx", b"%0A", b"a%00b", b"x" * 10_000, b"a%20b", b"x'%20OR%201=1"],
                         ids=["traversal", "newline", "nul", "10kb", "space", "sql"])
@pytest.mark.parametrize("action", ["pause", "resume", "fire"])
def test_a_bad_trigger_id_is_a_400_naming_the_form(server, bad, action) -> None:
    status, _, answer = request(server.url, "POST", f"/v1/triggers/{bad.decode()}/{action}", body=b"{}",
                                headers=JSON)
    assert status == 400, answer
    assert "<sop>/<name>" in answer["error"]["message"] and len(answer["error"]["message"]) < 300


@pytest.mark.parametrize("bad", ["..%2F..%2Fx", "%0A", "a%00b", "x" * 10_000, "a%20b"],
                         ids=["traversal", "newline", "nul", "10kb", "space"])
def test_a_bad_batch_name_is_a_400_naming_the_rule(server, bad) -> None:
    status, _, answer = request(server.url, "GET", f"/v1/batches/{bad}/report")
    assert status == 400, answer
    assert "schedule.batch: must be a name of letters" in answer["error"]["message"]
    assert len(answer["error"]["message"]) < 400


@pytest.mark.parametrize("query,headers,says", [
    ("key=%0Ax", {}, "'key' must be printable text of 1 to 200 characters"),
    ("key=" + "k" * 300, {}, "'key' must be printable text of 1 to 200 characters"),
    ("key=", {}, "'key' must be printable text"),
    ("key=a", {"Idempotency-Key": "b"}, "the Idempotency-Key header and the 'key' query parameter differ"),
    ("kee=a", {}, "unknown query parameter(s) 'kee'"),
])
def test_a_bad_dedup_key_is_a_400(server, engine, deployed, query, headers, says) -> None:
    before = executions(engine)
    status, _, answer = request(server.url, "POST", f"/v1/events/{EVENT}?{query}", body=b"{}",
                                headers={**JSON, **headers})
    assert status == 400 and says in answer["error"]["message"], answer
    assert executions(engine) == before


def test_a_trigger_id_may_carry_its_slash_as_is_or_encoded(server, deployed) -> None:
    for path in ("/v1/triggers/api-hook/nightly/pause", "/v1/triggers/api-hook%2Fnightly/resume"):
        status, _, answer = request(server.url, "POST", path)
        assert status == 200 and answer["id"] == "api-hook/nightly", answer
    status, _, answer = request(server.url, "POST", "/v1/triggers/a/b/c/pause")
    assert status == 400 and "<sop>/<name>" in answer["error"]["message"], answer


def test_unknown_trigger_and_batch_are_404s_saying_where_to_look(server, deployed) -> None:
    for action in ("pause", "resume", "fire"):
        status, _, answer = request(server.url, "POST", f"/v1/triggers/api-hook%2Fnope/{action}", body=b"",
                                    headers=JSON)
        assert status == 404, answer
        assert answer["error"]["type"] == "TriggerNotFound"
        assert "no deployed trigger 'api-hook/nope'" in answer["error"]["message"]
        assert "`sopflow triggers list`" in answer["error"]["message"]
    status, _, answer = request(server.url, "GET", "/v1/batches/no-such-batch/report")
    assert status == 404 and answer["error"]["type"] == "BatchNotFound", answer
    assert "no batch 'no-such-batch'" in answer["error"]["message"]


@pytest.mark.parametrize("method,path", [
    ("GET", f"/v1/events/{EVENT}"), ("PUT", f"/v1/events/{EVENT}"), ("DELETE", "/v1/triggers"),
    ("POST", "/v1/triggers"), ("GET", "/v1/triggers/api-hook%2Fupload/pause"),
    ("DELETE", "/v1/triggers/api-hook%2Fupload/fire"), ("POST", "/v1/batches/b/report"), ("POST", "/v1/resources")])
def test_a_wrong_method_is_a_405_json_error(server, method, path) -> None:
    status, _, answer = request(server.url, method, path, body=b"{}" if method != "GET" else None)
    assert status == 405, answer
    assert "GET /openapi.json lists the methods" in answer["error"]["message"]


def test_pause_and_resume_take_no_fields_and_resources_no_query(server, deployed) -> None:
    status, _, answer = request(server.url, "POST", "/v1/triggers/api-hook%2Fupload/pause", body=b'{"by": "x"}',
                                headers=JSON)
    assert status == 400 and "unknown field(s) 'by'" in answer["error"]["message"], answer
    status, _, answer = request(server.url, "GET", "/v1/resources?node=x")
    assert status == 400 and "unknown query parameter(s) 'node'" in answer["error"]["message"], answer


def test_a_replayed_emit_with_the_same_key_starts_one_execution(server, engine, deployed) -> None:
    payload = {"path": "/in/replay.csv", "size": 4096}
    first = emit(server, payload, headers={"Idempotency-Key": "replay-1"})
    assert first[0] == 200, first
    [fired] = first[2]["fired"]
    assert fired["trigger"] == "api-hook/upload" and fired["execution"].startswith("exe-")
    before = executions(engine)
    for again in (emit(server, payload, headers={"Idempotency-Key": "replay-1"}),
                  emit(server, payload, key="replay-1")):
        assert again[0] == 200 and again[2]["fired"] == [fired], again
    assert executions(engine) == before
    assert engine.wait(fired["execution"], timeout=120).status == ExecutionStatus.COMPLETED
    assert stdout(engine, fired["execution"]) == "/in/replay.csv"


def test_a_payload_is_data_and_secrets_in_it_are_never_echoed(server, engine, deployed, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "hunter2-" + "9f" * 8
    status, _, answer = emit(server, {"path": "$(echo pwned)", "size": 2048, "password": secret},
                             headers={"Idempotency-Key": "secret-1"})
    assert status == 200, answer
    [fired] = answer["fired"]
    listed = request(server.url, "GET", "/v1/triggers")[2]
    assert secret not in json.dumps(answer) + json.dumps(listed) + caplog.text
    assert engine.wait(fired["execution"], timeout=120).status == ExecutionStatus.COMPLETED
    assert stdout(engine, fired["execution"]) == "$(echo pwned)"


def test_a_filtered_out_or_unheard_event_says_why_and_starts_nothing(server, engine, deployed) -> None:
    before = executions(engine)
    status, _, answer = emit(server, {"path": "/small", "size": 1})
    assert status == 200 and answer["fired"] == [], answer
    assert [m["trigger"] for m in answer["not_fired"]] == ["api-hook/upload"]
    status, _, answer = emit(server, None, name="nobody.listens")
    assert status == 200 and answer == {"event": "nobody.listens", "key": None, "fired": [], "not_fired": []}
    status, _, answer = request(server.url, "POST", "/v1/events/nobody.listens", body=b"")  # empty: no payload
    assert status == 200 and answer["fired"] == []
    assert executions(engine) == before


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.text(min_size=1, max_size=300))
def test_for_any_event_name_or_trigger_id_the_api_answers_never_5xx(server, junk) -> None:
    segment = quote(junk, safe="")
    for method, path in (("POST", f"/v1/events/{segment}"), ("POST", f"/v1/triggers/{segment}/pause"),
                         ("GET", f"/v1/batches/{segment}/report")):
        status, _, answer = request(server.url, method, path, body=b"{}" if method == "POST" else None,
                                    headers=JSON)
        assert status in (200, 400, 404), (junk, path, status, answer)
        assert status == 200 or "error" in answer


# -- each endpoint --------------------------------------------------------------------------------


def test_triggers_pause_resume_and_fire_equal_what_the_engine_returns(engine, client, deployed) -> None:
    assert client.triggers() == engine.triggers()
    paused = client.pause_trigger("upload")
    assert paused["id"] == "api-hook/upload" and paused["paused"] is True
    assert engine.triggers() == client.triggers()
    skipped = client.emit(EVENT, {"path": "/p", "size": 2048})
    assert skipped["not_fired"] == [{"trigger": "api-hook/upload", "reason": "paused"}]
    assert client.resume_trigger("api-hook/upload")["paused"] is False
    fired = client.fire_trigger("api-hook/upload", {"path": "/by/hand", "size": 1}, key="hand-1")
    assert fired == client.fire_trigger("api-hook/upload", {"path": "/by/hand", "size": 1}, key="hand-1")
    assert engine.wait(fired["execution"], timeout=120).status == ExecutionStatus.COMPLETED
    with pytest.raises(TriggerNotFound, match="no deployed trigger 'nope'"):
        client.pause_trigger("nope")
    with pytest.raises(TriggerError, match="trigger_payload_max_bytes"):
        client.emit(EVENT, {"blob": "x" * 70_000})


def test_batch_report_and_resources_equal_what_the_engine_returns(engine, client, examples_dir: Path) -> None:
    eid = engine.submit(str(examples_dir / "hello-linear.yaml"), {"name": "api"}, schedule={"batch": "api-batch"})
    assert engine.wait(eid, timeout=120).status == ExecutionStatus.COMPLETED
    assert client.batch_report("api-batch") == json.loads(json.dumps(engine.batch_report("api-batch")))
    with pytest.raises(BatchNotFound, match="no batch 'never-submitted'"):
        client.batch_report("never-submitted")
    view = client.resources()
    assert set(view) == set(engine.resources()) and "running" in view


def test_the_openapi_document_lists_the_new_routes(server) -> None:
    from openapi_spec_validator import validate

    status, _, doc = request(server.url, "GET", "/openapi.json")
    assert status == 200
    validate(doc)
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert {("POST", "/v1/events/{name}"), ("GET", "/v1/triggers"), ("POST", "/v1/triggers/{id}/pause"),
            ("POST", "/v1/triggers/{id}/resume"), ("POST", "/v1/triggers/{id}/fire"),
            ("GET", "/v1/batches/{name}/report"), ("GET", "/v1/resources")} <= documented
    emit_op = doc["paths"]["/v1/events/{name}"]["post"]
    assert {p["name"] for p in emit_op["parameters"]} == {"name", "key", "Idempotency-Key"}
