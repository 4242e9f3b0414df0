"""Each step attempt's own place to run: a fresh working directory and a clean environment.

Attempts share worker processes (Ray reuses them), so nothing an attempt leaves
behind may reach the next one:

- **Working directory.** Every attempt gets a new directory under
  ``$SOPFLOW_ATTEMPTS_DIR`` (default ``<tmp>/sopflow-attempts``). A shell step
  runs in it (its cwd, and ``TMPDIR``); a Python handler gets its path as
  ``context.workdir``. The worker's own cwd is *not* changed for Python
  handlers: ``os.chdir`` is process-wide, and a handler may share its process
  with other threads (a replay runs handlers in threads of one process). It is
  removed after a success; after a failure it is kept for inspection (when the
  attempt left anything in it) and its path is appended to the error message.
- **Environment.** A shell step gets a clean environment: the variables named
  in :data:`SHELL_ENV_ALLOW` (and ``LC_*``) from the worker, then the step's
  ``env``, then ``SOPFLOW_*`` ids. Whatever else is in the worker's
  ``os.environ`` (a previous attempt's or handler's leftovers, Ray's internals)
  is not passed on; a step that needs a variable names it in its ``env``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runtime.failure import ErrorInfo

SHELL_ENV_ALLOW = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TERM",
                   "PYTHONPATH", "VIRTUAL_ENV", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
                   "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")
"""Worker environment variables a shell step inherits (plus every ``LC_*``); nothing else."""

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def attempts_root() -> Path:
    """Where attempt directories are made: ``$SOPFLOW_ATTEMPTS_DIR`` or ``<tmp>/sopflow-attempts``."""
    return Path(os.environ.get("SOPFLOW_ATTEMPTS_DIR") or Path(tempfile.gettempdir()) / "sopflow-attempts")


class Attempt:
    """One attempt's working directory and environment; :meth:`close` cleans up after it."""

    def __init__(self, execution_id: str, step: str, attempt: int) -> None:
        root = attempts_root()
        root.mkdir(parents=True, exist_ok=True)
        prefix = _UNSAFE.sub("_", f"{execution_id}-{step}-{attempt}-")[:120]
        self.workdir = tempfile.mkdtemp(prefix=prefix, dir=root)
        """A fresh, private (mode 0700) directory for this attempt alone."""

    def shell_env(self, step_env: dict[str, str], ids: dict[str, str]) -> dict[str, str]:
        """The whole environment of a shell step: allow-listed worker variables, its env, its ids."""
        inherited = {k: v for k, v in os.environ.items() if k in SHELL_ENV_ALLOW or k.startswith("LC_")}
        return {**inherited, "TMPDIR": self.workdir, **step_env, **ids}

    def close(self, error: ErrorInfo | None) -> ErrorInfo | None:
        """Remove the directory after a success; keep it after a failure and say where it is."""
        path = Path(self.workdir)
        if error is None or not path.is_dir() or not any(path.iterdir()):
            shutil.rmtree(path, ignore_errors=True)
            return error
        return dataclasses.replace(error, message=f"{error.message} (working directory kept: {path})")

