"""Checking at submit that a request's ``python:`` handlers import where steps run: on the cluster.

The client checks that handlers import in *its* process; the workers may lack a
module the client has (a local package, a file next to the notebook). Without
this check each of a thousand executions would fail at run time; with it the
submission is refused once, naming the step and the module. The check is a
small Ray task launched from the coordinator, so it runs with the same
runtime_env as the steps; a module found importable is remembered, so each
module costs one task per coordinator lifetime (and runtime_env) (a missing one is asked again
on the next submission, in case it was installed meanwhile). It asks one
worker: nodes that differ from each other are not covered.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterable
from typing import Any

import ray

from runtime.errors import SubmissionError


def _import_errors(modules: list[str]) -> dict[str, str]:
    """Module -> why it cannot be imported here (empty when all import)."""
    errors: dict[str, str] = {}
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - any failure to import is what we report
            errors[name] = f"{type(e).__name__}: {e}"
    return errors


_remote_import_errors = ray.remote(num_cpus=0, max_retries=1)(_import_errors)


def python_modules(requests: Iterable[Any]) -> dict[str, tuple[str, str, str]]:
    """Module -> (step, handler reference, SOP source) for every ``python:`` handler a request uses."""
    found: dict[str, tuple[str, str, str]] = {}
    seen: set[int] = set()
    todo = list(requests)
    while todo:
        request = todo.pop()
        if id(request.sop) in seen and not request.subsops:
            continue  # a batch shares one SOP: look at it once
        seen.add(id(request.sop))
        todo.extend(request.subsops.values())
        for step in (*request.sop.steps, *request.sop.rollback):
            uses = step.handler
            ref = uses[len("python:"):] if uses.startswith("python:") else request.handlers.get(uses)
            if isinstance(ref, str) and ref:
                found.setdefault(ref.partition(":")[0], (step.id, uses, request.source))
    return found


class ModuleCheck:
    """Remembers the modules known to import on the workers; refuses requests using others.

    A request with its own runtime_env (a client's ``working_dir``) is checked in that
    runtime_env, as its steps will run: what imports there is remembered per runtime_env.
    """

    def __init__(self) -> None:
        self.importable: set[tuple[str, str]] = set()
        """(runtime_env as canonical JSON, "" for the coordinator's own; module)."""
        self._remotes: dict[str, Any] = {}

    async def check(self, requests: Iterable[Any]) -> None:
        """Raise :class:`SubmissionError` if a ``python:`` module does not import on the workers."""
        by_env: dict[str, tuple[Any, list[Any]]] = {}
        for request in requests:
            env = request.runtime_env
            key = json.dumps(env, sort_keys=True) if env else ""
            by_env.setdefault(key, (env, []))[1].append(request)
        for key, (env, group) in by_env.items():
            await self._check(key, env, group)

    async def _check(self, key: str, env: Any, requests: list[Any]) -> None:
        needed = {m: where for m, where in python_modules(requests).items() if (key, m) not in self.importable}
        if not needed:
            return
        remote = self._remotes.get(key)
        if remote is None:
            remote = self._remotes[key] = _remote_import_errors.options(runtime_env=env) if env \
                else _remote_import_errors
        try:
            errors = await remote.remote(sorted(needed))
        except ray.exceptions.RuntimeEnvSetupError as e:
            step, uses, source = next(iter(needed.values()))
            raise SubmissionError(
                f"the runtime_env that {source} was submitted with cannot be set up on the cluster's "
                f"workers: {str(e).strip().splitlines()[-1][:500]}; fix the runtime_env given to "
                "ray.init / Engine.connect / `ray job submit`") from None
        self.importable.update((key, m) for m in needed if m not in errors)
        if errors:
            module, why = sorted(errors.items())[0]
            step, uses, source = needed[module]
            where = ("the cluster's workers, with the runtime_env it was submitted with" if env
                     else "the cluster's workers")
            raise SubmissionError(
                f"step '{step}' of {source} uses {uses}, but module {module!r} cannot be imported on {where} "
                f"({why}); it may be importable where you submit from, but the workers "
                "do not have it: install it on every node, or ship it with the job's runtime_env "
                "(ray.init(runtime_env={'working_dir': ...} or {'py_modules': [...]}) / "
                "`sopflow run --working-dir` / `ray job submit --working-dir`)")
