"""Step handlers the audit log tests run: they write through ``context.logger``."""

from __future__ import annotations

from typing import Any


def chatty(lines: int, context: Any) -> int:
    """Write ``lines`` info lines (a flood when it is large)."""
    for i in range(lines):
        context.logger.info("line %d of %d", i, lines)
    return lines


def log_weird(context: Any) -> str:
    """Write lines no terminal or UTF-8 store should get raw."""
    context.logger.info(b"raw bytes \xff\xfe end")
    context.logger.info("bell\x07 escape\x1b[31mred nul\x00 cr\r")
    context.logger.warning("lone surrogate \udcff from a path")
    context.logger.info("tab\tand\nnewline stay")
    return "ok"


def log_token(token: str, context: Any) -> str:
    """Write a secret through the logger, as an argument and inside the message."""
    context.logger.info("calling the API with token %s", token)
    context.logger.warning(f"retrying with {token}")
    return "done"


def warn_then_fail(context: Any) -> None:
    """Write a warning, then fail (transient: retried)."""
    from runtime.errors import RetryableError

    context.logger.warning("about to fail: 100% sure")
    raise RetryableError("bad input_value")
