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
from runtime.errors import ExecutionError, ExecutionNotFound, ExecutionTimeout
from runtime.status import ExecutionStatus, ExecutionView, StepStatus, StepView
from tests.conftest import NAMESPACE
from tests.sop_builders import H, sop_text, wait_for

pytestmark = pytest.mark.ray

TOKEN = "test-token-" + os.urandom(16).hex()
UNKNOWN = "exe-000000000000-00000000"


class Server:
    """An ``_Api`` serving on its own event loop thread in this process."""

    def __init__(self, discovery_dir: Path, token: str | None = TOKEN) -> None:
        from actors._api import _Api

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-api", daemon=True)
        self.thread.start()
        self.api = self.run(self._create(_Api, discovery_dir, token))
        self.url = self.run(self.api.start())
        assert self.url is not None, self.api.error

    async def _create(self, cls: Any, discovery_dir: Path, token: str | None) -> Any:
        return cls(NAMESPACE, None, token=token, discovery_dir=str(discovery_dir))

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(120)

    def close(self) -> None:
        self.run(self.api.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def server(engine, tmp_path_factory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("api-discovery"))
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


def gated(engine, tmp_path: Path, name: str = "gated") -> tuple[str, Path]:
    """A running execution whose only step waits for the file ``gate``."""
    gate = tmp_path / "gate"
    eid = engine.submit(sop_text(f"""\
        steps:
          - id: hold
            uses: {H}:wait_for_file
            with: {{path: "{gate}", timeout_s: 60}}
        """, name=name))
    wait_for(lambda: engine.status(eid).steps["hold"].status == StepStatus.RUNNING)
    return eid, gate


ROUTES = [("GET", "/v1/executions"), ("GET", f"/v1/executions/{UNKNOWN}"),
          ("GET", f"/v1/executions/{UNKNOWN}/events"), ("GET", f"/v1/executions/{UNKNOWN}/history"),
          ("GET", f"/v1/executions/{UNKNOWN}/result"), ("POST", f"/v1/executions/{UNKNOWN}/wait"),
          ("POST", f"/v1/executions/{UNKNOWN}/cancel"), ("POST", f"/v1/executions/{UNKNOWN}/pause"),
          ("POST", f"/v1/executions/{UNKNOWN}/resume"), ("POST", f"/v1/executions/{UNKNOWN}/decide"),
          ("GET", "/openapi.json"), ("GET", "/v1/nowhere")]


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


def test_engine_config_refuses_a_bad_api_port() -> None:
    from runtime.config import EngineConfig

    for bad in (-1, 70000):
        with pytest.raises(ValueError, match="api_port must be 0 \\(any free port\\) to 65535"):
            EngineConfig(api_port=bad)
    with pytest.raises(ValueError, match="api_host must be a host name"):
        EngineConfig(api_host="127.0.0.1 evil")
