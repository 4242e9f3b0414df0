"""Lines a step writes to the audit log: readable text, and the worker's bounded buffer of them.

Kept free of the rest of the audit log so a worker imports only this.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from typing import Any

MAX_LINE_CHARS = 4000
"""Characters of one log line kept; a longer line is cut and says by how much."""
HEAD_LINES = 100
"""Lines of an attempt kept from its start (``context.logger`` and shell output together)."""
TAIL_LINES = 100
"""Lines of an attempt kept from its end; the lines between are dropped and counted."""
SHELL_LINES = 50
"""Last lines of each stream (stdout, stderr) of a shell step that go to the audit log."""
CAPTURE_LEVEL = logging.INFO
"""``context.logger`` lines at this level or above are kept, whatever the Python logger's level."""

# C0 controls but tab and newline, DEL, C1 controls, and lone surrogates (undecodable bytes of a
# path or a pipe decoded with surrogateescape): each would make a terminal or a UTF-8 store choke.
_UNREADABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def _escape(m: re.Match[str]) -> str:
    code = ord(m.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def readable(text: Any) -> str:
    """``text`` as a printable, UTF-8-encodable string: control characters and lone surrogates
    become ``\\xNN`` / ``\\uNNNN`` escapes, bytes are decoded with escapes for what is not UTF-8."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", "backslashreplace")
    elif not isinstance(text, str):
        text = str(text)
    if text.isprintable():  # the common case, checked in C: nothing to escape
        return text
    return _UNREADABLE.sub(_escape, text)


def clip(text: str, limit: int = MAX_LINE_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how many were cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


class LineBuffer:
    """The lines of one attempt, bounded: the first :data:`HEAD_LINES` and the last
    :data:`TAIL_LINES`; the ones between are counted and replaced by one warning line.

    Thread-safe (a handler may log from its own threads). Each line is
    ``[ts, level, source, text]``; ``source`` is ``handler``, ``stdout`` or ``stderr``.
    """

    def __init__(self, head: int = HEAD_LINES, tail: int = TAIL_LINES) -> None:
        self._head: list[list[Any]] = []
        self._tail: deque[list[Any]] = deque(maxlen=tail)
        self._head_max = head
        self.dropped = 0
        self._lock = threading.Lock()

    def add(self, level: int, text: Any, source: str = "handler", ts: float | None = None) -> None:
        line = [time.time() if ts is None else ts, int(level), source, clip(readable(text))]
        with self._lock:
            if len(self._head) < self._head_max:
                self._head.append(line)
                return
            if len(self._tail) == self._tail.maxlen:
                self.dropped += 1
            self._tail.append(line)

    def lines(self) -> list[list[Any]]:
        """The kept lines in order, with a line saying how many were dropped, if any were."""
        with self._lock:
            out = list(self._head)
            if self.dropped:
                ts = self._tail[0][0] if self._tail else out[-1][0]
                out.append([ts, logging.WARNING, "sopflow",
                            f"... {self.dropped} line(s) dropped: an attempt keeps its first "
                            f"{self._head_max} and last {self._tail.maxlen} lines"])
            return out + list(self._tail)

    def add_shell_output(self, output: Any) -> None:
        """The last :data:`SHELL_LINES` lines of a shell step's stdout (info) and stderr (warning)."""
        if not isinstance(output, dict):
            return
        for source, level in (("stdout", logging.INFO), ("stderr", logging.WARNING)):
            text = output.get(source)
            if not isinstance(text, str) or not text.strip():
                continue
            lines = text.rstrip("\n").split("\n")
            if len(lines) > SHELL_LINES or f"{source}_log" in output:
                where = output.get(f"{source}_log")
                self.add(logging.INFO, f"{source}: only its last {min(len(lines), SHELL_LINES)} lines are "
                         f"in this log; the step's output has more" + (f" (full text: {where})" if where else ""),
                         source)
            for line in lines[-SHELL_LINES:]:
                self.add(level, line, source)
