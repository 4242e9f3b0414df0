"""Checking and coercing the inputs given to a submission against the SOP's ``inputs``."""

from __future__ import annotations

import json
from typing import Any

from runtime.errors import SubmissionError
from runtime.masking import secret_problems
from sop import Sop
from sop._suggest import did_you_mean

_PY_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,),
    "object": (dict,), "array": (list, tuple),
}


def coerce_cli_value(kind: str, text: str) -> Any:
    """Turn ``--input k=v`` text into the declared type."""
    if kind == "string":
        return text
    if kind == "boolean":
        lowered = text.strip().lower()
        if lowered in ("true", "yes", "1", "on"):
            return True
        if lowered in ("false", "no", "0", "off"):
            return False
        raise ValueError(f"expected true/false, got {text!r}")
    if kind == "integer":
        return int(text)
    if kind == "number":
        return float(text)
    return json.loads(text)


def resolve_inputs(sop: Sop, given: dict[str, Any], *, source: str = "<string>",
                   from_text: bool = False) -> dict[str, Any]:
    """Apply defaults, check required inputs and types; report every problem at once.

    Raises:
        SubmissionError: naming each missing, unknown or mistyped input and how to pass it.
    """
    problems = []
    out: dict[str, Any] = {}
    for name, value in given.items():
        spec = sop.inputs.get(name)
        if spec is None:
            hint = did_you_mean(name, sop.inputs) or (
                f"it takes {', '.join(sop.inputs)}" if sop.inputs else "it takes no inputs")
            problems.append(f"unknown input {name!r}; {hint}")
            continue
        if from_text and isinstance(value, str):
            try:
                value = coerce_cli_value(spec.type, value)
            except (ValueError, json.JSONDecodeError) as e:
                problems.append(f"input {name!r} must be {spec.type}: {e}")
                continue
        ok = isinstance(value, _PY_TYPES[spec.type]) and not (
            spec.type in ("integer", "number") and isinstance(value, bool))
        if not ok:
            problems.append(f"input {name!r} must be {spec.type}, got {type(value).__name__} {value!r}"
                            if not spec.secret else f"input {name!r} must be {spec.type}")
            continue
        out[name] = value
    for name, spec in sop.inputs.items():
        if name in out or name in given:
            continue
        if spec.default is not None:
            out[name] = spec.default
        elif spec.required:
            problems.append(f"input {name!r} is required ({spec.description or spec.type}); "
                            f"pass it with --input {name}=... or inputs={{'{name}': ...}}")
        else:
            out[name] = None
    problems.extend(secret_problems([k for k, spec in sop.inputs.items() if spec.secret], out))
    if problems:
        raise SubmissionError(f"cannot submit SOP {sop.sop} ({source}): " + "; ".join(problems))
    return out
