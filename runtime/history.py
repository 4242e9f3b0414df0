"""Export one execution's history from an event log as a portable JSON document, and import it back.

A history is ``{"format": "sopflow.history/1", "execution": {...}, "events": [...],
"artifacts": {sha256: json_text}}``. ``artifacts`` (optional) embeds the big outputs the
events refer to by descriptor (see :mod:`runtime.outputs`), as the exact JSON text whose
SHA-256 is its key, so the file is complete on its own; import checks each hash and stores
them back. Other blobs are never exported: the ``secrets`` blob must not leave the state
store and the ``request`` blob is a pickle, not portable.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any

from runtime.eventlog import EventLog, ExecutionRecord, StateStoreError
from runtime.events import EVENT_SCHEMA, Event, EventKind
from runtime.ids import ExecutionId
from runtime.outputs import blob_kind, descriptors
from runtime.status import ExecutionStatus
from sop.model import NAME_PATTERN, STEP_ID_PATTERN

FORMAT = "sopflow.history/1"
"""The ``format`` value of the documents this module writes and reads."""

_EVENT_FIELDS = ("execution_id", "seq", "kind", "ts", "step", "attempt", "data", "schema")
"""An event's fields in an export; ``schema`` (its payload schema) is absent in sopflow <= 0.3's: 1."""
_KINDS = {k.value for k in EventKind}


def export_history(log: EventLog, execution_id: str, *, artifacts: bool = True) -> dict[str, Any]:
    """One execution's record and events, as a document :func:`import_history` reads.

    Args:
        artifacts: Embed the artifacts (big outputs) the events refer to; without them the
            document is small but a replay or import elsewhere cannot read those outputs.

    Raises:
        StateStoreError: if the log has no execution ``execution_id``.
    """
    record = log.get(execution_id)
    if record is None:
        raise StateStoreError(f"no execution {execution_id!r} in the state store "
                              f"{log.path or '(memory)'}; `sopflow list` shows the known ones")
    events = [ev.to_dict() for ev in log.read(execution_id)]
    doc: dict[str, Any] = {"format": FORMAT, "execution": dataclasses.asdict(record), "events": events}
    if artifacts:
        embedded = {}
        for sha in sorted({sha for ev in events for sha in descriptors(ev.get("data"))}):
            data = log.get_blob(execution_id, blob_kind(sha))
            if data is not None:  # purged meanwhile: the descriptor stays, the value is gone
                embedded[sha] = data.decode()
        if embedded:
            doc["artifacts"] = embedded
    return doc


def artifacts_from_doc(doc: Any) -> dict[str, bytes]:
    """The artifacts embedded in an exported history, checked against their SHA-256.

    Raises:
        StateStoreError: ``artifacts`` is not an object of JSON texts keyed by their SHA-256.
    """
    raw = doc.get("artifacts", {}) if isinstance(doc, dict) else {}
    _check(isinstance(raw, dict), "artifacts", "an object {sha256: JSON text}", type(raw).__name__)
    out = {}
    for sha, text in raw.items():
        _check(isinstance(text, str), f"artifacts[{sha!r}]", "the artifact's JSON text", type(text).__name__)
        data = text.encode()
        _check(hashlib.sha256(data).hexdigest() == sha, f"artifacts[{sha!r}]",
               "text whose SHA-256 is its key (the artifact was edited or truncated)", f"{len(data)} bytes")
        out[sha] = data
    return out


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, list | tuple):
        return [_sorted(v) for v in value]
    return value


def dumps_history(doc: dict[str, Any]) -> str:
    """JSON text of a history: fields in a stable order, ``data`` keys sorted, so exports diff well.

    Raises:
        StateStoreError: naming the event whose data JSON cannot encode.
    """
    events = [{**{f: e.get(f) for f in _EVENT_FIELDS if f in e or f != "schema"},
               "data": _sorted(e.get("data") or {})} for e in doc.get("events", [])]
    out = {**doc, "events": events}
    try:
        return json.dumps(out, indent=1, allow_nan=False)
    except (TypeError, ValueError) as e:
        for i, ev in enumerate(events):
            try:
                json.dumps(ev, allow_nan=False)
            except (TypeError, ValueError):
                raise StateStoreError(f"events[{i}] (seq {ev['seq']}, {ev['kind']}) of execution "
                                      f"{ev['execution_id']} holds data JSON cannot encode ({e}); "
                                      "such a history cannot be exported") from e
        raise StateStoreError(f"the history cannot be encoded as JSON: {e}") from e


def _check(ok: bool, where: str, expected: str, got: Any) -> None:
    if not ok:
        raise StateStoreError(f"invalid history: {where}: expected {expected}, got {got!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _is_execution_id(v: Any) -> bool:
    try:
        ExecutionId(v)
    except ValueError:
        return False
    return True


def _is_step_id(v: Any) -> bool:
    return isinstance(v, str) and len(v) <= 128 and re.fullmatch(STEP_ID_PATTERN, v) is not None


_EXECUTION_ID = "an execution id (exe-<12 hex>-<8 hex>)"
_STATUSES = tuple(s.value for s in ExecutionStatus)
_MAX_KEY = 1024
_RECORD_FIELDS: dict[str, tuple[str, Any]] = {
    "id": (_EXECUTION_ID, _is_execution_id),
    "sop": ("an SOP name (lower-case letters, digits, '_', '.', '-')",
            lambda v: isinstance(v, str) and len(v) <= 128 and re.fullmatch(NAME_PATTERN, v) is not None),
    "status": (f"one of {', '.join(_STATUSES)}", lambda v: v in _STATUSES),
    "submitted_at": ("a number", _is_number),
    "version": ("an integer >= 0", lambda v: _is_int(v) and v >= 0),
    "ended_at": ("a number or null", lambda v: v is None or _is_number(v)),
    "terminal": ("true or false", lambda v: isinstance(v, bool)),
    "idempotency_key": (f"a string of at most {_MAX_KEY} characters or null",
                        lambda v: v is None or (isinstance(v, str) and len(v) <= _MAX_KEY)),
    "parent": (f"{_EXECUTION_ID} or null", lambda v: v is None or _is_execution_id(v)),
}
_REQUIRED = ("id", "sop", "status", "submitted_at", "version")


def _parse_record(doc: dict[str, Any]) -> ExecutionRecord:
    rec = doc.get("execution")
    _check(isinstance(rec, dict), "execution", "an object with id, sop, status, submitted_at, version", rec)
    for name in rec:
        _check(name in _RECORD_FIELDS, f"execution.{name}",
               f"no such field (known: {', '.join(_RECORD_FIELDS)})", name)
    for name in _REQUIRED:
        _check(name in rec, f"execution.{name}", "a value (the field is required)", None)
    for name, value in rec.items():
        expected, ok = _RECORD_FIELDS[name]
        _check(ok(value), f"execution.{name}", expected, value)
    return ExecutionRecord(**rec)


def _parse_events(doc: dict[str, Any], execution_id: str, id_from: str = "execution.id") -> list[Event]:
    raw = doc.get("events")
    _check(isinstance(raw, list), "events", "a list of events", raw)
    _check(_is_execution_id(execution_id), id_from, _EXECUTION_ID, execution_id)
    events = []
    for i, ev in enumerate(raw):
        at = f"events[{i}]"
        _check(isinstance(ev, dict), at, "an object", ev)
        unknown = set(ev) - set(_EVENT_FIELDS)
        _check(not unknown, f"{at}.{next(iter(unknown), '')}",
               f"no such field (known: {', '.join(_EVENT_FIELDS)})", sorted(unknown))
        for name in ("execution_id", "seq", "kind", "ts"):
            _check(name in ev, f"{at}.{name}", "a value (the field is required)", None)
        _check(ev["execution_id"] == execution_id, f"{at}.execution_id",
               f"{execution_id!r} (execution.id)", ev["execution_id"])
        _check(_is_int(ev["seq"]) and ev["seq"] == i + 1, f"{at}.seq",
               f"{i + 1} (seqs run from 1 without gaps, in order)", ev["seq"])
        _check(ev["kind"] in _KINDS, f"{at}.kind", f"an event kind ({', '.join(sorted(_KINDS))})", ev["kind"])
        _check(_is_number(ev["ts"]), f"{at}.ts", "a number (seconds since the epoch)", ev["ts"])
        _check(ev.get("step") is None or _is_step_id(ev["step"]), f"{at}.step",
               "a step id (a letter or '_', then letters, digits, '_', '-') or null", ev.get("step"))
        _check(ev.get("attempt") is None or (_is_int(ev["attempt"]) and ev["attempt"] >= 1), f"{at}.attempt",
               "an integer >= 1 or null", ev.get("attempt"))
        _check(isinstance(ev.get("data", {}), dict), f"{at}.data", "an object", ev.get("data"))
        _check(_is_int(ev.get("schema", 1)) and 1 <= ev.get("schema", 1) <= EVENT_SCHEMA, f"{at}.schema",
               f"an event schema from 1 to {EVENT_SCHEMA} (a newer one needs a newer sopflow)", ev.get("schema"))
        if ev["kind"] == EventKind.CHILD_SUBMITTED:
            _check(_is_execution_id((ev.get("data") or {}).get("child")), f"{at}.data.child", _EXECUTION_ID,
                   (ev.get("data") or {}).get("child"))
        events.append(Event.from_dict(ev))
    return events


def read_history_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON object in an exported history file (checked by :func:`import_history` or
    :func:`events_from_doc`).

    Raises:
        StateStoreError: the file is missing, is not JSON, or holds something else than an object.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise StateStoreError(f"history file {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise StateStoreError(f"{path} is not JSON: line {e.lineno} column {e.colno}: {e.msg}") from None
    if not isinstance(doc, dict):
        raise StateStoreError(f"{path} holds a JSON {type(doc).__name__}, expected an exported history object")
    return doc


def events_from_doc(doc: Any) -> list[Event]:
    """The checked events of an exported history (for replaying a file without importing it).

    Raises:
        StateStoreError: naming the field and what was expected.
    """
    _check(isinstance(doc, dict), "the document", "a JSON object", type(doc).__name__)
    _check(doc.get("format") == FORMAT, "format", repr(FORMAT), doc.get("format"))
    raw = doc.get("events")
    _check(isinstance(raw, list) and len(raw) > 0, "events", "a non-empty list of events", raw)
    first = raw[0] if isinstance(raw[0], dict) else {}
    execution_id = (doc.get("execution") or {}).get("id") if isinstance(doc.get("execution"), dict) else None
    if execution_id:
        return _parse_events(doc, execution_id)
    return _parse_events(doc, first.get("execution_id"), "events[0].execution_id")


def import_history(log: EventLog, doc: dict[str, Any], *, replace: bool = False,
                   require_finished: bool = False) -> str:
    """Store an exported history in ``log``; returns the execution id.

    Everything is checked before anything is written, so a bad document changes
    nothing. With ``require_finished`` (what sopflow's own import does) a history
    that had not finished is refused: the next recovery would resume it. With ``replace`` an existing execution of that id is deleted first
    (two transactions: a crash in between leaves it deleted, not half-imported).

    Raises:
        StateStoreError: naming the field and what was expected, or when the
            execution (or its idempotency key) already exists and ``replace`` is false.
    """
    _check(isinstance(doc, dict), "the document", "a JSON object", type(doc).__name__)
    _check(doc.get("format") == FORMAT, "format", repr(FORMAT), doc.get("format"))
    record = _parse_record(doc)
    events = _parse_events(doc, record.id)
    artifacts = artifacts_from_doc(doc)
    _check(record.version <= len(events), "execution.version",
           f"at most {len(events)} (the last event's seq)", record.version)
    if require_finished and (not record.terminal or events[-1].kind != EventKind.FINISHED):
        # A running history would be resumed here by the next recovery: a surprise, not an import.
        raise StateStoreError(f"execution {record.id} had not finished when it was exported (status "
                              f"{record.status}); export it again once it has finished")
    where = log.path or "(memory)"
    if not replace and (log.get(record.id) is not None or log.read(record.id, until_seq=1)):
        raise StateStoreError(f"execution {record.id} already exists in the state store {where}; "
                              "pass replace=True (--replace) to overwrite it")
    if record.idempotency_key is not None:
        owner = log.find_key(record.idempotency_key)
        if owner is not None and owner != record.id:
            raise StateStoreError(f"idempotency key {record.idempotency_key!r} of execution {record.id} is "
                                  f"already used by execution {owner} in {where}")
    if replace:
        log.delete(record.id)
    for sha, data in artifacts.items():  # before the events that refer to them
        log.put_blob(record.id, blob_kind(sha), data)
    log.append(events, [record])
    return record.id
