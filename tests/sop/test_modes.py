"""Run modes: the default mode (property 33), mode compatibility (34) and mode change (35).

Pure: SOPs are generated as text with :func:`tests.sop_builders.sop_text` and checked
through validation, :func:`sop.change_mode` and the in-process engine's submission,
hundreds of examples each. The oracle of "fits agent_centric" is written out here
on its own (every step has at most one dependency, none has two dependents, every
trigger rule is the default), not taken from :mod:`sop.modes`.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime import Engine
from runtime.errors import SubmissionError
from sop import Mode, ModeError, Sop, SopflowError, change_mode, check_text, loads
from tests.sop_builders import sop_text

RULES = ("all_success", "all_done", "one_success", "none_failed")
MODES = ("system_design", "agent_centric", "auto")
SEQUENCE_NEEDED = ("agent_centric needs a checklist an agent can follow in order, but ")
FIX = "; use mode: system_design (or auto) for branching dependencies"
OFFENDER = re.compile(r"but step '([^']+)' (?:joins (\d+) branches|fans out to (\d+) steps|has trigger_rule (\w+));")


@dataclass(frozen=True)
class Graph:
    """A generated SOP's steps: id -> dependencies and id -> trigger rule, in file order."""

    order: tuple[str, ...]
    depends: dict[str, list[str]]
    rules: dict[str, str]

    def dependents(self, step: str) -> int:
        return sum(step in deps for deps in self.depends.values())

    def offences(self) -> dict[str, set[str]]:
        """What keeps each step from a checklist: 'join', 'fork', 'rule'."""
        out: dict[str, set[str]] = {}
        for s in self.order:
            why = {"join"} if len(self.depends[s]) > 1 else set()
            why |= {"fork"} if self.dependents(s) > 1 else set()
            why |= {"rule"} if self.rules[s] != "all_success" else set()
            if why:
                out[s] = why
        return out

    def fits(self, mode: str) -> bool:
        return mode != "agent_centric" or not self.offences()

    def text(self, mode: str | None = None) -> str:
        steps = "".join(f"  - {json.dumps(self._step(s))}\n" for s in self.order)
        return sop_text((f"mode: {mode}\n" if mode else "") + "steps:\n" + steps, name="generated", mode=None)

    def _step(self, s: str) -> dict:
        step: dict = {"id": s, "run": "echo"}
        if self.depends[s]:
            step["depends_on"] = self.depends[s]
        if self.rules[s] != "all_success":
            step["trigger_rule"] = self.rules[s]
        return step


@st.composite
def graphs(draw: st.DrawFn, max_steps: int = 7) -> Graph:
    """Step graphs of every shape: simple sequences (which fit agent_centric), trees (forks) and
    any DAG (joins too), with or without non-default trigger rules; steps are written in any
    order in the file."""
    ids = draw(st.lists(st.from_regex(r"[a-z][a-z0-9_]{0,5}", fullmatch=True), min_size=1,
                        max_size=max_steps, unique=True))
    depends: dict[str, list[str]] = {s: [] for s in ids}
    shape = draw(st.sampled_from(["sequences", "trees", "dag"]))
    if shape == "sequences":  # a step continues at most one chain end that nobody follows yet
        ends: list[str] = []
        for s in ids:
            if ends and draw(st.booleans()):
                prev = draw(st.sampled_from(ends))
                ends.remove(prev)
                depends[s] = [prev]
            ends.append(s)
    elif shape == "trees":  # one dependency each, on any earlier step: forks, never joins
        for i, s in enumerate(ids[1:], start=1):
            depends[s] = [draw(st.sampled_from(ids[:i]))]
    else:  # any DAG: dependencies only on earlier ids, so there is no cycle
        for i, s in enumerate(ids[1:], start=1):
            depends[s] = draw(st.lists(st.sampled_from(ids[:i]), unique=True, max_size=3))
    rules = {s: "all_success" for s in ids}
    if draw(st.integers(0, 2)) == 0:  # a third of the SOPs: a step or two with another trigger rule
        for s in draw(st.lists(st.sampled_from(ids), min_size=1, max_size=2, unique=True)):
            rules[s] = draw(st.sampled_from(RULES))
    order = tuple(draw(st.permutations(ids)))
    return Graph(order, depends, rules)


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    engine = Engine.in_process()
    try:
        yield engine
    finally:
        engine.shutdown()


def check_reason_names_an_offender(reason: str, graph: Graph) -> str:
    """The refusal says why (the step in the way, and what it does) and how to fix it."""
    assert reason.startswith(SEQUENCE_NEEDED) and reason.endswith(FIX), reason
    m = OFFENDER.search(reason)
    assert m is not None, reason
    step, joins, forks, rule = m.groups()
    offences = graph.offences()
    assert step in offences, (step, offences)
    if joins is not None:
        assert "join" in offences[step] and int(joins) == len(graph.depends[step])
    elif forks is not None:
        assert "fork" in offences[step] and int(forks) == graph.dependents(step)
    else:
        assert "rule" in offences[step] and rule == graph.rules[step]
    return step


# -- property 33 -----------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(graph=graphs(), explicit_auto=st.booleans())
def test_property_33_default_mode(graph: Graph, explicit_auto: bool) -> None:
    """SOP without a mode: agent-centric when no step declares a dependency, system design otherwise."""
    report = check_text(graph.text("auto" if explicit_auto else None))
    assert report.ok, report.problems
    assert report.sop is not None and report.sop.mode is Mode.AUTO
    no_dependencies = all(not deps for deps in graph.depends.values())
    assert report.mode is (Mode.AGENT_CENTRIC if no_dependencies else Mode.SYSTEM_DESIGN)
    assert report.mode_reason == ("auto: no step declares dependencies, so an agent follows the SOP"
                                  if no_dependencies else "auto: steps declare dependencies, so they run as a DAG")


# -- property 34 -----------------------------------------------------------------------------


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(graph=graphs(), mode=st.sampled_from(MODES), how=st.sampled_from(["declared", "requested"]))
def test_property_34_mode_compatibility(engine: Engine, graph: Graph, mode: str, how: str) -> None:
    """A validation or submission whose mode does not fit is refused with an error that says why."""
    text = graph.text(mode) if how == "declared" else graph.text()
    report = check_text(text, mode=mode if how == "requested" else None)
    if graph.fits(mode):
        assert report.ok, report.problems
        assert report.mode is not None and (mode == "auto" or report.mode.value == mode)
        return
    [problem] = report.problems
    assert (problem.code, problem.severity) == ("bad-mode", "error")
    prefix = f"mode {mode} does not fit this SOP: " if how == "declared" else f"cannot run this SOP in mode {mode}: "
    assert problem.message.startswith(prefix)
    reason = problem.message.removeprefix(prefix)
    step = check_reason_names_an_offender(reason, graph)
    if how == "declared":
        assert problem.path == "mode"
        with pytest.raises(SopflowError) as refused:  # submitting the file is refused the same way
            engine.submit(text)
        assert problem.message in str(refused.value)
    else:
        with pytest.raises(SubmissionError) as refused:  # the same reason as validate --mode gives
            engine.submit(text, mode=mode)
        assert str(refused.value) == f"cannot run <string> in mode {mode}: {reason}"
    assert f"step '{step}'" in str(refused.value)


# -- property 35 -----------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(graph=graphs(), start=st.sampled_from(MODES), targets=st.lists(st.sampled_from(MODES), min_size=1,
                                                                         max_size=4))
def test_property_35_mode_change(graph: Graph, start: str, targets: list[str]) -> None:
    """Any SOP, any target modes in turn: each change applies iff the target fits; a refused change
    leaves the SOP as it was, so the SOP's mode always fits it."""
    current = Sop.model_validate({
        "sop": "generated", "mode": start,
        "steps": [{"id": s, "run": "echo", "depends_on": graph.depends[s], "trigger_rule": graph.rules[s]}
                  for s in graph.order]})
    changed_once = False
    for target in targets:
        before = current.model_dump()
        if graph.fits(target):
            changed = change_mode(current, target)
            assert changed.mode is Mode(target)
            assert changed.model_dump(exclude={"mode"}) == {k: v for k, v in before.items() if k != "mode"}
            assert current.model_dump() == before  # a pure function: the SOP it was given is as it was
            assert check_text(graph.text(target)).ok  # validation agrees: valid in its new mode
            current, changed_once = changed, True
        else:
            with pytest.raises(ModeError) as refused:
                change_mode(current, target)
            error = refused.value
            assert (error.sop, error.mode) == ("generated", target)
            assert error.step == check_reason_names_an_offender(error.reason, graph)
            assert str(error) == f"cannot change SOP 'generated' to mode {target}: {error.reason}"
            assert current.model_dump() == before  # refused: unchanged
            assert not check_text(graph.text(target)).ok
    if changed_once:
        assert graph.fits(current.mode.value)


# -- change_mode, examples -------------------------------------------------------------------


FORK = sop_text("steps:\n  - {id: fetch, run: echo}\n  - {id: a, run: echo, depends_on: [fetch]}\n"
                "  - {id: b, run: echo, depends_on: [fetch]}\n", name="orders", mode=None)


def test_change_mode_refuses_a_fork_saying_why_and_what_to_do() -> None:
    sop = loads(FORK)
    with pytest.raises(ModeError) as refused:
        change_mode(sop, "agent_centric")
    assert str(refused.value) == (
        "cannot change SOP 'orders' to mode agent_centric: agent_centric needs a checklist an agent can follow "
        "in order, but step 'fetch' fans out to 2 steps; use mode: system_design (or auto) for branching "
        "dependencies")
    assert refused.value.step == "fetch" and sop.mode is Mode.AUTO


def test_change_mode_applies_a_mode_that_fits() -> None:
    sop = loads(FORK)
    changed = change_mode(sop, Mode.SYSTEM_DESIGN)
    assert changed.mode is Mode.SYSTEM_DESIGN and sop.mode is Mode.AUTO
    assert change_mode(changed, "auto").mode is Mode.AUTO


def test_change_mode_refuses_an_unknown_mode_with_a_suggestion() -> None:
    with pytest.raises(ModeError) as refused:
        change_mode(loads(FORK), "agent-centric")
    assert str(refused.value) == ("cannot change SOP 'orders' to mode agent-centric: unknown mode "
                                  "'agent-centric'; modes are system_design, agent_centric, auto; "
                                  "did you mean 'agent_centric'?")
    assert refused.value.step is None


def test_a_mode_error_survives_pickling() -> None:
    with pytest.raises(ModeError) as refused:
        change_mode(loads(FORK), "agent_centric")
    copy = pickle.loads(pickle.dumps(refused.value))
    assert (type(copy), str(copy), copy.step, copy.reason) == (
        ModeError, str(refused.value), "fetch", refused.value.reason)
