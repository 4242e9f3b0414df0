"""The in-process engine: the whole state machine in this process, without Ray (like ADK's ``InMemoryRunner``).

:class:`InProcessConnection` runs a :class:`runtime.coordinator.CoordinatorCore`,
an :class:`runtime.monitor.ExecutionMonitor` and a
:class:`runtime.failure_handler.FailureHandler` on an asyncio loop in a
background thread, with handlers run in threads by
:class:`runtime.runners.InProcessRunner`. ``Engine.in_process()`` puts the
public API in front of it, so code written against a cluster runs unchanged.
"""

from __future__ import annotations

import asyncio
import copy
import threading
from collections.abc import Awaitable
from typing import Any

from runtime.config import EngineConfig
from runtime.coordinator import CoordinatorCore
from runtime.events import Event
from runtime.failure_handler import FailureHandler
from runtime.monitor import ExecutionMonitor
from runtime.plugins import agent_driver, step_runners
from runtime.runners import InProcessRunner

_TARGETS = ("coordinator", "monitor", "failure_handler", "triggers")


class InProcessConnection:
    """An engine on a private event loop in this process; see the module docstring.

    Arguments and answers cross as copies, as they would to and from an actor: changing a
    dict after passing it, or a result or event received, changes nothing in the engine.
    """

    def __init__(self, config: EngineConfig | None = None, registry: Any = None) -> None:
        self.config = config or EngineConfig(state="memory://")
        self.registry = registry
        """The engine's registry: its agent sessions find registered models in it."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sopflow-in-process", daemon=True)
        self._thread.start()
        self.monitor = ExecutionMonitor(self.config)
        self.failure_handler = FailureHandler()
        try:
            self.coordinator: CoordinatorCore = self._run(self._build())
        except BaseException:  # the state file is in use, say: the loop and its thread go too
            self._stop_loop()
            raise
        from runtime._trigger_state import CoreHost
        from runtime.triggers import TriggerCore

        self.triggers = TriggerCore(CoreHost(self.coordinator), self.config)
        self._run(self.triggers.start())
        self._closed = False

    async def _build(self) -> CoordinatorCore:
        core = CoordinatorCore(self.config, task_runner=InProcessRunner(), policy=self.failure_handler,
                               monitor=_LocalFeed(self.monitor, self._loop), service_name="sopflow")
        core.machine.runners.update(step_runners(core))
        core.registry = self.registry  # type: ignore[attr-defined]
        core.machine.agents = agent_driver("local", core)
        return core

    def _run(self, coro: Awaitable[Any], timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)  # type: ignore[arg-type]

    def call(self, target: str, method: str, *args: Any, timeout: float | None = None) -> Any:
        if target not in _TARGETS:
            raise ValueError(f"target must be one of {', '.join(_TARGETS)}, got {target!r}")
        if self._closed:
            from runtime.errors import EngineUnavailable

            raise EngineUnavailable("this in-process engine was shut down; create another with Engine.in_process()")
        # Copies both ways, as across an actor boundary: the caller's objects and the engine's stay apart.
        return _copied((self._run(getattr(getattr(self, target), method)(*_copied(args)), timeout),))[0]

    def close_store(self) -> None:
        if not self._closed:
            self._run(self.coordinator.close_store(), timeout=30)

    def kill(self) -> None:
        self.close()

    def close(self) -> None:
        """Commit and close the state store, then stop the loop (running handlers' threads are abandoned)."""
        if self._closed:
            return
        try:
            self._run(self.triggers.stop(), timeout=10)  # no fire is sent to a closing store
            self.close_store()
        finally:
            self._closed = True
            try:
                self._run(_cancel_pending(), timeout=10)
            finally:
                self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()  # its selector's file descriptors; abandoned threads find it closed


class _LocalFeed:
    """The monitor in this process as the journal's :class:`runtime.journal.MonitorFeed`."""

    def __init__(self, monitor: ExecutionMonitor, loop: asyncio.AbstractEventLoop) -> None:
        self.monitor, self.loop = monitor, loop

    def apply(self, batch: list[Event]) -> Awaitable[Any]:
        return self.monitor.apply(batch)

    def set_stalled(self, reason: str | None) -> None:  # called from the store's writer thread
        asyncio.run_coroutine_threadsafe(self.monitor.set_stalled(reason), self.loop)

    def resync(self) -> Awaitable[Any]:
        return self.monitor.resync()


async def _cancel_pending() -> None:
    """Cancel the loop's tasks (a monitor flush, an attempt's wait for its thread): none outlives the engine."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _copied(args: tuple[Any, ...]) -> tuple[Any, ...]:
    try:
        return copy.deepcopy(args)
    except Exception:  # noqa: BLE001 - something that cannot be copied (a lock in a handler's closure)
        return args
