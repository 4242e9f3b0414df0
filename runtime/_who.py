"""Who acts, for the audit log: ``user@host`` of the client, or what the caller says (no heavy imports)."""

from __future__ import annotations

import os

MAX_SUBMITTED_BY = 200
"""Characters of ``submitted_by`` kept."""


def submitter(given: str | None = None) -> str:
    """``given`` (checked, cut to :data:`MAX_SUBMITTED_BY`), or this process's ``user@host``.

    Raises:
        SubmissionError: ``given`` is not text.
    """
    if given is not None:
        if not isinstance(given, str):
            from runtime.errors import SubmissionError

            raise SubmissionError(f"who acts (submitted_by, by) must be text such as user@host, got {type(given).__name__}")
        return given.strip()[:MAX_SUBMITTED_BY]
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name (a container without one): say so, never fail
        user = f"uid{os.getuid()}" if hasattr(os, "getuid") else "unknown"
    return f"{user}@{socket.gethostname()}"[:MAX_SUBMITTED_BY]
