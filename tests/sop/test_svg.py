"""The DAG as SVG: one box per step, stages left to right, and no user text ever becomes markup."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sop import load, loads
from sop.svg import Box, Mark, clean, dag_svg, escape, sop_html, sop_svg

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
SVG = "{http://www.w3.org/2000/svg}"
SVG_TAGS = {"svg", "title", "g", "rect", "text", "path", "polygon", "line"}
SVG_ATTRIBUTES = {"xmlns", "class", "width", "height", "viewBox", "role", "aria-label", "x", "y", "rx",
                  "fill", "stroke", "stroke-width", "stroke-dasharray", "font-family", "font-size",
                  "font-weight", "font-style", "d", "points", "x1", "y1", "x2", "y2", "data-step",
                  "data-state", "data-from", "data-to"}

# Any text at all: control characters, surrogates, markup, quotes, entities, CDATA ends.
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=40) | st.sampled_from(
    ["<script>alert(1)</script>", "a&amp;b", "]]>", "\"'><img src=x onerror=alert(1)>", "<!--", "&#0;",
     "\x00\x1b[31m", "\ud800", "x\ny\tz\r"])


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)


def local(tag: str) -> str:
    return tag.removeprefix(SVG)


def steps_of(root: ET.Element) -> dict[str, ET.Element]:
    return {g.get("data-step"): g for g in root.iter(f"{SVG}g") if "step" in (g.get("class") or "").split()}


def assert_only_our_markup(root: ET.Element) -> None:
    for element in root.iter():
        assert local(element.tag) in SVG_TAGS, element.tag
        assert set(element.attrib) <= SVG_ATTRIBUTES, element.attrib


@st.composite
def dags(draw, text=ANY_TEXT):
    """Unique ids (any text), each depending on some earlier ones, with marks of any text."""
    ids = draw(st.lists(text, min_size=1, max_size=8, unique_by=clean))
    boxes = []
    for k, sid in enumerate(ids):
        deps = draw(st.lists(st.sampled_from(ids[:k]), max_size=3, unique=True)) if k else []
        mark = Mark(fill=draw(st.sampled_from(["#bbf7d0", "red", "url(javascript:x)", "\"/><x"])),
                    lines=tuple(draw(st.lists(text, max_size=2))), tooltip=draw(text), state=draw(text))
        boxes.append(Box(sid, tuple(deps), tuple(draw(st.lists(text, max_size=2))), draw(text),
                         draw(st.booleans()), mark))
    return boxes


@settings(max_examples=150, deadline=None)
@given(dags(), st.lists(ANY_TEXT, max_size=3, unique_by=clean), ANY_TEXT)
def test_for_any_step_ids_and_texts_the_svg_is_well_formed_and_holds_them_as_text(boxes, back, title):
    back = [b for b in back if clean(b) not in {clean(x.id) for x in boxes}]
    svg = dag_svg(boxes, [Box(b) for b in back], title=title)
    root = parse(svg)  # well-formed XML, whatever the ids, lines and tooltips held
    assert_only_our_markup(root)  # no user text became an element or an attribute
    shown = steps_of(root)
    assert sorted(shown) == sorted(clean(b.id) for b in [*boxes, *map(Box, back)])
    for box in boxes:
        g = shown[clean(box.id)]
        assert g.get("data-state") == clean(box.mark.state)
        assert clean(box.tooltip or box.id) in (g.find(f"{SVG}title").text or "")
        fill = g.find(f"{SVG}rect").get("fill")
        assert fill == (box.mark.fill if box.mark.fill in ("#bbf7d0", "red") else "#ffffff")
    assert dag_svg(boxes, [Box(b) for b in back], title=title) == svg  # deterministic


@settings(max_examples=100, deadline=None)
@given(dags(st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True)))
def test_for_any_dag_every_edge_points_right_and_no_boxes_overlap(boxes):
    root = parse(dag_svg(boxes))
    rect = {sid: g.find(f"{SVG}rect") for sid, g in steps_of(root).items()}
    edges = [(g.get("data-from"), g.get("data-to")) for g in root.iter(f"{SVG}g") if g.get("class") == "edge"]
    assert sorted(edges) == sorted((d, b.id) for b in boxes for d in b.depends_on)
    for a, b in edges:  # stages left to right: a dependency sits in an earlier column
        assert float(rect[a].get("x")) < float(rect[b].get("x"))
    corners = {(float(r.get("x")), float(r.get("y"))) for r in rect.values()}
    assert len(corners) == len(rect)
    width, height = float(root.get("width")), float(root.get("height"))
    for r in rect.values():  # inside the picture
        assert float(r.get("x")) + float(r.get("width")) <= width
        assert float(r.get("y")) + float(r.get("height")) <= height


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_draws_one_box_per_step_and_one_arrow_per_dependency(path: Path) -> None:
    sop = load(path)
    root = parse(sop_svg(sop))
    shown = steps_of(root)
    assert set(shown) == {s.id for s in (*sop.steps, *sop.rollback)}
    for s in sop.rollback:
        assert "rollback" in shown[s.id].get("class").split()
    edges = [g for g in root.iter(f"{SVG}g") if g.get("class") == "edge"]
    assert len(edges) == sum(len(s.depends_on) for s in (*sop.steps, *sop.rollback))
    ET.fromstring(sop_html(sop))  # the notebook's HTML is XHTML too


def texts(g: ET.Element) -> list[str]:
    return [t.text for t in g.iter(f"{SVG}text")]


def test_conditions_trigger_rules_and_on_failure_are_written_in_the_box_and_dashed() -> None:
    sop = load(ROOT / "examples" / "fanout-condition.yaml")
    shown = steps_of(parse(sop_svg(sop)))
    assert "rule all_done" in texts(shown["merge"])
    assert any(t.startswith("when steps.merge.output.down") for t in texts(shown["page"]))
    assert shown["page"].find(f"{SVG}rect").get("stroke-dasharray")  # a conditional step is dashed
    assert not shown["merge"].find(f"{SVG}rect").get("stroke-dasharray")
    assert "when steps.merge.output.down | length >= inputs.threshold" in shown["page"].find(f"{SVG}title").text


def test_stages_are_labelled_left_to_right() -> None:
    sop = load(ROOT / "examples" / "fanout-condition.yaml")
    root = parse(sop_svg(sop))
    labels = [t.text for t in root.iter(f"{SVG}text") if (t.text or "").startswith("stage ")]
    assert labels == ["stage 1", "stage 2", "stage 3"]
    x = {sid: float(g.find(f"{SVG}rect").get("x")) for sid, g in steps_of(root).items()}
    assert x["probe_eu"] == x["probe_us"] == x["probe_ap"] < x["merge"] < x["page"] == x["report"]


def test_a_cycle_or_an_unknown_dependency_is_drawn_with_a_note_not_raised() -> None:
    root = parse(dag_svg([Box("a", ("b",)), Box("b", ("a",)), Box("c", ("nowhere",))]))
    assert set(steps_of(root)) == {"a", "b", "c"}
    assert any("not drawn as a DAG: " in (t.text or "") for t in root.iter(f"{SVG}text"))


def test_no_steps_at_all_is_an_empty_picture_not_a_negative_one() -> None:
    root = parse(dag_svg([]))
    assert float(root.get("width")) > 0 and float(root.get("height")) > 0 and not steps_of(root)


def test_long_text_is_cut_in_the_box_and_whole_in_the_tooltip() -> None:
    long_when = " or ".join(f"steps.a.output.mismatches > {k}" for k in range(6))
    sop = loads(f"""
sop: long
steps:
  - id: a
    run: echo a
  - id: b
    run: echo b
    depends_on: [a]
    when: "{long_when}"
""")
    g = steps_of(parse(sop_svg(sop)))["b"]
    assert any(t.endswith("\u2026") for t in texts(g))
    assert long_when in g.find(f"{SVG}title").text


def test_a_sop_in_a_notebook_shows_html_and_an_svg_image() -> None:
    sop = load(ROOT / "examples" / "hello-linear.yaml")
    assert sop._repr_html_() == sop_html(sop)
    bundle = sop._repr_mimebundle_()
    assert bundle["image/svg+xml"] == sop_svg(sop)
    assert "hello-linear" in bundle["text/html"] and "<svg" in bundle["text/html"]


def test_escape_leaves_no_markup_and_keeps_whitespace_exact_in_attributes() -> None:
    assert escape("<a href='x'>&\"\n") == "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&#10;"
    value = "t\tn\nr\r"
    assert ET.fromstring('<x a="' + escape(value) + '"/>').get("a") == value
