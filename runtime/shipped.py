"""Handlers shipped as callables (from a notebook, say), stored so a restarted coordinator can run them.

A callable that cannot be named as ``module:attr`` travels by value, cloudpickled,
and is stored next to its execution's events. A cloudpickle is only loadable by
the same Python minor version (and usually the same cloudpickle), so the stored
bytes carry both versions, and a coordinator that cannot load them says which
versions wrote them and how to make the execution recoverable, instead of
failing with an unpickling traceback.
"""

from __future__ import annotations

import json
import pickle
import platform
from typing import Any

from runtime.errors import ExecutionError

_MAGIC = b"sopflow.callables\n"


class HandlersUnloadable(ExecutionError):
    """Raised when callables shipped with an execution cannot be loaded by this process."""

    def __init__(self, message: str) -> None:
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self),))


def _versions() -> dict[str, str]:
    from ray import cloudpickle  # the coordinator runs in Ray; the CLI never packs callables

    return {"python": platform.python_version(), "cloudpickle": getattr(cloudpickle, "__version__", "?")}


def pack_callables(handlers: dict[str, Any]) -> bytes:
    """``handlers`` cloudpickled, behind a header naming the Python and cloudpickle versions."""
    from ray import cloudpickle

    header = json.dumps(_versions(), sort_keys=True).encode()
    return _MAGIC + header + b"\n" + cloudpickle.dumps(handlers, protocol=pickle.HIGHEST_PROTOCOL)


def unpack_callables(blob: bytes, execution_id: str) -> dict[str, Any]:
    """The handlers stored by :func:`pack_callables` (or by sopflow <= 0.1, without a header).

    Raises:
        HandlersUnloadable: naming the versions that wrote them and those running now.
    """
    written: dict[str, str] = {}
    payload = blob
    if blob.startswith(_MAGIC):
        header, _, payload = blob[len(_MAGIC):].partition(b"\n")
        try:
            written = json.loads(header)
        except ValueError:
            written = {}
    try:
        handlers = pickle.loads(payload)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same to the user
        here = _versions()
        was = (f"Python {written.get('python', '?')} with cloudpickle {written.get('cloudpickle', '?')}"
               if written else "an older sopflow (versions not recorded)")
        raise HandlersUnloadable(
            f"execution {execution_id}: the handlers shipped with it as callables cannot be loaded "
            f"({type(e).__name__}: {e}); they were written by {was}, and this coordinator runs "
            f"Python {here['python']} with cloudpickle {here['cloudpickle']}. Run the cluster on the "
            f"writer's Python version to recover it, or register the handlers as importable "
            f"'module:function' references, which survive upgrades") from e
    if not isinstance(handlers, dict):
        raise HandlersUnloadable(f"execution {execution_id}: the stored handlers are damaged "
                                 f"(a {type(handlers).__name__}, expected a dict)")
    return handlers


def pack_hook(hook: Any) -> bytes:
    """A hook (:class:`runtime.hooks.Hook`), cloudpickled like shipped handlers, with when it was added."""
    import time

    return pack_callables({"hook": hook, "added": time.time_ns()})


def unpack_hook(blob: bytes, name: str) -> tuple[Any, int]:
    """The hook stored by :func:`pack_hook`, and when it was added (hooks run in that order).

    Raises:
        HandlersUnloadable: it cannot be loaded by this process (the message says why).
    """
    stored = unpack_callables(blob, f"(hook {name})")
    return stored["hook"], int(stored.get("added", 0))
