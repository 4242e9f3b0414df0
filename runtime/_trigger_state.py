"""What the trigger actor keeps durable, and how it reaches the coordinator.

A deployed trigger and its state (next fire time, fires waiting for a run slot, the runs it
holds) are one record, written whole as one setting of the state store (``trigger:<sop>/<name>``
in the ``meta`` table), so a record is always consistent with itself. The trigger actor never
opens the state file: the coordinator owns it (one writer per file, under its lease), and the
actor reaches it through a :class:`TriggerHost`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from sop.model import Trigger

SETTING_PREFIX = "trigger:"
"""Prefix of the trigger records among the store's settings."""


@dataclass(slots=True)
class Fire:
    """One firing of a trigger, waiting to start (or being started) as an execution.

    Attributes:
        key: Its idempotency key (``trigger:<id>:<fire time>`` or ``trigger:<id>:event:<key>``).
        fire_time: When it fired (epoch seconds): the cron time, or when the event came.
        payload: The event's payload (None for a cron fire).
        event: The event's name (None for a cron fire).
        emit_key: The key the emitter gave, if any.
    """

    key: str
    fire_time: float
    payload: Any = None
    event: str | None = None
    emit_key: str | None = None


@dataclass(slots=True)
class Deployed:
    """A deployed trigger with its durable state.

    Attributes:
        id: ``<sop>/<name>``, unique in the engine.
        spec: The trigger as the SOP declares it.
        request: How to build its executions' requests (the SOP definition, handlers, mode ...).
        version: The SOP version deployed.
        deployed_at: When (epoch seconds).
        paused: A paused trigger fires nothing; a cron trigger resumes at its next time.
        next_fire: A cron trigger's first fire time not yet handled (epoch seconds).
        pending: Fires not started yet, oldest first (waiting for ``max_concurrent``, or in delivery).
        running: Idempotency key -> execution id of its runs not known to have ended
            (kept only with ``max_concurrent``).
        fired: Fires delivered so far (an emit repeated with its key counts again; it starts nothing new).
        last_execution: The last one started.
        last_error: Why the last fire could not start, if it could not.
    """

    id: str
    spec: Trigger
    request: dict[str, Any]
    version: str = "1"
    deployed_at: float = 0.0
    paused: bool = False
    next_fire: float | None = None
    pending: list[Fire] = field(default_factory=list)
    running: dict[str, str] = field(default_factory=dict)
    fired: int = 0
    last_execution: str | None = None
    last_error: str | None = None

    @property
    def sop(self) -> str:
        return self.id.rsplit("/", 1)[0]

    @property
    def kind(self) -> str:
        return "cron" if self.spec.cron is not None else "event"

    def to_blob(self) -> bytes:
        data = {k: getattr(self, k) for k in self.__slots__}  # type: ignore[attr-defined]
        data["spec"] = self.spec.model_dump(mode="json", exclude_defaults=True)
        data["pending"] = [asdict(f) for f in self.pending]
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def from_blob(cls, blob: bytes) -> Deployed:
        data = json.loads(blob)
        data["spec"] = Trigger.model_validate(data["spec"])
        data["pending"] = [Fire(**f) for f in data.get("pending", ())]
        known = set(cls.__slots__)  # type: ignore[attr-defined]
        return cls(**{k: v for k, v in data.items() if k in known})  # a newer record's extra fields: ignored

    def view(self) -> dict[str, Any]:
        """What ``sopflow triggers list`` shows."""
        return {"id": self.id, "sop": self.sop, "version": self.version, "name": self.spec.name, "kind": self.kind,
                "schedule": self.spec.cron, "timezone": self.spec.timezone if self.spec.cron else None,
                "event": self.spec.event, "filter": self.spec.filter, "catch_up": self.spec.catch_up.value,
                "max_concurrent": self.spec.max_concurrent, "paused": self.paused, "next_fire": self.next_fire,
                "waiting": len(self.pending), "running": len(self.running), "fired": self.fired,
                "last_execution": self.last_execution, "last_error": self.last_error}


class TriggerHost(Protocol):
    """What the trigger actor needs from the coordinator (in this process, or an actor)."""

    async def submit(self, request: Any) -> str:
        """Submit a request; its idempotency key makes a repeat return the first execution."""
        ...

    async def ended(self, execution_ids: list[str]) -> list[str]:
        """Those of ``execution_ids`` that have ended (or are unknown)."""
        ...

    async def trigger_settings(self) -> dict[str, bytes]:
        """Every trigger record kept in the state store."""
        ...

    async def put_trigger_setting(self, key: str, value: bytes) -> None:
        ...

    async def drop_trigger_setting(self, key: str) -> None:
        ...


class CoreHost:
    """A :class:`TriggerHost` over a coordinator core on the same event loop (the in-process engine)."""

    def __init__(self, core: Any) -> None:
        self.core = core

    async def submit(self, request: Any) -> str:
        return await self.core.submit(request)

    async def ended(self, execution_ids: list[str]) -> list[str]:
        return await self.core.ended(execution_ids)

    async def trigger_settings(self) -> dict[str, bytes]:
        return await self.core.trigger_settings()

    async def put_trigger_setting(self, key: str, value: bytes) -> None:
        await self.core.put_trigger_setting(key, value)

    async def drop_trigger_setting(self, key: str) -> None:
        await self.core.drop_trigger_setting(key)
