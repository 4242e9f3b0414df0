"""Models by name (a placeholder the model layer replaces): ``offline`` only."""

from __future__ import annotations

from typing import Any

from google.adk.models.base_llm import BaseLlm

from runtime.errors import SopflowError


def build_model(settings: Any, *, api_key: str | None, limiter: Any) -> BaseLlm:
    if settings.model == "offline":
        from agents.offline import OfflineModel

        return OfflineModel()
    raise SopflowError(f"model {settings.model!r} is not available")
