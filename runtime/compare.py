"""Whether one SOP's System Design Run and Agent Centric Run came to the same result.

:meth:`runtime.Engine.compare` runs an SOP once in each mode and hands both final
views to :func:`compare_views`. Two runs are *equivalent* when the execution ended
with the same status, the SOP's outputs are equal, every step ended the same way
(``succeeded``, ``failed``, ``skipped``, ``upstream_failed`` ...: an agent's ``skip``
decision and a DAG's false ``when`` both end a step ``skipped``) and every step that
succeeded in both produced the same output. Error texts, attempts and timings are not
compared: they say how a run went, not what it came to.

Everything here is plain data and pure functions (no Ray, no engine), so the diff is
testable on its own.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from runtime.errors import SubmissionError
from runtime.status import ExecutionView, StepStatus

MODES = ("system_design", "agent_centric")
"""The two modes a comparison runs, in the order it reports them."""


class _Absent:
    """The value on the side of a difference where the key or step does not exist."""

    _instance: _Absent | None = None

    def __new__(cls) -> _Absent:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "(absent)"

    def __reduce__(self) -> str:  # one instance across pickling (Ray, the in-process engine)
        return "ABSENT"


ABSENT = _Absent()
"""Stands for an output key or a step one of the two runs does not have."""


@dataclass(frozen=True, slots=True)
class RunResult:
    """What one run came to, as a comparison reads it.

    Attributes:
        execution_id: The execution's id.
        mode: ``system_design`` or ``agent_centric``.
        status: The execution's final status (``completed``, ``failed`` ...).
        outputs: The SOP's outputs (its ``outputs:`` block, rendered).
        steps: Step id -> its final status (a :class:`runtime.StepStatus` value).
        step_outputs: Step id -> its output, for the steps that succeeded.
    """

    execution_id: str
    mode: str
    status: str
    outputs: Mapping[str, Any] = field(default_factory=dict)
    steps: Mapping[str, str] = field(default_factory=dict)
    step_outputs: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_view(cls, view: ExecutionView, outputs: Mapping[str, Any] | None = None) -> RunResult:
        """The result of a finished execution's view.

        Args:
            view: Its final view (``Engine.wait``).
            outputs: Its ``{"outputs": ..., "steps": ...}`` with artifacts resolved to their
                values; default ``view.outputs`` as it is.
        """
        data = dict(outputs if outputs is not None else view.outputs or {})
        steps = {sid: str(s.status.value if isinstance(s.status, StepStatus) else s.status)
                 for sid, s in view.steps.items()}
        succeeded = dict(data.get("steps") or {})
        return cls(str(view.id), view.mode, str(view.status.value), dict(data.get("outputs") or {}), steps,
                   {sid: succeeded.get(sid) for sid, status in steps.items() if status == StepStatus.SUCCEEDED})


@dataclass(frozen=True, slots=True)
class Difference:
    """One way the two runs differ.

    Attributes:
        what: ``status`` (the execution's), ``output`` (one of the SOP's outputs),
            ``step_status`` or ``step_output``.
        where: ``status``, ``outputs.<key>``, ``steps.<id>.status`` or ``steps.<id>.output``.
        system_design: The System Design Run's value (:data:`ABSENT` when it has none).
        agent_centric: The Agent Centric Run's value (:data:`ABSENT` when it has none).
    """

    what: str
    where: str
    system_design: Any
    agent_centric: Any

    def __str__(self) -> str:
        return (f"{self.where}\n  - system_design: {_shown(self.system_design)}\n"
                f"  + agent_centric: {_shown(self.agent_centric)}")


@dataclass(frozen=True)
class Comparison:
    """The outcome of :meth:`runtime.Engine.compare`: one SOP, run once in each mode.

    Attributes:
        sop: The SOP's name.
        system_design_id: The System Design Run's execution id.
        agent_centric_id: The Agent Centric Run's execution id.
        differences: Every difference (see :func:`differences`), status first, then the
            SOP's outputs, then the steps in the SOP's order.
        system_design: What the System Design Run came to.
        agent_centric: What the Agent Centric Run came to.
        equivalent: Whether the runs came to the same result: exactly when there is no
            difference (derived, not given).
    """

    sop: str
    system_design_id: str
    agent_centric_id: str
    differences: list[Difference] = field(default_factory=list)
    system_design: RunResult | None = None
    agent_centric: RunResult | None = None
    equivalent: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "equivalent", not self.differences)

    def __str__(self) -> str:
        lines = [f"system_design  {self.system_design_id}  {self.system_design.status if self.system_design else ''}",
                 f"agent_centric  {self.agent_centric_id}  {self.agent_centric.status if self.agent_centric else ''}"]
        lines = [line.rstrip() for line in lines]
        if self.equivalent:
            lines.append("equivalent")
        else:
            n = len(self.differences)
            lines.append(f"not equivalent: {n} difference{'s' if n != 1 else ''}")
            lines.extend(str(d) for d in self.differences)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """As JSON data (``sopflow compare --format json``); an absent value is ``null`` with
        ``"absent": ["system_design"]`` (or the other mode) saying which side had none."""
        return {"sop": self.sop, "equivalent": self.equivalent,
                "system_design": {"id": self.system_design_id,
                                  "status": self.system_design.status if self.system_design else None},
                "agent_centric": {"id": self.agent_centric_id,
                                  "status": self.agent_centric.status if self.agent_centric else None},
                "differences": [_difference_dict(d) for d in self.differences]}


def differences(system_design: RunResult, agent_centric: RunResult) -> list[Difference]:
    """How the two runs' results differ; empty exactly when they are equivalent.

    Swapping the arguments gives the same differences with the two values swapped.
    """
    sd, ac = system_design, agent_centric
    found: list[Difference] = []
    if not same(sd.status, ac.status):
        found.append(Difference("status", "status", sd.status, ac.status))
    for key in _union(sd.outputs, ac.outputs):
        a, b = sd.outputs.get(key, ABSENT), ac.outputs.get(key, ABSENT)
        if not same(a, b):
            found.append(Difference("output", f"outputs.{key}", a, b))
    for sid in _union(sd.steps, ac.steps):
        a, b = sd.steps.get(sid, ABSENT), ac.steps.get(sid, ABSENT)
        if not same(a, b):
            found.append(Difference("step_status", f"steps.{sid}.status", a, b))
        elif a == StepStatus.SUCCEEDED:
            out_a, out_b = sd.step_outputs.get(sid), ac.step_outputs.get(sid)
            if not same(out_a, out_b):
                found.append(Difference("step_output", f"steps.{sid}.output", out_a, out_b))
    return found


def compare_results(sop: str, system_design: RunResult, agent_centric: RunResult) -> Comparison:
    """The :class:`Comparison` of two runs of SOP ``sop``."""
    return Comparison(sop, str(system_design.execution_id), str(agent_centric.execution_id),
                      differences(system_design, agent_centric), system_design, agent_centric)


def same(a: Any, b: Any) -> bool:
    """Whether two values are the same data, as JSON sees it.

    A list equals a tuple with the same items (data that went through JSON comes back as
    lists); ``1`` equals ``1.0``; ``True`` is not ``1``; NaN equals NaN (a value is always
    the same as itself, so a run always matches itself).
    """
    return _canonical(a) == _canonical(b)


def _canonical(value: Any) -> Any:
    if value is ABSENT:
        return ("absent",)
    if value is None:
        return ("null",)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int):
        return ("number", value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return ("number", repr(value))
        return ("number", int(value) if value.is_integer() else value)
    if isinstance(value, str):
        return ("text", value)
    if isinstance(value, Mapping):
        return ("object", tuple(sorted((str(k), _canonical(v)) for k, v in value.items())))
    if isinstance(value, list | tuple):
        return ("array", tuple(_canonical(v) for v in value))
    return ("other", type(value).__name__, repr(value))


def _union(first: Mapping[str, Any], second: Mapping[str, Any]) -> list[str]:
    """Keys of both, the first's order, then the second's new ones (a stable order for the report)."""
    return list(dict.fromkeys([*first, *second]))


def _shown(value: Any, limit: int = 500) -> str:
    if value is ABSENT:
        return "(absent)"
    text = json.dumps(value, default=str, sort_keys=True)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def _difference_dict(d: Difference) -> dict[str, Any]:
    absent = [mode for mode, v in zip(MODES, (d.system_design, d.agent_centric)) if v is ABSENT]
    out = {"what": d.what, "where": d.where,
           "system_design": None if d.system_design is ABSENT else d.system_design,
           "agent_centric": None if d.agent_centric is ABSENT else d.agent_centric}
    if absent:
        out["absent"] = absent
    return out


# -- which modes an SOP fits ------------------------------------------------------------------------


def mode_problem(sop: Any, mode: str) -> str | None:
    """Why SOP ``sop`` (a :class:`sop.Sop`) cannot run in ``mode``, or None when it can.

    The reason is :func:`sop.modes.sop_mode_fit`'s, the one validation and submission give.
    """
    from sop.modes import sop_mode_fit

    fit = sop_mode_fit(sop, mode)
    if fit.mode is None or (mode != "auto" and fit.mode.value != mode):
        return fit.reason
    return None


def check_both_modes(sop: Any, source: str) -> None:
    """Refuse an SOP that cannot run in both modes (nothing to compare).

    Raises:
        SubmissionError: it fits one mode only; the message names which and why.
    """
    for mode in MODES:
        problem = mode_problem(sop, mode)
        if problem is not None:
            other = next(m for m in MODES if m != mode)
            raise SubmissionError(f"cannot compare {source} in both modes: it runs only as {other}, "
                                  f"not as {mode}: {problem}")
