"""What a step may return, and how big outputs are kept out of the event rows.

A step's output is data: JSON values only (a dict with string keys, a list or
tuple, a string, an int, a finite float, a bool or None; tuples become lists).
Anything else (a function, a socket, a generator, NaN) fails the attempt as a
permanent error *in the worker*, so nothing that cannot be exported or replayed
ever reaches the event log.

An output whose JSON text is larger than the inline cap
(``EngineConfig.max_inline_output_bytes``) is not put in the event: the worker
encodes it once, the coordinator stores that text once as an *artifact* (a blob
of the execution in the state store, keyed by its SHA-256) and the event holds a
small descriptor ``{"$artifact": <sha256>, "size": <bytes>, "preview": <text>}``.
Expressions of later steps, the SOP's ``outputs`` and ``Engine.result`` see the
real value; status views and raw events show the descriptor.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_INLINE_OUTPUT_BYTES = 256 * 1024
"""Outputs whose JSON text is larger than this are stored as artifacts (``EngineConfig`` default)."""
PREVIEW_CHARS = 200
MAX_DEPTH = 200
"""Nesting deeper than this is refused: JSON encoders (and replays) would hit recursion limits."""
ARTIFACT_KEY = "$artifact"
BLOB_PREFIX = "artifact:"
_SHA = re.compile(r"[0-9a-f]{64}")

_ALLOWED = ("a JSON value: a dict with str keys, a list (or tuple), a str, an int, a finite float, "
            "a bool or None")


class OutputNotData(TypeError):
    """Raised when a step's output holds something that is not JSON data.

    Attributes:
        path: Where in the output, e.g. ``output['conn']``.
        type_name: The offending value's type, e.g. ``socket.socket``.
    """

    def __init__(self, path: str, type_name: str, problem: str) -> None:
        super().__init__(f"{path} {problem}")
        self.path = path
        self.type_name = type_name


def type_name(value: Any) -> str:
    """``socket.socket``, ``function``, ``generator``: the type as a user would look it up."""
    cls = type(value)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def as_data(value: Any) -> Any:
    """``value`` as plain JSON data (tuples as lists, subclasses of str/int/float as the base type).

    Raises:
        OutputNotData: naming where in the value the first non-JSON part is and its type.
    """
    return _as_data(value, "output", 0, set())


def _as_data(value: Any, path: str, depth: int, open_: set[int]) -> Any:
    if value is None or value is True or value is False:
        return value
    if isinstance(value, str):
        return value if type(value) is str else str.__str__(value)
    if isinstance(value, int):
        return value if type(value) is int else int.__int__(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise OutputNotData(path, "float", f"is {value!r}, which JSON cannot represent "
                                "(return None or a string such as 'nan' instead)")
        return value if type(value) is float else float.__float__(value)
    if isinstance(value, dict | list | tuple):
        if depth >= MAX_DEPTH:
            raise OutputNotData(path, type_name(value), f"is nested more than {MAX_DEPTH} levels deep")
        if id(value) in open_:
            raise OutputNotData(path, type_name(value), "contains itself (a cycle), which JSON cannot represent")
        open_.add(id(value))
        try:
            if isinstance(value, dict):
                out = {}
                for k, v in value.items():
                    if not isinstance(k, str):
                        raise OutputNotData(f"{path} key {k!r}", type_name(k),
                                            f"is a {type_name(k)} key; JSON object keys are strings "
                                            "(use str(key))")
                    if k == ARTIFACT_KEY:
                        raise OutputNotData(f"{path}[{k!r}]", "str", f"uses the key {ARTIFACT_KEY!r}, "
                                            "which sopflow reserves for artifact references")
                    out[str.__str__(k)] = _as_data(v, f"{path}[{k!r}]", depth + 1, open_)
                return out
            return [_as_data(v, f"{path}[{i}]", depth + 1, open_) for i, v in enumerate(value)]
        finally:
            open_.discard(id(value))
    raise OutputNotData(path, type_name(value), f"is a {type_name(value)}, which is not JSON data")


def not_data_message(step: str, e: OutputNotData) -> str:
    """The one-line message a user sees when step ``step`` returned something that is not data."""
    return (f"step {step!r} returned an output that is not JSON data: {e}. A step's output must be "
            f"{_ALLOWED}; return the data itself (e.g. str(value), or a dict of the fields you need) and "
            "keep live objects (connections, files, generators, functions) inside the step")


def encode(value: Any) -> bytes:
    """The canonical JSON text of plain data (compact, UTF-8): what the cap measures and artifacts hold."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


@dataclass(frozen=True, slots=True)
class Spilled:
    """An output too big to keep inline: its JSON text, to be stored once as an artifact."""

    sha256: str
    data: bytes


def cap(value: Any, limit: int) -> tuple[Any, Spilled | None]:
    """``value`` itself when its JSON text fits in ``limit`` bytes, else (descriptor, the text).

    ``value`` must already be plain data (:func:`as_data`).
    """
    if value is None or isinstance(value, bool | int | float):
        return value, None
    data = encode(value)
    if len(data) <= limit:
        return value, None
    sha = hashlib.sha256(data).hexdigest()
    return descriptor(sha, data), Spilled(sha, data)


def mentions(data: bytes, texts: Iterable[str]) -> bool:
    """Whether JSON text ``data`` quotes any of ``texts`` (as JSON would escape them)."""
    return any(json.dumps(t, ensure_ascii=False)[1:-1].encode() in data for t in texts)


def respill(spilled: Spilled, transform: Callable[[Any], Any]) -> tuple[dict[str, Any], Spilled]:
    """The artifact of ``transform`` applied to a spilled value (e.g. secrets masked), and its descriptor."""
    data = encode(transform(json.loads(spilled.data)))
    sha = hashlib.sha256(data).hexdigest()
    return descriptor(sha, data), Spilled(sha, data)


def descriptor(sha: str, data: bytes) -> dict[str, Any]:
    """The small stand-in an event holds for an artifact."""
    # Readable and small: control characters dropped, so its JSON stays under ~1 KB even when escaped.
    text = data[:PREVIEW_CHARS * 8].decode(errors="ignore")
    preview = "".join(ch for ch in text if ch.isprintable())[:PREVIEW_CHARS]
    return {ARTIFACT_KEY: sha, "size": len(data), "preview": preview}


def is_descriptor(value: Any) -> bool:
    return (isinstance(value, dict) and isinstance(value.get(ARTIFACT_KEY), str)
            and _SHA.fullmatch(value[ARTIFACT_KEY]) is not None)


def descriptors(value: Any) -> Iterator[str]:
    """The SHA-256 of every artifact referenced anywhere in ``value``."""
    if is_descriptor(value):
        yield value[ARTIFACT_KEY]
    elif isinstance(value, dict):
        for v in value.values():
            yield from descriptors(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from descriptors(v)


def resolve(value: Any, load: Callable[[str], bytes | None], where: str = "output") -> Any:
    """``value`` with every artifact descriptor replaced by the value it stands for.

    Raises:
        LookupError: an artifact is missing from the store (purged, or a history imported without it).
    """
    if is_descriptor(value):
        sha = value[ARTIFACT_KEY]
        data = load(sha)
        if data is None:
            raise LookupError(f"{where} is stored as artifact {sha[:12]}… ({value.get('size')} bytes), which "
                              "is not in the state store (purged, or a history imported without its artifacts)")
        return json.loads(data)
    if isinstance(value, dict):
        return {k: resolve(v, load, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, load, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


class StepContextView(Mapping[str, Any]):
    """What ``steps.<id>`` is in an expression: the step's output is fetched from its artifact on use.

    Loading happens each time ``output`` is read (not kept), so an execution with big outputs costs
    the coordinator memory only while a step that uses them is being rendered.
    """

    __slots__ = ("_fields", "_load", "_step")

    def __init__(self, step: str, fields: dict[str, Any], load: Callable[[str], bytes | None]) -> None:
        self._step, self._fields, self._load = step, fields, load

    def __getitem__(self, key: str) -> Any:
        value = self._fields[key]
        if key == "output":
            try:
                return resolve(value, self._load, f"steps.{self._step}.output")
            except LookupError as e:  # not a LookupError: the sandbox would read it as "undefined"
                raise ValueError(str(e)) from None
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __repr__(self) -> str:  # stable: the inputs digest of a step given ``steps.<id>`` whole uses it
        return f"StepContextView({self._step!r}, {self._fields!r})"

    def __reduce__(self) -> tuple:  # rendered whole into a step's arguments: ship plain data
        return (dict, (dict(self.items()),))


def blob_kind(sha: str) -> str:
    """The blob kind under which an execution's artifact is stored."""
    return BLOB_PREFIX + sha


def settle_output(step: str, output: Any, error: Any, limit: int) -> tuple[Any, Any, Spilled | None]:
    """An attempt's (output, error, spilled) once its output is checked to be data and capped.

    A successful attempt whose output is not data fails, permanently (no retry makes a socket
    JSON); a failed attempt's partial output that is not data is dropped (its error says more).
    """
    from runtime.failure import ErrorInfo

    try:
        output = as_data(output)
    except OutputNotData as e:
        if error is None:
            error = ErrorInfo("OutputNotData", not_data_message(step, e), retryable=False, origin="output")
        return None, error, None
    output, spilled = cap(output, limit)
    return output, error, spilled


class Artifacts:
    """An execution's big outputs, stored once each as blobs of the state store (kind ``artifact:<sha256>``).

    Blobs belong to their execution, so ``purge`` and ``delete`` remove them with it. ``extra`` holds
    artifacts by SHA-256 that are not in the store (a replay of an exported history).
    """

    def __init__(self, log: Callable[[], Any], extra: Mapping[str, bytes] | None = None) -> None:
        self._log = log
        self.extra: dict[str, bytes] = dict(extra or {})

    def put(self, execution_id: str, spilled: Spilled) -> None:
        self._log().put_blob(execution_id, blob_kind(spilled.sha256), spilled.data)

    def get(self, execution_id: str, sha: str) -> bytes | None:
        data = self._log().get_blob(execution_id, blob_kind(sha))
        return data if data is not None else self.extra.get(sha)

    def adopt(self, from_id: str, to_id: str, value: Any) -> None:
        """Copy the artifacts ``value`` refers to from one execution to another (a sub-SOP's outputs
        becoming its parent step's output), so each execution's blobs stand on their own."""
        for sha in set(descriptors(value)):
            data = self.get(from_id, sha)
            if data is not None:
                self.put(to_id, Spilled(sha, data))

    def loader(self, execution_id: str) -> Callable[[str], bytes | None]:
        """``sha -> bytes`` for one execution (what :func:`resolve` takes)."""
        return lambda sha: self.get(execution_id, sha)

    def spill(self, execution_id: str, value: Any, limit: int) -> Any:
        """``value`` (plain data, e.g. a rendered SOP output) capped like a step's output: stored here
        when too big, with its descriptor returned in its place."""
        try:
            capped, spilled = cap(value, limit)
        except (TypeError, ValueError):  # not JSON data (a recorded event from before the check)
            return value
        if spilled is not None:
            self.put(execution_id, spilled)
        return capped
