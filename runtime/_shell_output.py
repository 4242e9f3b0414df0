"""A shell step's stdout and stderr: streamed to files, the output keeps their tails."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any

SHELL_TAIL_BYTES = 64 * 1024
"""How much of the end of a shell step's stdout and of its stderr the output keeps."""


class ShellCapture:
    """Where a shell step's stdout and stderr go: files, so 100 MB of output is never held in memory.

    The step's output keeps the last :data:`SHELL_TAIL_BYTES` of each stream; when a stream was
    longer, its full text stays in a file (mode 0600) on the node that ran the step, named in the
    output as ``stdout_log``/``stderr_log`` with its size in ``stdout_bytes``/``stderr_bytes``.
    Files of streams that fit are removed. sopflow does not delete the kept files: they live under
    the system's temporary directory (``sopflow-step-logs/<execution>/``).
    """

    STREAMS = ("stdout", "stderr")

    def __init__(self, execution_id: str, step: str, attempt: int, tail: int = SHELL_TAIL_BYTES) -> None:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{step}.{attempt}")
        self.dir = Path(tempfile.gettempdir()) / "sopflow-step-logs" / re.sub(r"[^A-Za-z0-9_.-]", "_",
                                                                             execution_id)
        self.paths = {name: self.dir / f"{safe}.{name}" for name in self.STREAMS}
        self.tail = tail
        self.files: dict[str, Any] = {}
        self._keep: set[str] = set()

    def __enter__(self) -> ShellCapture:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for name, path in self.paths.items():
            fd = os.open(path, os.O_CREAT | os.O_TRUNC | os.O_RDWR, 0o600)  # output may hold secrets
            self.files[name] = os.fdopen(fd, "w+b")
        return self

    @property
    def stdout(self) -> Any:
        return self.files["stdout"]

    @property
    def stderr(self) -> Any:
        return self.files["stderr"]

    def output(self, exit_code: int) -> dict[str, Any]:
        """``{"stdout", "stderr", "exit_code"}`` (tails), plus ``<stream>_log``/``_bytes`` for long streams."""
        out: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for name, f in self.files.items():
            f.flush()
            size = f.seek(0, 2)
            f.seek(max(0, size - self.tail))
            data = f.read()
            if size > self.tail:
                data = data.lstrip(bytes(range(0x80, 0xC0)))  # do not start inside a UTF-8 character
                self._keep.add(name)
                extra[f"{name}_log"], extra[f"{name}_bytes"] = str(self.paths[name]), size
            out[name] = data.decode(errors="replace")
        return {**out, "exit_code": exit_code, **extra}

    def __exit__(self, *exc: Any) -> None:
        for name, f in self.files.items():
            f.close()
            if name not in self._keep:
                with contextlib.suppress(OSError):
                    self.paths[name].unlink()
        with contextlib.suppress(OSError):
            self.dir.rmdir()  # only when empty
