"""Fingerprints of submissions, so a reused idempotency key with a different request is refused.

A key says "this is the same request as before". Sending it again with the same
request returns the first execution; sending it with another SOP, version, mode
or inputs is a client bug that silently returning the old execution would hide
(payment APIs refuse it the same way). The fingerprint kept in the
``execution_submitted`` event names the SOP and holds a short digest per input,
so the check also works after a restart. Secret inputs are listed by name only:
not even a digest of their values is logged (a short secret's digest could be
brute-forced); their values are compared while the first execution is in the
coordinator's memory.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fingerprint(sop: str, version: str, definition: Any, mode: str, inputs: Mapping[str, Any],
                secrets: tuple[str, ...] = (), *, with_secrets: bool = False) -> dict[str, Any]:
    """What identifies a request: SOP name, version, a digest of its definition, mode, inputs.

    Args:
        with_secrets: Also digest secret inputs' values (only for a fingerprint kept in memory).
    """
    fp: dict[str, Any] = {
        "sop": sop, "version": version, "definition": _digest(definition), "mode": mode,
        "inputs": {k: _digest(v) for k, v in inputs.items() if k not in secrets},
        "secret_inputs": sorted(k for k in inputs if k in secrets)}
    if with_secrets:
        fp["secret_values"] = {k: _digest(inputs[k]) for k in fp["secret_inputs"]}
    return fp


def differences(earlier: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """What differs between two fingerprints, in words that name things but quote no input value."""
    found: list[str] = []
    if earlier.get("sop") != now.get("sop"):
        found.append(f"SOP {earlier.get('sop')!r} -> {now.get('sop')!r}")
    if earlier.get("version") != now.get("version"):
        found.append(f"version {earlier.get('version')} -> {now.get('version')}")
    elif earlier.get("sop") == now.get("sop") and earlier.get("definition") != now.get("definition"):
        found.append("the SOP's definition changed (same version)")
    if earlier.get("mode") != now.get("mode"):
        found.append(f"mode {earlier.get('mode')} -> {now.get('mode')}")
    before, after = earlier.get("inputs", {}), now.get("inputs", {})
    names = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    secret_before, secret_after = set(earlier.get("secret_inputs", ())), set(now.get("secret_inputs", ()))
    names += sorted(secret_before ^ secret_after)
    values_before, values_after = earlier.get("secret_values"), now.get("secret_values")
    if values_before is not None and values_after is not None:  # both known: compare, never show
        names += sorted(k for k in secret_before & secret_after if values_before.get(k) != values_after.get(k))
    if names:
        found.append("inputs " + ", ".join(f"'{n}'" for n in sorted(set(names))) + " differ")
    return found
