"""One registry for sopflow's extension points: step handlers, agent models, hooks.

Registrations come from code (``register`` or the ``@registry.handler``
decorator) or from installed distributions through entry points (group
``sopflow.handlers``, ``sopflow.models``, ``sopflow.hooks``), loaded lazily on
first lookup. Lookups are dictionary reads.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from sop.errors import SopflowError

KINDS = ("handler", "model", "hook")
ENTRY_POINT_GROUPS = {kind: f"sopflow.{kind}s" for kind in KINDS}


class RegistryError(SopflowError):
    """Raised when a registration is missing, duplicated or malformed."""


@dataclass(frozen=True, slots=True)
class Registration:
    """A registered extension.

    Attributes:
        kind: ``handler``, ``model`` or ``hook``.
        name: What SOPs call it (``uses: <name>`` for handlers).
        definition: Metadata: description, input schema, ``idempotent`` ...
        implementation: The callable, or ``"module:attribute"`` to import on demand.
    """

    kind: str
    name: str
    definition: Mapping[str, Any] = field(default_factory=dict)
    implementation: Any = None

    def load(self) -> Any:
        """The implementation, importing it if it was given as ``module:attribute``."""
        impl = self.implementation
        if isinstance(impl, str):
            return import_object(impl)
        return impl

    @property
    def reference(self) -> str | None:
        """An importable ``module:qualname`` for the implementation, if it has one."""
        impl = self.implementation
        if isinstance(impl, str):
            return impl
        module = getattr(impl, "__module__", None)
        qualname = getattr(impl, "__qualname__", "")
        if module and qualname and module != "__main__" and "<" not in qualname:  # an instance has none
            return f"{module}:{qualname}"
        return None


def import_object(reference: str) -> Any:
    """Import ``module:attr.path``.

    Raises:
        RegistryError: the module or attribute does not exist.
    """
    module_name, _, attr = reference.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split(".") if attr else []:
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise RegistryError(f"cannot import {reference!r}: {e}") from e
    return obj


class Registry:
    """Name -> implementation, per kind. Satisfies :class:`sop.HandlerCatalog` (with models too)."""

    def __init__(self, *, discover: bool = True) -> None:
        self._entries: dict[str, dict[str, Registration]] = {k: {} for k in KINDS}
        self._discover = discover
        self._discovered: set[str] = set()

    def register(self, kind: str, name: str, definition: Mapping[str, Any] | None = None,
                 implementation: Any = None, *, replace: bool = False) -> Registration:
        """Register ``implementation`` (a callable or ``"module:attr"``) as ``kind``/``name``.

        Raises:
            RegistryError: unknown kind, empty name, or the name is taken (unless ``replace``).
        """
        if kind not in KINDS:
            raise RegistryError(f"unknown registry kind {kind!r}; kinds are {', '.join(KINDS)}")
        if not name or not isinstance(name, str) or ":" in name:
            raise RegistryError(f"a {kind} name must be non-empty text without ':', got {name!r}")
        if implementation is None or not (callable(implementation) or isinstance(implementation, str)):
            raise RegistryError(f"{kind} {name!r} needs a callable or 'module:attr' implementation")
        if name in self._entries[kind] and not replace:
            raise RegistryError(f"{kind} {name!r} is already registered; pass replace=True to override")
        entry = Registration(kind, name, dict(definition or {}), implementation)
        self._entries[kind][name] = entry
        return entry

    def handler(self, name: str | None = None, **definition: Any) -> Callable[[Callable], Callable]:
        """Decorator registering a step handler (sync or async) under ``name`` (default: its name)."""

        def wrap(fn: Callable) -> Callable:
            definition.setdefault("description", inspect.getdoc(fn) or "")
            definition.setdefault("is_async", inspect.iscoroutinefunction(fn))
            self.register("handler", name or fn.__name__.replace("_", "-"), definition, fn)
            return fn

        return wrap

    def model(self, name: str | None = None, **definition: Any) -> Callable[[Any], Any]:
        """Decorator registering an agent model under ``name`` (default: its name, ``_`` -> ``-``).

        The implementation is a ``google.adk.models.BaseLlm`` subclass (built as
        ``cls(model=name)``) or a factory ``(spec: sop.AgentSpec, api_key: str | None) -> BaseLlm``.
        SOPs then say ``agent: {model: <name>}``.
        """

        def wrap(impl: Any) -> Any:
            definition.setdefault("description", inspect.getdoc(impl) or "")
            self.register("model", name or impl.__name__.replace("_", "-"), definition, impl)
            return impl

        return wrap

    def lookup(self, kind: str, name: str) -> Registration:
        """The registration of ``kind``/``name``.

        Raises:
            RegistryError: nothing is registered under that name; the message lists close names.
        """
        entries = self._entries.get(kind)
        if entries is None:
            raise RegistryError(f"unknown registry kind {kind!r}; kinds are {', '.join(KINDS)}")
        found = entries.get(name)
        if found is None and self._discover and kind not in self._discovered:
            self._load_entry_points(kind)
            found = entries.get(name)
        if found is None:
            # Imported here: every Ray worker imports this module, and only a miss needs it.
            from sop._suggest import did_you_mean

            hint = did_you_mean(name, entries) or (
                f"registered {kind}s: {', '.join(sorted(entries))}" if entries else f"no {kind}s are registered")
            raise RegistryError(f"no {kind} is registered as {name!r}; {hint}")
        return found

    def names(self, kind: str) -> list[str]:
        if self._discover and kind not in self._discovered:
            self._load_entry_points(kind)
        return sorted(self._entries[kind])

    def _load_entry_points(self, kind: str) -> None:
        self._discovered.add(kind)
        for ep in entry_points(group=ENTRY_POINT_GROUPS[kind]):
            self._entries[kind].setdefault(ep.name, Registration(kind, ep.name, {"source": ep.value},
                                                                 ep.value))

    # sop.HandlerCatalog
    def has_handler(self, name: str) -> bool:
        try:
            self.lookup("handler", name)
        except RegistryError:
            return False
        return True

    def handler_names(self) -> Iterable[str]:
        return self.names("handler")

    # sop validation's model catalog (agent.model and an agent step's with.model)
    def has_model(self, name: str) -> bool:
        try:
            self.lookup("model", name)
        except RegistryError:
            return False
        return True

    def model_names(self) -> Iterable[str]:
        return self.names("model")
