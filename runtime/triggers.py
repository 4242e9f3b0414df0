"""Triggers: start executions of deployed SOPs on a cron schedule or when an event is emitted.

:class:`TriggerCore` is the trigger actor's plain class (Ray front: :mod:`actors._triggers`; the
in-process engine runs it on its own loop). It keeps every deployed trigger's record in the
state store through the coordinator (:mod:`runtime._trigger_state`) and delivers each fire
at least once: the fire is written (with the trigger's next fire time) *before* it is
submitted, and submitted with a deterministic idempotency key (``trigger:<sop>/<name>:<fire
time>``, or ``trigger:<sop>/<name>:event:<key>``), so a fire delivered again after a crash
finds the execution it started instead of starting another. After downtime a cron trigger's
missed fire times follow its ``catch_up`` (:func:`runtime.cron.plan`); a trigger with
``max_concurrent`` keeps further fires waiting in its record until one of its runs ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from runtime import cron
from runtime._trigger_state import SETTING_PREFIX, Deployed, Fire, TriggerHost
from runtime.config import EngineConfig
from runtime.errors import IdempotencyConflict, SubmissionError, TriggerError, TriggerNotFound, TriggerPayloadTooLarge
from runtime.inputs import resolve_inputs
from runtime.request import _from_described
from sop import Sop
from sop.expressions import TRIGGER_ROOTS, ExpressionError, compile_expression, render, strip_braces
from sop._trigger_checks import cron_problem
from sop.model import Trigger

logger = logging.getLogger("sopflow.triggers")

_MAX_ERROR = 1000
"""Characters of a fire's error kept in the trigger's record and logged."""

_MAX_NAME = 200
EVENT_NAME = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")
"""What an event name may be: the pattern a trigger's ``event:`` must match in an SOP (an event of
another name could never fire anything: it is refused, not silently dropped)."""
"""Longest event name or emit key taken."""

TICK_S = 1.0
"""The longest the actor sleeps between looks at its cron triggers and waiting fires."""


class TriggerCore:
    """Deployed triggers, their durable state and their delivery; see the module docstring.

    Args:
        host: The coordinator (it submits, and keeps the trigger records in its state store).
        config: The engine's config (payload limit, catch-up cap, grace).
        clock: Epoch seconds now; tests pass a controllable one.
        run: Start the loop that fires cron triggers on time; tests call :meth:`tick` instead.
    """

    def __init__(self, host: TriggerHost, config: EngineConfig | None = None, *,
                 clock: Callable[[], float] = time.time, run: bool = True) -> None:
        self.host = host
        self.config = config or EngineConfig()
        self.clock = clock
        self.triggers: dict[str, Deployed] = {}
        self._run = run
        self._loaded = False
        self._lock = asyncio.Lock()  # one decision at a time: a fire is planned, written and sent once
        self._load_lock = asyncio.Lock()  # the start's load and a first call's load are one load
        self._loop_task: asyncio.Task | None = None

    # -- life -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the records (a restarted actor resumes from them) and start firing."""
        await self._load()
        if self._run and self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(self._forever())

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None

    async def _load(self) -> None:
        if self._loaded:
            return
        async with self._load_lock:
            if self._loaded:
                return
            for key, blob in (await self.host.trigger_settings()).items():
                try:
                    deployed = Deployed.from_blob(blob)
                except (ValueError, TypeError, KeyError) as e:  # a damaged record costs that trigger, not all
                    logger.error("trigger record %s cannot be read (%s); redeploy its SOP", key, e)
                    continue
                self.triggers[deployed.id] = deployed
            self._loaded = True

    async def _forever(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the coordinator restarting, say: the next tick tries again
                logger.warning("trigger tick failed; trying again", exc_info=True)
            await asyncio.sleep(self._sleep_s())

    def _sleep_s(self) -> float:
        """Until the next cron fire, at most :data:`TICK_S` (waiting fires are looked at that often)."""
        now = self.clock()
        soonest = min((t.next_fire for t in self.triggers.values() if t.next_fire is not None and not t.paused),
                      default=now + TICK_S)
        return min(max(soonest - now, 0.05), TICK_S)

    # -- firing -----------------------------------------------------------------------------

    async def tick(self, now: float | None = None) -> list[str]:
        """Fire every due cron trigger and start waiting fires that have a slot; returns started ids."""
        await self._load()
        now = self.clock() if now is None else now
        started: list[str] = []
        async with self._lock:
            for trig in list(self.triggers.values()):
                if trig.spec.cron is not None and not trig.paused and trig.next_fire is not None:
                    due, following = cron.due(trig.spec.cron, trig.spec.timezone, trig.next_fire, now,
                                              self.config.trigger_catch_up_max)
                    if due:
                        planned = cron.plan(due, now, trig.spec.catch_up.value, self.config.trigger_grace_s,
                                            self.config.trigger_catch_up_max)
                        if len(planned) < len(due):
                            logger.info("trigger %s: %d missed fire(s) not started (catch_up: %s)", trig.id,
                                        len(due) - len(planned), trig.spec.catch_up.value)
                        known = {f.key for f in trig.pending} | set(trig.running)
                        trig.pending += [Fire(k, t) for t in planned
                                         if (k := cron.fire_key(trig.id, t)) not in known]
                        trig.next_fire = following
                        await self._save(trig)  # the fires are durable before any is sent
                if trig.pending and not trig.paused:  # paused: its waiting fires wait too
                    started += (await self._drain(trig)).values()
        return started

    async def emit(self, event: str, payload: Any = None, key: str | None = None) -> dict[str, Any]:
        """Deliver an event to every deployed, unpaused trigger on ``event`` whose filter it passes.

        Returns ``{"event", "key", "fired": [{"trigger", "key", "execution"}], "not_fired": [{"trigger",
        "reason"}]}``; ``execution`` is None while the fire waits for ``max_concurrent``.

        Raises:
            TriggerError: the payload is not JSON data or is larger than ``trigger_payload_max_bytes``.
        """
        await self._load()
        if not isinstance(event, str) or not EVENT_NAME.fullmatch(event):
            shown = repr(event)[:60] + ("..." if len(repr(event)) > 60 else "")
            raise TriggerError(f"the event name must be 1 to 128 letters, digits, '_', '.', ':' or '-' (as a "
                               f"trigger's 'event:' in an SOP), got {shown}")
        if key is not None:
            _check_name("key", key)
        payload = self._checked_payload(event, payload)
        now = self.clock()
        out: dict[str, Any] = {"event": event, "key": key, "fired": [], "not_fired": []}
        async with self._lock:
            for trig in list(self.triggers.values()):
                if trig.spec.event != event:
                    continue
                if trig.paused:
                    out["not_fired"].append({"trigger": trig.id, "reason": "paused"})
                    continue
                fire = Fire(cron.event_key(trig.id, key or uuid.uuid4().hex), now, payload, event, key)
                reason = self._filtered_out(trig, fire)
                if reason is not None:
                    out["not_fired"].append({"trigger": trig.id, "reason": reason})
                    continue
                try:
                    out["fired"].append(await self._enqueue(trig, fire))
                except TriggerError as e:  # this trigger is full; the others still get the event
                    out["not_fired"].append({"trigger": trig.id, "reason": str(e)})
        return out

    async def fire(self, trigger: str, payload: Any = None, key: str | None = None) -> dict[str, Any]:
        """Fire one trigger now, by hand (paused or not; an event trigger's filter is not applied)."""
        await self._load()
        trig = self._find(trigger)
        if key is not None:
            _check_name("key", key)
        payload = self._checked_payload(trig.spec.event or trig.id, payload)
        fire = Fire(f"trigger:{trig.id}:manual:{key or uuid.uuid4().hex}", self.clock(), payload,
                    trig.spec.event, key)
        async with self._lock:
            return await self._enqueue(trig, fire)

    async def _enqueue(self, trig: Deployed, fire: Fire) -> dict[str, Any]:
        """Make ``fire`` durable in the trigger's record and try to start it; a repeated key is not added."""
        if fire.key in trig.running:
            return {"trigger": trig.id, "key": fire.key, "execution": trig.running[fire.key]}
        if all(f.key != fire.key for f in trig.pending):
            if len(trig.pending) >= self.config.trigger_max_waiting:
                raise TriggerError(f"trigger {trig.id} already has {len(trig.pending):,} fires waiting for a run slot "
                                   f"(max_concurrent: {trig.spec.max_concurrent}); not fired — retry later, or raise "
                                   "max_concurrent or EngineConfig.trigger_max_waiting")
            trig.pending.append(fire)
            await self._save(trig)
        started = await self._drain(trig)
        eid = started.get(fire.key)
        if eid is None and all(f.key != fire.key for f in trig.pending):  # dropped: it can never start
            raise TriggerError(trig.last_error or f"fire {fire.key} of trigger {trig.id} was not started")
        return {"trigger": trig.id, "key": fire.key, "execution": eid}

    def _checked_payload(self, event: str, payload: Any) -> Any:
        try:
            text = json.dumps(payload, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise TriggerError(f"the payload of event {event!r} is not JSON data ({e}); send a JSON object "
                               "(or nothing)") from None
        if payload is not None and not isinstance(payload, dict):
            # ``${{ trigger.payload.<field> }}`` reads fields: the same rule as the HTTP API's webhook
            raise TriggerError(f"the payload of event {event!r} must be a JSON object (or nothing), got "
                               f"{type(payload).__name__}")
        limit = self.config.trigger_payload_max_bytes
        if len(text.encode()) > limit:
            raise TriggerPayloadTooLarge(f"the payload of event {event!r} is {len(text.encode()):,} bytes of JSON, "
                                         f"more than the {limit:,} allowed (EngineConfig.trigger_payload_max_bytes); "
                                         "send a reference to the data (a path, a URL, an id) instead of the data")
        return json.loads(text)  # plain JSON types only from here on: the payload stays data

    def _filtered_out(self, trig: Deployed, fire: Fire) -> str | None:
        """Why the event does not fire ``trig`` (its filter is false or fails), or None."""
        if trig.spec.filter is None:
            return None
        try:
            expr = compile_expression(strip_braces(trig.spec.filter), TRIGGER_ROOTS)
            return None if expr.evaluate(_context(trig, fire)) else "filter is false"
        except ExpressionError as e:
            return f"filter failed: {e}"

    async def _drain(self, trig: Deployed) -> dict[str, str]:
        """Start waiting fires, oldest first, while the trigger has slots; returns key -> execution id."""
        started: dict[str, str] = {}
        limit = trig.spec.max_concurrent
        if limit is not None and trig.running:
            ended = set(await self.host.ended(list(trig.running.values())))
            trig.running = {k: v for k, v in trig.running.items() if v not in ended}
        while trig.pending and (limit is None or len(trig.running) < limit):
            fire = trig.pending[0]
            try:
                eid = str(await self.host.submit(self._request(trig, fire)))
            except IdempotencyConflict as e:  # the key already started a run (a repeated emit): that is it
                eid = e.execution_id
            except SubmissionError as e:  # the fire can never start (its inputs do not fit): say so, drop it
                trig.pending.pop(0)
                trig.last_error = f"fire {fire.key} not started: {e}"[:_MAX_ERROR]  # a big payload stays out of logs
                logger.warning("trigger %s: %s", trig.id, trig.last_error)
                await self._save(trig)
                continue
            trig.pending.pop(0)
            if limit is not None:
                trig.running[fire.key] = eid
            trig.fired += 1
            trig.last_execution, trig.last_error = eid, None
            started[fire.key] = eid
            await self._save(trig)  # a crash before this: the fire is sent again and finds ``eid``
        return started

    def _request(self, trig: Deployed, fire: Fire) -> Any:
        """The submission for ``fire``: the deployed SOP with inputs mapped from ``trigger.*``."""
        described = trig.request
        model = Sop.model_validate(described["request"]["definition"])
        try:
            given = render(dict(trig.spec.inputs), _context(trig, fire), TRIGGER_ROOTS)
        except ExpressionError as e:
            raise SubmissionError(f"trigger {trig.id}: {e}") from e
        inputs = resolve_inputs(model, given, source=f"trigger {trig.id}")
        request = _from_described(described["request"], inputs, described["mode"], described["priority"],
                                  fire.key)
        request.priority_class = described.get("priority_class", "normal")
        request.submitted_by = f"trigger {trig.id}"
        return request

    # -- deploying and operating -------------------------------------------------------------

    async def deploy(self, deployment: dict[str, Any]) -> list[str]:
        """Put an SOP's triggers in place (built by :meth:`runtime.Engine.deploy`); returns their ids.

        A new version replaces the old one's triggers: those it no longer has are removed; one
        kept with the same schedule keeps its next fire time, waiting fires and pause.
        """
        await self._load()
        sop, now = deployment["sop"], self.clock()
        async with self._lock:
            new: dict[str, Deployed] = {}
            for raw in deployment["triggers"]:
                spec = Trigger.model_validate(raw)
                tid = f"{sop}/{spec.name}"
                # Checked here too: a deployment may come from any client, not only Engine.deploy.
                why = cron_problem(spec.cron, spec.timezone) if spec.cron is not None else None
                if why is not None:
                    raise TriggerError(f"trigger {tid}: {why}")
                old = self.triggers.get(tid)
                trig = Deployed(tid, spec, deployment["request"], deployment.get("version", "1"), now)
                if old is not None:
                    trig.paused, trig.pending, trig.running = old.paused, old.pending, old.running
                    trig.fired, trig.last_execution = old.fired, old.last_execution
                    if (old.spec.cron, old.spec.timezone) == (spec.cron, spec.timezone):
                        trig.next_fire = old.next_fire
                if spec.cron is not None and trig.next_fire is None:
                    trig.next_fire = cron.next_fire(spec.cron, spec.timezone, now)
                new[tid] = trig
            for tid in [t for t, d in self.triggers.items() if d.sop == sop and t not in new]:
                await self._drop(tid)
            for trig in new.values():
                self.triggers[trig.id] = trig
                await self._save(trig)
        return sorted(new)

    async def undeploy(self, sop: str) -> list[str]:
        """Remove an SOP's triggers (their waiting fires too; running executions go on); returns their ids."""
        await self._load()
        async with self._lock:
            gone = sorted(t for t, d in self.triggers.items() if d.sop == sop)
            if not gone:
                raise TriggerError(f"SOP {sop!r} has no deployed triggers; `sopflow triggers list` shows them")
            for tid in gone:
                await self._drop(tid)
        return gone

    async def list(self) -> list[dict[str, Any]]:
        await self._load()
        return [self.triggers[t].view() for t in sorted(self.triggers)]

    async def pause(self, trigger: str) -> dict[str, Any]:
        return await self._set_paused(trigger, True)

    async def resume(self, trigger: str) -> dict[str, Any]:
        """Resume a paused trigger: a cron trigger fires next at its next time after now (no catch-up)."""
        return await self._set_paused(trigger, False)

    async def _set_paused(self, trigger: str, paused: bool) -> dict[str, Any]:
        await self._load()
        async with self._lock:
            trig = self._find(trigger)
            if trig.paused and not paused and trig.spec.cron is not None:
                trig.next_fire = cron.next_fire(trig.spec.cron, trig.spec.timezone, self.clock())
            trig.paused = paused
            await self._save(trig)
            return trig.view()

    def _find(self, name: str) -> Deployed:
        if name in self.triggers:
            return self.triggers[name]
        matches = [t for t in self.triggers.values() if t.spec.name == name]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise TriggerError(f"trigger name {name!r} is used by several SOPs ({', '.join(t.id for t in matches)}); "
                               "say which: <sop>/<name>")
        from sop._suggest import did_you_mean

        hint = did_you_mean(name, [*self.triggers, *(t.spec.name for t in self.triggers.values())])
        raise TriggerNotFound(f"no deployed trigger {name!r}; {hint + ' ' if hint else ''}"
                           "`sopflow triggers list` shows them")

    async def _save(self, trig: Deployed) -> None:
        await self.host.put_trigger_setting(SETTING_PREFIX + trig.id, trig.to_blob())

    async def _drop(self, tid: str) -> None:
        await self.host.drop_trigger_setting(SETTING_PREFIX + tid)
        self.triggers.pop(tid, None)


def _check_name(what: str, value: Any) -> None:
    """An event name or key is short text: it becomes part of an idempotency key."""
    if not isinstance(value, str) or not value or len(value) > _MAX_NAME or not value.isprintable():
        shown = repr(value)[:60] + ("..." if len(repr(value)) > 60 else "")
        raise TriggerError(f"the {what} must be printable text of 1 to {_MAX_NAME} characters, got {shown}")


def _context(trig: Deployed, fire: Fire) -> dict[str, Any]:
    """What ``${{ trigger.* }}`` reads: only data (names, times, the JSON payload)."""
    return {"trigger": {"name": trig.spec.name, "type": trig.kind, "event": fire.event, "payload": fire.payload,
                        "key": fire.emit_key or fire.key,
                        "fire_time": cron.iso(fire.fire_time, trig.spec.timezone)}}
