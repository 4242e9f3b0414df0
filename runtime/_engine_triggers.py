"""The trigger part of :class:`runtime.Engine`: deploy SOPs with ``triggers:``, emit events, operate triggers.

A mixin, so the engine module stays about submitting and following executions; the methods
reach the trigger actor (:mod:`runtime.triggers`) through the engine's connection.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from runtime.errors import SubmissionError
from sop import Sop


class TriggerMethods:
    """Engine methods for triggers (mixed into :class:`runtime.Engine`)."""

    _conn: Any

    def deploy(self, sop: str | os.PathLike[str] | Sop) -> list[str]:
        """Deploy an SOP: its ``triggers:`` start executions from now on; returns their ids (``<sop>/<name>``).

        Deploying a new version replaces the old one's triggers (one it no longer has is removed;
        one kept with the same schedule keeps its next fire time and waiting fires). The SOP is
        checked as a submission would be (mode, handlers); its handlers must be importable
        references, since its executions start long after this client may be gone.

        Raises:
            SopValidationError: the SOP is invalid (every problem listed, e.g. a bad cron naming its trigger).
            SubmissionError: it has no triggers, or a handler is a callable of this process.
        """
        return self._conn.call("triggers", "deploy", self._deployment(sop))

    def _deployment(self, sop: str | os.PathLike[str] | Sop) -> dict[str, Any]:
        """What the trigger actor keeps of a deployed SOP: its triggers and how to submit it."""
        from runtime.engine import _priority, _secrets
        from runtime.request import SubmitRequest, sop_definition, submitter

        engine: Any = self  # the Engine this is mixed into: its loading and submission helpers
        model, _, source = engine.load(sop)
        if not model.triggers:
            raise SubmissionError(f"{source} has no triggers to deploy; add a 'triggers:' list (cron or event) "
                                  "or run it with `sopflow run`")
        mode = engine._mode(model, None, source)
        priority_class, rank = _priority(model.priority)
        base = Path(source).parent if source not in ("<string>", "<object>") else Path.cwd()
        request = SubmitRequest(model, {}, mode, rank, None, engine._handlers(model), engine._subsops(model, base, ()),
                                _secrets(model), source, definition=sop_definition(model),
                                priority_class=priority_class, submitted_by=submitter(None),
                                runtime_env=engine._runtime_env())
        if request.has_callables:
            raise SubmissionError(f"{source}: a handler is registered as a function of this process, which "
                                  "triggered executions cannot reach after it exits; register it by reference "
                                  "('module:function') to deploy")
        return {"sop": model.sop, "version": model.version, "request": {
            "request": request.describe(), "mode": mode, "priority": rank, "priority_class": priority_class},
            "triggers": [t.model_dump(mode="json", exclude_defaults=True) for t in model.triggers]}

    def undeploy(self, sop: str) -> list[str]:
        """Remove the triggers of the SOP named ``sop`` (executions already started go on); returns their ids.

        Raises:
            TriggerError: the SOP has no deployed triggers.
        """
        return self._conn.call("triggers", "undeploy", sop)

    def emit(self, name: str, payload: Any = None, key: str | None = None) -> dict[str, Any]:
        """Emit the event ``name``: every deployed trigger on it whose filter passes starts an execution.

        ``key`` makes the emit safe to repeat: the same key starts one execution per trigger, however
        often it is sent. The payload is data: it reaches inputs through ``${{ trigger.payload.* }}``.

        Returns:
            ``{"event", "key", "fired": [{"trigger", "key", "execution"}], "not_fired": [{"trigger", "reason"}]}``
            (``execution`` is None while the fire waits for the trigger's ``max_concurrent``).

        Raises:
            TriggerError: the payload is not JSON data or is too big (``EngineConfig.trigger_payload_max_bytes``).
        """
        return self._conn.call("triggers", "emit", name, payload, key)

    def triggers(self) -> list[dict[str, Any]]:
        """Every deployed trigger: kind, schedule or event, next fire, paused, waiting, running, last execution."""
        return self._conn.call("triggers", "list")

    def pause_trigger(self, name: str) -> dict[str, Any]:
        """Pause a trigger (``<sop>/<name>``, or ``<name>`` when unique): it fires nothing until resumed."""
        return self._conn.call("triggers", "pause", name)

    def resume_trigger(self, name: str) -> dict[str, Any]:
        """Resume a paused trigger; a cron trigger fires next at its next time after now (missed ones are skipped)."""
        return self._conn.call("triggers", "resume", name)

    def fire_trigger(self, name: str, payload: Any = None, key: str | None = None) -> dict[str, Any]:
        """Fire a trigger now, by hand (an event trigger's filter is not applied); returns the fire."""
        return self._conn.call("triggers", "fire", name, payload, key)
