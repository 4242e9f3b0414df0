"""The trigger actor: :class:`runtime.triggers.TriggerCore` reaching the coordinator actor.

Detached and named (``sopflow-triggers``) with ``max_restarts=-1`` like the other actors:
killed or crashed, Ray starts it again and it resumes from the records it keeps in the
coordinator's state store; fires it was delivering are sent again and deduplicated there.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import ray

from runtime.config import EngineConfig
from runtime.errors import EngineUnavailable
from runtime.triggers import TriggerCore
from sop.errors import SopflowError

logger = logging.getLogger("sopflow.triggers")


class RayCoordinatorHost:
    """A :class:`runtime._trigger_state.TriggerHost` over the coordinator actor's handle."""

    def __init__(self, coordinator: Any) -> None:
        self.coordinator = coordinator

    async def _call(self, method: str, *args: Any) -> Any:
        try:
            return await getattr(self.coordinator, method).remote(*args)
        except ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, SopflowError):
                raise cause from None
            raise
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
            # The coordinator is restarting: the fire stays waiting and the next tick sends it again.
            raise EngineUnavailable(f"the coordinator cannot be reached ({type(e).__name__})") from e

    async def submit(self, request: Any) -> str:
        return await self._call("submit", request)

    async def ended(self, execution_ids: list[str]) -> list[str]:
        return await self._call("ended", execution_ids)

    async def trigger_settings(self) -> dict[str, bytes]:
        return await self._call("trigger_settings")

    async def put_trigger_setting(self, key: str, value: bytes) -> None:
        await self._call("put_trigger_setting", key, value)

    async def drop_trigger_setting(self, key: str) -> None:
        await self._call("drop_trigger_setting", key)


class TriggerActor(TriggerCore):
    """The trigger actor (named so in the dashboard): loads its records and starts firing on creation."""

    def __init__(self, coordinator: Any, config: EngineConfig | None = None) -> None:
        super().__init__(RayCoordinatorHost(coordinator), config)
        # Ray runs an async actor's __init__ in its event loop; a restart begins here too.
        self._starting = asyncio.get_running_loop().create_task(self._start_when_possible())

    async def _start_when_possible(self) -> None:
        while True:
            try:
                await self.start()
                return
            except EngineUnavailable:  # the coordinator is (re)starting: its store comes back with it
                await asyncio.sleep(0.5)
            except Exception:  # noqa: BLE001 - a store that fails for now: without a start no cron fires
                logger.warning("the trigger actor could not load its triggers; trying again", exc_info=True)
                await asyncio.sleep(5.0)

    def __repr__(self) -> str:
        return f"TriggerActor({len(getattr(self, 'triggers', ()))} triggers)"
