"""The HTTP API's operations endpoints: emit events (the webhook surface of event triggers), operate
triggers, read a batch's report and the cluster's resources.

As in :mod:`actors._api_routes`, every argument is checked before an actor is called; names
follow the SOP model's own rules, so a name with a path escape, a control character or a huge
length is refused with HTTP 400 and never reaches the trigger actor or the store.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from actors._api_routes import body, ok
from actors._api_routes_base import BadRequest
from runtime.batch import check_batch_name
from runtime.triggers import EVENT_NAME
from sop.model import NAME_PATTERN

Call = Callable[..., Awaitable[Any]]
"""``await call(actor, method, *args)``: a method of the coordinator or the trigger actor."""

_NAME = NAME_PATTERN.strip("^$")
TRIGGER_ID = re.compile(rf"(?:{_NAME}/)?{_NAME}")
"""``<sop>/<name>`` or ``<name>``: SOP and trigger names are lower-case letters, digits, '-', '_', '.'."""
MAX_KEY = 200
"""Longest dedup key (it becomes part of an idempotency key)."""
KEY_HEADER = "Idempotency-Key"


def _shown(raw: str) -> str:
    return repr(raw[:40]) + ("..." if len(raw) > 40 else "")


def event_name(request: web.Request) -> str:
    raw = request.match_info.get("name", "")
    if not EVENT_NAME.fullmatch(raw):
        raise BadRequest(f"the event name must be 1 to 128 letters, digits, '_', '.', ':' or '-' (as a trigger's "
                         f"'event:' in an SOP), got {_shown(raw)}")
    return raw


def trigger_id(request: web.Request) -> str:
    raw = request.match_info.get("id", "")
    if len(raw) > 257 or not TRIGGER_ID.fullmatch(raw):
        raise BadRequest(f"{_shown(raw)} is not a trigger: expected <sop>/<name> or <name>, "
                         "of lower-case letters, digits, '-', '_' and '.'; GET /v1/triggers lists them")
    return raw


def dedup_key(request: web.Request) -> str | None:
    """The ``Idempotency-Key`` header or the ``key`` query parameter (both: they must agree)."""
    unknown = sorted(set(request.query) - {"key"})
    if unknown:
        raise BadRequest(f"unknown query parameter(s) {', '.join(_shown(u) for u in unknown)}; "
                         f"this endpoint takes: key (or the {KEY_HEADER} header)")
    header, query = request.headers.get(KEY_HEADER), request.query.get("key")
    if header is not None and query is not None and header != query:
        raise BadRequest(f"the {KEY_HEADER} header and the 'key' query parameter differ; send one of them")
    key = header if header is not None else query
    if key is not None and (not key or len(key) > MAX_KEY or not key.isprintable()):
        raise BadRequest(f"'key' must be printable text of 1 to {MAX_KEY} characters ({KEY_HEADER} or ?key=)")
    return key


async def payload(request: web.Request) -> dict[str, Any] | None:
    """The request's JSON object (the event's payload); an empty body or ``null`` is no payload."""
    raw = await request.read()
    if not raw.strip():
        return None
    try:
        data = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as e:
        where = f": {e.msg} at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
        raise BadRequest(f"the request body is not JSON{where}; send the event's payload as a JSON object") from None
    if data is not None and not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object (the event's payload) or null, got "
                         f"{type(data).__name__}")
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def no_query(request: web.Request) -> None:
    if request.query:
        raise BadRequest(f"unknown query parameter(s) {', '.join(_shown(u) for u in sorted(request.query))}; "
                         "this endpoint takes none")


class OpsRoutes:
    """Events, triggers, batches and resources, over ``call`` (the actors).

    Args:
        call: Calls an actor, sent again while it restarts (for calls safe to repeat).
        call_once: Calls an actor once: an emit or fire without a key is not safe to repeat.
    """

    def __init__(self, call: Call, call_once: Call) -> None:
        self.call = call
        self.call_once = call_once

    def add_to(self, app: web.Application) -> None:
        app.router.add_post("/v1/events/{name}", self.emit)
        app.router.add_get("/v1/triggers", self.triggers)
        trigger = "/v1/triggers/{id:[^{}]+}"  # <sop>/<name> with its '/' as is or as %2F; checked by trigger_id
        app.router.add_post(trigger + "/pause", self.pause)
        app.router.add_post(trigger + "/resume", self.resume)
        app.router.add_post(trigger + "/fire", self.fire)
        app.router.add_get("/v1/batches/{name}/report", self.batch_report)
        app.router.add_get("/v1/resources", self.resources)

    async def emit(self, request: web.Request) -> web.Response:
        name, key = event_name(request), dedup_key(request)
        data = await payload(request)
        call = self.call if key is not None else self.call_once  # with a key, a repeat starts nothing new
        return ok(await call("triggers", "emit", name, data, key))

    async def triggers(self, request: web.Request) -> web.Response:
        no_query(request)
        return ok({"triggers": await self.call("triggers", "list")})

    async def pause(self, request: web.Request) -> web.Response:
        tid = trigger_id(request)
        no_query(request)
        await body(request, ())
        return ok(await self.call("triggers", "pause", tid))

    async def resume(self, request: web.Request) -> web.Response:
        tid = trigger_id(request)
        no_query(request)
        await body(request, ())
        return ok(await self.call("triggers", "resume", tid))

    async def fire(self, request: web.Request) -> web.Response:
        tid, key = trigger_id(request), dedup_key(request)
        data = await payload(request)
        call = self.call if key is not None else self.call_once
        return ok(await call("triggers", "fire", tid, data, key))

    async def batch_report(self, request: web.Request) -> web.Response:
        name = check_batch_name(request.match_info.get("name", ""))  # ScheduleError: 400 naming the rule
        no_query(request)
        return ok(await self.call("coordinator", "batch_report", name))

    async def resources(self, request: web.Request) -> web.Response:
        no_query(request)
        return ok(await self.call("coordinator", "resources"))
