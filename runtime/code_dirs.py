"""Checks on the local code a client ships to the step workers (runtime_env ``working_dir``/``py_modules``).

Ray zips such a directory and puts it first on the workers' import path, so a file
there named like a standard-library module (``json.py``, ``code.py``) or one of the
packages the workers themselves run on (``runtime/``, ``ray/``) would replace it for
every import on those workers and break them in ways far from the cause. These
checks run in the client, before anything is uploaded, and name the file to rename.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from runtime.errors import SubmissionError

WORKER_PACKAGES = frozenset({"sop", "runtime", "actors", "agents", "ray", "sopflow", "opentelemetry",
                             "pydantic", "yaml"})
"""Top-level packages the step workers import themselves (sopflow's and its dependencies')."""


def check_runtime_env(runtime_env: Any) -> None:
    """Refuse a runtime_env whose local ``working_dir``/``py_modules`` cannot travel.

    Raises:
        SubmissionError: a directory is missing, or it holds a module that would shadow one
            the workers need (the message names it and says to rename it).
    """
    if not isinstance(runtime_env, dict):
        return
    working_dir = runtime_env.get("working_dir")
    if isinstance(working_dir, (str, Path)) and not _is_uri(working_dir):
        path = _existing(working_dir, "working_dir")
        if path.is_dir():
            for entry in sorted(path.iterdir()):
                _refuse_shadowing(_module_name(entry), entry, "working_dir")
    for module in runtime_env.get("py_modules") or ():
        if isinstance(module, (str, Path)) and not _is_uri(module):
            path = _existing(module, "py_modules")
            if path.suffix != ".whl":
                _refuse_shadowing(_module_name(path), path, "py_modules")


def _is_uri(value: str | Path) -> bool:
    return isinstance(value, str) and "://" in value


def _existing(value: str | Path, field: str) -> Path:
    path = Path(value).expanduser()
    if not path.exists():
        raise SubmissionError(
            f"runtime_env {field} {str(value)!r} does not exist (resolved to {path.absolute()}); give the "
            "directory that holds your handler modules")
    if field == "working_dir" and not (path.is_dir() or path.suffix == ".zip"):
        raise SubmissionError(f"runtime_env working_dir {str(value)!r} is a file; give a directory (or a .zip)")
    return path


def _module_name(entry: Path) -> str | None:
    """The top-level import name ``entry`` provides on the workers, if any."""
    if entry.is_dir():  # a directory without __init__.py is a namespace package: any regular one wins
        regular = (entry / "__init__.py").exists()
        return entry.name if regular and entry.name.isidentifier() else None
    if entry.suffix in (".py", ".pyc", ".so", ".pyd"):
        name = entry.name.split(".", 1)[0]
        return name if name.isidentifier() else None
    return None


def _refuse_shadowing(name: str | None, entry: Path, field: str) -> None:
    if name is None or name == "__pycache__":
        return
    if name in WORKER_PACKAGES:
        whose = "a package the step workers run on"
    elif name in sys.stdlib_module_names:
        whose = "a module of Python's standard library"
    else:
        return
    raise SubmissionError(
        f"runtime_env {field} holds {entry}, which the workers would import as {name!r}, the name of "
        f"{whose}: every import of {name!r} on the workers would get this file instead; rename it "
        "(and its imports), or move it out of the directory you ship")
