"""sopflow's HTTP API: an aiohttp server on the API actor's event loop, in front of the coordinator and monitor.

The CLI reaches it in one loopback round trip instead of opening a Ray driver
connection per command. It binds 127.0.0.1 unless configured otherwise, refuses
every request without the bearer token (Ray's auth token, or its own when Ray runs
without one) except ``GET /v1/health``, and announces itself in a discovery file
(:mod:`runtime._api_discovery`).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any

from actors._api_routes_base import BadRequest, retrying
from runtime._api_discovery import discovery_path, remove_discovery, write_discovery
from runtime._wire import dumps, error_to_dict, http_status
from runtime.config import EngineConfig
from runtime.errors import EngineStartError, EngineUnavailable
from sop.errors import SopflowError

log = logging.getLogger("sopflow.api")

MAX_BODY_BYTES = 1 << 20
"""Largest request body accepted (HTTP 413 above it)."""
MAX_LINE_BYTES = 16 << 10
"""Longest request line or header accepted (a long bad id still gets a JSON 400, not a parser error)."""
ACTOR_NAMES = {"coordinator": "sopflow-coordinator", "monitor": "sopflow-monitor", "triggers": "sopflow-triggers"}


def ray_auth_token() -> str | None:
    """The cluster's auth token, as Ray itself loads it, when Ray runs with token auth; else None."""
    try:
        from ray._private.authentication.authentication_utils import is_token_auth_enabled
        from ray._raylet import AuthenticationTokenLoader
    except ImportError:  # another Ray version: no token auth known here
        return None
    if not is_token_auth_enabled():
        return None
    loader = AuthenticationTokenLoader.instance()
    return loader.get_raw_token() if loader.has_token() else None


def _error(status: int, kind: str, message: str, **extra: Any) -> Any:
    from aiohttp import web

    headers = {"WWW-Authenticate": 'Bearer realm="sopflow"'} if status == 401 else None
    return web.Response(text=dumps({"error": {"type": kind, "message": message, **extra}}), status=status,
                        content_type="application/json", headers=headers)


class _Api:
    """The server and the calls it makes to the coordinator and the monitor of ``namespace``.

    Args:
        namespace: The Ray namespace of the actors it serves.
        config: ``api_host``/``api_port`` say where it listens.
        token: The bearer token clients must send; default: Ray's, else a random one
            written to the discovery file.
        discovery_dir: Where the discovery file goes (default ``~/.sopflow`` of the user
            running the actor).
    """

    def __init__(self, namespace: str, config: EngineConfig | None = None, *, token: str | None = None,
                 discovery_dir: str | None = None) -> None:
        config = config or EngineConfig()
        self.namespace = namespace
        self.error: str | None = None
        try:
            self.host, self.port = config.api_address()
        except ValueError as e:  # a bad $SOPFLOW_API_PORT on the head: no API, the CLI uses Ray
            self.host, self.port, self.error = "", -1, str(e)
        ray_token = None if token else ray_auth_token()
        self._token = token or ray_token or secrets.token_urlsafe(32)
        self._own_token = token is None and ray_token is None  # then clients learn it from the file
        self.discovery = discovery_path(namespace, Path(discovery_dir) if discovery_dir else None)
        self.url: str | None = None
        self._runner: Any = None
        self._handles: dict[str, Any] = {}

    # -- serving ---------------------------------------------------------------------------------

    async def start(self) -> str | None:
        """Listen, then write the discovery file; returns the URL (None when it could not listen)."""
        if self.error is not None:
            log.error("sopflow's API is off: %s", self.error)
            return None
        from aiohttp import web  # here, not at import: every driver imports the actors' fronts

        from actors._api_openapi import openapi_document
        from actors._api_routes import Routes
        from actors._api_routes_ops import OpsRoutes

        @web.middleware
        async def guard(request: Any, handler: Any) -> Any:
            return await self._guard(request, handler)

        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[guard])
        Routes(self._call, openapi_document()).add_to(app)
        OpsRoutes(self._call, self._call_once).add_to(app)
        runner = web.AppRunner(app, access_log=None, handle_signals=False,  # no access log: nothing to leak
                               max_line_size=MAX_LINE_BYTES, max_field_size=MAX_LINE_BYTES)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
            await site.start()
        except OSError as e:
            await runner.cleanup()
            self.error = f"sopflow's API cannot listen on {self.host}:{self.port}: {e.strerror or e}"
            log.error("%s; the CLI uses Ray instead (set api_port / $SOPFLOW_API_PORT to a free port)", self.error)
            return None
        self._runner = runner
        port = runner.addresses[0][1]
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)
        self.url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        try:
            write_discovery(self.discovery, self._discovery_info())
        except OSError as e:  # still reachable through $SOPFLOW_API
            log.warning("sopflow's API could not write %s: %s", self.discovery, e)
        log.info("sopflow's API listens on %s (discovery file %s)", self.url, self.discovery)
        return self.url

    def _discovery_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"url": self.url, "pid": os.getpid(), "namespace": self.namespace,
                                "gcs_address": _gcs_address(), "started_at": time.time()}
        if self._own_token:
            info["token"] = self._token
        return info

    async def stop(self) -> None:
        """Stop listening and remove the discovery file if it is still this API's."""
        if self.url is not None:
            remove_discovery(self.discovery, self.url, os.getpid())
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def info(self) -> dict[str, Any]:
        """Where it listens (``url``, None if it could not), why not (``error``), and its discovery file."""
        return {"url": self.url, "error": self.error, "discovery": str(self.discovery),
                "namespace": self.namespace}

    # -- every request -----------------------------------------------------------------------------

    async def _guard(self, request: Any, handler: Any) -> Any:
        """Token, size, then the endpoint; every refusal and error as JSON ``{"error": ...}``."""
        from aiohttp import web

        try:
            if request.path != "/v1/health" and not self._authorized(request):
                return _error(401, "Unauthorized", "send the cluster's token as 'Authorization: Bearer <token>' "
                              "(Ray's auth token, ~/.ray/auth_token on the head node)")
            if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
                return _error(413, "PayloadTooLarge", f"the request body is larger than {MAX_BODY_BYTES} bytes")
            return await handler(request)
        except BadRequest as e:
            return _error(e.status, e.kind, str(e))
        except web.HTTPException as e:  # aiohttp's own: unknown path, wrong method, body too large
            return _error(e.status, e.__class__.__name__.removeprefix("HTTP"), _http_message(e, request))
        except SopflowError as e:
            return web.Response(text=dumps({"error": error_to_dict(e)}), status=http_status(e),
                                content_type="application/json")
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a bug: logged here (never a header, so never the token)
            log.exception("sopflow's API failed on %s %s", request.method, request.path)
            return _error(500, "InternalError", "sopflow's API failed on this request; the API actor's log "
                          "(sopflow-api in the Ray dashboard) has the details")

    def _authorized(self, request: Any) -> bool:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            return False
        return hmac.compare_digest(given.strip().encode(), self._token.encode())

    # -- the actors --------------------------------------------------------------------------------

    async def _call(self, actor: str, method: str, *args: Any) -> Any:
        return await retrying(lambda: self._call_once(actor, method, *args))

    async def _call_once(self, actor: str, method: str, *args: Any) -> Any:
        import ray

        handle = await self._handle(actor)
        try:
            return await getattr(handle, method).remote(*args)
        except ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, SopflowError):
                raise cause from None
            if isinstance(cause, ray.exceptions.RayActorError | ray.exceptions.ActorUnavailableError):
                raise EngineUnavailable(f"sopflow's {actor} cannot reach another actor: "
                                        f"{type(cause).__name__}") from None
            raise
        except ray.exceptions.ActorDiedError as e:
            self._handles.pop(actor, None)  # killed: a new one may come under the same name
            if e.actor_init_failed:
                raise EngineStartError(f"sopflow's {actor} could not start; see its log in the Ray "
                                       "dashboard") from None
            raise EngineUnavailable(f"sopflow's {actor} is gone ({type(e).__name__})") from None
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
            raise EngineUnavailable(f"sopflow's {actor} cannot be reached ({type(e).__name__})") from None

    async def _handle(self, actor: str) -> Any:
        import ray

        handle = self._handles.get(actor)
        if handle is None:
            try:
                handle = await asyncio.to_thread(ray.get_actor, ACTOR_NAMES[actor], namespace=self.namespace)
            except ValueError:
                raise EngineUnavailable(f"sopflow's {actor} is not running in namespace {self.namespace!r}; "
                                        "start sopflow with Engine.connect() or `sopflow run`") from None
            self._handles[actor] = handle
        return handle


def _http_message(e: Any, request: Any) -> str:
    if e.status == 404:
        return f"no endpoint {request.path[:100]!r}; GET /openapi.json lists them"
    if e.status == 405:
        return f"{request.method} is not allowed on {request.path[:100]!r}; GET /openapi.json lists the methods"
    if e.status == 413:
        return f"the request body is larger than {MAX_BODY_BYTES} bytes"
    return e.reason or "refused"


def _gcs_address() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().gcs_address
    except Exception:  # noqa: BLE001 - outside Ray (tests of the plain class): no cluster to name
        return None
