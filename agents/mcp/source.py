"""A data source as the pool sees it: the SOP's declaration with its credentials rendered."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SourceSpec:
    """One data source, its secrets already rendered (``env`` and ``headers`` are never printed).

    Attributes:
        name: The source's name in the SOP.
        command: The stdio server's command (``python`` means the Python running sopflow).
        args: Its arguments (passed as a list: never through a shell).
        env: Extra environment variables of the stdio server.
        url: The streamable HTTP endpoint.
        headers: HTTP headers (credentials).
        idempotent_tools: Tools safe to call again when a call may have reached the server.
        timeout_s: Seconds one call may take.
        connect_timeout_s: Seconds to start or reach the server and finish the handshake.
        tools: The tools the SOP allows; ``None`` allows every tool the server lists.
    """

    name: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict, repr=False)
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    idempotent_tools: tuple[str, ...] = ()
    timeout_s: float = 30.0
    connect_timeout_s: float = 20.0
    tools: tuple[str, ...] | None = None

    @classmethod
    def from_data_source(cls, name: str, ds: Any, render: Callable[[str], str]) -> SourceSpec:
        """The spec of the SOP's data source ``ds`` (a :class:`sop.DataSource`), with ``render`` applied
        to every ``env`` and ``headers`` value (``${{ inputs.NAME }}`` references to secret inputs)."""
        env = {k: str(render(v)) for k, v in ds.env.items()}
        headers = {k: str(render(v)) for k, v in ds.headers.items()}
        return cls(name, ds.command, tuple(ds.args), env, ds.url, headers, tuple(ds.idempotent_tools),
                   float(ds.timeout_s), float(ds.connect_timeout_s), None if ds.tools is None else tuple(ds.tools))

    @property
    def server(self) -> str:
        """Which server this is, without credentials (the circuit breaker's key)."""
        return self.url if self.url is not None else json.dumps([self.command, *self.args])

    @property
    def key(self) -> str:
        """Which session serves it: the same server with the same credentials (hashed: never shown)."""
        blob = json.dumps([self.command, self.args, sorted(self.env.items()), self.url, sorted(self.headers.items())])
        return hashlib.sha256(blob.encode()).hexdigest()
