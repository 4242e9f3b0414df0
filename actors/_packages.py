"""Code that travels: a client's runtime_env for the steps it submits, kept durably in the state store.

A client's ``runtime_env={"working_dir": ...}`` (or ``py_modules``, or ``ray job submit
--working-dir``) is uploaded by Ray as a ``gcs://_ray_pkg_<hash>.zip`` package and
deleted by Ray once the client's job ends. The steps of an execution can run long
after that (later steps, retries, a restarted cluster), so the coordinator copies
each package's bytes once (one copy per URI, whatever the number of executions) into
its state store, keeps Ray's copy pinned while steps use it, and uploads it again from
the store when Ray no longer has it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import ray

from runtime.errors import SubmissionError

log = logging.getLogger("sopflow.packages")

PACKAGES = "~packages"
"""The blobs' execution id for packages: engine-wide (purging executions never touches them)."""
RECHECK_S = 30.0
"""How long Ray is trusted to still have a package (pinned) before it is looked at again."""
PIN_S = 600
"""How long each look pins the package in Ray (far beyond ``RECHECK_S``)."""


def job_runtime_env() -> dict[str, Any] | None:
    """The calling job's runtime_env as plain data (a driver, a ``ray job``, or a ``ray://`` client)."""
    try:
        env = ray.get_runtime_context().runtime_env
    except Exception:  # noqa: BLE001 - no context (not connected): the coordinator's own applies
        return None
    plain = env.to_dict() if hasattr(env, "to_dict") else dict(env)
    return plain or None


def gcs_packages(runtime_env: dict[str, Any] | None) -> tuple[str, ...]:
    """The ``gcs://`` package URIs a runtime_env uses (remote ``s3://``, ``https://`` ones last on their own)."""
    if not runtime_env:
        return ()
    found = [runtime_env.get("working_dir"), *(runtime_env.get("py_modules") or ())]
    return tuple(u for u in found if isinstance(u, str) and u.startswith("gcs://"))


class PackageKeeper:
    """Keeps every ``gcs://`` package a request uses: one copy in the store, Ray's copy present and pinned.

    Args:
        event_log: Returns the coordinator's current event log (its blobs hold the copies).
        max_bytes: The largest package taken (a bigger one refuses the submission).
    """

    def __init__(self, event_log: Callable[[], Any], max_bytes: int) -> None:
        self._log = event_log
        self.max_bytes = max_bytes
        self._kept: set[str] = set()
        self._seen: dict[str, float] = {}
        """URI -> when Ray was last seen to have it (and it was pinned), ``time.monotonic``."""

    async def keep(self, runtime_env: dict[str, Any] | None, source: str) -> None:
        """Copy the request's packages into the store (once per URI); at submit, while the client is there.

        Raises:
            SubmissionError: a package is too big to keep, or Ray no longer has it.
        """
        for uri in gcs_packages(runtime_env):
            if uri in self._kept:
                continue
            if await asyncio.to_thread(self._log().get_blob, PACKAGES, uri) is None:
                data = await asyncio.to_thread(_ray_get_package, uri)
                if data is None:
                    raise SubmissionError(
                        f"the runtime_env package {uri} of {source} is no longer in the Ray cluster (its job "
                        "ended before the submission arrived); submit again from a running job")
                if len(data) > self.max_bytes:
                    raise SubmissionError(
                        f"the runtime_env package {uri} of {source} is {len(data) / 2**20:.1f} MiB: sopflow "
                        f"keeps a copy of the code it runs, up to {self.max_bytes / 2**20:.0f} MiB "
                        "(EngineConfig.max_package_mb); leave big files out of the working_dir (a "
                        "`.rayignore` file or runtime_env `excludes`) or raise the limit")
                await asyncio.to_thread(self._log().put_blob, PACKAGES, uri, data)
                log.info("kept runtime_env package %s (%d bytes) in the state store", uri, len(data))
            self._kept.add(uri)

    def ensure(self, uris: tuple[str, ...]) -> None:
        """Before a step starts: make sure Ray has each package (uploaded again from the store if not).

        Cheap on the hot path: a URI seen within ``RECHECK_S`` is not looked at again; each look
        pins it for ``PIN_S``, so Ray keeps it meanwhile even after the client's job ended.
        """
        now = time.monotonic()
        for uri in uris:
            if now - self._seen.get(uri, -RECHECK_S) < RECHECK_S:
                continue
            try:
                self._restore(uri)
            except Exception:  # noqa: BLE001 - the step still starts: Ray then names what is missing
                log.exception("could not make sure Ray has runtime_env package %s", uri)
                continue
            self._seen[uri] = now

    def _restore(self, uri: str) -> None:
        from ray._private.runtime_env.packaging import package_exists, upload_package_to_gcs
        from ray.experimental.internal_kv import _pin_runtime_env_uri

        if not package_exists(uri):
            data = self._log().get_blob(PACKAGES, uri)
            if data is None:  # submitted before this version kept packages: Ray says what is missing
                log.warning("runtime_env package %s is neither in Ray nor in the state store", uri)
                return
            upload_package_to_gcs(uri, data)
            log.info("uploaded runtime_env package %s again from the state store (%d bytes)", uri, len(data))
        _pin_runtime_env_uri(uri, expiration_s=PIN_S)


def _ray_get_package(uri: str) -> bytes | None:
    from ray.experimental.internal_kv import _internal_kv_get

    return _internal_kv_get(uri)
