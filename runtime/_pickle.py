"""Cheaper pickling for the dataclasses that cross process boundaries on every step.

A slots dataclass pickles field by field through ``__getstate__``/``__setstate__``
(and a frozen one sets each field through ``object.__setattr__``); events, step
tasks, outcomes and views cross to and from Ray workers and actors on every step,
so they pickle as their constructor and a tuple instead.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any, TypeVar

T = TypeVar("T")


def positional_pickle(cls: type[T]) -> type[T]:
    """Make instances of the dataclass ``cls`` pickle as ``cls(*fields)`` (every field must be an init field)."""
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    if any(not f.init for f in fields):
        raise TypeError(f"{cls.__name__}: every field must be an __init__ argument to pickle positionally")
    get = operator.attrgetter(*(f.name for f in fields))
    single = len(fields) == 1

    def __reduce__(self: Any) -> tuple[Any, tuple[Any, ...]]:
        values = get(self)
        return cls, ((values,) if single else values)

    cls.__reduce__ = __reduce__  # type: ignore[method-assign,assignment]
    return cls
