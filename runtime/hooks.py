"""Hooks: code that observes executions without being part of them (dramatiq's middleware).

A :class:`Hook` overrides any of ``before_attempt``, ``after_attempt``,
``on_retry``, ``on_escalate``, ``on_alert`` and ``on_end``; each gets one JSON-able payload
(execution, SOP, step, attempt, and what happened). Every method does nothing
by default. :class:`Hooks` is the chain the state machine notifies: "before"
hooks run in the order they were added, "after" hooks (after an attempt, at
the end) in reverse; notifications are delivered one after the other, in the
order they happened, by one task off the machine's path, so a slow hook delays
no step (only the notifications after it; a call is given up after
``HOOK_TIMEOUT_S``). A hook that raises is logged and counted, never fatal. Methods may be coroutines; a plain method runs on the loop and must be
quick (do I/O in a coroutine or a thread).

Escalation hooks (a Python function or a webhook, registered by name through
the engine) are :class:`EscalationHook` objects, told of escalations and of
alerts (:mod:`runtime.alerts`; the payload then has ``"notification": "alert"``): the coordinator keeps their
registrations in the state store, so they survive restarts.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("sopflow.hooks")

HOOK_TIMEOUT_S = 60.0
"""How long one hook call may take before it is given up (logged and counted as a failure)."""

BEFORE = ("before_attempt", "on_retry", "on_escalate", "on_alert")
"""Notifications that run hooks in the order they were added (the others run in reverse)."""


class Hook:
    """Base class of hooks: override the notifications you need; the rest do nothing."""

    def before_attempt(self, payload: dict[str, Any]) -> Any:
        """An attempt is handed to its runner (``step``, ``attempt``)."""

    def after_attempt(self, payload: dict[str, Any]) -> Any:
        """An attempt ended (``status``: succeeded, failed or cancelled; ``error`` (type, message ...) and
        ``classification`` when it failed)."""

    def on_retry(self, payload: dict[str, Any]) -> Any:
        """A failed step will run again (``attempt``: the next one, ``delay_s``, ``reason``)."""

    def on_escalate(self, payload: dict[str, Any]) -> Any:
        """A step's retries are exhausted (``error`` (type, message ...), ``classification``, ``reason``)."""

    def on_alert(self, payload: dict[str, Any]) -> Any:
        """An alert rule fired (``rule``: overdue, queued_too_long or needs_decision_too_long; ``reason``,
        ``threshold_s``, ``elapsed_s``; ``step`` and ``attempt`` for a step's rule)."""

    def on_end(self, payload: dict[str, Any]) -> Any:
        """The execution finished (``status``)."""


class Hooks:
    """The chain of hooks the state machine notifies (see the module docstring)."""

    def __init__(self, hooks: dict[str, Hook] | None = None) -> None:
        self._hooks: dict[str, Hook] = dict(hooks or {})
        self._queue: deque[tuple[list[tuple[str, Hook]], str, dict[str, Any]]] = deque()
        self._worker: asyncio.Task | None = None
        self._delivering = False
        self.failures: dict[str, int] = {}
        """Hook name -> how many of its calls raised."""
        self.escalations = 0
        self.alerts = 0

    def add(self, name: str, hook: Hook) -> None:
        """Add (or replace) a hook; a new one runs after those added before it."""
        self._hooks.pop(name, None)
        self._hooks[name] = hook

    def remove(self, name: str) -> bool:
        return self._hooks.pop(name, None) is not None

    @property
    def names(self) -> list[str]:
        return list(self._hooks)

    def before_attempt(self, exe: Any, step: str, attempt: int) -> None:
        if self._hooks:
            self._notify("before_attempt", _payload(exe, step, attempt))

    def after_attempt(self, exe: Any, step: str, attempt: int, status: str, **details: Any) -> None:
        if self._hooks:
            self._notify("after_attempt", _payload(exe, step, attempt, status=status, **details))

    def on_retry(self, exe: Any, step: str, attempt: int, delay_s: float, reason: str) -> None:
        if self._hooks:
            self._notify("on_retry", _payload(exe, step, attempt, delay_s=delay_s, reason=reason))

    def on_escalate(self, exe: Any, step: str, attempt: int, error: dict[str, Any], classification: str,
                    reason: str) -> None:
        self.escalations += 1
        if self._hooks:
            self._notify("on_escalate", _payload(exe, step, attempt, error=error, classification=classification,
                                                 reason=reason, escalated_at=time.time()))

    def on_alert(self, exe: Any, step: str | None, attempt: int | None, rule: str, reason: str,
                 threshold_s: float, elapsed_s: float) -> None:
        self.alerts += 1
        if self._hooks:
            self._notify("on_alert", _payload(exe, step, attempt, notification="alert", rule=rule, reason=reason,
                                              threshold_s=threshold_s, elapsed_s=elapsed_s, alerted_at=time.time()))

    def on_end(self, exe: Any, status: str) -> None:
        if self._hooks:
            self._notify("on_end", _payload(exe, None, None, status=status))

    def _notify(self, method: str, payload: dict[str, Any]) -> None:
        chain = [(name, hook) for name, hook in self._hooks.items()
                 if getattr(type(hook), method, None) is not getattr(Hook, method)]
        if not chain:
            return
        if method not in BEFORE:
            chain.reverse()
        self._queue.append((chain, method, payload))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._deliver())

    async def _deliver(self) -> None:
        """Deliver notifications one after the other, in the order they happened: a hook never sees
        an attempt end before it saw it start, however slow its ``before_attempt`` is."""
        while self._queue:
            chain, method, payload = self._queue.popleft()
            self._delivering = True
            try:
                await self._run(chain, method, payload)
            finally:
                self._delivering = False

    async def _run(self, chain: list[tuple[str, Hook]], method: str, payload: dict[str, Any]) -> None:
        for name, hook in chain:
            try:
                result = getattr(hook, method)(payload)
                if inspect.isawaitable(result):
                    await asyncio.wait_for(result, HOOK_TIMEOUT_S)  # a hung hook must not hold the rest
            except Exception as e:  # noqa: BLE001 - a broken hook must not break an execution
                log.warning("hook %s failed in %s: %s", name, method, type(e).__name__)
                self.failures[name] = self.failures.get(name, 0) + 1

    @property
    def pending(self) -> set[asyncio.Task]:
        """The task delivering notifications, while there is one."""
        return {self._worker} if self._worker is not None and not self._worker.done() else set()

    async def drain(self) -> int:
        """Wait until every notification so far was delivered; returns how many were waiting."""
        waiting = len(self._queue) + self._delivering
        while self._worker is not None and not self._worker.done():
            await asyncio.shield(self._worker)
        return waiting


def _payload(exe: Any, step: str | None, attempt: int | None, **details: Any) -> dict[str, Any]:
    payload = {"execution_id": exe.id, "sop": exe.sop.sop, "version": exe.sop.version}
    if step is not None:
        payload.update(step=step, attempt=attempt)
    payload.update(details)
    return exe.redact(payload) if exe.secret_values else payload


class EscalationHook(Hook):
    """Calls a :class:`PythonHook` or :class:`WebhookHook` when a step's retries are exhausted."""

    def __init__(self, target: PythonHook | WebhookHook) -> None:
        self.target = target

    async def on_escalate(self, payload: dict[str, Any]) -> None:
        await self.target(payload)

    async def on_alert(self, payload: dict[str, Any]) -> None:
        await self.target(payload)

    def __str__(self) -> str:
        return str(self.target)


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
