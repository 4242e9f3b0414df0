"""Plugins found through Python entry points: how layers above ``runtime`` plug into it.

``runtime`` never imports ``actors`` or ``agents``; they announce what they
provide in ``pyproject.toml`` and ``runtime`` finds it here:

- ``sopflow.connections``: how an :class:`runtime.Engine` reaches an engine
  (``ray``: the actors on a Ray cluster, from :mod:`actors`);
- ``sopflow.step_runners``: extra step runners by kind (``mcp``, agents), each
  entry point a factory called with the :class:`runtime.seams.ExecutionHost`;
- ``sopflow.agent_drivers``: where agent sessions run (``ray``: host actors; ``local``:
  this process), each a factory called with the host (see :class:`runtime.seams.AgentDriver`).
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from typing import Any

from runtime.errors import EngineStartError

log = logging.getLogger("sopflow.plugins")


def load(group: str, name: str) -> Any:
    """The object the entry point ``name`` of ``group`` names.

    Raises:
        EngineStartError: no such entry point (sopflow is not installed as a package).
    """
    found = [ep for ep in entry_points(group=group) if ep.name == name]
    if not found:
        raise EngineStartError(f"no {group} plugin named {name!r}: is sopflow installed "
                               "(`pip install -e .` in the repository, or `make setup`)?")
    return found[0].load()


def step_runners(host: Any) -> dict[str, Any]:
    """Runner kind -> runner, from every installed ``sopflow.step_runners`` plugin.

    A plugin that fails to load is logged and left out: its steps then fail with
    "no runner", naming the kind, instead of the whole engine failing to start.
    """
    runners: dict[str, Any] = {}
    for ep in entry_points(group="sopflow.step_runners"):
        try:
            runners[ep.name] = ep.load()(host)
        except Exception:  # noqa: BLE001 - one broken plugin must not stop the engine
            log.exception("the step runner plugin %s (%s) cannot be loaded", ep.name, ep.value)
    return runners


def agent_driver(name: str, host: Any) -> Any:
    """The ``sopflow.agent_drivers`` plugin ``name`` made for ``host``, or None when it is missing
    or broken (logged): Agent Centric Runs then fail, saying why, and nothing else is affected."""
    for ep in entry_points(group="sopflow.agent_drivers"):
        if ep.name == name:
            try:
                return ep.load()(host)
            except Exception:  # noqa: BLE001 - a broken plugin must not stop the engine
                log.exception("the agent driver plugin %s (%s) cannot be loaded", ep.name, ep.value)
                return None
    return None
