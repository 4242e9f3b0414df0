"""An SOP's DAG as a self-contained SVG picture, for notebooks and HTML pages.

Stages run left to right (a step sits one column right of its latest
dependency), one box per step, an arrow per ``depends_on``. Conditions
(``when``) and trigger rules are written in the box and conditional steps get
a dashed border; rollback steps are drawn apart, below the DAG. Callers mark
boxes (a fill colour, extra lines, a tooltip) to show runtime state.

Pure Python and deterministic: the same input gives the same bytes, with no
random ids (several pictures can share one HTML page). Every piece of text is
XML-escaped and stripped of characters XML cannot hold, so any step id, error
or description yields well-formed SVG.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from sop.graph import Graph, GraphError, format_cycle
from sop.model import OnFailure, Sop, Step, TriggerRule

BOX_W = 260
LINE_H = 14
PAD = 8
COL_GAP = 56
ROW_GAP = 16
MARGIN = 12
HEADER_H = 18
CHAR_W = 7.25  # monospace at 12px: what bounds the characters a line can hold
MAX_CHARS = int((BOX_W - 2 * PAD) / CHAR_W)
MAX_DRAWN_STEPS = 400
"""Larger SOPs are summarised, not drawn: thousands of boxes help no one and weigh megabytes."""
FONT = "font-family=\"ui-monospace,SFMono-Regular,Menlo,Consolas,monospace\" font-size=\"12\""

# XML 1.0 refuses these even as character references: replace them rather than fail.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")
# Whitespace as references too: an XML parser would otherwise normalise it inside attributes.
_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
                          "\n": "&#10;", "\r": "&#13;", "\t": "&#9;"})
_COLOUR = re.compile(r"^(#[0-9A-Fa-f]{3,8}|[a-z]{3,20})$")


def clean(text: object) -> str:
    """``text`` as a string XML can hold: forbidden characters become U+FFFD."""
    return _NOT_XML.sub("\ufffd", str(text))


def escape(text: object) -> str:
    """``text`` escaped for XML/HTML text and attribute values (quotes included)."""
    return clean(text).translate(_ESCAPES)


def shorten(text: object, limit: int = MAX_CHARS) -> str:
    """One line of at most ``limit`` characters, an ellipsis marking a cut."""
    one = " ".join(clean(text).split())
    return one if len(one) <= limit else one[:max(limit - 1, 0)] + "\u2026"


def colour(value: str, default: str) -> str:
    """``value`` if it is a plain colour (``#abc``, ``#aabbcc``, ``red``), else ``default``."""
    return value if _COLOUR.match(value or "") else default


@dataclass(frozen=True, slots=True)
class Mark:
    """How a caller wants one box drawn (its runtime state, say)."""

    fill: str = "#ffffff"
    """Box fill: a ``#rgb``/``#rrggbb`` colour or a CSS colour name; anything else is ignored."""
    stroke: str = "#4b5563"
    """Border colour, same rules as ``fill``."""
    lines: tuple[str, ...] = ()
    """Extra lines written in the box under the step's own (e.g. ``failed · 3 attempts``)."""
    tooltip: str = ""
    """Extra text for the hover tooltip (e.g. the whole error)."""
    state: str = ""
    """Written to the box's ``data-state`` attribute, for styling and tests."""


@dataclass(frozen=True, slots=True)
class Box:
    """One step as the picture needs it."""

    id: str
    depends_on: tuple[str, ...] = ()
    lines: tuple[str, ...] = ()
    """Lines under the id: its handler, its condition, its trigger rule."""
    tooltip: str = ""
    conditional: bool = False
    mark: Mark = field(default_factory=Mark)


def step_box(step: Step, mark: Mark | None = None) -> Box:
    """The box of an SOP step: id, handler, ``when``, a non-default trigger rule and on_failure."""
    lines = [step.handler]
    tip = [step.id]
    if step.name and step.name != step.id:
        tip.append(step.name)
    if step.description:
        tip.append(step.description)
    tip.append(f"uses {step.handler}")
    if step.when:
        lines.append(f"when {step.when}")
        tip.append(f"when {step.when}")
    if step.trigger_rule != TriggerRule.ALL_SUCCESS:
        lines.append(f"rule {step.trigger_rule.value}")
        tip.append(f"trigger_rule {step.trigger_rule.value}")
    if step.on_failure != OnFailure.HALT:
        lines.append(f"on failure {step.on_failure.value}")
        tip.append(f"on_failure {step.on_failure.value}")
    return Box(step.id, tuple(step.depends_on), tuple(lines), "\n".join(tip), bool(step.when), mark or Mark())


def sop_svg(sop: Sop, marks: Mapping[str, Mark] | None = None) -> str:
    """The SOP's DAG (and its rollback steps, apart) as one ``<svg>`` element."""
    marks = marks or {}
    steps = [step_box(s, marks.get(s.id)) for s in sop.steps]
    rollback = [step_box(s, marks.get(s.id)) for s in sop.rollback]
    return dag_svg(steps, rollback, title=f"{sop.sop} {sop.version}")


def _columns(boxes: Sequence[Box]) -> tuple[list[list[str]], str]:
    """Stages left to right, each ordered to cross fewer edges; and a note when there is a cycle."""
    ids = [b.id for b in boxes]
    known = set(ids)
    deps = {b.id: [d for d in dict.fromkeys(b.depends_on) if d in known and d != b.id] for b in boxes}
    try:
        stages = Graph.from_dependencies(deps).stages()
        note = ""
    except GraphError as e:  # an unvalidated SOP: still show it, in one column, and say why
        stages = [ids]
        note = "not drawn as a DAG: " + "; ".join(format_cycle(c) for c in e.cycles[:3])
    row: dict[str, float] = {}

    def barycentre(k: int, sid: str) -> tuple[float, int]:
        placed = [row[d] for d in deps[sid] if d in row]
        return (sum(placed) / len(placed) if placed else float(k), k)

    for stage in stages:
        # Each step near the mean row of its dependencies: fewer crossings, in one stable pass.
        stage[:] = [sid for k, sid in sorted(enumerate(stage), key=lambda t: barycentre(*t))]
        for k, sid in enumerate(stage):
            row[sid] = k
    return stages, note


def _text(x: float, y: float, content: str, extra: str = "") -> str:
    return f'<text x="{x:g}" y="{y:g}" {FONT}{extra}>{escape(content)}</text>'


class _Canvas:
    """Lays out one group of boxes (the DAG, or the rollback steps) from a vertical offset."""

    def __init__(self, boxes: Sequence[Box], top: float, box_h: float) -> None:
        self.boxes = {b.id: b for b in boxes}
        self.columns, self.note = _columns(boxes)
        self.top = top
        self.box_h = box_h
        self.pos: dict[str, tuple[float, float]] = {}
        for c, stage in enumerate(self.columns):
            for r, sid in enumerate(stage):
                self.pos[sid] = (MARGIN + c * (BOX_W + COL_GAP), top + HEADER_H + r * (box_h + ROW_GAP))
        rows = max((len(s) for s in self.columns), default=0)
        self.width = MARGIN * 2 + max(len(self.columns) * (BOX_W + COL_GAP) - COL_GAP, 0)
        self.height = HEADER_H + max(rows * (box_h + ROW_GAP) - ROW_GAP, 0) + (LINE_H if self.note else 0)

    def headers(self, prefix: str) -> Iterable[str]:
        for c in range(len(self.columns) if prefix else 0):
            yield _text(MARGIN + c * (BOX_W + COL_GAP), self.top + 12, f"{prefix} {c + 1}", ' fill="#6b7280"')
        if self.note:
            yield _text(MARGIN, self.top + self.height - 2, shorten(self.note, 120), ' fill="#b91c1c"')

    def edges(self) -> Iterable[str]:
        for sid, box in self.boxes.items():
            x2, y2 = self.pos[sid]
            y2 += self.box_h / 2
            for dep in dict.fromkeys(box.depends_on):
                if dep not in self.pos or dep == sid:
                    continue
                x1, y1 = self.pos[dep]
                x1 += BOX_W
                y1 += self.box_h / 2
                mid = (x1 + x2) / 2
                dash = ' stroke-dasharray="5 3"' if box.conditional else ""
                yield (f'<g class="edge" data-from="{escape(dep)}" data-to="{escape(sid)}">'
                       f'<path d="M{x1:g},{y1:g} C{mid:g},{y1:g} {mid:g},{y2:g} {x2 - 6:g},{y2:g}" '
                       f'fill="none" stroke="#6b7280" stroke-width="1.4"{dash}/>'
                       f'<polygon points="{x2:g},{y2:g} {x2 - 7:g},{y2 - 4:g} {x2 - 7:g},{y2 + 4:g}" '
                       f'fill="#6b7280"/></g>')

    def nodes(self, kind: str) -> Iterable[str]:
        for sid, box in self.boxes.items():
            x, y = self.pos[sid]
            mark = box.mark
            dash = ' stroke-dasharray="6 3"' if box.conditional else ""
            tip = "\n".join(t for t in (box.tooltip or box.id, mark.tooltip) if t)
            parts = [f'<g class="step {kind}" data-step="{escape(sid)}" data-state="{escape(mark.state)}">',
                     f"<title>{escape(tip)}</title>",
                     f'<rect x="{x:g}" y="{y:g}" width="{BOX_W}" height="{self.box_h:g}" rx="6" '
                     f'fill="{colour(mark.fill, "#ffffff")}" stroke="{colour(mark.stroke, "#4b5563")}" '
                     f'stroke-width="1.5"{dash}/>',
                     _text(x + PAD, y + PAD + 11, shorten(sid), ' font-weight="bold" fill="#111827"')]
            for k, line in enumerate((*box.lines, *mark.lines), 1):
                parts.append(_text(x + PAD, y + PAD + 11 + k * LINE_H, shorten(line), ' fill="#374151"'))
            parts.append("</g>")
            yield "".join(parts)


def dag_svg(steps: Sequence[Box], rollback: Sequence[Box] = (), *, title: str = "") -> str:
    """Draw ``steps`` as a DAG left to right, and ``rollback`` as a second DAG below it.

    Dependencies on ids that are not among the boxes are ignored (not drawn); a
    cycle does not raise: the boxes are drawn in one column with a note naming it.
    """
    lines = max((len(b.lines) + len(b.mark.lines) for b in (*steps, *rollback)), default=0)
    box_h = 2 * PAD + (1 + lines) * LINE_H
    main = _Canvas(steps, 0, box_h)
    groups = [main]
    back = None
    if rollback:
        back = _Canvas(rollback, main.height + 2 * ROW_GAP, box_h)
        groups.append(back)
    width = max((g.width for g in groups), default=2 * MARGIN)
    height = sum(g.height for g in groups) + (2 * ROW_GAP if back else 0) + MARGIN
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="sopflow-dag" width="{width:g}" '
           f'height="{height:g}" viewBox="0 0 {width:g} {height:g}" role="img" '
           f'aria-label="{escape(title or "SOP graph")}">',
           f"<title>{escape(title or 'SOP graph')}</title>"]
    out += main.headers("stage")
    out += main.edges()
    out += main.nodes("main")
    if back is not None:
        out.append(f'<line x1="{MARGIN}" y1="{back.top - ROW_GAP:g}" x2="{width - MARGIN:g}" '
                   f'y2="{back.top - ROW_GAP:g}" stroke="#d1d5db" stroke-dasharray="4 4"/>')
        out.append(_text(MARGIN, back.top + 12, "rollback (runs when the execution fails)",
                         ' fill="#6b7280" font-style="italic"'))
        out += back.headers("")
        out += back.edges()
        out += back.nodes("rollback")
    out.append("</svg>")
    return "".join(out)


def sop_html(sop: Sop) -> str:
    """An HTML fragment for notebooks: the SOP's name, inputs and counts above its DAG."""
    stages, _ = _columns([step_box(s) for s in sop.steps])
    facts = [f"{len(sop.steps)} steps in {len(stages)} stages"]
    if sop.rollback:
        facts.append(f"{len(sop.rollback)} rollback")
    if sop.inputs:
        facts.append("inputs: " + ", ".join(
            f"{k}{'' if spec.required else '?'}" for k, spec in sop.inputs.items()))
    head = (f'<div style="font-family:sans-serif;margin-bottom:4px"><b>{escape(sop.sop)}</b> '
            f'<span style="color:#6b7280">{escape(sop.version)} · {escape(sop.mode.value)} · '
            f'{escape("; ".join(facts))}</span></div>')
    if sop.description:
        head += f'<div style="font-family:sans-serif;color:#374151">{escape(shorten(sop.description, 300))}</div>'
    return f'<div class="sopflow-sop">{head}<div style="overflow-x:auto">{sop_svg_or_note(sop)}</div></div>'


def drawable(sop: Sop) -> bool:
    """Whether the SOP is small enough to draw (at most :data:`MAX_DRAWN_STEPS` steps, rollback included)."""
    return len(sop.steps) + len(sop.rollback) <= MAX_DRAWN_STEPS


def sop_svg_or_note(sop: Sop, marks: Mapping[str, Mark] | None = None) -> str:
    """The SVG of :func:`sop_svg`, or for an SOP too large to draw a line saying how to draw it."""
    if drawable(sop):
        return sop_svg(sop, marks)
    return (f'<div style="font-family:sans-serif;color:#6b7280">{len(sop.steps) + len(sop.rollback)} steps: '
            f'too many to draw here (the limit is {MAX_DRAWN_STEPS}); <code>sopflow graph FILE --format dot'
            f'</code> gives a Graphviz picture</div>')
