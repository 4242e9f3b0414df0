"""The HTTP API's endpoints: check the request, ask the coordinator or the monitor, answer JSON.

Every argument is checked here before any actor is called, and a bad one is refused
with HTTP 400 naming what was expected; the actors' own errors map to HTTP statuses
through :data:`runtime._wire.HTTP_STATUS`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from runtime._wire import DECISIONS, STATUSES, dumps, event_to_dict, view_to_dict
from actors._api_routes_base import BadRequest
from runtime.errors import ExecutionFailed, ExecutionNotFound, ExecutionTimeout
from runtime.ids import ExecutionId
from runtime.outputs import descriptors

MAX_LIMIT = 10_000
"""Most executions one ``GET /v1/executions`` returns."""
MAX_EVENTS_WAIT_S = 30.0
"""Longest ``wait`` of ``GET .../events`` (a long poll)."""
MAX_TEXT = 1_000
"""Longest ``sop`` filter, step id or reason accepted."""
MODES = ("system_design", "agent_centric")
"""Run modes a metrics query may filter by."""
ID_FORMAT = "exe-<12 hex>-<8 hex>, e.g. exe-018f3a2b4c5d-1a2b3c4d"

Call = Callable[..., Awaitable[Any]]
"""``await call(actor, method, *args)``: a method of the coordinator or the monitor."""


def ok(value: Any, status: int = 200) -> web.Response:
    return web.Response(text=dumps(value), status=status, content_type="application/json")


# -- arguments ---------------------------------------------------------------------------------------


def execution_id(request: web.Request) -> str:
    raw = request.match_info.get("id", "")
    try:
        return str(ExecutionId(raw))
    except ValueError:
        shown = repr(raw[:40]) + ("..." if len(raw) > 40 else "")
        raise BadRequest(f"{shown} is not an execution id: expected {ID_FORMAT}") from None


def number(request: web.Request, name: str, *, low: float = 0.0, high: float = math.inf,
           integer: bool = False) -> float | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise BadRequest(f"query parameter {name!r} must be {kind}, got {raw[:40]!r}") from None
    if not (low <= value <= high) or (isinstance(value, float) and not math.isfinite(value)):
        top = "" if high == math.inf else f" and <= {high:g}"
        raise BadRequest(f"query parameter {name!r} must be >= {low:g}{top}, got {raw[:40]!r}")
    return value


def text(value: Any, name: str, *, required: bool = False) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value) or len(value) > MAX_TEXT:
        raise BadRequest(f"{name!r} must be a {'non-empty ' if required else ''}string of at most "
                         f"{MAX_TEXT} characters")
    return value


async def body(request: web.Request, fields: tuple[str, ...]) -> dict[str, Any]:
    """The request's JSON object (an empty body is ``{}``), with only the given fields."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        where = f": {e.msg} at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
        raise BadRequest(f"the request body is not JSON{where}; send a JSON object "
                         f"(fields: {', '.join(fields) or 'none'})") from None
    if not isinstance(data, dict):
        raise BadRequest(f"the request body must be a JSON object (fields: {', '.join(fields) or 'none'}), "
                         f"got {type(data).__name__}")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise BadRequest(f"unknown field(s) {', '.join(map(repr, unknown))}; this endpoint takes: "
                         f"{', '.join(fields) or 'no fields'}")
    return data


def timeout_of(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not (0 <= value < math.inf):
        raise BadRequest(f"'timeout' must be a number of seconds >= 0 or null, got {json.dumps(value)[:40]}")
    return float(value)


# -- endpoints ---------------------------------------------------------------------------------------


class Routes:
    """The endpoints, over ``call`` (the actors) and the OpenAPI document."""

    def __init__(self, call: Call, openapi: dict[str, Any]) -> None:
        self.call = call
        self.openapi = openapi

    def add_to(self, app: web.Application) -> None:
        execution = "/v1/executions/{id}"
        app.router.add_get("/v1/health", self.health)
        app.router.add_get("/openapi.json", self.openapi_json)
        app.router.add_get("/v1/executions", self.list)
        app.router.add_get(execution, self.status)
        app.router.add_get(execution + "/events", self.events)
        app.router.add_get(execution + "/history", self.history)
        app.router.add_get(execution + "/result", self.result)
        app.router.add_post(execution + "/wait", self.wait)
        app.router.add_post(execution + "/cancel", self.cancel)
        app.router.add_post(execution + "/pause", self.pause)
        app.router.add_post(execution + "/resume", self.resume)
        app.router.add_post(execution + "/decide", self.decide)
        app.router.add_get("/v1/metrics", self.metrics)
        app.router.add_get("/v1/estimates", self.estimates)

    async def health(self, request: web.Request) -> web.Response:
        return ok({"ok": True, "service": "sopflow", "api": "v1"})

    async def openapi_json(self, request: web.Request) -> web.Response:
        return ok(self.openapi)

    async def list(self, request: web.Request) -> web.Response:
        status = request.query.get("status")
        if status is not None and status not in STATUSES:
            raise BadRequest(f"status must be one of {', '.join(STATUSES)}; got {status[:40]!r}")
        sop = text(request.query.get("sop"), "sop")
        since, until = number(request, "since"), number(request, "until")
        limit = number(request, "limit", low=1, high=MAX_LIMIT, integer=True) or 1000
        views = await self.call("monitor", "list", status, sop, since, int(limit), until)
        return ok({"executions": [view_to_dict(v) for v in views]})

    async def status(self, request: web.Request) -> web.Response:
        eid = execution_id(request)
        try:
            view = await self.call("monitor", "status", eid)
        except ExecutionNotFound:  # submitted a moment ago: the monitor may not have its events yet
            view = await self.call("coordinator", "status", eid)
        if not view.status.terminal:  # ETA and queue position: the coordinator knows them (runtime/forecast.py)
            view = dataclasses.replace(view, **(await self.call("coordinator", "forecast", eid)))
        return ok(view_to_dict(view))

    async def events(self, request: web.Request) -> web.Response:
        eid = execution_id(request)
        after = int(number(request, "after", integer=True) or 0)
        wait = number(request, "wait", high=MAX_EVENTS_WAIT_S) or 0.0
        events = await self.call("monitor", "events", eid, after, wait)
        return ok({"events": [event_to_dict(e) for e in events]})

    async def history(self, request: web.Request) -> web.Response:
        eid = execution_id(request)
        after = int(number(request, "after", integer=True) or 0)
        events = await self.call("coordinator", "history", eid, after)
        return ok({"events": [event_to_dict(e) for e in events]})

    async def _wait(self, eid: str, timeout: float | None) -> Any:
        view = await self.call("coordinator", "wait", eid, timeout)
        if not view.status.terminal:
            raise ExecutionTimeout(eid, timeout or 0.0, view.status.value)
        return view

    async def wait(self, request: web.Request) -> web.Response:
        eid = execution_id(request)
        timeout = timeout_of((await body(request, ("timeout",))).get("timeout"))
        return ok(view_to_dict(await self._wait(eid, timeout)))

    async def result(self, request: web.Request) -> web.Response:
        eid = execution_id(request)
        view = await self._wait(eid, number(request, "timeout"))
        if view.status.value != "completed":
            raise ExecutionFailed(eid, view.status.value, view.errors)
        outputs = dict(view.outputs or {})
        if next(descriptors(outputs), None) is not None:  # big values live as artifacts in the store
            outputs = await self.call("coordinator", "resolve", eid, outputs)
        return ok(outputs)

    async def cancel(self, request: web.Request) -> web.Response:
        eid = execution_id(request)
        data = await body(request, ("force", "by"))
        force = data.get("force", False)
        if not isinstance(force, bool):
            raise BadRequest(f"'force' must be true or false, got {json.dumps(force)[:40]}")
        return ok(view_to_dict(await self.call("coordinator", "cancel", eid, force, text(data.get("by"), "by"))))

    async def pause(self, request: web.Request) -> web.Response:
        eid = execution_id(request)
        by = text((await body(request, ("by",))).get("by"), "by")
        return ok(view_to_dict(await self.call("coordinator", "pause", eid, by)))

    async def resume(self, request: web.Request) -> web.Response:
        eid = execution_id(request)
        by = text((await body(request, ("by",))).get("by"), "by")
        return ok(view_to_dict(await self.call("coordinator", "resume", eid, by)))

    async def decide(self, request: web.Request) -> web.Response:
        eid = execution_id(request)
        data = await body(request, ("step", "decision", "reason", "output", "by"))
        step = text(data.get("step"), "step", required=True)
        decision = data.get("decision")
        if decision not in DECISIONS:
            raise BadRequest(f"'decision' must be one of {', '.join(DECISIONS)}; got {json.dumps(decision)[:40]}")
        reason = text(data.get("reason", ""), "reason") or ""
        view = await self.call("coordinator", "decide", eid, step, decision, reason, data.get("output"),
                               text(data.get("by"), "by"))
        return ok(view_to_dict(view))

    async def estimates(self, request: web.Request) -> web.Response:
        """What earlier runs of one SOP's steps took (``sopflow suggest``); data only, nothing is run."""
        unknown = sorted(set(request.query) - {"sop"})
        if unknown:
            raise BadRequest(f"unknown query parameter(s) {', '.join(repr(u[:40]) for u in unknown)}; "
                             "this endpoint takes: sop")
        sop = text(request.query.get("sop"), "sop", required=True)
        return ok(await self.call("coordinator", "estimates", sop))

    async def metrics(self, request: web.Request) -> web.Response:
        unknown = sorted(set(request.query) - {"window", "sop", "mode"})
        if unknown:
            raise BadRequest(f"unknown query parameter(s) {', '.join(repr(u[:40]) for u in unknown)}; "
                             "this endpoint takes: window (seconds), sop, mode")
        window = number(request, "window", low=0.001)
        sop = text(request.query.get("sop"), "sop")
        mode = request.query.get("mode")
        if mode is not None and mode not in MODES:
            raise BadRequest(f"mode must be one of {', '.join(MODES)}; got {mode[:40]!r}")
        return ok(await self.call("monitor", "metrics", window, sop, mode))
