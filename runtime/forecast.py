"""The coordinator's use of learned estimates: feeding them, keeping them, and what they forecast.

:class:`Learning` is what :class:`runtime.coordinator.CoordinatorCore` holds:
it feeds :class:`runtime.estimates.Estimates` from the events it appends,
saves the changed histories to the state store at most every
:data:`SAVE_EVERY_S` (off the loop) and when the store closes, loads them at
start, and gives each execution, when it is adopted, its expected duration
(for the ``overdue`` alert) and its learned allocations (steps whose
``resources`` say ``learned: true``). Status asks :meth:`Learning.forecast`
for an execution's ETA and queue position.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

from runtime import estimates as est
from runtime.events import Event, EventKind
from runtime.status import StepStatus

log = logging.getLogger("sopflow.estimates")

SAVE_EVERY_S = 5.0
"""How long changed histories may wait before they are written to the state store."""
_FEEDS = frozenset({EventKind.STEP_SUCCEEDED, EventKind.STEP_FAILED, EventKind.FINISHED})


class Learning:
    """Learned estimates inside one coordinator; see the module docstring.

    Args:
        event_log: Returns the state store (the coordinator's log, opened lazily).
    """

    def __init__(self, event_log: Any) -> None:
        self._log = event_log
        self.estimates = est.Estimates()
        self._save_scheduled = False
        self._derived: dict[int, tuple[Any, int, float | None, dict[str, Any]]] = {}
        """id(SOP model) -> (the model, its history's change count, expected duration, learned shapes):
        executions of one submitted SOP share the model, and a submit must stay cheap."""

    def start(self) -> None:
        """Load the kept histories (or rebuild them once from the log); a failure leaves them empty."""
        try:
            loaded = est.load(self._log())
            if loaded is None:
                loaded = est.rebuild(self._log())
                loaded.dirty.update(loaded.sops())  # kept at the next save: rebuilt once, not at every start
            self.estimates = loaded
        except Exception:  # noqa: BLE001 - estimates are advice: the engine runs without them
            log.exception("the learned estimates could not be read; starting without history")

    def feed(self, exe: Any, event: Event) -> None:
        """Take an event the coordinator just appended (cheap for kinds that say nothing here)."""
        if event.kind not in _FEEDS:
            return
        step = exe.state.steps.get(event.step) if event.step else None
        self.estimates.feed(exe.sop.sop, event, step.started_at if step is not None else None)
        if not self._save_scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # fed outside a loop (a test, an import): saved at close
                return
            self._save_scheduled = True
            loop.call_later(SAVE_EVERY_S, lambda: asyncio.ensure_future(self.save()))

    async def save(self) -> int:
        """Write the changed histories to the state store (in a thread); returns how many."""
        self._save_scheduled = False
        return await asyncio.to_thread(self.save_now)

    def save_now(self) -> int:
        dirty, self.estimates.dirty = self.estimates.dirty, set()
        if not dirty:
            return 0
        try:
            return est.save(self.estimates, self._log(), sorted(dirty))
        except Exception:  # noqa: BLE001 - a store that takes no writes now: try again with the next change
            self.estimates.dirty |= dirty
            log.warning("the learned estimates could not be saved; will retry", exc_info=True)
            return 0

    def adopt(self, exe: Any) -> None:
        """Give ``exe`` its expected duration and learned allocations, fixed for its whole run."""
        sop = exe.sop
        changes = self.estimates.changes.get(sop.sop, 0)
        cached = self._derived.get(id(sop))
        if cached is None or cached[0] is not sop or cached[1] != changes:  # `is`: an id can be reused
            cached = (sop, changes, self.estimates.expected_duration(sop, exe.graph), self._shapes(sop))
            if len(self._derived) >= 256:
                self._derived.pop(next(iter(self._derived)))  # the oldest: a small, bounded cache
            self._derived[id(sop)] = cached
        exe.learned_expected_s = cached[2]
        exe.learned.update(cached[3])

    def _shapes(self, sop: Any) -> dict[str, Any]:
        """Step -> its learned reservation, for the steps of ``sop`` opted in with enough history."""
        shapes: dict[str, Any] = {}
        if not sop.defaults.resources.learned and not any(
                s.resources is not None and s.resources.learned for s in (*sop.steps, *sop.rollback)):
            return shapes  # the common case, without building every step's effective resources
        for step in (*sop.steps, *sop.rollback):
            declared = sop.effective_resources(step)
            if declared.learned:
                shape = self.estimates.learned(sop.sop, step.id, declared)
                if shape is not None:
                    shapes[step.id] = shape
        return shapes

    def forecast(self, exe: Any, position: int | None, now: float | None = None) -> dict[str, Any]:
        """``expected_duration_s``, ``eta`` (a timestamp) and ``queue_position`` of a running execution.

        The ETA is now plus the critical path of what is left (a running step counts its p50 less
        the time it has run), so it does not include time still to be spent queued for capacity.
        """
        now = time.time() if now is None else now
        return {"expected_duration_s": expected_s(exe), "queue_position": position,
                "eta": _eta(self.estimates, exe, now)}

    def known(self, sop: str) -> dict[str, Any]:
        """The history of every step of the SOP named ``sop`` (for ``sopflow suggest``)."""
        return {"sop": sop, "completed": self.estimates.completed(sop),
                "steps": {step: self.estimates.described(sop, step) for step in self.estimates.steps_of(sop)}}


def with_forecast(view: Any, ask: Any) -> Any:
    """``view`` with the coordinator's forecast (``ask()``) filled in, while it is not finished."""
    if view.status.terminal:
        return view
    return dataclasses.replace(view, **ask())


def expected_s(exe: Any) -> float | None:
    """The execution's expected duration: its SOP's declaration, else what its history says."""
    return exe.sop.expected_duration_s or getattr(exe, "learned_expected_s", None)


def _eta(estimates: est.Estimates, exe: Any, now: float) -> float | None:
    state = exe.state
    if state.status.terminal or state.rolling_back:
        return None
    durations = estimates.step_durations(exe.sop)
    if durations is None:
        return None
    left: dict[str, float] = {}
    for sid, expected in durations.items():
        st = state.steps.get(sid)
        if st is not None and st.status.terminal:
            left[sid] = 0.0
        elif st is not None and st.status == StepStatus.RUNNING and st.started_at:
            left[sid] = max(expected - (now - st.started_at), 0.0)
        else:
            left[sid] = expected
    return round(now + exe.graph.critical_path(left).duration_s, 3)


def reserved(exe: Any, step: Any) -> Any:
    """The resources an attempt of ``step`` reserves: the declared ones, with the learned CPU and
    memory when the step opted in and has enough history (see :mod:`runtime.estimates`)."""
    declared = exe.sop.effective_resources(step)
    shape = getattr(exe, "learned", {}).get(step.id)
    if shape is None:
        return declared
    return declared.model_copy(update={"cpu": shape.cpu, "memory_mb": shape.memory_mb or None})
