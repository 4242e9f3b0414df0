"""A tool's answer as data: what an ``mcp:`` step outputs and an agent reads.

The rule (the same in both run modes): the structured content when the server sends it,
else the JSON text content parsed (a text that is not JSON stays text; several text
blocks give a list), else ``None``. The answer's size is its JSON text as received;
an answer over the pool's limit is refused. When the tool declares an output schema,
the structured content is checked against it with ``jsonschema`` (a dependency of the
``mcp`` package, so always present).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mcp import types

from agents.mcp.errors import McpOutputInvalid, McpResultTooLarge

DEFAULT_MAX_RESULT_BYTES = 10 * 2**20
"""The largest tool answer accepted (10 MiB): a step output that size already strains the event log."""


@dataclass(frozen=True)
class ToolResult:
    """One tool's answer.

    Attributes:
        data: Structured content, else JSON text content parsed, else the text (see the module docstring).
        text: The text content blocks joined by newlines.
        is_error: The tool reported an error (``isError``).
        size_bytes: The size of the answer's JSON text.
        duration_s: How long the call took, retries included.
    """

    data: Any
    text: str
    is_error: bool
    size_bytes: int
    duration_s: float


def size_of(raw: types.CallToolResult) -> int:
    """The bytes of ``raw``'s JSON text (what travelled, give or take the envelope)."""
    return len(raw.model_dump_json(by_alias=True, exclude_none=True).encode())


def to_result(raw: types.CallToolResult, *, duration_s: float, max_bytes: int = DEFAULT_MAX_RESULT_BYTES,
              size: int | None = None) -> ToolResult:
    """``raw`` as a :class:`ToolResult`.

    Raises:
        McpResultTooLarge: the answer is over ``max_bytes``.
    """
    size = size_of(raw) if size is None else size
    if size > max_bytes:
        raise McpResultTooLarge(f"the tool's answer is {size} bytes, over the limit of {max_bytes} bytes; "
                                "ask the tool for less (a narrower query, paging) or raise max_result_bytes")
    texts = [block.text for block in raw.content if isinstance(block, types.TextContent)]
    if raw.structured_content is not None:
        data: Any = raw.structured_content
    elif len(texts) == 1:
        data = _parsed(texts[0])
    elif texts:
        data = [_parsed(t) for t in texts]
    else:
        data = None
    return ToolResult(data, "\n".join(texts), bool(raw.is_error), size, duration_s)


def check_output(tool: str, schema: dict[str, Any] | None, raw: types.CallToolResult) -> None:
    """Check ``raw``'s structured content against the tool's declared output schema (if any).

    Raises:
        McpOutputInvalid: the tool declares a schema and its answer has no structured content
            or does not match it (the message names the first mismatch and where it is).
    """
    if schema is None or raw.is_error:
        return
    import jsonschema

    if raw.structured_content is None:
        raise McpOutputInvalid(f"tool {tool!r} declares an output schema but sent no structured content")
    try:
        validator = jsonschema.validators.validator_for(schema)
        validator.check_schema(schema)
    except jsonschema.SchemaError as e:
        raise McpOutputInvalid(f"tool {tool!r} declares an output schema that is not valid JSON Schema: "
                               f"{e.message}") from None
    error = jsonschema.exceptions.best_match(validator(schema).iter_errors(raw.structured_content))
    if error is not None:
        where = "/".join(map(str, error.absolute_path)) or "(the top level)"
        raise McpOutputInvalid(f"tool {tool!r} answered data that does not match its output schema at "
                               f"{where}: {error.message[:300]}")


def _parsed(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text
