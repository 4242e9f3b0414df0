"""What a client sends to start an execution, and how it is rebuilt from the log."""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from runtime._who import MAX_SUBMITTED_BY, submitter  # noqa: F401 - part of this module's API
from sop import Sop


@dataclass(slots=True)
class SubmitRequest:
    """What a client sends to submit an execution (built by :class:`runtime.Engine`)."""

    sop: Sop
    inputs: dict[str, Any] = field(default_factory=dict)
    mode: str = "system_design"
    priority: int = 0
    idempotency_key: str | None = None
    handlers: dict[str, Any] = field(default_factory=dict)
    """Registered handler name -> ``module:attr`` or the callable."""
    subsops: dict[str, SubmitRequest] = field(default_factory=dict)
    """``sop:<file>`` reference -> the sub-SOP's own request (inputs filled at run time)."""
    secrets: tuple[str, ...] = ()
    """Names of secret inputs: their values never reach events, logs or traces."""
    source: str = "<string>"
    parent: str | None = None
    definition: dict[str, Any] | None = None
    """The SOP as JSON data (built by the client), logged so the run can be rebuilt and replayed."""
    _: KW_ONLY  # the fields below are given by name: the list grows, positions would shift
    priority_class: str = "normal"
    """critical, high, normal or low: how the execution shares run slots with others (see admission)."""
    submitted_by: str = ""
    """Who or what submitted it, as the client says (``user@host`` by default); in the audit log."""
    agent: str | None = None
    """The agent that runs it (Agent Centric Run), when there is one; in the audit log."""
    runtime_env: dict[str, Any] | None = None
    """The submitting job's Ray runtime_env (``working_dir``, ``py_modules``, ``pip`` ...): the steps
    of this execution (and of its sub-SOPs) run with it. ``None``: with the coordinator's own.
    Its ``env_vars`` may hold credentials: their values are kept apart from the events, like
    secret inputs (see ``CoordinatorCore._described``)."""

    schedule: dict[str, Any] | None = None
    """A batch execution's schedule (``batch``, ``not_before``, ``deadline``, ...); ``None``: real-time."""

    def describe(self) -> dict[str, Any]:
        """Everything needed to rebuild this request from the log, minus secret values."""
        return {"definition": self.definition or sop_definition(self.sop),
                "handlers": {k: v if isinstance(v, str) else None for k, v in self.handlers.items()},
                "subsops": {k: r.describe() for k, r in self.subsops.items()},
                "secrets": list(self.secrets), "source": self.source,
                **(_logged_runtime_env(self.runtime_env) if self.runtime_env else {})}

    @property
    def has_callables(self) -> bool:
        """True when a handler was shipped as a callable (the log can only name importable ones)."""
        return any(not isinstance(v, str) for v in self.handlers.values()) or any(
            r.has_callables for r in self.subsops.values())


ENV_VARS = "~env_vars"
"""The blobs' execution id for runtime_env ``env_vars`` values: engine-wide (never purged with an execution)."""


def _logged_runtime_env(runtime_env: dict[str, Any]) -> dict[str, Any]:
    """The runtime_env as the ``execution_submitted`` event records it: without ``env_vars``.

    The coordinator stores their values apart and adds a reference to them (``env_vars``).
    """
    return {"runtime_env": {k: v for k, v in runtime_env.items() if k != "env_vars"}}


def sop_definition(sop: Sop) -> dict[str, Any]:
    """The SOP as compact JSON data that :meth:`Sop.model_validate` reads back to an equal SOP."""
    return sop.model_dump(mode="json", by_alias=True, exclude_defaults=True)


def request_from_log(submitted: dict[str, Any], inputs: dict[str, Any]) -> SubmitRequest:
    """Rebuild a request from its ``execution_submitted`` event data and the (secret-filled) inputs."""
    request = _from_described(submitted["request"], inputs, submitted["mode"], submitted.get("priority", 0),
                              submitted.get("idempotency_key"), submitted.get("parent"))
    request.priority_class = submitted.get("priority_class", "normal")
    request.submitted_by, request.agent = submitted.get("submitted_by", ""), submitted.get("agent")
    request.schedule = submitted.get("schedule")
    return request


def _from_described(described: dict[str, Any], inputs: dict[str, Any], mode: str = "system_design",
                    priority: int = 0, key: str | None = None, parent: str | None = None) -> SubmitRequest:
    """The inverse of :meth:`SubmitRequest.describe` (sub-SOP requests get their inputs at run time)."""
    return SubmitRequest(
        Sop.model_validate(described["definition"]), inputs, mode, priority, key,
        {k: v for k, v in described.get("handlers", {}).items() if v is not None},
        {name: _from_described(d, {}) for name, d in described.get("subsops", {}).items()},
        tuple(described.get("secrets", ())), described.get("source", "<log>"), parent, described["definition"],
        runtime_env=described.get("runtime_env") or None)
