"""Pictures of an SOP's graph: every step and every dependency shows up in each format."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sop import Graph, Sop, check_file, check_text
from sop.report import RENDERERS, render_dot, render_mermaid, render_text

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def valid(report) -> tuple[Sop, Graph]:
    assert report.ok, report.problems
    return report.sop, report.graph


def edges(sop: Sop) -> list[tuple[str, str]]:
    return [(d, s.id) for s in sop.steps for d in s.depends_on]


def assert_text_shows(sop: Sop, graph: Graph, out: str) -> None:
    lines = out.splitlines()
    assert lines[0].startswith(f"{sop.sop} {sop.version}: {len(sop.steps)} steps in ")
    for step in sop.steps:
        [line] = [ln for ln in lines if re.match(rf"^  [* ] {re.escape(step.id)}  \(", ln)]
        assert f"uses {step.handler}" in line
        if step.depends_on:
            assert "after " + ", ".join(step.depends_on) in line
    assert any(ln.startswith("critical path (*): ") for ln in lines)


def assert_mermaid_shows(sop: Sop, out: str) -> None:
    assert out.startswith("flowchart")
    for step in sop.steps:
        assert re.search(rf"^    {re.escape(step.id)}[\[{{]\"", out, re.M), step.id
    for dep, sid in edges(sop):
        assert re.search(rf"^  {re.escape(dep)} -->(\|\"[^\n]*\"\|)? {re.escape(sid)}$", out, re.M), \
            (dep, sid)


def assert_dot_shows(sop: Sop, out: str) -> None:
    assert out.startswith("digraph ")
    assert out.rstrip().endswith("}")
    assert out.count("{") == out.count("}")
    for step in sop.steps:
        assert re.search(rf'^    "{re.escape(step.id)}" \[label=', out, re.M), step.id
    for dep, sid in edges(sop):
        assert re.search(rf'^  "{re.escape(dep)}" -> "{re.escape(sid)}"( \[label=.*\])?;$', out, re.M), \
            (dep, sid)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_text_shows_every_step_and_dependency(path: Path) -> None:
    sop, graph = valid(check_file(path))
    assert_text_shows(sop, graph, render_text(sop, graph))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_mermaid_is_a_flowchart_with_every_step_and_edge(path: Path) -> None:
    sop, graph = valid(check_file(path))
    assert_mermaid_shows(sop, render_mermaid(sop, graph))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_dot_is_a_digraph_with_every_step_and_edge(path: Path) -> None:
    sop, graph = valid(check_file(path))
    assert_dot_shows(sop, render_dot(sop, graph))


def test_text_marks_stages_and_the_critical_path() -> None:
    sop, graph = valid(check_file(ROOT / "examples" / "fanout-condition.yaml"))
    out = render_text(sop, graph)
    assert out.splitlines()[0] == "region-health 1.0: 6 steps in 3 stages"
    assert "stage 1:\n" in out and "stage 3:\n" in out
    assert "  * probe_us  (" in out and "    probe_eu  (" in out
    assert "critical path (*): probe_us -> merge -> page (2 s expected)" in out
    assert "when steps.merge.output.down | length >= inputs.threshold" in out
    assert "all_done" in out


def test_text_lists_rollback_steps() -> None:
    sop, graph = valid(check_file(ROOT / "examples" / "invoice-reconciliation.yaml"))
    assert render_text(sop, graph).splitlines()[-1] == "rollback: unlock"


def test_conditional_steps_are_diamonds() -> None:
    sop, graph = valid(check_file(ROOT / "examples" / "invoice-reconciliation.yaml"))
    assert '    escalate{"escalate' in render_mermaid(sop, graph)
    assert re.search(r'"escalate" \[label=.*, shape=diamond\];', render_dot(sop, graph))


def test_quotes_in_conditions_do_not_break_the_pictures() -> None:
    sop, graph = valid(check_text(
        "sop: quotes\nsteps:\n  - {id: a, run: echo}\n"
        "  - {id: b, run: echo, depends_on: [a], when: \"steps.a.output == \\\"yes\\\"\"}\n"))
    mermaid = render_mermaid(sop, graph)
    assert '"yes"' not in mermaid and "#quot;yes#quot;" in mermaid
    assert '[label="when steps.a.output == \\"yes\\""]' in render_dot(sop, graph)


def test_every_format_has_a_renderer() -> None:
    assert sorted(RENDERERS) == ["dot", "mermaid", "text"]


def test_a_step_called_end_does_not_end_the_mermaid_chart() -> None:
    # In Mermaid flowcharts a lower-case node id ``end`` closes a subgraph.
    sop, graph = valid(check_text("sop: x\nsteps:\n  - {id: start, run: echo}\n"
                                  "  - {id: end, run: echo, depends_on: [start]}\n"))
    out = render_mermaid(sop, graph)
    assert not re.search(r"^\s*end\b(?!$)", out, re.M), out
    assert not re.search(r"--> end$", out, re.M), out


@st.composite
def dag_sops(draw: st.DrawFn) -> str:
    ids = draw(st.lists(st.from_regex(r"[a-z][a-z0-9_]{0,5}", fullmatch=True), min_size=1, max_size=8,
                        unique=True).filter(lambda xs: "end" not in xs))
    lines = ["sop: generated", "steps:"]
    for k, sid in enumerate(ids):
        deps = draw(st.lists(st.sampled_from(ids[:k]), unique=True, max_size=3)) if k else []
        when = draw(st.booleans()) and deps
        lines.append(f"  - id: {sid}\n    run: echo\n    depends_on: [{', '.join(deps)}]"
                     + (f"\n    when: \"steps.{deps[0]}.status == 'ok'\"" if when else ""))
    return "\n".join(lines) + "\n"


@settings(max_examples=50)
@given(dag_sops())
def test_every_picture_shows_every_step_and_edge_of_any_sop(text: str) -> None:
    sop, graph = valid(check_text(text))
    assert_text_shows(sop, graph, render_text(sop, graph))
    assert_mermaid_shows(sop, render_mermaid(sop, graph))
    assert_dot_shows(sop, render_dot(sop, graph))
