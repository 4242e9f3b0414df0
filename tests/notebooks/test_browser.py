"""The HTML/SVG renders in a real browser (Debian's headless chromium): nodes in the DOM, colours on screen."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import pytest

from runtime.display import STEP_COLOURS, execution_html
from runtime.status import ExecutionStatus, ExecutionView, StepStatus, StepView
from sop import loads
from tests.notebooks.outputs import cell, html_outputs, run_chromium

T0 = 1_800_000_000.0
HOSTILE = "<img src=x onerror=\"document.title='pwned'\"><script>document.title='pwned'</script>"
STATES = list(StepStatus)


class _Dom(HTMLParser):
    """The elements of a serialised DOM: (tag, attributes) in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        self._in_title = tag == "title" and not self.title

    def handle_startendtag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data):
        if self._in_title:
            self.title += data

    def handle_endtag(self, tag):
        self._in_title = False


def dom_of(html: str) -> _Dom:
    dom = _Dom()
    dom.feed(html)
    return dom


def step_states(dom: _Dom) -> list[str]:
    """data-state of every drawn step box (a <g class="step ..."> followed by its <rect>)."""
    out = []
    for k, (tag, attrs) in enumerate(dom.elements):
        if tag == "g" and "step" in attrs.get("class", "").split():
            following = [t for t, _ in dom.elements[k + 1:k + 4]]
            assert "rect" in following, following
            out.append(attrs.get("data-state", ""))
    return out


def page(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "page.html"
    path.write_text(f'<!doctype html><html><head><meta charset="utf-8"/><title>sopflow</title></head>'
                    f'<body style="margin:0;background:#fff">{body}</body></html>', encoding="utf-8")
    return path


def every_state_view():
    """An SOP of one step per state (all after a first one) and a view with each step in its state."""
    steps = "\n".join(f"  - {{id: {s.value}, run: 'true', depends_on: [first]}}" for s in STATES)
    sop = loads(f"sop: every-state\nsteps:\n  - {{id: first, run: 'true'}}\n{steps}\n")
    views = {s.value: StepView(s.value, s, 1, HOSTILE if s == StepStatus.FAILED else None, None, T0, T0 + 1)
             for s in STATES}
    views["first"] = StepView("first", StepStatus.SUCCEEDED, 1, None, None, T0, T0 + 0.5)
    views[HOSTILE] = StepView(HOSTILE, StepStatus.FAILED, 1, HOSTILE)  # an id no SOP allows, drawn anyway
    view = ExecutionView(id="exe-0123456789ab-cdef0123", sop="every-state", version="1", mode="system_design",
                         status=ExecutionStatus.RUNNING, progress=0.5, steps=views, submitted_at=T0)
    return view, sop


def test_an_execution_renders_one_box_per_step_in_the_browser_and_no_user_text_runs(chromium, tmp_path):
    view, sop = every_state_view()
    done = run_chromium(chromium, page(tmp_path, execution_html(view, sop, now=T0 + 2)), "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    dom = dom_of(done.stdout)
    assert sorted(step_states(dom)) == sorted([s.value for s in STATES] + ["succeeded", "failed"])
    assert dom.title == "sopflow"  # neither onerror nor the script ran
    assert not [tag for tag, _ in dom.elements if tag in ("img", "script")]
    assert "&lt;img src=x" in done.stdout  # shown as text


def test_a_screenshot_shows_every_state_colour(chromium, tmp_path):
    image = pytest.importorskip("PIL.Image")  # Pillow is in the test extra
    import numpy as np

    view, sop = every_state_view()
    shot = tmp_path / "shot.png"
    done = run_chromium(chromium, page(tmp_path, execution_html(view, sop, now=T0 + 2)),
                        "--window-size=1400,1400", f"--screenshot={shot}")
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    pixels = np.asarray(image.open(shot).convert("RGB")).astype(int)
    for state, (fill, _) in STEP_COLOURS.items():
        rgb = [int(fill[i:i + 2], 16) for i in (1, 3, 5)]
        count = int((np.abs(pixels - rgb) <= 2).all(axis=2).sum())
        # A box is 260 x 72 px; text and borders take a part of it, the legend adds a little.
        assert count > 5000, f"{state.value}: {count} pixels of {fill}"


def test_the_executed_quickstart_renders_its_dags_in_the_browser(chromium, quickstart, tmp_path):
    # The notebook as a page: every HTML output of its DAG and live cells, as a notebook viewer shows them.
    body = "".join(html for tag in ("dag", "live") for html in html_outputs(cell(quickstart, tag)))
    done = run_chromium(chromium, page(tmp_path, body), "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    states = step_states(dom_of(done.stdout))
    assert len(states) == 12  # six steps drawn twice: the SOP, then the execution
    assert states[:6] == [""] * 6 and states[6:] == ["succeeded"] * 6
