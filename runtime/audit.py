"""The audit log: what happened in every execution, one entry per fact, queryable (``Engine.logs``).

Entries are derived from the typed events (:func:`entries_of`) by the event log
backend, in the same commit as the events they come from, so the audit log
never says more or less than the event log: a start entry (execution id, SOP
and version, mode, agent, who submitted it), every attempt started and ended,
every decision (the failure policy's, an operator's), every data access (an MCP
call), every operator action (cancel, pause, resume, decide, add steps), the end
(status, duration, outputs summary), and the lines handlers wrote through
``context.logger`` with a shell step's output tail, each with a level.

Queries (:class:`LogQuery`) filter on execution, SOP, agent, step, status, kind,
minimum level, a time range and a literal text; every backend answers them the
same way (:func:`matches` is the reference).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from runtime._log_lines import clip, readable
from runtime.errors import SopflowError
from runtime.events import Event, EventKind

DEFAULT_LIMIT = 1000
"""Entries a query returns unless it says otherwise."""
MAX_LIMIT = 10_000
"""Most entries one query returns; a larger ``limit`` is lowered to this (page with ``after``)."""


class LogQueryError(SopflowError, ValueError):
    """Raised when a log query's filters are not valid (an unknown level or kind, a negative limit)."""


class LogKind(StrEnum):
    START = "start"
    """The execution was submitted: its SOP and version, mode, agent and who submitted it."""
    ATTEMPT = "attempt"
    """An attempt was queued, started or ended (status: queued, started, succeeded, failed)."""
    STEP = "step"
    """A step ended without running: skipped, upstream_failed or cancelled."""
    DECISION = "decision"
    """The failure policy decided (retry, fail, escalate), a rollback started, or a step needs a decision."""
    DATA_ACCESS = "data_access"
    """One call to an MCP server (status ok or failed)."""
    OPERATOR = "operator"
    """An operator acted: cancel, pause, resume, decide, add_steps (the status says which)."""
    RECOVERY = "recovery"
    """A restarted coordinator resumed the execution, or found an attempt interrupted."""
    END = "end"
    """The execution ended: its final status, duration and outputs."""
    HANDLER = "handler"
    """A line a handler wrote through ``context.logger``."""
    OUTPUT = "output"
    """A line of a shell step's stdout or stderr (its tail)."""
    AGENT = "agent"
    """An agent's own action (Agent Centric Run): its session started or was lost, a model call, its
    status, its report (its decisions are ``decision`` entries, its MCP calls ``data_access`` ones)."""
    EVENT = "event"
    """An event whose data could not be described (an odd import): its kind and seq, and why."""


LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR, "critical": logging.CRITICAL}
_LEVEL_NAMES = {v: k for k, v in LEVELS.items()}


def level_name(level: int) -> str:
    """``info`` for 20 and so on; a level between two names takes the lower one."""
    for number in sorted(_LEVEL_NAMES, reverse=True):
        if level >= number:
            return _LEVEL_NAMES[number]
    return "debug"


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One entry of the audit log.

    Attributes:
        ts: When it happened (seconds since the epoch).
        execution_id: The execution.
        sop: The execution's SOP.
        kind: What kind of entry (a :class:`LogKind` value).
        level: Its level as a ``logging`` number (20: info, 30: warning, 40: error).
        message: One readable line (several for a traceback); secrets masked.
        step: The step it concerns, if any.
        attempt: The attempt it concerns, if any.
        status: The status it records (an attempt's, a step's, the execution's end, the decision taken,
            the operator's action), if any.
        agent: The agent running the execution, when there is one.
        seq: The event it comes from.
        data: Details (durations, errors, outputs summary ...), as JSON data.
        id: Its position in the store, increasing in the order entries were stored (the cursor
            ``after`` pages and follows with); set on entries read back.
    """

    ts: float
    execution_id: str
    sop: str
    kind: str
    level: int
    message: str
    step: str | None = None
    attempt: int | None = None
    status: str | None = None
    agent: str | None = None
    seq: int | None = None
    data: dict[str, Any] | None = None
    id: int | None = None

    @property
    def level_name(self) -> str:
        return level_name(self.level)

    def to_dict(self) -> dict[str, Any]:
        """The entry as JSON data (``level`` by name)."""
        return {"id": self.id, "ts": self.ts, "execution_id": self.execution_id, "sop": self.sop,
                "agent": self.agent, "step": self.step, "attempt": self.attempt, "kind": self.kind,
                "level": self.level_name, "status": self.status, "message": self.message, "seq": self.seq,
                "data": self.data}

    def describe(self) -> str:
        """One line for ``sopflow logs``."""
        where = self.step + (f"#{self.attempt}" if self.attempt else "") if self.step else "-"
        return f"{self.level_name.upper():<7} {self.execution_id} {where} {self.kind}: {self.message}"


@dataclass(slots=True)
class LogContext:
    """What every entry of one execution carries beside its event: SOP, agent, start time.

    ``last_seq`` is the last event entries were made for: a backend skips events at or
    below it, so an event stored twice (an import, a retried commit) is logged once.
    """

    sop: str = ""
    agent: str | None = None
    submitted_at: float | None = None
    last_seq: int = 0


def context_of_submitted(event: Event) -> LogContext:
    """The context an ``execution_submitted`` event starts (``last_seq`` 0: it is still to be logged)."""
    agent = event.data.get("agent")  # both stored as columns: text SQLite can always encode
    return LogContext(readable(event.data.get("sop", "")), readable(agent) if agent else None, event.ts)


# -- deriving entries from events ----------------------------------------------------------------

class _K:
    """The event kinds as plain class attributes: an enum member looked up on its class costs a
    descriptor call, and this runs for every event the coordinator commits."""


for _kind in EventKind:
    setattr(_K, _kind.name, _kind)

_STEP_END = {EventKind.STEP_SKIPPED: ("skipped", logging.INFO), EventKind.STEP_HALTED: ("upstream_failed", logging.WARNING),
             EventKind.STEP_CANCELLED: ("cancelled", logging.WARNING)}
_OPERATOR = {EventKind.PAUSED: "pause", EventKind.RESUMED: "resume", EventKind.CANCEL_REQUESTED: "cancel",
             EventKind.STEPS_ADDED: "add_steps", EventKind.DECIDED: "decide"}
_END_LEVEL = {"completed": logging.INFO, "partially_completed": logging.WARNING, "cancelled": logging.WARNING}
_SOURCES = {"stdout": LogKind.OUTPUT, "stderr": LogKind.OUTPUT}
MAX_OUTPUTS_SUMMARISED = 20
"""SOP outputs named in an end entry (each shown by a short preview)."""


def entries_of(event: Event, ctx: LogContext) -> list[LogEntry]:
    """The audit entries an event makes, for an execution whose context is ``ctx``.

    Never raises: an event whose data cannot be described (an odd import, a newer writer)
    still gets one entry naming it, so the log is never stopped by it.
    """
    try:
        return _entries_of(event, ctx)
    except Exception as e:  # noqa: BLE001 - one odd event must not stop the commit of the others
        return [LogEntry(event.ts, event.execution_id, ctx.sop, LogKind.EVENT.value, logging.WARNING,
                         clip(readable(f"event #{event.seq} {event.kind} could not be described: {e!r}")),
                         event.step, event.attempt, None, ctx.agent, event.seq)]


def _entries_of(event: Event, ctx: LogContext) -> list[LogEntry]:
    d, k = event.data, event.kind
    if type(k) is not EventKind:  # compared by identity below
        k = EventKind(k)
    entries: list[LogEntry] = []

    def add(kind: LogKind, level: int, message: str, status: str | None = None,
            data: dict[str, Any] | None = None, ts: float | None = None) -> None:
        entries.append(LogEntry(event.ts if ts is None else ts, event.execution_id, ctx.sop, kind.value, level,
                                clip(readable(message)), event.step, event.attempt,
                                None if status is None else clip(readable(status), 200), ctx.agent,
                                event.seq, data or None))

    step = f"step {event.step!r}" if event.step else "the execution"
    att = f" attempt {event.attempt}" if event.attempt else ""
    if k is _K.SUBMITTED:
        by = d.get("submitted_by") or "unknown"
        agent = f", agent {ctx.agent}" if ctx.agent else ""
        add(LogKind.START, logging.INFO, f"submitted SOP {ctx.sop} {d.get('version', '')} ({d.get('mode')}"
            f"{agent}) by {by}", "submitted",
            _some(version=d.get("version"), mode=d.get("mode"), submitted_by=d.get("submitted_by"),
                  priority=d.get("priority"), parent=d.get("parent"), source=d.get("source")))
    elif k is _K.STEP_QUEUED:
        add(LogKind.ATTEMPT, logging.DEBUG, f"{step}{att} queued: {d.get('reason', '')}", "queued")
    elif k is _K.STEP_STARTED:
        add(LogKind.ATTEMPT, logging.INFO, f"{step}{att} started", "started", _some(inputs=d.get("inputs")))
    elif k is _K.STEP_SUCCEEDED:
        _lines(event, ctx, d.get("logs"), entries)
        add(LogKind.ATTEMPT, logging.INFO, f"{step}{att} succeeded in {_secs(d.get('duration_s'))}", "succeeded",
            _some(duration_s=d.get("duration_s")))
    elif k is _K.STEP_FAILED:
        _lines(event, ctx, d.get("logs"), entries)
        final = d.get("final", True)
        add(LogKind.ATTEMPT, logging.ERROR if final else logging.WARNING,
            f"{step}{att} failed [{d.get('classification')}]: {d.get('error')}", "failed",
            _some(error=d.get("error"), error_type=d.get("error_type"), classification=d.get("classification")))
        if d.get("action"):
            add(LogKind.DECISION, logging.INFO if d["action"] == "retry" else logging.ERROR,
                f"failure policy for {step}: {d['action']}" + (f" ({d['reason']})" if d.get("reason") else ""),
                str(d["action"]), _some(by="failure_policy", classification=d.get("classification")))
    elif k is _K.ESCALATED:
        add(LogKind.DECISION, logging.ERROR, f"{step} escalated: {d.get('reason', '')}", "escalated",
            _some(classification=d.get("classification")))
    elif k is _K.ROLLBACK_STARTED:
        add(LogKind.DECISION, logging.WARNING, f"rollback started: {d.get('reason', '')}", "rollback")
    elif k is _K.DECISION_REQUIRED:
        add(LogKind.DECISION, logging.WARNING, f"{step} needs an operator's decision: {d.get('reason', '')}",
            "needs_decision")
    elif k in _STEP_END:
        status, level = _STEP_END[k]
        add(LogKind.STEP, level, f"{step} {status.replace('_', ' ')}: {d.get('reason', '')}", status)
    elif k in _OPERATOR:
        _operator(event, _OPERATOR[k], step, add)
    elif k is _K.CHILD_SUBMITTED:
        add(LogKind.ATTEMPT, logging.INFO, f"{step}{att} started sub-SOP execution {d.get('child')}",
            "child_submitted", _some(child=d.get("child")))
    elif k is _K.RECOVERED:
        add(LogKind.RECOVERY, logging.WARNING, "resumed by a restarted coordinator", "recovered",
            _some(**{n: d.get(n) for n in ("in_flight", "queued", "awaiting_decision", "retrying") if d.get(n)}))
    elif k is _K.ATTEMPT_INTERRUPTED:
        add(LogKind.RECOVERY, logging.WARNING, f"{step}{att} interrupted: {d.get('reason', '')}", "interrupted")
    elif k is _K.DATA_ACCESSED:
        ok = bool(d.get("ok", True))
        who = readable(d["agent"]) if d.get("agent") else ctx.agent
        add(LogKind.DATA_ACCESS, logging.INFO if ok else logging.WARNING,
            f"MCP {d.get('server')}.{d.get('tool')} {'ok' if ok else 'failed: ' + str(d.get('error'))} "
            f"in {_secs(d.get('duration_s'))}", "ok" if ok else "failed",
            _some(server=d.get("server"), tool=d.get("tool"), arguments=d.get("arguments"), error=d.get("error"),
                  duration_s=d.get("duration_s"), agent=d.get("agent")))
        if who and who != ctx.agent:
            entries[-1] = replace(entries[-1], agent=who)
    elif k in _AGENT_KINDS:
        _agent_entry(event, k, add)
    elif k is _K.FINISHED:
        status = str(d.get("status", ""))
        duration = None if ctx.submitted_at is None else round(event.ts - ctx.submitted_at, 6)
        summary = _outputs_summary(d.get("outputs"))
        add(LogKind.END, _END_LEVEL.get(status, logging.ERROR),
            f"execution {status}" + (f" after {_secs(duration)}" if duration is not None else "")
            + (f"; outputs: {', '.join(summary)}" if summary else ""), status,
            _some(duration_s=duration, outputs=summary or None, output_errors=d.get("output_errors") or None))
    return entries


_AGENT_KINDS = frozenset({_K.AGENT_STARTED, _K.AGENT_LOST, _K.MODEL_CALLED, _K.TOOL_STARTED, _K.TOOL_CALLED,
                          _K.AGENT_DECIDED, _K.AGENT_STATUS, _K.AGENT_REPORTED})


def _agent_entry(event: Event, k: EventKind, add: Any) -> None:
    """The audit entry of an agent's event: what it did, decided, accessed and reported."""
    d, p = event.data, event.payload
    if k is _K.AGENT_DECIDED:
        add(LogKind.DECISION, logging.INFO, f"agent decided {event.step or 'the run'}: {d.get('decision')} "
            f"({d.get('rationale')})", str(d.get("decision")),
            _some(by="agent", decision=d.get("decision"), rationale=d.get("rationale")))
    elif k is _K.TOOL_CALLED:
        ok = bool(d.get("ok", True))
        add(LogKind.DATA_ACCESS, logging.INFO if ok else logging.WARNING,
            f"agent called MCP tool {d.get('tool')}: {'ok' if ok else 'failed'} in {_secs(d.get('duration_s'))}",
            "ok" if ok else "failed", _some(server=d.get("source"), tool=d.get("tool"), request=d.get("request"),
                                            by="agent", arguments=d.get("arguments"),
                                            result_bytes=d.get("result_bytes"), duration_s=d.get("duration_s")))
    elif k is _K.MODEL_CALLED:
        add(LogKind.AGENT, logging.DEBUG, f"model {p.summary()} in {_secs(d.get('duration_s'))}", "model_called",
            _some(index=d.get("index"), prompt_tokens=d.get("prompt_tokens"),
                  response_tokens=d.get("response_tokens")))
    elif k is _K.AGENT_REPORTED:
        add(LogKind.AGENT, logging.INFO, f"agent reported its result: {d.get('summary_text', '')}", "reported",
            _some(outputs=sorted(d.get("outputs") or {}) or None))
    elif k is _K.AGENT_LOST:
        add(LogKind.AGENT, logging.WARNING, f"agent session {d.get('session')} lost: {d.get('reason')}", "lost")
    elif k is _K.AGENT_STARTED:
        add(LogKind.AGENT, logging.INFO, f"agent {p.summary()}", "started",
            _some(session=d.get("session"), model=d.get("model"), host=d.get("host")))
    elif k is _K.TOOL_STARTED:
        add(LogKind.AGENT, logging.DEBUG, f"agent calling MCP tool {d.get('tool')}", "tool_started")
    else:
        add(LogKind.AGENT, logging.DEBUG, f"agent status: {d.get('message', '')}", "status",
            _some(progress=d.get("progress")))


def _operator(event: Event, action: str, step: str, add: Any) -> None:
    d = event.data
    if action == "decide":
        message = f"operator decided {step}: {d.get('decision')} ({d.get('reason') or 'no reason given'})"
        data = _some(decision=d.get("decision"), reason=d.get("reason") or None)
    elif action == "cancel":
        message, data = "operator cancelled the execution" + (" (forced)" if d.get("force") else ""), _some(
            force=d.get("force") or None)
    elif action == "add_steps":
        message, data = f"operator added steps {', '.join(map(str, d.get('steps', [])))}", _some(steps=d.get("steps"))
    else:
        message, data = f"operator {'paused' if action == 'pause' else 'resumed'} the execution", None
    if d.get("by"):
        message += f" (by {d['by']})"
        data = {**(data or {}), "by": d["by"]}
    add(LogKind.OPERATOR, logging.WARNING if action == "cancel" else logging.INFO, message, action, data)


def _lines(event: Event, ctx: LogContext, lines: Any, out: list[LogEntry]) -> None:
    """Entries for the lines an attempt wrote (``[ts, level, source, text]`` each; odd ones skipped)."""
    for line in lines or ():
        try:
            ts, level, source, text = line
            ts, level = float(ts), max(0, min(int(level), 100))  # a level SQLite can store
        except (TypeError, ValueError, OverflowError):
            continue
        if not math.isfinite(ts):
            ts = event.ts
        kind = _SOURCES.get(str(source), LogKind.HANDLER)
        out.append(LogEntry(ts, event.execution_id, ctx.sop, kind.value, level, clip(readable(text)), event.step,
                            event.attempt, None, ctx.agent, event.seq,
                            {"stream": source} if kind is LogKind.OUTPUT else None))


def _outputs_summary(outputs: Any) -> list[str]:
    values = outputs.get("outputs") if isinstance(outputs, dict) else None
    if not isinstance(values, dict):
        return []
    out = []
    for name, value in list(values.items())[:MAX_OUTPUTS_SUMMARISED]:
        text = json.dumps(value, default=repr, separators=(",", ":"))
        out.append(f"{name}={text if len(text) <= 60 else text[:57] + '...'}")
    if len(values) > MAX_OUTPUTS_SUMMARISED:
        out.append(f"... {len(values) - MAX_OUTPUTS_SUMMARISED} more")
    return out


def _some(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _secs(value: Any) -> str:
    return f"{float(value):.3f} s" if isinstance(value, (int, float)) else "?"


# -- queries -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogQuery:
    """Filters of a log query; an entry is returned only if it matches every one given.

    Build it with :meth:`of`, which checks the values. ``text`` is a literal,
    case-sensitive substring of the message (no wildcards); ``level`` is a minimum;
    ``since``/``until`` bound ``ts`` as ``[since, until)``. Without ``after``, the
    newest ``limit`` matches are returned, oldest first; with ``after`` (an entry id),
    the first ``limit`` entries stored after it (what ``--follow`` reads).
    """

    execution: str | None = None
    sop: str | None = None
    agent: str | None = None
    step: str | None = None
    status: str | None = None
    kind: str | None = None
    level: int | None = None
    since: float | None = None
    until: float | None = None
    text: str | None = None
    limit: int = DEFAULT_LIMIT
    after: int | None = None

    @classmethod
    def of(cls, *, execution: Any = None, sop: str | None = None, agent: str | None = None,
           step: str | None = None, status: str | None = None, kind: str | None = None,
           level: str | int | None = None, since: float | None = None, until: float | None = None,
           text: str | None = None, limit: int | None = DEFAULT_LIMIT, after: int | None = None) -> LogQuery:
        """A checked query (``limit`` above :data:`MAX_LIMIT` is lowered to it; None means the most).

        Raises:
            LogQueryError: naming the filter that is wrong and what it may be.
        """
        if limit is None:
            limit = MAX_LIMIT
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise LogQueryError(f"limit must be a whole number >= 0, got {limit!r}")
        if kind is not None and str(kind) not in {k.value for k in LogKind}:
            raise LogQueryError(f"kind must be one of {', '.join(k.value for k in LogKind)}; got {kind!r}")
        for name, value in (("since", since), ("until", until)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value)):
                raise LogQueryError(f"{name} must be a time in seconds since the epoch, got {value!r}")
        if after is not None and (isinstance(after, bool) or not isinstance(after, int) or after < 0):
            raise LogQueryError(f"after must be an entry id (a whole number >= 0), got {after!r}")
        strings = {"execution": execution, "sop": sop, "agent": agent, "step": step, "status": status,
                   "text": text}
        for name, value in strings.items():
            if value is not None:
                strings[name] = str(value)  # plain text (an ExecutionId is a str subclass)
        return cls(strings["execution"], strings["sop"], strings["agent"], strings["step"], strings["status"],
                   None if kind is None else str(kind), _level(level),
                   None if since is None else float(since), None if until is None else float(until),
                   None if strings["text"] is None else readable(strings["text"]), min(limit, MAX_LIMIT), after)


def _level(level: str | int | None) -> int | None:
    if level is None:
        return None
    if isinstance(level, int) and not isinstance(level, bool):
        return level
    number = LEVELS.get(str(level).strip().lower())
    if number is None:
        raise LogQueryError(f"level must be one of {', '.join(LEVELS)} (or a number); got {level!r}")
    return number


def matches(entry: LogEntry, q: LogQuery) -> bool:
    """Whether ``entry`` passes every filter of ``q`` (the reference every backend agrees with)."""
    return ((q.execution is None or entry.execution_id == q.execution) and (q.sop is None or entry.sop == q.sop)
            and (q.agent is None or entry.agent == q.agent) and (q.step is None or entry.step == q.step)
            and (q.status is None or entry.status == q.status) and (q.kind is None or entry.kind == q.kind)
            and (q.level is None or entry.level >= q.level) and (q.since is None or entry.ts >= q.since)
            and (q.until is None or entry.ts < q.until) and (q.text is None or q.text in entry.message)
            and (q.after is None or (entry.id is not None and entry.id > q.after)))


def select(entries: list[LogEntry], q: LogQuery) -> list[LogEntry]:
    """The answer to ``q`` from ``entries`` (in store order, ids set): what every backend returns."""
    hits = [e for e in entries if matches(e, q)]
    if q.after is not None:
        return hits[:q.limit]
    hits.sort(key=lambda e: (e.ts, e.id or 0))
    return hits[max(0, len(hits) - q.limit):] if q.limit else []
