"""Identifiers as value types."""

from __future__ import annotations

import os
import re
import time

_PATTERN = re.compile(r"exe-[0-9a-f]{12}-[0-9a-f]{8}")  # whole string: fullmatch (``$`` would allow "\n")


class ExecutionId(str):
    """``exe-<ms timestamp hex>-<random hex>``: unique, sortable by submission time.

    A ``str`` subclass so it travels through Ray, JSON and SQLite as plain text.
    """

    __slots__ = ()

    def __new__(cls, value: str) -> ExecutionId:
        if not isinstance(value, str) or not _PATTERN.fullmatch(value):
            raise ValueError(f"not an execution id: {value!r} (expected exe-<12 hex>-<8 hex>)")
        return super().__new__(cls, value)

    @classmethod
    def new(cls) -> ExecutionId:
        return cls(f"exe-{int(time.time() * 1000):012x}-{os.urandom(4).hex()}")

    @classmethod
    def from_str(cls, value: str) -> ExecutionId:
        return cls(value.strip())

    def __repr__(self) -> str:
        return f"ExecutionId({str(self)!r})"


def idempotency_key(execution_id: str, step: str, attempt: int) -> str:
    """The key every step attempt carries; a result with a key already seen is ignored."""
    return f"{execution_id}/{step}/{attempt}"
