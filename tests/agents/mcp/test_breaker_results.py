"""The pure parts of the MCP layer: the circuit breaker's rules and a tool answer turned into data."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mcp import types

from agents.mcp import CircuitBreaker, McpOutputInvalid, McpResultTooLarge
from agents.mcp.results import check_output, size_of, to_result


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# One step of a run against the breaker: a call that succeeds or fails, or time passing.
steps = st.lists(st.one_of(st.booleans(), st.floats(0.0, 40.0)), max_size=300)


@settings(max_examples=300, deadline=None)
@given(steps)
def test_the_breaker_follows_its_rules_for_any_run(run: list) -> None:
    """Closed: opens exactly when >50% of the last <=100 calls failed, with at least 10 calls since it
    closed; open: every call fails fast until 30 s passed; then one probe decides, others still fail fast."""
    clock = Clock()
    breaker = CircuitBreaker(clock=clock)
    window: list[bool] = []  # the model: failures among the calls since the breaker last closed
    opened_at: float | None = None
    for step in run:
        if isinstance(step, float):
            clock.now += step
            continue
        ok = step
        if opened_at is None:  # closed
            assert breaker.state == "closed" and breaker.allow()
            breaker.record(ok)
            window = (window + [not ok])[-100:]
            if len(window) >= 10 and sum(window) > len(window) / 2:
                opened_at = clock.now
            assert breaker.state == ("open" if opened_at is not None else "closed")
        elif clock.now - opened_at < 30.0:
            assert breaker.state == "open" and not breaker.allow()
        else:
            assert breaker.state == "half_open" and breaker.allow()
            assert not breaker.allow()  # one probe at a time
            breaker.record(ok)
            if ok:
                opened_at, window = None, []
                assert breaker.snapshot() == {"state": "closed", "failures": 0, "calls": 0, "opened_at": None}
            else:
                opened_at = clock.now
                assert breaker.state == "open"


def test_a_probe_that_ends_without_an_outcome_lets_the_next_call_probe() -> None:
    clock = Clock()
    breaker = CircuitBreaker(clock=clock, min_calls=1)
    breaker.allow()
    breaker.record(False)
    clock.now = 30.0
    assert breaker.allow() and not breaker.allow()
    breaker.abandon()
    assert breaker.allow()


def test_the_breaker_refuses_settings_that_make_no_sense() -> None:
    with pytest.raises(ValueError, match="min_calls <= window"):
        CircuitBreaker(window=5, min_calls=10)


def _result(content=(), structured=None, is_error=False) -> types.CallToolResult:
    return types.CallToolResult(content=list(content), structured_content=structured, is_error=is_error)


def _text(t: str) -> types.TextContent:
    return types.TextContent(type="text", text=t)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                        max_size=4), max_leaves=12)


@settings(max_examples=200, deadline=None)
@given(json_values, st.dictionaries(st.text(max_size=8), json_values, max_size=4))
def test_an_answer_becomes_data_structured_first_then_json_text_then_text(value, structured) -> None:
    assert to_result(_result([_text(json.dumps(value))], structured), duration_s=0).data == structured
    assert to_result(_result([_text(json.dumps(value))]), duration_s=0).data == value
    assert to_result(_result([_text(json.dumps(value)), _text("plain")]), duration_s=0).data == [value, "plain"]
    assert to_result(_result([_text("not json: {")]), duration_s=0).data == "not json: {"
    assert to_result(_result(), duration_s=0).data is None


def test_an_answer_over_the_limit_is_refused_and_its_size_is_what_travelled() -> None:
    raw = _result([_text("x" * 1000)])
    assert size_of(raw) > 1000
    with pytest.raises(McpResultTooLarge, match=r"over the limit of 1000 bytes"):
        to_result(raw, duration_s=0, max_bytes=1000)


SCHEMA = {"type": "object", "properties": {"count": {"type": "integer"}}, "required": ["count"]}


@settings(max_examples=100, deadline=None)
@given(json_values)
def test_structured_content_is_checked_against_the_declared_schema(value) -> None:
    good = isinstance(value, int) and not isinstance(value, bool)
    raw = _result(structured={"count": value})
    if good:
        check_output("t", SCHEMA, raw)
    else:
        with pytest.raises(McpOutputInvalid, match="does not match its output schema at count"):
            check_output("t", SCHEMA, raw)


def test_a_declared_schema_without_structured_content_or_a_broken_schema_is_named() -> None:
    with pytest.raises(McpOutputInvalid, match="declares an output schema but sent no structured content"):
        check_output("t", SCHEMA, _result([_text("{}")]))
    with pytest.raises(McpOutputInvalid, match="not valid JSON Schema"):
        check_output("t", {"type": "no-such-type"}, _result(structured={}))
    check_output("t", None, _result([_text("anything")]))  # no schema: nothing to check
    check_output("t", SCHEMA, _result([_text("boom")], is_error=True))  # an error answer has its own error
