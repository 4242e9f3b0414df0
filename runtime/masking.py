"""Keeping secret input values out of events, logs and files others can read.

The rules:

- A secret input's value (its text, ``str(value)``) must be at least
  :data:`MIN_SECRET_LENGTH` characters long; a shorter one is refused at submit.
  A short secret cannot be masked safely: a value like ``"1"`` also occurs
  inside unrelated data (``build 1.2.1``), and masking it there would both
  corrupt that data and show where the secret's characters are.
- Masking replaces every whole occurrence of a secret value in text with
  ``***``, in event data (step outputs, errors, everything) and in lines a
  handler writes through ``context.logger``. Text that contains a secret is
  itself secret, so it is masked where it contains it. Data without a secret
  is never changed.
- ``print`` and anything else a handler writes to stdout/stderr goes to the
  Ray worker's log *unmasked*: write through ``context.logger``.
- Files that hold secrets (the state store and its ``-wal``/``-shm``
  companions) are made private (mode 0600) when sopflow opens them.
"""

from __future__ import annotations

import logging
import os
import traceback
from collections.abc import Iterable, Mapping
from typing import Any

MIN_SECRET_LENGTH = 8
"""The fewest characters a secret input's value may have (see the module docstring for why)."""

MASK = "***"


def secret_problems(secret_names: Iterable[str], inputs: Mapping[str, Any]) -> list[str]:
    """Why the secret inputs among ``inputs`` cannot be accepted (empty when they can)."""
    problems = []
    for name in secret_names:
        value = inputs.get(name)
        if value is None or value == "":
            continue  # nothing to hide
        if len(str(value)) < MIN_SECRET_LENGTH:
            problems.append(f"secret input {name!r} must be at least {MIN_SECRET_LENGTH} characters long "
                            f"(got {len(str(value))}): a shorter value cannot be masked without also "
                            "masking unrelated data; use a longer secret")
    return problems


def secret_values(secret_names: Iterable[str], inputs: Mapping[str, Any]) -> tuple[str, ...]:
    """The texts to mask, longest first (so a secret inside another is not masked halfway)."""
    values = {str(inputs[k]) for k in secret_names if inputs.get(k) not in (None, "")}
    return tuple(sorted(values, key=lambda v: (-len(v), v)))


def mask(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with every whole occurrence of a secret replaced by ``***``."""
    for s in secrets:
        if len(s) <= len(MASK):  # only from old or replayed logs (a replay's secrets are "***" already)
            text = text.replace(s, MASK) if s != MASK else text
            continue
        while s in text:  # until none is left: the stars and their neighbours could spell it again
            text = text.replace(s, MASK)  # ends: each pass shortens the text (len(s) > len(MASK))
    return text


def redact(value: Any, secrets: tuple[str, ...]) -> Any:
    """``value`` (any JSON-like data) with secrets masked in every string, keys included."""
    if not secrets:
        return value
    if isinstance(value, str):
        return mask(value, secrets)
    if isinstance(value, dict):
        return {(mask(k, secrets) if isinstance(k, str) else k): redact(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v, secrets) for v in value]
    return value


class MaskingLoggerAdapter(logging.LoggerAdapter):
    """A step's ``context.logger``: every line (message, arguments, traceback) is masked.

    The message is formatted here, masked, and handed on without arguments, so a
    secret given as an argument (``logger.info("token %s", token)``) is masked too.
    With a ``sink``, every masked line at ``capture_level`` or above is also given to
    it as ``sink(level, text)`` (the audit log's buffer), whatever the logger's own level.
    """

    def __init__(self, logger: logging.Logger, extra: Mapping[str, object], secrets: tuple[str, ...],
                 sink: Any = None, capture_level: int = logging.INFO) -> None:
        super().__init__(logger, extra)
        self._secrets = secrets
        self._sink = sink
        self._capture_level = capture_level

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        capture = self._sink is not None and level >= self._capture_level
        enabled = self.isEnabledFor(level)
        if not enabled and not capture:
            return
        if not self._secrets and not capture:
            super().log(level, msg, *args, **kwargs)
            return
        if isinstance(msg, (bytes, bytearray)):  # readable, and maskable as text
            msg = bytes(msg).decode("utf-8", "backslashreplace")
        try:
            text = str(msg) % args if args else str(msg)
        except (TypeError, ValueError):
            text = " ".join(map(str, (msg, *args)))
        exc_info = kwargs.pop("exc_info", None)
        if exc_info:
            if exc_info is True or isinstance(exc_info, BaseException):
                import sys

                exc_info = sys.exc_info() if exc_info is True else (type(exc_info), exc_info,
                                                                    exc_info.__traceback__)
            if isinstance(exc_info, tuple) and exc_info[0] is not None:
                text += "\n" + "".join(traceback.format_exception(*exc_info)).rstrip()
        if kwargs.pop("stack_info", False):
            text += "\nStack (most recent call last):\n" + "".join(traceback.format_stack()).rstrip()
        text = mask(text, self._secrets) if self._secrets else text
        if capture:
            try:
                self._sink(level, text)
            except Exception:  # noqa: BLE001 - keeping a line must never fail the step
                pass
        if enabled:
            super().log(level, text, **kwargs)


def make_private(path: str) -> None:
    """Make a file that may hold secrets readable by its owner only (mode 0600), with its
    SQLite companions (``-wal``, ``-shm``, ``-journal``) when they exist.

    Raises:
        OSError: the mode cannot be changed (e.g. another user owns the file).
    """
    for p in (path, f"{path}-wal", f"{path}-shm", f"{path}-journal"):
        try:
            os.chmod(p, 0o600)
        except FileNotFoundError:
            if p == path:
                raise
