"""Pictures of an SOP's graph: text, Mermaid and Graphviz DOT."""

from __future__ import annotations

import json

from sop.graph import Graph
from sop.model import Sop, Step, TriggerRule


def _edge_label(step: Step) -> str:
    parts = []
    if step.when:
        parts.append(f"when {step.when}")
    if step.trigger_rule != TriggerRule.ALL_SUCCESS:
        parts.append(step.trigger_rule.value)
    return "; ".join(parts)


def render_text(sop: Sop, graph: Graph) -> str:
    """Stages top to bottom, each step with its handler, dependencies and condition."""
    by_id = {s.id: s for s in sop.steps}
    durations = {s.id: s.expected_duration_s for s in sop.steps}
    critical = graph.critical_path(durations)
    lines = [f"{sop.sop} {sop.version}: {len(graph)} steps in {len(graph.stages())} stages"]
    for k, stage in enumerate(graph.stages(), 1):
        lines.append(f"stage {k}:")
        for sid in stage:
            step = by_id[sid]
            mark = "*" if sid in critical.steps else " "
            extra = [f"uses {step.handler}"]
            if step.depends_on:
                extra.append("after " + ", ".join(step.depends_on))
            if label := _edge_label(step):
                extra.append(label)
            lines.append(f"  {mark} {sid}  ({'; '.join(extra)})")
    lines.append(f"critical path (*): {' -> '.join(critical.steps)} "
                 f"({critical.duration_s:g} s expected)")
    if sop.rollback:
        lines.append("rollback: " + ", ".join(s.id for s in sop.rollback))
    return "\n".join(lines)


_MERMAID_RESERVED = {"end", "graph", "subgraph", "flowchart", "style", "class", "classdef",
                     "click", "default", "linkstyle", "direction"}


def _mermaid_id(step_id: str, index: int) -> str:
    # Step ids ([A-Za-z_][A-Za-z0-9_-]*) are valid Mermaid ids, except the keywords.
    return f"step{index}_{step_id}" if step_id.lower() in _MERMAID_RESERVED else step_id


def _mermaid_text(text: str) -> str:
    return text.replace('"', "#quot;")


def render_mermaid(sop: Sop, graph: Graph) -> str:
    """A Mermaid flowchart, one subgraph per stage; conditional steps drawn as diamonds.

    Step ids are node ids, except Mermaid keywords such as ``end``, which get a
    safe id and keep the step id as their label.
    """
    by_id = {s.id: s for s in sop.steps}
    node = {sid: _mermaid_id(sid, i) for i, sid in enumerate(graph.nodes)}
    out = ["flowchart TD"]
    for k, stage in enumerate(graph.stages(), 1):
        out.append(f"  subgraph stage{k}[\"stage {k}\"]")
        for sid in stage:
            step = by_id[sid]
            label = _mermaid_text(f"{sid}<br/><small>{step.handler}</small>")
            out.append(f'    {node[sid]}{{"{label}"}}' if step.when else f'    {node[sid]}["{label}"]')
        out.append("  end")
    for sid in graph.nodes:
        label = _edge_label(by_id[sid])
        for dep in graph.dependencies(sid):
            arrow = f'-->|"{_mermaid_text(label)}"|' if label else "-->"
            out.append(f"  {node[dep]} {arrow} {node[sid]}")
    return "\n".join(out)


def render_dot(sop: Sop, graph: Graph) -> str:
    """Graphviz DOT with stages as ranks."""
    by_id = {s.id: s for s in sop.steps}
    q = json.dumps  # DOT strings use the same escaping as JSON for our purposes
    out = [f"digraph {q(sop.sop)} {{", "  rankdir=TB;", "  node [shape=box, fontname=Helvetica];"]
    for k, stage in enumerate(graph.stages(), 1):
        out.append(f"  subgraph cluster_stage{k} {{ label={q(f'stage {k}')}; style=dashed;")
        for sid in stage:
            shape = ", shape=diamond" if by_id[sid].when else ""
            out.append(f"    {q(sid)} [label={q(sid + chr(10) + by_id[sid].handler)}{shape}];")
        out.append("  }")
    for sid in graph.nodes:
        label = _edge_label(by_id[sid])
        for dep in graph.dependencies(sid):
            attr = f" [label={q(label)}]" if label else ""
            out.append(f"  {q(dep)} -> {q(sid)}{attr};")
    out.append("}")
    return "\n".join(out)


RENDERERS = {"text": render_text, "mermaid": render_mermaid, "dot": render_dot}
