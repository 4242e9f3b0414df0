"""What a replay found: the recorded and the replayed outcome of every step, and how they differ.

A replay runs an execution's SOP again through the same state machine; steps
before the checkpoint take their recorded outcomes from the log and steps from
the checkpoint on run their handlers again. :func:`compare` then lines the two
runs up step by step and names the cause of every difference, so
non-determinism is reported, never hidden.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from runtime.state import ExecutionState

FIELDS = ("inputs", "status", "attempts", "output", "classification")


@dataclass(frozen=True, slots=True)
class StepDiff:
    """One way a replayed step differs from the recording.

    Attributes:
        step: The step id.
        field: ``inputs`` (a digest of what the handler got), ``status``, ``attempts``,
            ``output`` or ``classification``.
        recorded: The value in the recorded execution.
        replayed: The value in the replay.
        cause: Why, as far as the replay can tell.
    """

    step: str
    field: str
    recorded: Any
    replayed: Any
    cause: str


@dataclass(slots=True)
class ReplayReport:
    """The outcome of ``engine.replay(id, from_step=...)``."""

    execution_id: str
    from_step: str | None
    rerun: list[str]
    """Steps whose handlers ran again (the checkpoint and everything downstream of it)."""
    recorded_status: str
    replayed_status: str
    outputs_match: bool
    diffs: list[StepDiff] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    handlers_run: int = 0
    events: int = 0
    seconds: float = 0.0

    @property
    def deterministic(self) -> bool:
        """True when the replay reproduced the recorded outcome exactly."""
        return not self.diffs and self.outputs_match and self.recorded_status == self.replayed_status

    @property
    def nondeterministic_steps(self) -> list[str]:
        return sorted({d.step for d in self.diffs})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["deterministic"] = self.deterministic
        return d

    def render(self) -> str:
        """A step-by-step report for ``sopflow replay``."""
        start = f"from step '{self.from_step}'" if self.from_step else "whole execution, all outcomes recorded"
        lines = [f"replay of {self.execution_id} ({start}): "
                 f"{self.handlers_run} handler run(s), {self.events} events, {self.seconds * 1000:.1f} ms",
                 f"  status: recorded {self.recorded_status}, replayed {self.replayed_status}"]
        if self.rerun:
            lines.append(f"  ran again: {', '.join(self.rerun)}")
        if self.deterministic:
            lines.append("  identical: every step and the result match the recording")
        else:
            lines.append(f"  DIVERGED in {len(self.nondeterministic_steps)} step(s): "
                         f"{', '.join(self.nondeterministic_steps) or '(result only)'}")
            for d in self.diffs:
                lines.append(f"  - {d.step}.{d.field}: recorded {_short(d.recorded)}, "
                             f"replayed {_short(d.replayed)}\n      cause: {d.cause}")
            if not self.outputs_match:
                lines.append("  - the execution's outputs differ")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def normalise(value: Any) -> Any:
    """The value as the log stores it (JSON types), so a tuple equals the list it was logged as."""
    try:
        return json.loads(json.dumps(value, default=repr))
    except (TypeError, ValueError):
        return repr(value)


def compare(recorded: ExecutionState, replayed: ExecutionState, *, rerun: set[str],
            upstream: Callable[[str], set[str]], context_notes: dict[str, str],
            inputs: dict[str, tuple[str, str]] | None = None) -> list[StepDiff]:
    """Every step-level difference between two runs, with its most likely cause.

    Args:
        recorded: The state folded from the recorded history.
        replayed: The state the replay reached.
        rerun: Steps whose handlers ran again.
        upstream: Step -> all steps it transitively depends on (called only for diverged steps).
        context_notes: Step -> how its context values diverged (from the step context).
        inputs: Step -> (recorded, replayed) digest of the inputs its last attempt started with.
    """
    diffs: list[StepDiff] = []
    diverged: set[str] = set()
    for sid in recorded.steps.keys() | replayed.steps.keys():
        a, b = recorded.steps.get(sid), replayed.steps.get(sid)
        if a is None or b is None:
            diffs.append(StepDiff(sid, "status", a.status.value if a else None, b.status.value if b else None,
                                  "the step exists in only one of the runs"))
            diverged.add(sid)
            continue
        pairs = {"inputs": (inputs or {}).get(sid, (None, None)),
                 "status": (a.status.value, b.status.value), "attempts": (a.attempts, b.attempts),
                 "output": (normalise(a.output), normalise(b.output)),
                 "classification": (a.classification, b.classification)}
        for name in FIELDS:
            x, y = pairs[name]
            if x != y:
                diffs.append(StepDiff(sid, name, x, y, ""))
                diverged.add(sid)
    changed_inputs = {d.step for d in diffs if d.field == "inputs"}
    return [_with_cause(d, rerun, upstream, diverged, context_notes, changed_inputs) for d in
            sorted(diffs, key=lambda d: (d.step, FIELDS.index(d.field) if d.field in FIELDS else 9))]


def _with_cause(d: StepDiff, rerun: set[str], upstream: Callable[[str], set[str]], diverged: set[str],
                context_notes: dict[str, str], changed_inputs: set[str]) -> StepDiff:
    if d.cause:
        return d
    before = sorted(upstream(d.step) & diverged)
    if before:
        cause = f"its inputs changed: upstream step(s) {', '.join(before)} diverged first"
    elif d.step in changed_inputs:
        cause = ("its inputs differ from the recording although every upstream outcome matches: the "
                 "history was edited, or this version of sopflow renders the step's expressions differently")
    elif d.step in context_notes:
        cause = f"non-deterministic handler: {context_notes[d.step]}"
    elif d.step in rerun:
        cause = ("non-deterministic handler: same inputs, different result. It reads time, randomness "
                 "or outside state directly; take them from the step context (context.now(), "
                 "context.random(), context.uuid4()) so replays see the recorded values")
    else:
        cause = ("the engine decided differently from the recording with the same recorded outcomes "
                 "(a change in sopflow's scheduling or retry rules, or a history edited by hand)")
    return StepDiff(d.step, d.field, d.recorded, d.replayed, cause)


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, default=repr) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def agent_differences(recorded: ExecutionState, replayed: ExecutionState) -> list[StepDiff]:
    """How the agents of two Agent Centric Runs differ: their decisions, in order, and their reports."""
    if recorded.agent is None and replayed.agent is None:
        return []
    a, b = recorded.agent or {}, replayed.agent or {}
    diffs: list[StepDiff] = []
    mine = [(d["step"], d["decision"], d["rationale"]) for d in a.get("decisions", ())]
    theirs = [(d["step"], d["decision"], d["rationale"]) for d in b.get("decisions", ())]
    for i in range(max(len(mine), len(theirs))):
        x = mine[i] if i < len(mine) else None
        y = theirs[i] if i < len(theirs) else None
        if x != y:
            diffs.append(StepDiff((x or y)[0] or "(agent)", "decision", _decision(x), _decision(y),
                                  f"the agent's decision {i + 1} differs"))
    if normalise(a.get("outputs")) != normalise(b.get("outputs")):
        diffs.append(StepDiff("(agent)", "output", normalise(a.get("outputs")), normalise(b.get("outputs")),
                              "the agent reported another result"))
    return diffs


def _decision(d: tuple[str | None, str, str] | None) -> str | None:
    return None if d is None else f"{d[1]}: {d[2]}"
