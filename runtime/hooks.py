"""Escalation hooks: what happens when a step's retries are exhausted.

A hook receives one JSON-able payload (execution, SOP, step, attempt, error,
classification, reason). Hooks run in the FailureHandler actor, off the
coordinator's path; a failing hook is logged, never fatal.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("sopflow.hooks")


@dataclass(slots=True)
class PythonHook:
    """Call a Python function (sync functions run in a thread)."""

    fn: Callable[[dict[str, Any]], Any]

    async def __call__(self, payload: dict[str, Any]) -> None:
        if inspect.iscoroutinefunction(self.fn):
            await self.fn(payload)
        else:
            await asyncio.to_thread(self.fn, payload)

    def __str__(self) -> str:
        return f"python:{getattr(self.fn, '__qualname__', self.fn)}"


@dataclass(slots=True)
class WebhookHook:
    """POST the payload as JSON to a URL, retrying twice on connection errors or 5xx."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 5.0
    attempts: int = 3

    async def __call__(self, payload: dict[str, Any]) -> None:
        import httpx

        async with httpx.AsyncClient(timeout=self.timeout_s) as client:
            for attempt in range(1, self.attempts + 1):
                try:
                    response = await client.post(self.url, json=payload, headers=self.headers)
                    if response.status_code < 500:
                        response.raise_for_status()
                        return
                except httpx.TransportError:
                    if attempt == self.attempts:
                        raise
                if attempt < self.attempts:
                    await asyncio.sleep(0.2 * attempt)  # backoff between webhook retries
            raise RuntimeError(f"webhook answered {response.status_code} {self.attempts} times")

    def __str__(self) -> str:
        return f"webhook:{self.url}"  # headers (tokens) are never shown
