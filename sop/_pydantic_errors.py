"""Turn pydantic's validation errors into :class:`Problem` s a person can act on."""

from __future__ import annotations

import re
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from sop._suggest import did_you_mean
from sop._yaml import Loaded, format_path
from sop.errors import Problem

_FRIENDLY_PATTERNS = {
    r"^[a-z0-9][a-z0-9_.\-]*$": "a name of lower-case letters, digits, '-', '_' and '.'",
    r"^[A-Za-z_][A-Za-z0-9_\-]*$": "an id of letters, digits, '_' and '-', not starting with a digit",
    r"^[A-Za-z_][A-Za-z0-9_]*$": "an identifier of letters, digits and '_'",
    r"^[A-Za-z0-9_.\-]+$": "a name of letters, digits, '-', '_' and '.'",
}

_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true/false",
               list: "a list", dict: "a mapping", type(None): "nothing (null)"}


def describe(value: Any) -> str:
    """``"a string ('x')"`` / ``"a list"``: what the user actually wrote."""
    kind = _TYPE_NAMES.get(type(value), type(value).__name__)
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        text = repr(value)
        return f"{kind} ({text[:40] + '...' if len(text) > 40 else text})"
    return kind


def translate(error: ValidationError, loaded: Loaded, root: type[BaseModel],
              prefix: tuple[str | int, ...] = ()) -> list[Problem]:
    problems = []
    errors = error.errors(include_url=False)
    # A list whose only item is invalid is also reported "too short"; the item's error says it all.
    inner = {tuple(e["loc"][:1]) for e in errors if len(e["loc"]) > 1}
    errors = [e for e in errors if not (e["type"] == "too_short" and tuple(e["loc"]) in inner)]
    for err in errors:
        loc = prefix + tuple(err["loc"])
        kind = err["type"]
        value = err.get("input")
        key = kind == "extra_forbidden"
        line, col = loaded.position(loc, key=key)
        message, suggestion, code = _message(err, loc, root, prefix)
        problems.append(Problem(message, path=format_path(loc), file=loaded.file, line=line,
                                column=col, code=code, suggestion=suggestion))
        del value
    return problems


def _message(err: dict[str, Any], loc: tuple, root: type[BaseModel],
             prefix: tuple) -> tuple[str, str | None, str]:
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    field = loc[-1] if loc else "document"
    if kind == "extra_forbidden":
        model = model_at(root, loc[len(prefix):-1])
        names = field_names(model) if model else []
        return (f"unknown field {field!r}", did_you_mean(field, names) or (
            f"allowed fields: {', '.join(names)}" if names else None), "unknown-field")
    if kind == "missing":
        return f"required field {field!r} is missing", None, "missing-field"
    if kind == "string_pattern_mismatch":
        want = _FRIENDLY_PATTERNS.get(ctx.get("pattern", ""), f"text matching {ctx.get('pattern')}")
        return f"expected {want}, got {value!r}", None, "bad-value"
    if kind in ("enum", "literal_error"):
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        return (f"expected one of {', '.join(choices)}; got {describe(value)}",
                did_you_mean(value, choices), "bad-value")
    if kind == "value_error":
        return str(ctx.get("error", err["msg"])), None, "invalid"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        want = err["msg"].replace("Input should be ", "expected ")
        return f"{want}, got {describe(value)}", None, "wrong-type"
    msg = err["msg"][0].lower() + err["msg"][1:]
    return f"{msg}, got {describe(value)}", None, "bad-value"


def field_names(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def model_at(root: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The model class that the document location ``loc`` is an instance of, if any."""
    current: Any = root
    pending_containers = 0
    for seg in loc:
        if pending_containers:
            pending_containers -= 1
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        fields = {f.alias or n: f for n, f in current.model_fields.items()}
        if seg not in fields:
            return None
        current, pending_containers = _unwrap(fields[seg].annotation)
    if pending_containers:
        return None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> tuple[Any, int]:
    """The model inside an annotation, and how many container levels (list/dict) wrap it."""
    depth = 0
    t = annotation
    for _ in range(6):
        origin = typing.get_origin(t)
        if origin is typing.Annotated:
            t = typing.get_args(t)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(t) if a is not type(None)]
            t = args[0] if args else t
        elif origin in (tuple, list, dict):
            args = typing.get_args(t)
            t = args[-1] if origin is dict else args[0]
            depth += 1
        else:
            break
    return t, depth
