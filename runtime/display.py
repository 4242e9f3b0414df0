"""How executions show themselves in a notebook: HTML for one execution and for a list of them.

``ExecutionView._repr_html_`` draws a step table (a view carries no edges);
:func:`execution_html` with the SOP draws the DAG with each step coloured by
its state. :class:`ExecutionList` (what ``Engine.list`` returns) is a table and
converts to a pandas DataFrame. All output is XHTML-compatible (every tag
closed) and every user-supplied text is escaped, so it is safe to show
anything a handler raised or returned. No Ray here.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from runtime.errors import OptionalDependencyMissing
from runtime.status import ExecutionStatus, ExecutionView, StepStatus, StepView
from sop.svg import Box, Mark, dag_svg, drawable, escape, sop_svg_or_note, step_box

# (fill, border) per step state: greys waiting, blue moving, green done, reds failed.
STEP_COLOURS: dict[StepStatus, tuple[str, str]] = {
    StepStatus.PENDING: ("#f3f4f6", "#9ca3af"),
    StepStatus.QUEUED: ("#e0e7ff", "#6366f1"),
    StepStatus.RUNNING: ("#bfdbfe", "#2563eb"),
    StepStatus.RETRYING: ("#fde68a", "#d97706"),
    StepStatus.SUCCEEDED: ("#bbf7d0", "#16a34a"),
    StepStatus.FAILED: ("#fecaca", "#dc2626"),
    StepStatus.SKIPPED: ("#e5e7eb", "#6b7280"),
    StepStatus.UPSTREAM_FAILED: ("#fed7aa", "#ea580c"),
    StepStatus.CANCELLED: ("#d1d5db", "#374151"),
    StepStatus.NEEDS_DECISION: ("#f5d0fe", "#c026d3"),
}

EXECUTION_COLOURS: dict[ExecutionStatus, str] = {
    ExecutionStatus.QUEUED: "#6366f1",
    ExecutionStatus.RUNNING: "#2563eb",
    ExecutionStatus.PAUSED: "#d97706",
    ExecutionStatus.PREEMPTED: "#a16207",
    ExecutionStatus.CANCELLING: "#374151",
    ExecutionStatus.NEEDS_DECISION: "#c026d3",
    ExecutionStatus.STALLED: "#b45309",
    ExecutionStatus.COMPLETED: "#16a34a",
    ExecutionStatus.PARTIALLY_COMPLETED: "#ea580c",
    ExecutionStatus.FAILED: "#dc2626",
    ExecutionStatus.CANCELLED: "#374151",
}

MAX_TEXT = 2000
"""Longest error or outputs text shown; the rest is cut (the full value is in ``view``)."""
MAX_ROWS = 500
"""Most rows a table shows (steps of one execution, executions of a list); a last row counts the rest."""

_CELL = 'style="padding:2px 8px;white-space:nowrap;text-align:left;vertical-align:top;border-bottom:1px solid #e5e7eb"'
_FONT = "font-family:-apple-system,BlinkMacSystemFont,'Segoe UI',sans-serif;font-size:13px"


def _when(ts: float | None) -> str:
    """A UTC timestamp to the second; empty when unknown."""
    if not ts:
        return ""
    try:
        return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    except (OverflowError, ValueError, OSError):  # a damaged record: show it rather than fail the display
        return str(ts)


def _seconds(s: float | None) -> str:
    if s is None:
        return ""
    if not math.isfinite(s) or s < 0:
        return str(s)
    if s < 60:
        return f"{s:.2f} s" if s < 10 else f"{s:.1f} s"
    minutes, sec = divmod(int(s), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{sec:02d}s"


def step_duration(step: StepView, now: float | None = None) -> float | None:
    """Seconds the step ran: to its end, or to ``now`` while it runs; None before it started."""
    if step.started_at is None:
        return None
    end = step.ended_at if step.ended_at is not None else (now if now is not None else time.time())
    return max(end - step.started_at, 0.0)


def _status(value: Any) -> StepStatus | None:
    try:
        return StepStatus(value)
    except ValueError:  # a state this client does not know (a newer engine): draw it neutral
        return None


def step_mark(step: StepView, now: float | None = None) -> Mark:
    """A step's state as the DAG draws it: its colours, a state line and the error as tooltip."""
    state = _status(step.status)
    fill, stroke = STEP_COLOURS.get(state, ("#ffffff", "#4b5563"))
    facts = [str(step.status)]
    if step.attempts:
        facts.append(f"{step.attempts} attempt{'s' if step.attempts != 1 else ''}")
    if (took := step_duration(step, now)) is not None:
        facts.append(_seconds(took))
    lines = [" · ".join(facts)]
    if step.error:
        lines.append(step.error)
    tip = f"error: {step.error}" if step.error else ""
    return Mark(fill=fill, stroke=stroke, lines=tuple(lines), tooltip=tip[:MAX_TEXT], state=str(step.status))


def _chip(status: Any, colours: Mapping[Any, Any]) -> str:
    colour = colours.get(status)
    colour = colour[1] if isinstance(colour, tuple) else colour or "#6b7280"
    return (f'<span style="display:inline-block;padding:0 6px;border-radius:8px;color:#fff;'
            f'background:{colour}">{escape(status)}</span>')


def _progress_bar(progress: float) -> str:
    pct = max(0.0, min(float(progress or 0.0), 1.0)) * 100  # NaN ends up 0
    return (f'<span style="display:inline-block;width:120px;height:8px;background:#e5e7eb;'
            f'border-radius:4px;vertical-align:middle"><span style="display:block;height:8px;'
            f'width:{pct:.0f}%;background:#2563eb;border-radius:4px"></span></span> {pct:.0f}%')


def _table(head: list[str], rows: list[list[str]], css_class: str, total: int = 0, more: str = "") -> str:
    """Cells are HTML already: callers escape what they put in. When ``total`` exceeds the rows
    given, a last row says how many were left out and where they are (``more``)."""
    th = "".join(f"<th {_CELL}>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td {_CELL}>{c}</td>" for c in row) + "</tr>" for row in rows)
    if total > len(rows):
        body += (f'<tr><td {_CELL} colspan="{len(head)}">\u2026 and {total - len(rows)} more'
                 f"{escape(more)}</td></tr>")
    return (f'<table class="{css_class}" style="border-collapse:collapse;{_FONT}">'
            f"<thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>")


def _pre(text: str) -> str:
    cut = text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + f"\u2026 ({len(text) - MAX_TEXT} more characters)"
    return f'<pre style="margin:0;white-space:pre-wrap;max-width:60em">{escape(cut)}</pre>'


def steps_table(view: ExecutionView, now: float | None = None) -> str:
    """One row per step: state, attempts, start, duration and the error (escaped)."""
    rows = []
    for step in list(view.steps.values())[:MAX_ROWS]:
        rows.append([escape(step.id), _chip(step.status, STEP_COLOURS), str(step.attempts),
                     escape(_when(step.started_at)), escape(_seconds(step_duration(step, now))),
                     _pre(step.error) if step.error else ""])
    return _table(["step", "state", "attempts", "started", "duration", "error"], rows, "sopflow-steps",
                  len(view.steps), " (the view's steps have them all)")


def _header(view: ExecutionView, now: float | None) -> str:
    ended = view.ended_at if view.ended_at is not None else (now if now is not None else time.time())
    took = max(ended - view.submitted_at, 0.0) if view.submitted_at else None
    facts = [f"<b>{escape(view.sop)}</b> {escape(view.version)}", _chip(view.status, EXECUTION_COLOURS),
             _progress_bar(view.progress), f"submitted {escape(_when(view.submitted_at))}",
             f"{'took' if view.ended_at is not None else 'running for'} {escape(_seconds(took))}"]
    if view.trace_id:
        facts.append(f"trace {escape(view.trace_id)}")
    if view.eta is not None:  # learned estimates (runtime/forecast.py)
        facts.append(f"eta {escape(_when(view.eta))}")
    if view.queue_position is not None:
        facts.append(f"queue position {view.queue_position}")
    return (f'<div style="{_FONT};margin-bottom:4px"><code>{escape(view.id)}</code> '
            + " · ".join(facts) + "</div>")


def _outputs(view: ExecutionView) -> str:
    if not view.outputs:
        return ""
    text = json.dumps(view.outputs, indent=2, sort_keys=True, default=str, ensure_ascii=False)
    return f'<details style="{_FONT}"><summary>outputs</summary>{_pre(text)}</details>'


def agent_html(view: ExecutionView) -> str:
    """The agent of an Agent Centric Run: a line on it and the table of its decisions with their
    rationales; empty for a DAG run."""
    agent = view.agent
    if agent is None:
        return ""
    facts = [f"<b>agent</b> {escape(str(agent.get('agent') or ''))}", f"model {escape(str(agent.get('model')))}",
             f"session {escape(str(agent.get('session')))} on {escape(str(agent.get('host') or '?'))}",
             f"{escape(str(agent.get('model_calls', 0)))} model calls",
             f"{escape(str(agent.get('tool_calls', 0)))} tool calls", f"{escape(str(agent.get('tokens', 0)))} tokens"]
    if agent.get("lost"):
        facts.append(f"{escape(str(agent['lost']))} session(s) lost")
    said = f'<div style="{_FONT};margin:4px 0">status: {escape(str(agent.get("message") or "(nothing yet)"))}</div>'
    decisions = list(agent.get("decisions") or ())
    rows = [[escape(str(d.get("step") or "-")), escape(str(d.get("decision"))), _pre(str(d.get("rationale") or "")),
             escape(_when(d.get("at")))] for d in decisions[:MAX_ROWS]]
    table = _table(["step", "decision", "rationale", "at"], rows, "sopflow-decisions", len(decisions),
                   " (view.decisions has them all)") if decisions else ""
    return f'<div style="{_FONT};margin:6px 0 2px 0">' + " · ".join(facts) + "</div>" + said + table


def legend(states: Iterable[StepStatus] = tuple(StepStatus)) -> str:
    """The colour of each step state, as a line of chips."""
    chips = "".join(
        f'<span style="display:inline-block;margin-right:6px;padding:0 6px;border:1px solid '
        f'{STEP_COLOURS[s][1]};background:{STEP_COLOURS[s][0]}">{escape(s.value)}</span>' for s in states)
    return f'<div class="sopflow-legend" style="{_FONT};margin:4px 0">{chips}</div>'


def dag_of(view: ExecutionView, sop: Any, now: float | None = None) -> str:
    """The SOP's DAG coloured by the view's step states.

    Steps the view has but the SOP lacks (added with ``add_steps``) are drawn
    too, without their edges; steps never reached are drawn as pending.
    """
    marks = {sid: step_mark(step, now) for sid, step in view.steps.items()}
    pending = step_mark(StepView(id="", status=StepStatus.PENDING))
    known = {s.id for s in (*sop.steps, *sop.rollback)}
    steps = [step_box(s, marks.get(s.id, pending)) for s in sop.steps]
    steps += [Box(sid, mark=marks[sid]) for sid in view.steps if sid not in known]
    rollback = [step_box(s, marks.get(s.id, pending)) for s in sop.rollback]
    return dag_svg(steps, rollback, title=f"{view.sop} {view.id}")


def execution_html(view: ExecutionView, sop: Any = None, *, now: float | None = None) -> str:
    """An execution as HTML: header, the DAG coloured by state (when ``sop`` is given), steps, the
    agent and its decisions (an Agent Centric Run), outputs.

    Args:
        view: What ``engine.status``/``wait`` returned.
        sop: The :class:`sop.Sop` it runs (``sop.load(path)``); without it there is no DAG,
            only the step table.
        now: The time used for the durations of running steps (default: the clock).
    """
    parts = [_header(view, now)]
    if sop is not None:
        if drawable(sop):
            parts.append(f'<div style="overflow-x:auto">{dag_of(view, sop, now)}</div>')
            parts.append(legend())
        else:
            parts.append(sop_svg_or_note(sop))
    parts.append(steps_table(view, now))
    parts.append(agent_html(view))
    parts.append(_outputs(view))
    return f'<div class="sopflow-execution" style="{_FONT}">{"".join(parts)}</div>'


LIST_COLUMNS = ("id", "sop", "status", "progress", "submitted", "duration")


class ExecutionList(list):
    """Executions as ``Engine.list`` returns them: a plain list that shows itself as a table.

    ``to_pandas()`` gives a DataFrame, one row per execution.
    """

    def __getitem__(self, index: Any) -> Any:
        got = super().__getitem__(index)
        return ExecutionList(got) if isinstance(index, slice) else got  # engine.list()[:10] still displays

    def _repr_html_(self) -> str:
        now = time.time()
        rows = []
        for v in self[:MAX_ROWS]:
            took = ((v.ended_at if v.ended_at is not None else now) - v.submitted_at) if v.submitted_at else None
            rows.append([f"<code>{escape(v.id)}</code>", escape(v.sop), _chip(v.status, EXECUTION_COLOURS),
                         f"{float(v.progress or 0.0) * 100:.0f}%", escape(_when(v.submitted_at)),
                         escape(_seconds(took))])
        caption = f'<div style="{_FONT};color:#6b7280">{len(self)} execution{"s" if len(self) != 1 else ""}</div>'
        table = _table(list(LIST_COLUMNS), rows, "sopflow-list", len(self), " (to_pandas() has them all)")
        return f'<div class="sopflow-executions">{caption}{table}</div>'

    def to_pandas(self) -> Any:
        """A ``pandas.DataFrame``: id, sop, version, mode, status, progress, priority, submitted,
        ended (UTC timestamps), duration_s (None while running), steps, failed_steps.

        Raises:
            OptionalDependencyMissing: pandas is not installed.
        """
        try:
            import pandas as pd
        except ImportError as e:
            raise OptionalDependencyMissing("ExecutionList.to_pandas()", "pandas") from e
        columns = ["id", "sop", "version", "mode", "status", "progress", "priority", "submitted",
                   "ended", "duration_s", "steps", "failed_steps"]
        rows = [[str(v.id), v.sop, v.version, v.mode, str(v.status), float(v.progress or 0.0), v.priority,
                 v.submitted_at or None, v.ended_at,
                 (v.ended_at - v.submitted_at) if v.ended_at is not None and v.submitted_at else None,
                 len(v.steps), sum(1 for s in v.steps.values() if s.status == StepStatus.FAILED)]
                for v in self]
        frame = pd.DataFrame(rows, columns=columns)
        for col in ("submitted", "ended"):
            frame[col] = pd.to_datetime(frame[col], unit="s", utc=True)
        return frame
