"""A client of sopflow's HTTP API with the Engine's methods and return types, without Ray.

The CLI uses it when an API is discoverable (:mod:`runtime._api_discovery`): a command
then costs one HTTP round trip on loopback instead of a Ray driver connection.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from runtime._api_discovery import Endpoint, find_endpoint
from runtime._wire import ApiError, error_from_dict, event_from_dict, view_from_dict
from runtime.errors import EngineUnavailable, ExecutionNotFound
from runtime.events import Event
from runtime.ids import ExecutionId
from runtime._who import submitter
from runtime.status import ExecutionView

HEALTH_TIMEOUT_S = 1.0
"""How long a CLI waits for the API's health answer before it falls back to Ray."""
CALL_TIMEOUT_S = 60.0
"""How long a call that does not wait on purpose may take."""
EVENTS_POLL_S = 10.0
"""Longest wait for new events per request while following an execution."""


class ApiClient:
    """sopflow's HTTP API, with the methods of :class:`runtime.engine.Engine` the CLI uses.

    Every method returns what the Engine's method returns and raises the same sopflow
    errors (rebuilt from the API's JSON error); transport failures raise
    :class:`EngineUnavailable`.
    """

    def __init__(self, endpoint: Endpoint) -> None:
        parts = urlsplit(endpoint.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ApiError(0, f"the sopflow API address {endpoint.url!r} is not an http(s) URL; "
                              "set $SOPFLOW_API to e.g. http://127.0.0.1:8470")
        self.url = endpoint.url
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")
        self._headers = {"Accept": "application/json"}
        if endpoint.token:
            self._headers["Authorization"] = f"Bearer {endpoint.token}"
        self._conn: http.client.HTTPConnection | None = None

    @classmethod
    def discover(cls, namespace: str, address: str | None = None) -> ApiClient | None:
        """A client of the API serving ``namespace`` on the cluster at ``address``, if one answers."""
        endpoint = find_endpoint(namespace, address)
        if endpoint is None:
            return None
        try:
            client = cls(endpoint)
        except ApiError:
            return None
        return client if client.healthy() else None

    # -- transport -------------------------------------------------------------------------------

    def _request(self, method: str, path: str, query: dict[str, Any] | None = None,
                 body: Any = None, timeout: float | None = CALL_TIMEOUT_S) -> Any:
        query = {k: v for k, v in (query or {}).items() if v is not None}
        target = self._prefix + path + (f"?{urlencode(query)}" if query else "")
        data = json.dumps(body).encode() if body is not None else None
        headers = dict(self._headers, **({"Content-Type": "application/json"} if data is not None else {}))
        for attempt in (1, 2):  # a kept-alive connection the server closed meanwhile: one new try
            conn = self._connection(timeout)
            try:
                conn.request(method, target, body=data, headers=headers)
                response = conn.getresponse()
                raw = response.read()
                break
            except (ConnectionError, http.client.HTTPException, socket.timeout, OSError) as e:
                self.close()
                if attempt == 2 or isinstance(e, (socket.timeout, ConnectionRefusedError)):
                    raise EngineUnavailable(f"sopflow's API at {self.url} cannot be reached ({e}); is the "
                                            "cluster up? (`ray status`), or set SOPFLOW_API=off") from None
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            raise ApiError(response.status, f"sopflow's API at {self.url} answered HTTP {response.status} "
                                            "with something that is not JSON") from None
        if response.status == 401:
            raise ApiError(401, f"sopflow's API at {self.url} refused this client's token; give it the head "
                                "node's Ray token ($RAY_AUTH_TOKEN or $RAY_AUTH_TOKEN_PATH) or $SOPFLOW_API_TOKEN, "
                                "or set SOPFLOW_API=off to go through Ray")
        if response.status >= 400:
            raise error_from_dict(response.status, payload)
        return payload

    def _connection(self, timeout: float | None) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=timeout)
        self._conn.timeout = timeout
        if self._conn.sock is not None:
            self._conn.sock.settimeout(timeout)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def healthy(self) -> bool:
        """Whether the API answers its health check now (without a token)."""
        try:
            return bool((self._request("GET", "/v1/health", timeout=HEALTH_TIMEOUT_S) or {}).get("ok"))
        except Exception:  # noqa: BLE001 - any failure means: use Ray instead
            return False

    @staticmethod
    def _id(execution_id: str) -> str:
        """The id as a URL path segment; an id that cannot exist is not found, as the Engine says."""
        try:
            return quote(ExecutionId(str(execution_id)), safe="")
        except ValueError:
            raise ExecutionNotFound(str(execution_id)) from None

    def _execution(self, execution_id: str, action: str = "") -> str:
        return f"/v1/executions/{self._id(execution_id)}" + (f"/{action}" if action else "")

    # -- the Engine's methods --------------------------------------------------------------------

    def status(self, execution_id: str) -> ExecutionView:
        return view_from_dict(self._request("GET", self._execution(execution_id)))

    def list(self, status: str | None = None, sop: str | None = None, since: float | None = None,
             limit: int = 1000, *, until: float | None = None) -> list[ExecutionView]:
        found = self._request("GET", "/v1/executions",
                              {"status": status, "sop": sop, "since": since, "until": until, "limit": limit})
        return [view_from_dict(v) for v in found["executions"]]

    def history(self, execution_id: str, after_seq: int = 0) -> list[Event]:
        found = self._request("GET", self._execution(execution_id, "history"), {"after": after_seq})
        return [event_from_dict(e) for e in found["events"]]

    def events(self, execution_id: str, *, follow: bool = True, poll_s: float = 1.0) -> Iterator[Event]:
        """Yield the execution's events in order; with ``follow``, until it finishes."""
        seq = 0
        path = self._execution(execution_id, "events")
        wait = min(max(poll_s, 0.0), EVENTS_POLL_S) if follow else 0.0
        while True:
            found = self._request("GET", path, {"after": seq, "wait": wait}, timeout=CALL_TIMEOUT_S + wait)
            for d in found["events"]:
                event = event_from_dict(d)
                seq = event.seq
                yield event
                if event.kind.value == "execution_finished":
                    return
            if not follow:
                return

    def wait(self, execution_id: str, timeout: float | None = None) -> ExecutionView:
        """Block until the execution ends; raises ExecutionTimeout after ``timeout`` seconds."""
        path = self._execution(execution_id, "wait")
        return view_from_dict(self._request("POST", path, body={"timeout": timeout},
                                            timeout=None if timeout is None else timeout + CALL_TIMEOUT_S))

    def result(self, execution_id: str, timeout: float | None = None) -> dict[str, Any]:
        path = self._execution(execution_id, "result")
        return self._request("GET", path, {"timeout": timeout},
                             timeout=None if timeout is None else timeout + CALL_TIMEOUT_S)

    # ``by`` names the operator in the audit log; default: this process's user@host.

    def cancel(self, execution_id: str, force: bool = False, *, by: str | None = None) -> ExecutionView:
        return view_from_dict(self._request("POST", self._execution(execution_id, "cancel"),
                                            body={"force": force, "by": submitter(by)}))

    def pause(self, execution_id: str, *, by: str | None = None) -> ExecutionView:
        return view_from_dict(self._request("POST", self._execution(execution_id, "pause"),
                                            body={"by": submitter(by)}))

    def resume(self, execution_id: str, *, by: str | None = None) -> ExecutionView:
        return view_from_dict(self._request("POST", self._execution(execution_id, "resume"),
                                            body={"by": submitter(by)}))

    def decide(self, execution_id: str, step: str, decision: str, *, reason: str = "",
               output: Any = None, by: str | None = None) -> ExecutionView:
        body = {"step": step, "decision": decision, "reason": reason, "output": output, "by": submitter(by)}
        return view_from_dict(self._request("POST", self._execution(execution_id, "decide"), body=body))


    def estimates(self, sop: str) -> dict[str, Any]:
        """What earlier runs of the SOP named ``sop`` took, per step (see ``Engine.estimates``)."""
        return self._request("GET", "/v1/estimates", {"sop": sop})

    def metrics(self, window: str | float | None = "1h", *, sop: str | None = None,
                mode: str | None = None) -> dict[str, Any]:
        """Execution metrics over a time window (see ``Engine.metrics``)."""
        from runtime.metrics import parse_window

        return self._request("GET", "/v1/metrics", {"window": parse_window(window), "sop": sop, "mode": mode})

    # -- triggers, batches, resources ------------------------------------------------------------

    def emit(self, name: str, payload: Any = None, key: str | None = None) -> dict[str, Any]:
        """Emit the event ``name`` (see ``Engine.emit``); over HTTP the payload must be a JSON object or None."""
        return self._request("POST", f"/v1/events/{quote(str(name), safe='')}", {"key": key}, body=payload)

    def triggers(self) -> list[dict[str, Any]]:
        """Every deployed trigger (see ``Engine.triggers``)."""
        return self._request("GET", "/v1/triggers")["triggers"]

    def pause_trigger(self, name: str) -> dict[str, Any]:
        return self._request("POST", self._trigger(name, "pause"))

    def resume_trigger(self, name: str) -> dict[str, Any]:
        return self._request("POST", self._trigger(name, "resume"))

    def fire_trigger(self, name: str, payload: Any = None, key: str | None = None) -> dict[str, Any]:
        """Fire a trigger now, by hand (see ``Engine.fire_trigger``)."""
        return self._request("POST", self._trigger(name, "fire"), {"key": key}, body=payload)

    @staticmethod
    def _trigger(name: str, action: str) -> str:
        return f"/v1/triggers/{quote(str(name), safe='')}/{action}"  # <sop>/<name>: the '/' travels as %2F

    def batch_report(self, name: str) -> dict[str, Any]:
        """The report of the named batch (see ``Engine.batch_report``)."""
        return self._request("GET", f"/v1/batches/{quote(str(name), safe='')}/report")

    def resources(self) -> dict[str, Any]:
        """Per node: CPU, memory and GPU there are, leased and used (see ``Engine.resources``)."""
        return self._request("GET", "/v1/resources")
