"""The OpenAPI 3 document of sopflow's HTTP API (served at ``GET /openapi.json``)."""

from __future__ import annotations

from typing import Any

from runtime._wire import DECISIONS, STATUSES
from runtime.events import EventKind
from runtime.status import StepStatus

_ID = {"name": "id", "in": "path", "required": True, "description": "An execution id.",
       "schema": {"type": "string", "pattern": "^exe-[0-9a-f]{12}-[0-9a-f]{8}$"}}
_NUMBER = {"type": "number", "minimum": 0}


_BY = {"type": "string", "description": "Who acts, for the audit log (the CLI sends user@host)."}

def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    """References to the shared error responses: every call may get 401 and 503."""
    return {str(c): {"$ref": f"#/components/responses/E{c}"} for c in sorted({401, 503, *codes})}


def _operation(summary: str, ok: dict[str, Any], *, params: tuple[dict[str, Any], ...] = (),
               body: dict[str, Any] | None = None, errors: tuple[int, ...] = (400, 404)) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "parameters": list(params),
                          "responses": {"200": ok, **_errors(*errors)}}
    if body is not None:
        op["requestBody"] = {"required": False, "content": {"application/json": {"schema": body}}}
    return op


def _query(name: str, schema: dict[str, Any], description: str, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": description, "schema": schema}


def _object(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        out["required"] = list(required)
    return out


_SCHEMAS = {
    "StepView": {"type": "object", "required": ["id", "status", "attempts"], "properties": {
        "id": {"type": "string"}, "status": {"type": "string", "enum": [s.value for s in StepStatus]},
        "attempts": {"type": "integer"}, "error": {"type": ["string", "null"]},
        "classification": {"type": ["string", "null"]}, "started_at": {"type": ["number", "null"]},
        "ended_at": {"type": ["number", "null"]}}},
    "ExecutionView": {"type": "object", "required": ["id", "sop", "status", "progress", "steps"], "properties": {
        "id": {"type": "string"}, "sop": {"type": "string"}, "version": {"type": "string"},
        "mode": {"type": "string"}, "status": {"type": "string", "enum": list(STATUSES)},
        "progress": {"type": "number", "minimum": 0, "maximum": 1},
        "steps": {"type": "array", "items": _ref("StepView"), "description": "In the SOP's order."},
        "submitted_at": {"type": "number", "description": "Seconds since the epoch."},
        "ended_at": {"type": ["number", "null"]}, "outputs": {"type": ["object", "null"]},
        "priority": {"type": "integer"}, "trace_id": {"type": ["string", "null"]},
        "alerts": {"type": "array", "items": {"type": "object"}, "description": "Alerts raised for it."},
        "schedule": {"type": ["object", "null"], "description": "A batch execution's schedule (batch, not_before "
                     "and deadline as epoch seconds, window {start, end, tz}); null: real-time."},
        "waiting": {"type": ["object", "null"], "description": "Why it waits to start and until when (epoch "
                    "seconds, or null when it waits for something else): {reason, until}."},
        "expected_duration_s": {"type": ["number", "null"], "description": "How long it is expected to run "
                                "(declared, else learned from earlier runs); null once finished."},
        "eta": {"type": ["number", "null"], "description": "When it is expected to end (epoch seconds), from its "
                "steps' history, not counting time still to wait for capacity; null once finished."},
        "queue_position": {"type": ["integer", "null"], "minimum": 1,
                           "description": "Place of its first attempt waiting for capacity (1: next)."},
        "agent": {"oneOf": [_ref("Agent"), {"type": "null"}],
                  "description": "Its agent (an Agent Centric Run); null for a System Design Run."}}},
    "Agent": {"type": "object", "description": "The agent following the SOP: what it last said, what it spent, "
                                               "what it decided.", "properties": {
        "session": {"type": "integer", "description": "1, or more after its host was lost and it resumed."},
        "agent": {"type": "string", "description": "<sop>/<execution>"}, "model": {"type": "string"},
        "host": {"type": "string", "description": "Where the session runs (a host actor, or local)."},
        "message": {"type": "string", "description": "Its last status message."},
        "progress": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
        "seen": {"type": ["number", "null"], "description": "When it was last heard from (epoch seconds)."},
        "decisions": {"type": "array", "items": _ref("Decision")},
        "model_calls": {"type": "integer"}, "tool_calls": {"type": "integer", "description": "MCP tool calls."},
        "tokens": {"type": "integer", "description": "Prompt and response tokens of its model calls."},
        "lost": {"type": "integer", "description": "Sessions lost (and started again)."},
        "summary": {"type": "string", "description": "Its own account of the run, once it finished."},
        "outputs": {"type": ["object", "null"], "description": "The outputs it reported."},
        "waiting": {"type": ["object", "null"], "description": "A tool call (not idempotent) that was in flight "
                    "when its session was lost, waiting for an operator's decision (POST .../decide with step "
                    "`call:<index>`): {call, reason, since}."}}},
    "Decision": {"type": "object", "required": ["decision", "rationale"], "properties": {
        "step": {"type": ["string", "null"]},
        "decision": {"type": "string", "description": "run, skip, halt, escalate or the agent's own word."},
        "rationale": {"type": "string"}, "at": {"type": "number"}}},
    "Event": {"type": "object", "required": ["execution_id", "seq", "kind", "ts"], "properties": {
        "execution_id": {"type": "string"}, "seq": {"type": "integer", "minimum": 1},
        "kind": {"type": "string", "enum": [k.value for k in EventKind]}, "ts": {"type": "number"},
        "step": {"type": ["string", "null"]}, "attempt": {"type": ["integer", "null"]},
        "data": {"type": "object"}}},
    "Events": _object({"events": {"type": "array", "items": _ref("Event")}}, ("events",)),
    "Error": _object({"error": {"type": "object", "required": ["type", "message"], "properties": {
        "type": {"type": "string", "description": "The sopflow error's class, e.g. ExecutionNotFound."},
        "message": {"type": "string"}}}}, ("error",)),
}


def openapi_document() -> dict[str, Any]:
    """The whole document; every path but ``/v1/health`` needs the bearer token."""
    view = _json(_ref("ExecutionView"), "The execution.")
    execution = "/v1/executions/{id}"
    after = _query("after", {"type": "integer", "minimum": 0}, "Only events with a larger seq.")
    paths = {
        "/v1/health": {"get": {"summary": "Whether the API is up (no token needed).", "security": [],
                               "responses": {"200": _json(_object({"ok": {"type": "boolean"},
                                                                   "service": {"type": "string"},
                                                                   "api": {"type": "string"}}), "Up.")}}},
        "/openapi.json": {"get": {"summary": "This document.", "responses": {
            "200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}, **_errors()}}},
        "/v1/executions": {"get": _operation(
            "Executions, newest first.",
            _json(_object({"executions": {"type": "array", "items": _ref("ExecutionView")}}), "Found."),
            params=(_query("status", {"type": "string", "enum": list(STATUSES)}, "Only with this status."),
                    _query("sop", {"type": "string", "maxLength": 1000}, "Only of this SOP."),
                    _query("since", _NUMBER, "Submitted at or after (seconds since the epoch)."),
                    _query("until", _NUMBER, "Submitted before (seconds since the epoch)."),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 10_000, "default": 1000},
                           "At most this many.")), errors=(400,))},
        execution: {"get": _operation("An execution's status, progress and steps.", view, params=(_ID,))},
        execution + "/events": {"get": _operation(
            "The execution's events after a seq (from the monitor); waits for new ones up to `wait` s.",
            _json(_ref("Events"), "Events in seq order (maybe none)."),
            params=(_ID, after, _query("wait", {"type": "number", "minimum": 0, "maximum": 30},
                                       "Long-poll up to this many seconds when there are none yet.")))},
        execution + "/history": {"get": _operation(
            "Every event of the execution from the durable log, in order.",
            _json(_ref("Events"), "Events in seq order."), params=(_ID, after))},
        execution + "/result": {"get": _operation(
            "The outputs of a completed execution (waits for it to end).",
            _json({"type": "object"}, "`outputs` and per-step `steps`."),
            params=(_ID, _query("timeout", _NUMBER, "Give up after this many seconds (408).")),
            errors=(400, 404, 408, 409))},
        execution + "/wait": {"post": _operation(
            "Wait for the execution to end; its final view, with outputs.", view, params=(_ID,),
            body=_object({"timeout": {"type": ["number", "null"], "minimum": 0}}), errors=(400, 404, 408, 413))},
        execution + "/cancel": {"post": _operation(
            "Start nothing new; with force, also kill running steps.", view, params=(_ID,),
            body=_object({"force": {"type": "boolean", "default": False}, "by": _BY}), errors=(400, 404, 409, 413))},
        execution + "/pause": {"post": _operation(
            "Running steps finish, nothing new starts.", view, params=(_ID,), body=_object({"by": _BY}),
            errors=(400, 404, 409, 413))},
        execution + "/resume": {"post": _operation(
            "Resume a paused execution.", view, params=(_ID,), body=_object({"by": _BY}),
            errors=(400, 404, 409, 413))},
        execution + "/decide": {"post": _operation(
            "Settle a step waiting for an operator (status needs_decision).", view, params=(_ID,),
            body=_object({"step": {"type": "string"}, "decision": {"type": "string", "enum": list(DECISIONS)},
                          "reason": {"type": "string"}, "output": {"description": "JSON output for succeed."},
                          "by": _BY},
                         ("step", "decision")), errors=(400, 404, 409, 413))},
        "/v1/metrics": {"get": _operation(
            "Execution metrics over a time window (counts, durations, errors by class, queue, resources).",
            _json({"type": "object"}, "The metrics report (see `Engine.metrics`)."),
            params=(_query("window", {"type": "number", "exclusiveMinimum": 0},
                           "Executions submitted in the last this-many seconds (plus unfinished ones); "
                           "absent: all time."),
                    _query("sop", {"type": "string", "maxLength": 1000}, "Only of this SOP."),
                    _query("mode", {"type": "string", "enum": ["system_design", "agent_centric"]},
                           "Only run in this mode.")), errors=(400,))},
        "/v1/estimates": {"get": _operation(
            "What earlier runs of an SOP's steps took: duration p50/p95 and trend, CPU and memory used, "
            "and the suggested cpu, memory_mb and timeout_s per step (see `sopflow suggest`).",
            _json({"type": "object"}, "`{sop, completed, steps: {step: {samples, p50_s, p95_s, ...}}}`."),
            params=(_query("sop", {"type": "string", "minLength": 1, "maxLength": 1000}, "The SOP's name.",
                           required=True),), errors=(400,))},
    }
    paths.update(_ops_paths())
    responses = {f"E{code}": _json(_ref("Error"), text) for code, text in {
        400: "A bad argument; the message names what was expected.", 401: "No token, or a wrong one.",
        404: "No such execution (or trigger, or batch).", 408: "Still running when the timeout passed.",
        409: "The execution's state forbids it, or it did not complete.",
        413: "The request body is larger than 1 MiB (or an event's payload than trigger_payload_max_bytes).",
        503: "sopflow's actors cannot be reached."}.items()}
    return {
        "openapi": "3.1.0",
        "info": {"title": "sopflow", "version": "1",
                 "description": "Follow and control SOP executions on a Ray cluster. Send Ray's auth token "
                                "(or the API's own, from its discovery file) as `Authorization: Bearer`."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {"schemas": _SCHEMAS, "responses": responses,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


_TRIGGER = {"name": "id", "in": "path", "required": True,
            "description": "A trigger: <sop>/<name> (the '/' as is or as %2F), or <name> when unique.",
            "schema": {"type": "string", "maxLength": 257}}
_KEY_DOC = "Deduplication key: the same key starts one execution per trigger, however often it is sent."
_KEYS = ({"name": "Idempotency-Key", "in": "header", "required": False, "description": _KEY_DOC,
          "schema": {"type": "string", "minLength": 1, "maxLength": 200}},
         _query("key", {"type": "string", "minLength": 1, "maxLength": 200}, _KEY_DOC + " (Or the header.)"))
_PAYLOAD = {"type": ["object", "null"], "description": "The event's payload (what `trigger.payload` reads); "
            "at most EngineConfig.trigger_payload_max_bytes of JSON. Empty body: no payload."}
_FIRE = _object({"trigger": {"type": "string"}, "key": {"type": "string"},
                 "execution": {"type": ["string", "null"], "description": "The execution started; null while "
                               "the fire waits for the trigger's max_concurrent."}})
_TRIGGER_VIEW = {"type": "object", "description": "A deployed trigger (see `sopflow triggers list`).", "properties": {
    "id": {"type": "string"}, "sop": {"type": "string"}, "name": {"type": "string"},
    "kind": {"type": "string", "enum": ["cron", "event"]}, "schedule": {"type": ["string", "null"]},
    "timezone": {"type": ["string", "null"]}, "event": {"type": ["string", "null"]},
    "paused": {"type": "boolean"}, "next_fire": {"type": ["number", "null"]}, "waiting": {"type": "integer"},
    "running": {"type": "integer"}, "fired": {"type": "integer"}, "last_execution": {"type": ["string", "null"]}}}


def _ops_paths() -> dict[str, Any]:
    """Events (the webhook surface of event triggers), triggers, batch reports and resources."""
    trigger = "/v1/triggers/{id}"
    emitted = _json(_object({"event": {"type": "string"}, "key": {"type": ["string", "null"]},
                             "fired": {"type": "array", "items": _FIRE},
                             "not_fired": {"type": "array", "items": _object({"trigger": {"type": "string"},
                                                                                "reason": {"type": "string"}})}}),
                    "The fires started (or waiting), and the triggers on the event that did not fire and why.")
    name = {"name": "name", "in": "path", "required": True, "description": "The event's name.",
            "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.:\\-]{1,128}$"}}
    batch = {"name": "name", "in": "path", "required": True, "description": "The batch's name.",
             "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.:\\-]+$"}}
    view = _json(_TRIGGER_VIEW, "The trigger.")
    return {
        "/v1/events/{name}": {"post": _operation(
            "Emit an event: every deployed, unpaused trigger on it whose filter passes starts an execution. "
            "The JSON body is the payload (data only).", emitted, params=(name, *_KEYS), body=_PAYLOAD,
            errors=(400, 413))},
        "/v1/triggers": {"get": _operation(
            "Every deployed trigger.", _json(_object({"triggers": {"type": "array", "items": _TRIGGER_VIEW}}),
                                             "Deployed triggers."), errors=(400,))},
        trigger + "/pause": {"post": _operation("Pause a trigger: it fires nothing until resumed.", view,
                                                params=(_TRIGGER,), body=_object({}))},
        trigger + "/resume": {"post": _operation("Resume a trigger (a cron one fires next at its next time).", view,
                                                 params=(_TRIGGER,), body=_object({}))},
        trigger + "/fire": {"post": _operation(
            "Fire a trigger now, by hand (an event trigger's filter is not applied); the JSON body is the payload.",
            _json(_FIRE, "The fire."), params=(_TRIGGER, *_KEYS), body=_PAYLOAD, errors=(400, 404, 413))},
        "/v1/batches/{name}/report": {"get": _operation(
            "The report of a named batch: counts, durations, failures, every execution's result "
            "(see `sopflow batch report`).", _json({"type": "object"}, "The report."), params=(batch,))},
        "/v1/resources": {"get": _operation(
            "Per node: CPU, memory (MiB) and GPU there are, leased and used by running steps; steps running "
            "and queued (see `sopflow resources`).", _json({"type": "object"}, "The resources view."),
            errors=(400,))},
    }
