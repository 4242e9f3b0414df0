"""The FailureHandler: classifies failures, decides retry/fail/escalate, runs escalation hooks."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any

from runtime.failure import Action, Decision, ErrorInfo, decide

log = logging.getLogger("sopflow.failures")


class _FailureHandler:
    """Plain class behind the FailureHandler actor."""

    def __init__(self) -> None:
        self.hooks: dict[str, Any] = {}
        self.counts: Counter[str] = Counter()
        self.escalations: list[dict[str, Any]] = []
        self._pending: set[asyncio.Task] = set()

    async def handle(self, error: ErrorInfo, report: dict[str, Any]) -> Decision:
        decision = decide(error, report["attempt"], report["policy"], report.get("memory_mb"))
        self.counts[f"{decision.classification.value}/{decision.action.value}"] += 1
        if decision.action == Action.ESCALATE:
            payload = {k: v for k, v in report.items() if k not in ("policy",)}
            payload.update(classification=decision.classification.value, reason=decision.reason,
                           escalated_at=time.time())
            self.escalations.append(payload)
            del self.escalations[:-1000]
            for name, hook in list(self.hooks.items()):
                task = asyncio.get_running_loop().create_task(self._run_hook(name, hook, payload))
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)
        return decision

    async def _run_hook(self, name: str, hook: Any, payload: dict[str, Any]) -> None:
        try:
            await hook(payload)
        except Exception as e:  # noqa: BLE001 - a broken hook must not break failure handling
            log.warning("escalation hook %s failed: %s", name, type(e).__name__)
            self.counts[f"hook_failed/{name}"] += 1

    async def add_hook(self, name: str, hook: Any) -> list[str]:
        self.hooks[name] = hook
        return sorted(self.hooks)

    async def remove_hook(self, name: str) -> list[str]:
        self.hooks.pop(name, None)
        return sorted(self.hooks)

    async def drain(self) -> int:
        """Wait for running hooks to finish; returns how many were waited for."""
        pending = list(self._pending)
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        return len(pending)

    async def stats(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "hooks": sorted(self.hooks),
                "escalations": len(self.escalations)}
