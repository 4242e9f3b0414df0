"""Where a CLI finds sopflow's HTTP API, and the token it sends: no Ray needed.

The API actor on the head node writes ``~/.sopflow/api-<namespace>.json`` (mode 0600,
written atomically) with its URL, its process id and the Ray cluster it serves; a
client on the same machine reads it. ``$SOPFLOW_API`` (a URL) overrides it, e.g. for a
head reached through ``ssh -L``, and ``SOPFLOW_API=off`` turns the API off for the
client (every command then goes through Ray).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

API_ENV = "SOPFLOW_API"
"""A URL (``http://127.0.0.1:8470``) to use that API, or ``off`` to use Ray for every command."""
TOKEN_ENV = "SOPFLOW_API_TOKEN"
"""The bearer token to send, when it is not Ray's (the API's own, from its discovery file)."""
OFF = ("off", "0", "no", "false", "none", "disabled")

_NAMESPACE = re.compile(r"[A-Za-z0-9_.-]{1,100}")


def discovery_dir() -> Path:
    """``~/.sopflow`` of the user running the process that asks."""
    return Path("~/.sopflow").expanduser()


def discovery_path(namespace: str, directory: Path | None = None) -> Path:
    """The discovery file of the API serving ``namespace``."""
    if not _NAMESPACE.fullmatch(namespace):  # the namespace becomes part of a file name
        namespace = re.sub(r"[^A-Za-z0-9_.-]", "_", namespace)[:100] or "_"
    return (directory or discovery_dir()) / f"api-{namespace}.json"


def write_discovery(path: Path, info: dict[str, Any]) -> None:
    """Write ``info`` as JSON to ``path`` atomically, readable by its owner only (it may hold a token)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(info, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_discovery(path: Path) -> dict[str, Any] | None:
    """The file's content, or None when it is missing, unreadable or not what the API writes."""
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or not isinstance(info.get("url"), str):
        return None
    return info


def remove_discovery(path: Path, url: str, pid: int) -> None:
    """Remove the file if it still describes this API (another cluster's API may have replaced it)."""
    info = read_discovery(path)
    if info is not None and info.get("url") == url and info.get("pid") == pid:
        with contextlib.suppress(OSError):
            path.unlink()


def ray_token() -> str | None:
    """Ray's auth token as Ray's clients find it: ``$RAY_AUTH_TOKEN``, the file ``$RAY_AUTH_TOKEN_PATH``,
    else ``~/.ray/auth_token``; None when there is none."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    try:
        token = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return token or None


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An API to call: its base URL and the token to send (None: send none)."""

    url: str
    token: str | None


def _process_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _same_cluster(address: str, gcs_address: Any) -> bool:
    """Whether ``address`` (``host:port`` as given to ``--address``) names the cluster at ``gcs_address``.

    Ports must be equal; hosts equal, or the given one names this machine's loopback.
    """
    if not isinstance(gcs_address, str) or address.startswith("ray://"):
        return False
    host, _, port = address.rpartition(":")
    their_host, _, their_port = gcs_address.rpartition(":")
    return port == their_port and (host == their_host or host in ("127.0.0.1", "localhost", "::1", "[::1]"))


def find_endpoint(namespace: str, address: str | None = None) -> Endpoint | None:
    """The API to use for the cluster at ``address`` (None or ``auto``: this machine's), or None for Ray.

    Order: ``$SOPFLOW_API`` (``off`` disables the API), else this machine's discovery file
    for ``namespace`` when its process is alive and, if an address was given, it serves
    that cluster. The token: ``$SOPFLOW_API_TOKEN``, else the one in the discovery file (an
    API whose Ray runs without a token makes its own), else Ray's.
    """
    override = os.environ.get(API_ENV, "").strip()
    if override.lower() in OFF:
        return None
    info = read_discovery(discovery_path(namespace))
    token = os.environ.get(TOKEN_ENV, "").strip() or None
    if override:
        if token is None and info is not None and info.get("url") == override.rstrip("/"):
            token = info.get("token")
        return Endpoint(override.rstrip("/"), token or ray_token())
    if info is None or not _process_alive(info.get("pid")):
        return None
    if address not in (None, "", "auto") and not _same_cluster(address, info.get("gcs_address")):
        return None
    return Endpoint(info["url"], token or info.get("token") or ray_token())
