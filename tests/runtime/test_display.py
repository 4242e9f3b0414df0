"""Executions in a notebook: HTML that escapes everything, the DAG coloured by state, lists as tables."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.display import STEP_COLOURS, ExecutionList, execution_html, legend, step_mark
from runtime.errors import OptionalDependencyMissing
from runtime.status import ExecutionStatus, ExecutionView, StepStatus, StepView
from sop import load
from sop.svg import clean

ROOT = Path(__file__).resolve().parents[2]
SVG = "{http://www.w3.org/2000/svg}"
HTML_TAGS = {"div", "span", "b", "code", "table", "thead", "tbody", "tr", "th", "td", "pre", "details",
             "summary"}
SVG_TAGS = {"svg", "title", "g", "rect", "text", "path", "polygon", "line"}
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=30) | st.sampled_from(
    ["<script>alert(1)</script>", "</td></tr></table><b>x", "&lt;", "\"'><img src=x onerror=y>", "]]>",
     "\x1b[31mred\x1b[0m", "\ud800", "line one\nline two"])
T0 = 1_800_000_000.0


def view_with(steps: dict[str, StepView], status=ExecutionStatus.RUNNING, **kw) -> ExecutionView:
    return ExecutionView(id=kw.pop("id", "exe-0123456789ab-cdef0123"), sop=kw.pop("sop", "hello-linear"),
                         version="1.0", mode="system_design", status=status,
                         progress=kw.pop("progress", 0.5), steps=steps, submitted_at=T0, **kw)


def assert_only_our_markup(root: ET.Element) -> None:
    for element in root.iter():
        tag = element.tag.removeprefix(SVG)
        assert tag in (SVG_TAGS if element.tag.startswith(SVG) else HTML_TAGS), element.tag
        assert not any(name.startswith("on") or name in ("src", "href") for name in element.attrib)


def all_text(root: ET.Element) -> str:
    return "".join(root.itertext())


@st.composite
def views(draw):
    ids = draw(st.lists(ANY_TEXT, min_size=1, max_size=5, unique_by=clean))
    steps = {}
    # Times and progress as a sane engine reports them, or as a damaged record might hold them.
    times = st.floats(T0, T0 + 100) | st.floats(allow_nan=True, allow_infinity=True)
    for sid in ids:
        started = draw(st.none() | times)
        steps[sid] = StepView(sid, draw(st.sampled_from(list(StepStatus))), draw(st.integers(0, 9)),
                              draw(st.none() | ANY_TEXT), None, started, draw(st.none() | times))
    outputs = draw(st.none() | st.dictionaries(ANY_TEXT, ANY_TEXT | st.floats(), max_size=3))
    return view_with(steps, draw(st.sampled_from(list(ExecutionStatus))), id=draw(ANY_TEXT), sop=draw(ANY_TEXT),
                     progress=draw(st.floats(0, 1) | st.floats()), outputs=outputs,
                     trace_id=draw(st.none() | ANY_TEXT), ended_at=draw(st.none() | times))


@settings(max_examples=150, deadline=None)
@given(views())
def test_for_any_step_ids_errors_and_outputs_the_html_is_well_formed_and_escapes_them(view):
    for html in (execution_html(view, now=T0 + 300), ExecutionList([view])._repr_html_()):
        root = ET.fromstring(html)  # well-formed, whatever the texts held
        assert_only_our_markup(root)  # no user text became markup
        text = all_text(root)
        assert clean(view.id) in text
    root = ET.fromstring(execution_html(view, now=T0 + 300))
    cells = [all_text(tr.findall("td")[0]) for tr in root.iter("tr") if tr.findall("td")]
    assert cells == [clean(s) for s in view.steps]  # one row per step, its id as plain text
    for step in view.steps.values():
        if step.error and len(step.error) < 2000:
            assert clean(step.error) in all_text(root)


def test_a_view_without_its_sop_shows_a_step_table_and_no_dag() -> None:
    view = view_with({"greet": StepView("greet", StepStatus.SUCCEEDED, 1, None, None, T0, T0 + 0.25),
                      "shout": StepView("shout", StepStatus.RUNNING, 2, None, None, T0 + 1)})
    html = view._repr_html_()
    root = ET.fromstring(html)
    assert root.find(f".//{SVG}svg") is None
    rows = [[all_text(td) for td in tr.findall("td")] for tr in root.iter("tr") if tr.findall("td")]
    assert [r[:3] for r in rows] == [["greet", "succeeded", "1"], ["shout", "running", "2"]]
    assert rows[0][4] == "0.25 s"


def test_with_its_sop_every_step_is_a_box_coloured_by_its_state() -> None:
    sop = load(ROOT / "examples" / "fanout-condition.yaml")
    steps = {"probe_eu": StepView("probe_eu", StepStatus.SUCCEEDED, 1, None, None, T0, T0 + 1),
             "probe_us": StepView("probe_us", StepStatus.RETRYING, 2, "TimeoutError: <no answer>", None, T0),
             "probe_ap": StepView("probe_ap", StepStatus.FAILED, 3, "ValueError: region <ap> & down", None,
                                  T0, T0 + 2)}
    root = ET.fromstring(execution_html(view_with(steps), sop, now=T0 + 5))
    boxes = {g.get("data-step"): g for g in root.iter(f"{SVG}g") if "step" in g.get("class", "").split()}
    assert set(boxes) == {s.id for s in sop.steps}
    for sid, g in boxes.items():
        state = steps[sid].status if sid in steps else StepStatus.PENDING  # never reached: pending
        assert g.get("data-state") == state.value
        assert g.find(f"{SVG}rect").get("fill") == STEP_COLOURS[state][0]
    texts = [t.text for t in boxes["probe_ap"].iter(f"{SVG}text")]
    assert texts[2] == "failed · 3 attempts · 2.00 s"
    assert "ValueError: region <ap> & down" in boxes["probe_ap"].find(f"{SVG}title").text
    assert "retrying · 2 attempts · 5.00 s" in [t.text for t in boxes["probe_us"].iter(f"{SVG}text")]


def test_steps_added_at_run_time_are_drawn_too() -> None:
    sop = load(ROOT / "examples" / "hello-linear.yaml")
    view = view_with({"extra": StepView("extra", StepStatus.QUEUED)})
    root = ET.fromstring(execution_html(view, sop))
    assert {g.get("data-step") for g in root.iter(f"{SVG}g") if g.get("data-step")} == {
        "greet", "shout", "count", "extra"}


def test_every_state_has_its_own_colour_and_a_place_in_the_legend() -> None:
    assert set(STEP_COLOURS) == set(StepStatus)
    assert len({fill for fill, _ in STEP_COLOURS.values()}) == len(StepStatus)
    assert all_text(ET.fromstring(legend())) == "".join(s.value for s in StepStatus)
    assert step_mark(StepView("a", StepStatus.PENDING)).lines == ("pending",)


def executions() -> ExecutionList:
    done = view_with({"a": StepView("a", StepStatus.FAILED, 1, "boom")}, ExecutionStatus.FAILED,
                     id="exe-000000000001-00000001", progress=1.0, ended_at=T0 + 3.5)
    running = view_with({}, ExecutionStatus.RUNNING, id="exe-000000000002-00000002", sop="other")
    return ExecutionList([done, running])


def test_a_list_of_executions_is_a_table_with_one_row_each() -> None:
    root = ET.fromstring(executions()._repr_html_())
    head = [all_text(th) for th in root.iter("th")]
    assert head == ["id", "sop", "status", "progress", "submitted", "duration"]
    rows = [[all_text(td) for td in tr.findall("td")] for tr in root.iter("tr") if tr.findall("td")]
    assert rows[0] == ["exe-000000000001-00000001", "hello-linear", "failed", "100%", "2027-01-15 08:00:00Z",
                       "3.50 s"]
    assert rows[1][:4] == ["exe-000000000002-00000002", "other", "running", "50%"]
    assert isinstance(executions(), list) and executions()[0].id == "exe-000000000001-00000001"
    assert isinstance(executions()[:1], ExecutionList) and len(executions()[:1]) == 1  # a slice displays too


def test_a_list_of_executions_becomes_a_dataframe() -> None:
    pd = pytest.importorskip("pandas")  # in the test extra; the check below needs it
    frame = executions().to_pandas()
    assert list(frame.columns) == ["id", "sop", "version", "mode", "status", "progress", "priority", "submitted",
                                   "ended", "duration_s", "steps", "failed_steps"]
    assert frame["status"].tolist() == ["failed", "running"]
    assert frame.loc[0, "duration_s"] == 3.5 and pd.isna(frame.loc[1, "duration_s"])
    assert frame.loc[0, "submitted"] == pd.Timestamp(T0, unit="s", tz="UTC")
    assert frame.loc[0, "failed_steps"] == 1
    assert frame[frame.status == "failed"]["id"].tolist() == ["exe-000000000001-00000001"]
    assert ExecutionList().to_pandas().empty


def test_without_pandas_to_pandas_says_what_to_install() -> None:
    # A real interpreter where `import pandas` fails, as on a machine without it.
    code = ("import sys; sys.modules['pandas'] = None\n"
            "from runtime.display import ExecutionList\n"
            "try:\n    ExecutionList().to_pandas()\n"
            "except ImportError as e:\n    print(type(e).__name__, '|', e)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ("OptionalDependencyMissing | ExecutionList.to_pandas() needs pandas, which is "
                                   "not installed; install it with `pip install pandas`")
    assert issubclass(OptionalDependencyMissing, ImportError)


def test_long_lists_and_big_sops_are_cut_with_a_note_saying_where_the_rest_is() -> None:
    from runtime.display import MAX_ROWS
    from sop import loads
    from sop.svg import MAX_DRAWN_STEPS

    many = ExecutionList(view_with({}, id=f"exe-{k:012x}-00000000") for k in range(MAX_ROWS + 7))
    rows = [tr for tr in ET.fromstring(many._repr_html_()).iter("tr") if tr.findall("td")]
    assert len(rows) == MAX_ROWS + 1
    assert all_text(rows[-1]) == "\u2026 and 7 more (to_pandas() has them all)"
    assert len(many.to_pandas()) == MAX_ROWS + 7

    n = max(MAX_DRAWN_STEPS, MAX_ROWS) + 3
    big = loads("sop: big\nsteps:\n" + "".join(f"  - {{id: s{k}, run: 'true'}}\n" for k in range(n)))
    html = big._repr_html_()
    assert "<svg" not in html and f"{n} steps: too many to draw here" in html
    assert "image/svg+xml" not in big._repr_mimebundle_()
    steps = {f"s{k}": StepView(f"s{k}", StepStatus.SUCCEEDED, 1) for k in range(n)}
    root = ET.fromstring(execution_html(view_with(steps), big))
    assert root.find(f".//{SVG}svg") is None
    assert len([tr for tr in root.iter("tr") if tr.findall("td")]) == MAX_ROWS + 1
