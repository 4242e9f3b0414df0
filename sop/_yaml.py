"""Load YAML/JSON into plain Python values, remembering where every value came from.

The loader consumes the parser's *event* stream instead of PyYAML's composer or
constructor, for three reasons: every value gets a ``line:column`` keyed by its
document path (so validation can point at ``steps[2].depends_on[0]``), hostile
input is cut off early (nesting depth, alias expansion and size are budgeted as
events arrive, so an alias bomb or 10 MB of ``[[[[`` fail fast), and nothing but
plain data can be produced (no tags, no Python objects).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import yaml

from sop.errors import Problem

Path = tuple[str | int, ...]

MAX_BYTES = 8 * 1024 * 1024
"""Largest SOP file accepted; a 10,000-step SOP is about 1.5 MB."""
MAX_DEPTH = 64
"""Deepest nesting of mappings/sequences accepted; real SOPs stay under 10."""
MAX_VALUES = 2_000_000
"""Most values the document may expand to, counting each alias expansion."""

try:  # libyaml's parser is ~10x faster; the pure-Python one is the fallback.
    _Loader: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _Loader = yaml.SafeLoader

_STANDARD_TAGS = frozenset(
    "tag:yaml.org,2002:" + t
    for t in ("str", "int", "float", "bool", "null", "map", "seq", "timestamp", "binary")
)


@dataclass(slots=True)
class Loaded:
    """A parsed document: its data, where each path starts, and any problems."""

    data: Any
    file: str
    positions: dict[Path, tuple[int, int]] = field(default_factory=dict)
    key_positions: dict[Path, tuple[int, int]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def position(self, path: Path, *, key: bool = False) -> tuple[int | None, int | None]:
        """The 1-based (line, column) of ``path``, or of its nearest known ancestor."""
        table = self.key_positions if key else self.positions
        if key and path in table:
            return table[path]
        p = path
        while True:
            if p in self.positions:
                return self.positions[p]
            if not p:
                return None, None
            p = p[:-1]


class _Budget(Exception):
    def __init__(self, message: str, mark: Any, code: str) -> None:
        super().__init__(message)
        self.mark = mark
        self.code = code


def format_path(path: Path) -> str:
    """``('steps', 2, 'depends_on', 0)`` -> ``steps[2].depends_on[0]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def load_text(text: str | bytes, file: str = "<string>") -> Loaded:
    """Parse YAML (or JSON, which is YAML here) text into a :class:`Loaded`.

    Never raises for bad input: syntax errors and exceeded limits become
    problems on the result, with ``data`` set to ``None``.
    """
    size = len(text)
    if size > MAX_BYTES:
        return _fail(
            file,
            f"file is {size / 1024 / 1024:.1f} MiB; SOP files are limited to "
            f"{MAX_BYTES // 1024 // 1024} MiB",
            None,
            "too-large",
            "split the SOP into sub-SOPs (uses: sop:<file>)",
        )
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            return _fail(file, f"file is not UTF-8 text ({e.reason} at byte {e.start})", None, "encoding")
    builder = _Builder(file)
    try:
        builder.run(yaml.parse(text, Loader=_Loader))
    except _Budget as e:
        return _fail(file, str(e), e.mark, e.code)
    except yaml.MarkedYAMLError as e:
        if file.endswith(".json"):
            return _json_fallback(text, file, e)
        return _fail(file, f"YAML syntax error: {e.problem or e.context}", e.problem_mark, "yaml-syntax")
    except yaml.YAMLError as e:
        return _fail(file, f"YAML syntax error: {e}", None, "yaml-syntax")
    loaded = Loaded(builder.result, file, builder.positions, builder.key_positions, builder.problems)
    return loaded


def _json_fallback(text: str, file: str, yaml_error: yaml.MarkedYAMLError) -> Loaded:
    # A few valid JSON files are not YAML 1.1 (tabs in odd places); positions are lost then.
    try:
        return Loaded(json.loads(text), file)
    except json.JSONDecodeError as e:
        return _fail(file, f"JSON syntax error: {e.msg}", (e.lineno, e.colno), "json-syntax")


def _fail(file: str, message: str, mark: Any, code: str, suggestion: str | None = None) -> Loaded:
    line = col = None
    if isinstance(mark, tuple):
        line, col = mark
    elif mark is not None:
        line, col = mark.line + 1, mark.column + 1
    problem = Problem(message, file=file, line=line, column=col, code=code, suggestion=suggestion)
    return Loaded(None, file, problems=[problem])


class _Builder:
    """Builds plain values from parser events with depth, size and alias budgets."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.result: Any = None
        self.positions: dict[Path, tuple[int, int]] = {}
        self.key_positions: dict[Path, tuple[int, int]] = {}
        self.problems: list[Problem] = []
        self._resolver = yaml.resolver.Resolver()
        self._constructor = yaml.constructor.SafeConstructor()
        self._anchors: dict[str, tuple[Any, int]] = {}
        self._values = 0
        self._documents = 0

    def run(self, events: Any) -> None:
        # Each frame: [container, path, pending_key, pending_key_mark, anchor, start_count, merges]
        stack: list[list[Any]] = []
        for event in events:
            if isinstance(event, yaml.DocumentStartEvent):
                self._documents += 1
                if self._documents > 1:
                    raise _Budget("a file holds one SOP; found a second YAML document ('---')",
                                  event.start_mark, "multiple-documents")
                continue
            if isinstance(event, (yaml.StreamStartEvent, yaml.StreamEndEvent, yaml.DocumentEndEvent)):
                continue
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                if len(stack) >= MAX_DEPTH:
                    raise _Budget(f"nesting is deeper than {MAX_DEPTH} levels", event.start_mark, "too-deep")
                self._check_tag(event)
                path = self._child_path(stack)
                self._mark(path, event.start_mark)
                container: Any = {} if isinstance(event, yaml.MappingStartEvent) else []
                stack.append([container, path, _NO_KEY, None, event.anchor, self._values, []])
                self._count(event.start_mark)
                continue
            if isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                frame = stack.pop()
                value = frame[0]
                if frame[6]:
                    value = self._apply_merges(value, frame[6])
                if frame[4] is not None:
                    self._anchors[frame[4]] = (value, self._values - frame[5])
                self._attach(stack, value, event.start_mark)
                continue
            if isinstance(event, yaml.AliasEvent):
                if event.anchor not in self._anchors:
                    raise _Budget(f"alias *{event.anchor} names no anchor defined before it",
                                  event.start_mark, "yaml-syntax")
                value, size = self._anchors[event.anchor]
                self._count(event.start_mark, size)
                self._mark(self._child_path(stack), event.start_mark)
                self._attach(stack, value, event.start_mark)
                continue
            if isinstance(event, yaml.ScalarEvent):
                self._check_tag(event)
                value = self._scalar(event)
                self._count(event.start_mark)
                if event.anchor is not None:
                    self._anchors[event.anchor] = (value, 1)
                if not (stack and isinstance(stack[-1][0], dict) and stack[-1][2] is _NO_KEY):
                    self._mark(self._child_path(stack), event.start_mark)
                self._attach(stack, value, event.start_mark)

    def _count(self, mark: Any, n: int = 1) -> None:
        self._values += n
        if self._values > MAX_VALUES:
            raise _Budget(
                f"document expands to more than {MAX_VALUES:,} values (an alias/anchor bomb?)",
                mark,
                "too-large",
            )

    def _check_tag(self, event: Any) -> None:
        tag = event.tag
        if tag is None or tag == "!" or tag in _STANDARD_TAGS:
            return
        raise _Budget(f"YAML tag {tag!r} is not allowed in an SOP; write plain values",
                      event.start_mark, "yaml-tag")

    def _scalar(self, event: yaml.ScalarEvent) -> Any:
        if event.tag is None and not event.implicit[0]:
            return event.value  # quoted: always a string
        tag = event.tag if event.tag not in (None, "!") else self._resolver.resolve(
            yaml.ScalarNode, event.value, event.implicit
        )
        if tag == "tag:yaml.org,2002:str" or tag == "tag:yaml.org,2002:merge":
            return event.value
        if tag == "tag:yaml.org,2002:bool" and event.value.lower() not in ("true", "false"):
            return event.value  # YAML 1.2: yes/no/on/off are text (a step called `on` stays "on")
        node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)
        try:
            return self._constructor.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as e:
            raise _Budget(f"bad value {event.value!r}: {e.problem}", event.start_mark, "yaml-syntax") from e

    def _child_path(self, stack: list[list[Any]]) -> Path:
        if not stack:
            return ()
        frame = stack[-1]
        container = frame[0]
        if isinstance(container, list):
            return frame[1] + (len(container),)
        if frame[2] is _NO_KEY:
            return frame[1]  # this value is a key; keys are positioned in _attach
        return frame[1] + (frame[2],)

    def _mark(self, path: Path, mark: Any) -> None:
        self.positions.setdefault(path, (mark.line + 1, mark.column + 1))

    def _attach(self, stack: list[list[Any]], value: Any, mark: Any) -> None:
        if not stack:
            self.result = value
            return
        frame = stack[-1]
        container = frame[0]
        if isinstance(container, list):
            container.append(value)
            return
        if frame[2] is _NO_KEY:
            if isinstance(value, (dict, list)):
                raise _Budget("a mapping key must be a plain value, not a mapping or list",
                              mark, "yaml-syntax")
            frame[2] = value
            frame[3] = mark
            self.key_positions[frame[1] + (value,)] = (mark.line + 1, mark.column + 1)
            return
        key = frame[2]
        frame[2] = _NO_KEY
        if key == "<<" and isinstance(value, (dict, list)):
            frame[6].append(value)
            return
        if key in container:
            kline = frame[3].line + 1
            self.problems.append(Problem(
                f"key {key!r} appears twice in the same mapping",
                path=format_path(frame[1] + (key,)),
                file=self.file, line=kline, column=frame[3].column + 1,
                code="duplicate-key",
                suggestion="remove one of them (YAML would silently keep the last)",
            ))
        container[key] = value

    @staticmethod
    def _apply_merges(mapping: dict, merges: list[Any]) -> dict:
        merged: dict = {}
        for source in merges:
            for item in source if isinstance(source, list) else [source]:
                if isinstance(item, dict):
                    for k, v in item.items():
                        merged.setdefault(k, v)
        merged.update(mapping)
        return merged


class _NoKey:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<no key>"


_NO_KEY = _NoKey()
