"""sopflow's HTTP API: hostile requests first, then every endpoint against the shared Ray cluster.

The API under test is the real server (``actors._api._Api``) over the real coordinator and
monitor of the test engine, run on an event loop in this process so the test knows its token
and where its discovery file goes; one test checks the ``sopflow-api`` actor the engine
itself created.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import os
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime._api_client import ApiClient
from runtime._api_discovery import Endpoint, discovery_path, find_endpoint, read_discovery
from runtime._wire import DECISIONS, STATUSES, view_from_dict, view_to_dict
from runtime.errors import (EngineUnavailable, ExecutionError, ExecutionFailed, ExecutionNotFound,
                            ExecutionTimeout, IdempotencyConflict, StateStoreError)
from runtime.status import ExecutionStatus, ExecutionView, StepStatus, StepView
from tests.cluster.local_node import listening_address
from tests.conftest import NAMESPACE
from tests.sop_builders import gated, wait_for

pytestmark = pytest.mark.ray

TOKEN = "test-token-" + os.urandom(16).hex()
UNKNOWN = "exe-000000000000-00000000"


class Server:
    """An ``_Api`` serving on its own event loop thread in this process."""

    def __init__(self, discovery_dir: Path, token: str | None = TOKEN, config: Any = None) -> None:
        from actors._api import _Api

        self.api = _Api(NAMESPACE, config, token=token, discovery_dir=str(discovery_dir))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-api", daemon=True)
        self.thread.start()
        self.url = self.run(self.api.start())

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(120)

    def close(self) -> None:
        self.run(self.api.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def server(engine, tmp_path_factory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("api-discovery"))
    assert s.url is not None, s.api.error
    yield s
    s.close()


def request(url: str, method: str, path: str, *, token: str | None = TOKEN, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    """One raw HTTP request (no client-side normalisation of the path); the JSON answer."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    try:
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    return response.status, dict(response.headers), (json.loads(raw) if raw else None)


@pytest.fixture(scope="module")
def client(server: Server) -> ApiClient:
    return ApiClient(Endpoint(server.url, TOKEN))


@pytest.fixture(scope="module")
def finished(engine, examples_dir: Path) -> str:
    eid = engine.submit(str(examples_dir / "hello-linear.yaml"), {"name": "ada"})
    assert engine.wait(eid, timeout=120).status == ExecutionStatus.COMPLETED
    return eid


ROUTES = [("GET", "/v1/executions"), ("GET", f"/v1/executions/{UNKNOWN}"),
          ("GET", f"/v1/executions/{UNKNOWN}/events"), ("GET", f"/v1/executions/{UNKNOWN}/history"),
          ("GET", f"/v1/executions/{UNKNOWN}/result"), ("POST", f"/v1/executions/{UNKNOWN}/wait"),
          ("POST", f"/v1/executions/{UNKNOWN}/cancel"), ("POST", f"/v1/executions/{UNKNOWN}/pause"),
          ("POST", f"/v1/executions/{UNKNOWN}/resume"), ("POST", f"/v1/executions/{UNKNOWN}/decide"),
          ("GET", "/v1/metrics"), ("GET", "/openapi.json"), ("GET", "/v1/nowhere"),
          ("GET", "/v1/estimates")]


# -- hostile requests -------------------------------------------------------------------------------


@pytest.mark.parametrize("method,path", ROUTES)
@pytest.mark.parametrize("token", [None, "", "wrong", TOKEN[:-1], TOKEN + "x", f"{TOKEN} {TOKEN}"],
                         ids=["none", "empty", "wrong", "prefix", "longer", "twice"])
def test_every_endpoint_but_health_refuses_a_missing_or_wrong_token(server, method, path, token) -> None:
    status, headers, answer = request(server.url, method, path, token=token)
    assert status == 401
    assert answer["error"]["type"] == "Unauthorized" and "Authorization: Bearer" in answer["error"]["message"]
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert TOKEN not in json.dumps(answer)


def test_a_token_sent_with_another_scheme_is_refused(server) -> None:
    for value in (f"Basic {TOKEN}", TOKEN, f"Token {TOKEN}"):
        status, _, answer = request(server.url, "GET", "/v1/executions", token=None,
                                    headers={"Authorization": value})
        assert status == 401 and TOKEN not in json.dumps(answer)


def test_health_needs_no_token_and_tells_nothing_else(server) -> None:
    status, _, answer = request(server.url, "GET", "/v1/health", token=None)
    assert status == 200 and answer == {"ok": True, "service": "sopflow", "api": "v1"}


def test_an_oversized_body_is_refused_with_413(server) -> None:
    big = b'{"timeout": 1, "pad": "' + b"x" * (2 << 20) + b'"}'
    status, _, answer = request(server.url, "POST", f"/v1/executions/{UNKNOWN}/wait", body=big,
                                headers={"Content-Type": "application/json"})
    assert status == 413 and "larger than 1048576 bytes" in answer["error"]["message"]


def test_an_oversized_chunked_body_is_refused_with_413(server) -> None:
    parts = urlsplit(server.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    chunks = (b"x" * (64 << 10) for _ in range(40))  # 2.5 MiB without a Content-Length
    conn.request("POST", f"/v1/executions/{UNKNOWN}/cancel", body=chunks, encode_chunked=True,
                 headers={"Authorization": f"Bearer {TOKEN}", "Transfer-Encoding": "chunked"})
    response = conn.getresponse()
    answer = json.loads(response.read())
    conn.close()
    assert response.status == 413 and answer["error"]["type"] == "RequestEntityTooLarge"


@pytest.mark.parametrize("bad", ["..%2F..%2Fetc%2Fpasswd", "exe-x", quote("exe-01a1fffcf45b-cc948e27\n"),
                                 "%0A", "EXE-01A1FFFCF45B-CC948E27", "x" * 10_000, "exe-01a1fffcf45b-cc948e2%00",
                                 quote("exe-01a1fffcf45b-cc948e27' OR 1=1 --")],
                         ids=["traversal", "short", "newline", "only-newline", "upper", "10kb", "nul", "sql"])
@pytest.mark.parametrize("method,action", [("GET", ""), ("GET", "/history"), ("POST", "/cancel"),
                                           ("GET", "/events"), ("POST", "/decide")])
def test_a_bad_execution_id_is_a_400_naming_the_format(server, bad, method, action) -> None:
    status, _, answer = request(server.url, method, f"/v1/executions/{bad}{action}")
    assert status == 400, answer
    assert "expected exe-<12 hex>-<8 hex>" in answer["error"]["message"]
    assert len(answer["error"]["message"]) < 300  # a 10 KB id is not echoed back


def test_a_raw_dot_dot_path_never_reaches_a_file(server) -> None:
    for path in ("/v1/executions/../../../etc/passwd", "/v1/executions/..", "/../../etc/passwd"):
        status, _, answer = request(server.url, "GET", path)
        assert status in (400, 404), (path, status)
        assert "root:" not in json.dumps(answer)


def test_an_unknown_execution_is_a_404(server) -> None:
    for method, action in (("GET", ""), ("GET", "/history"), ("GET", "/events"), ("POST", "/cancel"),
                           ("POST", "/pause"), ("POST", "/wait")):
        status, _, answer = request(server.url, method, f"/v1/executions/{UNKNOWN}{action}",
                                    body=b"{}" if method == "POST" else None)
        assert status == 404, (action, answer)
        assert answer["error"] == {"type": "ExecutionNotFound", "execution_id": UNKNOWN,
                                   "message": f"no execution {UNKNOWN!r}; `sopflow list` shows the known ones"}


def test_bad_status_and_decision_values_are_400s_listing_the_allowed_ones(server, finished) -> None:
    status, _, answer = request(server.url, "GET", "/v1/executions?status=bogus")
    assert status == 400 and all(s in answer["error"]["message"] for s in STATUSES)
    body = json.dumps({"step": "greet", "decision": "maybe"}).encode()
    status, _, answer = request(server.url, "POST", f"/v1/executions/{finished}/decide", body=body)
    assert status == 400 and "'decision' must be one of rerun, succeed, fail, skip" in answer["error"]["message"]
    assert all(d in answer["error"]["message"] for d in DECISIONS)


@pytest.mark.parametrize("body,says", [
    (b"{nope", "the request body is not JSON: Expecting property name"),
    (b"\xff\xfe", "the request body is not JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b'{"forse": true}', "unknown field(s) 'forse'; this endpoint takes: force"),
    (b'{"force": "yes"}', "'force' must be true or false"),
    (b'{"by": 7}', "'by' must be a string of at most"),
    (b'{"by": "' + b"x" * 2000 + b'"}', "'by' must be a string of at most 1000 characters"),
])
def test_a_bad_body_is_a_400_saying_what_was_expected(server, finished, body, says) -> None:
    status, _, answer = request(server.url, "POST", f"/v1/executions/{finished}/cancel", body=body)
    assert status == 400 and says in answer["error"]["message"], answer


@pytest.mark.parametrize("query,says", [
    ("limit=0", "'limit' must be >= 1 and <= 10000"), ("limit=abc", "'limit' must be an integer"),
    ("limit=99999", "<= 10000"), ("since=nan", "'since' must be"), ("until=-1", "'until' must be >= 0"),
    ("sop=" + "s" * 2000, "'sop' must be a string of at most 1000 characters")])
def test_bad_list_filters_are_400s(server, query, says) -> None:
    status, _, answer = request(server.url, "GET", f"/v1/executions?{query}")
    assert status == 400 and says in answer["error"]["message"], answer


@pytest.mark.parametrize("query,says", [
    ("window=0", "'window' must be >= 0.001"), ("window=abc", "'window' must be a number"),
    ("window=nan", "'window' must be"), ("window=-1", "'window' must be >= 0.001"),
    ("mode=fast", "mode must be one of system_design, agent_centric"),
    ("mode=" + "m" * 5000, "mode must be one of"),
    ("sop=" + "s" * 2000, "'sop' must be a string of at most 1000 characters"),
    ("windw=3600", "unknown query parameter(s) 'windw'"), ("sop=a&sop=b' OR 1=1", "")])
def test_bad_metrics_queries_are_400s(server, query, says) -> None:
    status, _, answer = request(server.url, "GET", f"/v1/metrics?{quote(query, safe='=&')}")
    if not says:  # a repeated or odd-looking SOP name is just a name that matches nothing
        assert status == 200 and answer["executions"]["total"] == 0, answer
        return
    assert status == 400 and says in answer["error"]["message"], answer
    assert len(answer["error"]["message"]) < 400  # the junk is not echoed back whole


def test_bad_wait_and_timeout_values_are_400s(server, finished) -> None:
    for path, body in ((f"/v1/executions/{finished}/events?wait=31", None),
                       (f"/v1/executions/{finished}/events?after=-1", None),
                       (f"/v1/executions/{finished}/result?timeout=inf", None),
                       (f"/v1/executions/{finished}/wait", b'{"timeout": "soon"}'),
                       (f"/v1/executions/{finished}/wait", b'{"timeout": -1}')):
        status, _, answer = request(server.url, "POST" if body else "GET", path, body=body)
        assert status == 400, (path, answer)


def test_a_wrong_method_or_path_is_a_json_error(server) -> None:
    status, _, answer = request(server.url, "DELETE", f"/v1/executions/{UNKNOWN}")
    assert status == 405 and "GET /openapi.json lists the methods" in answer["error"]["message"]
    status, _, answer = request(server.url, "GET", "/v2/anything")
    assert status == 404 and "GET /openapi.json lists them" in answer["error"]["message"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.text(min_size=1, max_size=300))
def test_for_any_string_that_is_not_an_id_the_api_answers_400_never_5xx(server, junk) -> None:
    from runtime.ids import ExecutionId

    try:
        ExecutionId(junk)
        return  # a real id: not this property's concern
    except ValueError:
        pass
    status, _, answer = request(server.url, "GET", f"/v1/executions/{quote(junk, safe='')}")
    assert status in (400, 404), (junk, status, answer)  # 404: a segment the router splits ('/' in it)
    assert "error" in answer


def test_the_token_never_appears_in_responses_or_logs(server, finished, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    seen = []
    for method, path in ROUTES + [("GET", f"/v1/executions/{finished}"), ("GET", "/v1/executions/..%2Fx")]:
        for token in (TOKEN, "wrong"):
            seen.append(json.dumps(request(server.url, method, path, token=token)))
    assert TOKEN not in "".join(seen)
    assert TOKEN not in caplog.text


def test_it_binds_loopback_by_default_and_its_discovery_file_is_private(server) -> None:
    assert urlsplit(server.url).hostname == "127.0.0.1"
    path = server.api.discovery
    info = read_discovery(path)
    assert info["url"] == server.url and info["pid"] == os.getpid() and info["namespace"] == NAMESPACE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0
    assert "token" not in info  # the test gave the token: nothing of its own to announce


def test_without_a_ray_token_the_api_makes_its_own_and_announces_it_privately(engine, tmp_path,
                                                                              monkeypatch) -> None:
    import actors._api

    monkeypatch.setattr(actors._api, "ray_auth_token", lambda: None)  # as when Ray runs without auth
    s = Server(tmp_path, token=None)
    try:
        info = read_discovery(s.api.discovery)
        assert len(info["token"]) >= 40 and stat.S_IMODE(s.api.discovery.stat().st_mode) == 0o600
        assert request(s.url, "GET", "/v1/executions?limit=1", token=info["token"])[0] == 200
        assert request(s.url, "GET", "/v1/executions?limit=1", token=TOKEN)[0] == 401
    finally:
        s.close()
    assert not s.api.discovery.exists()  # stopping removes its own file


def test_a_port_in_use_leaves_the_api_off_with_a_reason(engine, tmp_path) -> None:
    from actors._api import _Api
    from runtime.config import EngineConfig

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        api = _Api(NAMESPACE, EngineConfig(api_port=port), token=TOKEN, discovery_dir=str(tmp_path))
        assert asyncio.run(api.start()) is None
    assert f"cannot listen on 127.0.0.1:{port}" in api.error
    assert not discovery_path(NAMESPACE, tmp_path).exists()


def test_a_configured_host_and_port_are_used(engine, tmp_path, monkeypatch) -> None:
    from actors._api import _Api
    from runtime.config import EngineConfig

    with socket.socket() as probe:  # a port free right now
        probe.bind(("127.0.0.2", 0))
        port = probe.getsockname()[1]
    s = Server(tmp_path, config=EngineConfig(api_host="127.0.0.2", api_port=port))
    try:
        assert s.url == f"http://127.0.0.2:{port}"
        assert listening_address(port) == "127.0.0.2"
        assert request(s.url, "GET", "/v1/health")[0] == 200
    finally:
        s.close()
    monkeypatch.setenv("SOPFLOW_API_HOST", "127.0.0.3")
    monkeypatch.setenv("SOPFLOW_API_PORT", "8470")
    assert EngineConfig().api_address() == ("127.0.0.3", 8470)  # the head's environment
    assert EngineConfig(api_port=0).api_address() == ("127.0.0.3", 0)
    monkeypatch.setenv("SOPFLOW_API_PORT", "eighty")
    with pytest.raises(ValueError, match="SOPFLOW_API_PORT must be a port number"):
        EngineConfig().api_address()
    monkeypatch.delenv("SOPFLOW_API_HOST")
    assert _Api(NAMESPACE, None, token=TOKEN).error == "$SOPFLOW_API_PORT must be a port number (0: any free " \
        "port), got 'eighty'"


def test_engine_config_refuses_a_bad_api_port() -> None:
    from runtime.config import EngineConfig

    for bad in (-1, 70000):
        with pytest.raises(ValueError, match="api_port must be 0 \\(any free port\\) to 65535"):
            EngineConfig(api_port=bad)
    with pytest.raises(ValueError, match="api_host must be a host name"):
        EngineConfig(api_host="127.0.0.1 evil")


# -- every endpoint against the real coordinator and monitor ------------------------------------


def test_status_list_history_and_result_equal_what_the_engine_returns(engine, client, finished) -> None:
    assert client.status(finished) == engine.status(finished)
    assert client.history(finished) == engine.history(finished)
    assert client.history(finished, after_seq=3) == engine.history(finished, 3)
    assert client.result(finished) == engine.result(finished)
    assert client.wait(finished) == engine.wait(finished)
    assert client.list(limit=5) == engine.list(limit=5)
    assert [v.id for v in client.list(status="completed", sop="hello-linear")] == \
        [v.id for v in engine.list(status="completed", sop="hello-linear")]
    assert finished in [v.id for v in client.list(sop="hello-linear")]
    submitted = engine.status(finished).submitted_at
    assert finished in [v.id for v in client.list(since=submitted, until=submitted + 0.001)]
    assert finished not in [v.id for v in client.list(until=submitted)]
    assert len(client.list(limit=1)) == 1


def test_metrics_over_the_api_equal_the_engines(engine, client, finished) -> None:
    over_api = client.metrics("1h", sop="hello-linear")
    direct = engine.metrics("1h", sop="hello-linear")
    assert over_api["executions"]["completed"] >= 1
    for key in ("executions", "duration_s", "steps", "queue", "step_duration_s", "alerts"):
        assert over_api[key] == direct[key], key
    assert client.metrics("all")["window"]["seconds"] is None


def test_events_follow_an_execution_to_its_end(engine, client, finished) -> None:
    events = list(client.events(finished, follow=True))
    assert events == list(engine.events(finished, follow=False))
    assert events[-1].kind.value == "execution_finished"
    assert list(client.events(finished, follow=False)) == events
    status, _, answer = request(client.url, "GET",
                                f"/v1/executions/{finished}/events?after={events[-1].seq}&wait=0.2")
    assert status == 200 and answer == {"events": []}


def test_pause_resume_and_cancel_a_running_execution(engine, client, tmp_path) -> None:
    eid, gate = gated(engine, tmp_path)
    assert client.pause(eid).status == ExecutionStatus.PAUSED
    assert client.resume(eid).status == ExecutionStatus.RUNNING
    with pytest.raises(ExecutionTimeout, match=f"execution {eid} is still running after 0.2 s"):
        client.wait(eid, timeout=0.2)
    with pytest.raises(ExecutionTimeout):
        client.result(eid, timeout=0.1)
    client.cancel(eid, force=True)
    assert client.wait(eid, timeout=60).status == ExecutionStatus.CANCELLED
    with pytest.raises(ExecutionError, match=f"cannot pause execution {eid}|execution {eid} has finished"):
        client.pause(eid)  # 409: the execution's state forbids it
    status, _, answer = request(client.url, "GET", f"/v1/executions/{eid}/result")
    assert status == 409 and answer["error"]["type"] == "ExecutionFailed" and answer["error"]["status"] == "cancelled"


def test_a_gate_opened_lets_a_waiting_client_see_the_outputs(engine, client, tmp_path) -> None:
    eid, gate = gated(engine, tmp_path, name="opened")
    gate.write_text("opened")
    assert client.result(eid, timeout=60)["steps"]["hold"] == "opened"


def test_decide_on_a_step_that_waits_for_nothing_says_which_wait(client, finished) -> None:
    with pytest.raises(ExecutionError, match="not waiting for a decision|has finished; it can no longer be"):
        client.decide(finished, "greet", "skip", reason="test")
    status, _, answer = request(client.url, "POST", f"/v1/executions/{finished}/decide",
                                body=json.dumps({"step": "greet", "decision": "skip"}).encode())
    assert status == 409 and answer["error"]["type"] == "ExecutionError"


def test_an_unknown_id_raises_execution_not_found_in_the_client(client) -> None:
    for call in (lambda: client.status(UNKNOWN), lambda: client.history(UNKNOWN),
                 lambda: client.cancel(UNKNOWN), lambda: client.status("not-an-id")):
        with pytest.raises(ExecutionNotFound):
            call()


def test_the_openapi_document_is_valid_and_lists_every_route(server) -> None:
    from openapi_spec_validator import validate

    status, _, doc = request(server.url, "GET", "/openapi.json")
    assert status == 200
    validate(doc)
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    served = {(m, p.replace(UNKNOWN, "{id}")) for m, p in ROUTES if "nowhere" not in p} | {("GET", "/v1/health")}
    served |= {("POST", "/v1/events/{name}"), ("GET", "/v1/triggers"), ("GET", "/v1/batches/{name}/report"),
               ("GET", "/v1/resources")} | {("POST", "/v1/triggers/{id}/" + a) for a in ("pause", "resume", "fire")}
    assert documented == served
    assert doc["paths"]["/v1/health"]["get"]["security"] == []


def test_the_engine_starts_the_api_actor_on_loopback_and_it_answers_with_rays_token(engine, finished) -> None:
    import ray

    from actors._api import ray_auth_token

    info = ray.get(engine._conn.actors.api.ready.remote(), timeout=60)
    assert info["error"] is None and urlsplit(info["url"]).hostname == "127.0.0.1"
    assert listening_address(urlsplit(info["url"]).port) == "127.0.0.1"
    token = ray_auth_token()
    if token is None:
        pytest.skip("this Ray runs without token auth")
    assert ApiClient(Endpoint(info["url"], token)).status(finished) == engine.status(finished)
    assert request(info["url"], "GET", "/v1/executions", token="wrong")[0] == 401


# -- discovery ------------------------------------------------------------------------------------


def test_a_client_finds_the_api_through_the_discovery_file(server, monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("SOPFLOW_API", raising=False)
    monkeypatch.setenv("SOPFLOW_API_TOKEN", TOKEN)
    monkeypatch.setenv("HOME", str(tmp_path))  # the client looks in ~/.sopflow
    path = discovery_path(NAMESPACE, tmp_path / ".sopflow")
    path.parent.mkdir()
    path.write_bytes(server.api.discovery.read_bytes())
    assert find_endpoint(NAMESPACE) == Endpoint(server.url, TOKEN)
    assert ApiClient.discover(NAMESPACE) is not None
    monkeypatch.setenv("SOPFLOW_API", "off")
    assert find_endpoint(NAMESPACE) is None
    monkeypatch.setenv("SOPFLOW_API", "http://127.0.0.1:1")
    assert ApiClient.discover(NAMESPACE) is None  # nothing answers there: the CLI uses Ray


def test_a_discovery_file_of_a_dead_process_or_another_cluster_is_ignored(monkeypatch, tmp_path) -> None:
    from runtime._api_discovery import write_discovery

    monkeypatch.delenv("SOPFLOW_API", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    path = discovery_path("ns", tmp_path / ".sopflow")
    write_discovery(path, {"url": "http://127.0.0.1:9", "pid": 2**22 + 12345, "gcs_address": "10.0.0.1:6379"})
    assert find_endpoint("ns") is None  # no such process
    write_discovery(path, {"url": "http://127.0.0.1:9", "pid": os.getpid(), "gcs_address": "10.0.0.1:6379"})
    assert find_endpoint("ns") is not None
    assert find_endpoint("ns", "10.0.0.1:6379") is not None
    assert find_endpoint("ns", "127.0.0.1:6379") is not None  # loopback names this machine
    assert find_endpoint("ns", "10.0.0.2:6379") is None
    assert find_endpoint("ns", "10.0.0.1:6380") is None
    assert find_endpoint("ns", "ray://10.0.0.1:10001") is None
    path.write_text("{not json")
    assert find_endpoint("ns") is None
    assert discovery_path("../../etc", tmp_path).parent == tmp_path  # a namespace cannot leave the directory


# -- the wire format --------------------------------------------------------------------------------

_floats = st.floats(allow_nan=False, allow_infinity=False, width=64)
_text = st.text(max_size=20)
_json = st.recursive(st.none() | st.booleans() | st.integers(-2**53, 2**53) | _floats | _text,
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
                     max_leaves=8)
_steps = st.lists(st.builds(StepView, id=_text, status=st.sampled_from(StepStatus),
                            attempts=st.integers(0, 100), error=st.none() | _text,
                            classification=st.none() | _text, started_at=st.none() | _floats,
                            ended_at=st.none() | _floats), max_size=6, unique_by=lambda s: s.id)
_views = st.builds(lambda steps, **kw: ExecutionView(steps={s.id: s for s in steps}, **kw),
                   steps=_steps, id=_text, sop=_text, version=_text, mode=_text,
                   status=st.sampled_from(ExecutionStatus), progress=st.floats(0, 1),
                   submitted_at=_floats, ended_at=st.none() | _floats,
                   outputs=st.none() | st.dictionaries(_text, _json, max_size=4),
                   priority=st.integers(-100, 100), trace_id=st.none() | _text)


@given(_views)
def test_for_any_view_json_round_trip_gives_the_same_view_and_step_order(view: ExecutionView) -> None:
    again = view_from_dict(json.loads(json.dumps(view_to_dict(view))))
    assert again == view
    assert list(again.steps) == list(view.steps)


_ids = st.from_regex(r"exe-[0-9a-f]{12}-[0-9a-f]{8}", fullmatch=True)
_errors = st.one_of(
    st.builds(ExecutionNotFound, _ids),
    st.builds(ExecutionTimeout, _ids, st.floats(0, 1e6), st.sampled_from(STATUSES)),
    st.builds(ExecutionFailed, _ids, st.sampled_from(STATUSES), st.dictionaries(_text, _text, max_size=3)),
    st.builds(IdempotencyConflict, _text, _ids, st.lists(_text, max_size=3)),
    st.builds(ExecutionError, _text), st.builds(EngineUnavailable, _text), st.builds(StateStoreError, _text))


@given(_errors)
def test_for_any_sopflow_error_the_client_raises_the_same_class_and_message(error: Exception) -> None:
    from runtime._wire import error_from_dict, error_to_dict, http_status

    body = json.loads(json.dumps({"error": error_to_dict(error)}))
    again = error_from_dict(http_status(error), body)
    assert type(again) is type(error) and str(again) == str(error)
    assert 400 <= http_status(error) < 600


def test_ray_restarts_a_killed_api_actor_and_it_serves_again(engine, finished) -> None:
    import ray

    from actors._api import ray_auth_token

    api = engine._conn.actors.api
    ray.get(api.ready.remote(), timeout=60)
    pid = ray.get(api.__ray_call__.remote(lambda self: os.getpid()))
    ray.kill(api, no_restart=False)  # as if its process crashed
    after = wait_for(lambda: _ready_again(api, pid), timeout_s=120)
    assert after["error"] is None and urlsplit(after["url"]).hostname == "127.0.0.1"
    token = ray_auth_token()
    if token is not None:
        assert ApiClient(Endpoint(after["url"], token)).status(finished) == engine.status(finished)


def _ready_again(api: Any, old_pid: int) -> dict | None:
    """The restarted actor's ``info()`` (None while Ray restarts it). The shared discovery file is not
    read here: another test session's cluster may write the same one."""
    import ray

    try:
        info = ray.get(api.ready.remote(), timeout=10)
        pid = ray.get(api.__ray_call__.remote(lambda self: os.getpid()), timeout=10)
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        return None
    return info if pid != old_pid else None


# -- learned estimates (runtime/estimates.py) ------------------------------------------------------------


@pytest.mark.parametrize("query,says", [
    ("", "'sop' must be a non-empty string"), ("sop=", "'sop' must be a non-empty string"),
    ("sop=" + "x" * 1001, "at most 1000 characters"), ("sop=a&limit=1", "unknown query parameter(s) 'limit'"),
    ("sop=a&sop=b&x=%00", "unknown query parameter(s) 'x'")])
def test_the_estimates_endpoint_refuses_a_missing_oversized_or_unknown_parameter(server, query, says) -> None:
    status, _, answer = request(server.url, "GET", "/v1/estimates" + (f"?{query}" if query else ""))
    assert status == 400 and says in answer["error"]["message"] and "Traceback" not in json.dumps(answer)


def test_the_estimates_endpoint_treats_a_name_as_data_and_answers_what_runs_used(server, client, finished) -> None:
    for name in ("' OR 1=1 --", "../../etc/passwd", "hello-linear\n", "<script>"):
        status, _, answer = request(server.url, "GET", f"/v1/estimates?sop={quote(name)}")
        assert status == 200 and answer == {"sop": name, "completed": 0, "steps": {}}
    known = client.estimates("hello-linear")
    assert known["completed"] >= 1 and all(s["samples"] >= 1 for s in known["steps"].values())
    assert set(known["steps"]) == {"greet", "shout", "count"}
    assert all(s["cpu"] is not None and s["timeout_s"] >= 1 for s in known["steps"].values())
