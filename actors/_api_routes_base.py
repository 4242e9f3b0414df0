"""What the API's endpoints and its server share without importing aiohttp: refusals and retries."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from runtime.config import RESTART_GRACE_S
from runtime.errors import EngineStartError, EngineUnavailable


class BadRequest(Exception):
    """Raised for a request the API refuses before calling any actor; ``status`` is its HTTP status."""

    def __init__(self, message: str, status: int = 400, kind: str = "BadRequest") -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


async def retrying(send: Callable[[], Awaitable[Any]], patience_s: float = RESTART_GRACE_S) -> Any:
    """``await send()``, sent again while sopflow's actors are unavailable (Ray restarts a crashed one),
    for up to ``patience_s`` seconds; every call the API makes is safe to repeat."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            return await send()
        except EngineStartError:
            raise  # a restart would fail the same way
        except EngineUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)  # back-off while Ray restarts the actor
