"""Checking steps added to a running SOP, only what changed (see :func:`check_new_steps`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sop._pydantic_errors import translate
from sop._yaml import Loaded
from sop.errors import Problem, SopValidationError
from sop.graph import Graph, GraphError
from sop.model import Sop, Step
from sop.validate import HandlerCatalog, _Checker, _dicts


def check_new_steps(sop: Sop, graph: Graph, new_steps: Sequence[Mapping[str, Any]], *,
                    handlers: HandlerCatalog | None = None,
                    file: str = "<added steps>") -> list[Step]:
    """Validate steps being added to a running SOP, checking only what changed.

    New steps may depend on existing steps and on each other; existing steps are
    not changed. Only the new steps are checked, and the cycle check walks only
    from the new edges (:meth:`Graph.add`). On success ``graph`` now holds the new
    steps; on any problem it is untouched.

    Raises:
        SopValidationError: every problem, with paths like ``steps[0].depends_on[1]``.
    """
    raw_steps = list(new_steps)
    inputs = {k: v.model_dump() for k, v in sop.inputs.items()}
    # mode="json": tools as lists, as the checks read them in a file (a tuple was never checked)
    sources = {k: v.model_dump(mode="json", exclude_none=True) for k, v in sop.data_sources.items()}
    loaded = Loaded({"steps": raw_steps}, file)
    problems: list[Problem] = []
    parsed: list[Step] = []
    for i, raw in enumerate(raw_steps):
        try:
            parsed.append(Step.model_validate(raw))
        except ValidationError as e:
            problems.extend(translate(e, loaded, Step, prefix=("steps", i)))
    checker = _Checker(loaded, Path.cwd(), handlers, ())
    items = _dicts(raw_steps)
    existing = {n: -1 for n in graph.nodes}
    ids = checker._ids("steps", items, existing)
    depends = checker._dependencies("steps", items, {**existing, **ids})
    upstream = _upstream_of_new(graph, depends)
    all_ids = set(graph.nodes) | set(ids)
    for i, raw in items:
        sid = raw.get("id")
        checker._expressions(("steps", i), raw, upstream.get(sid) if ids.get(sid) == i else None,
                             all_ids, inputs)
        checker._handler(("steps", i), raw, sources, inputs)
    problems.extend(checker.problems)
    if not problems:
        edges = [(d, sid) for sid, deps in depends.items() for d in deps]
        try:
            graph.add(list(ids), edges)
        except GraphError as e:
            problems.append(Problem(str(e), path="steps", file=file,
                                    code="cycle" if e.cycles else "invalid"))
    if problems:
        raise SopValidationError(problems)
    return parsed


def _upstream_of_new(graph: Graph, depends: Mapping[str, Sequence[str]]) -> dict[str, set[str]]:
    """Ancestors of each new step: existing ones from the graph, new ones by closure."""
    memo: dict[str, set[str]] = {}

    def up(step: str, visiting: frozenset[str]) -> set[str]:
        if step in memo:
            return memo[step]
        if step not in depends:
            return graph.ancestors(step) if step in graph else set()
        out: set[str] = set()
        for d in depends[step]:
            out.add(d)
            if d not in visiting:  # a cycle among new steps is reported by Graph.add
                out |= up(d, visiting | {step})
        memo[step] = out
        return out

    return {s: up(s, frozenset()) for s in depends}
