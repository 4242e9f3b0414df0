"""Snapshots of execution state as versioned JSON, readable by later versions of sopflow.

A snapshot saves folding a long history from its first event: recovery loads
the latest one and folds only the events after it. Since the events are the
source of truth, a snapshot is only ever a shortcut, so reading one never
fails: a snapshot this version cannot read (written by an older sopflow as a
pickle, by a newer one, or damaged) is skipped and the state is folded from
the events instead.

The encoding is JSON with a format name and a schema version::

    {"format": "sopflow.snapshot", "version": 2, "state": {...}}

Fields a reader does not know are ignored and fields a writer did not know get
their defaults, so adding a field to :class:`ExecutionState` or
:class:`StepState` needs no new version. Renaming or changing the meaning of
one does: bump :data:`SNAPSHOT_VERSION` and add an upcaster to
:data:`_UPCASTERS` that turns the previous version's document into the new one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from typing import Any

from runtime.state import ExecutionState, StepState
from runtime.status import ExecutionStatus, StepStatus

log = logging.getLogger("sopflow.snapshots")

FORMAT = "sopflow.snapshot"
SNAPSHOT_VERSION = 2
"""The schema version this sopflow writes (and reads without upcasting)."""


def _v1_to_v2(doc: dict[str, Any]) -> dict[str, Any]:
    """Version 1 kept what recovery needs beyond the state (added steps, raised memory, retries
    due, children) in a separate ``aux`` part; version 2 folds it into the state."""
    aux = doc.get("aux") or {}
    state = dict(doc.get("state") or {})
    state.update(added=list(aux.get("added") or ()), memory_mb=dict(aux.get("memory_mb") or {}),
                 retry_due={k: list(v) for k, v in (aux.get("retry_due") or {}).items()},
                 children=dict(aux.get("children") or {}))
    return {"format": FORMAT, "version": 2, "state": state}


_UPCASTERS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _v1_to_v2}
"""Version N -> a function turning a version-N document into a version-(N+1) one."""


class SnapshotUnreadable(ValueError):
    """Raised when a snapshot cannot be read by this version (the caller folds from the events)."""


def encode_snapshot(state: ExecutionState) -> bytes | None:
    """``state`` as a versioned JSON document.

    Returns None when the state holds a value JSON cannot carry exactly (say, a step
    output that is not JSON data): no snapshot is better than one that reads back
    different, and recovery then folds the execution from its events.
    """
    doc = {"format": FORMAT, "version": SNAPSHOT_VERSION, "state": _state_to_data(state)}
    try:
        text = json.dumps(doc, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        log.debug("no snapshot of %s: %s", state.id, e)
        return None
    if json.loads(text) != doc:  # tuples, non-str keys: would read back different
        log.debug("no snapshot of %s: its data does not survive JSON unchanged", state.id)
        return None
    return text.encode()


def decode_snapshot(blob: bytes) -> ExecutionState:
    """The state saved by :func:`encode_snapshot`, upcast to this version.

    Raises:
        SnapshotUnreadable: the blob is not a snapshot this version can read (a pickle
            from sopflow <= 0.1, a newer version, damaged data); fold from the events.
    """
    try:
        doc = json.loads(blob)
    except (UnicodeDecodeError, ValueError) as e:
        raise SnapshotUnreadable(f"not a JSON snapshot ({e.__class__.__name__}); "
                                 "probably written by an older sopflow") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise SnapshotUnreadable("not a sopflow snapshot")
    version = doc.get("version")
    if not isinstance(version, int) or version < 1:
        raise SnapshotUnreadable(f"snapshot version {version!r} is not a positive integer")
    if version > SNAPSHOT_VERSION:
        raise SnapshotUnreadable(f"snapshot version {version} is newer than this sopflow's "
                                 f"{SNAPSHOT_VERSION}")
    while version < SNAPSHOT_VERSION:
        upcast = _UPCASTERS.get(version)
        if upcast is None:
            raise SnapshotUnreadable(f"no upcaster from snapshot version {version}")
        doc, version = upcast(doc), version + 1
    try:
        return _state_from_data(doc["state"])
    except (KeyError, TypeError, ValueError) as e:
        raise SnapshotUnreadable(f"damaged snapshot: {e!r}") from e


def read_snapshot(blob: bytes, execution_id: str) -> ExecutionState | None:
    """:func:`decode_snapshot`, or None (with a warning naming why) when it cannot be read."""
    try:
        return decode_snapshot(blob)
    except SnapshotUnreadable as e:
        log.warning("ignoring the snapshot of %s (%s): folding it from its events instead", execution_id, e)
        return None


def _state_to_data(state: ExecutionState) -> dict[str, Any]:
    data = {f.name: getattr(state, f.name) for f in dataclasses.fields(ExecutionState) if f.name != "steps"}
    data["status"] = state.status.value
    data["steps"] = {sid: {f.name: getattr(st, f.name) for f in dataclasses.fields(StepState)}
                     | {"status": st.status.value} for sid, st in state.steps.items()}
    return data


def _state_from_data(data: dict[str, Any]) -> ExecutionState:
    known = _known_fields(ExecutionState, data, skip={"steps"})
    known["status"] = ExecutionStatus(known.get("status", ExecutionStatus.QUEUED.value))
    if "rollback_steps" in known:
        known["rollback_steps"] = list(known["rollback_steps"])
    state = ExecutionState(**known)
    for sid, step in (data.get("steps") or {}).items():
        fields = _known_fields(StepState, step)
        fields["status"] = StepStatus(fields.get("status", StepStatus.PENDING.value))
        state.steps[sid] = StepState(**fields)
    return state


def _known_fields(cls: type, data: dict[str, Any], skip: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
    """The entries of ``data`` that are fields of ``cls`` (unknown ones are from a newer writer)."""
    names = {f.name for f in dataclasses.fields(cls)} - set(skip)
    return {k: v for k, v in data.items() if k in names}
