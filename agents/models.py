"""Models by name (a placeholder the model layer replaces): ``offline`` and registered models.

A registered model (registry kind ``model``) is a ``BaseLlm`` subclass (made with
``model=<name>``), a ``BaseLlm`` instance, or a factory ``(settings, api_key) -> BaseLlm``.
"""

from __future__ import annotations

from typing import Any

from google.adk.models.base_llm import BaseLlm

from runtime.errors import SopflowError
from runtime.registry import Registry, RegistryError


def build_model(settings: Any, *, api_key: str | None, limiter: Any, registry: Registry | None = None) -> BaseLlm:
    """The model ``settings.model`` names.

    Args:
        registry: Where registered models are looked up (default: the ``sopflow.models`` entry points).

    Raises:
        SopflowError: no such model, or a registration that makes no ``BaseLlm``.
    """
    if settings.model == "offline":
        from agents.offline import OfflineModel

        return OfflineModel()
    try:
        impl = (registry or Registry()).lookup("model", settings.model).load()
    except RegistryError as e:
        raise SopflowError(f"model {settings.model!r} is not available: {e}") from e
    if isinstance(impl, type) and issubclass(impl, BaseLlm):
        return impl(model=settings.model)
    model = impl if isinstance(impl, BaseLlm) else impl(settings, api_key)
    if not isinstance(model, BaseLlm):
        raise SopflowError(f"the model registered as {settings.model!r} gave {type(model).__name__}, not a "
                           "google.adk.models.BaseLlm: register a BaseLlm subclass or a factory (settings, api_key)")
    return model
