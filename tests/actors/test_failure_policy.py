"""The failure policy as pure functions: classify a failure, then retry, fail or escalate."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.errors import PermanentError, RetryableError
from runtime.failure import (
    Action,
    Classification,
    ErrorInfo,
    classify,
    decide,
    error_from_exception,
)
from sop.model import RetryPolicy

TRANSIENT = ErrorInfo("ConnectionError", "connection reset by peer")


def delays(policy: RetryPolicy, error: ErrorInfo = TRANSIENT) -> list[float]:
    """The delay of every retry the policy allows for a failure that keeps happening."""
    out = []
    for attempt in range(1, policy.max_attempts + 1):
        decision = decide(error, attempt, policy)
        if decision.action != Action.RETRY:
            break
        out.append(decision.delay_s)
    return out


# -- backoff ----------------------------------------------------------------------------------


def test_the_default_backoff_is_1_2_4_seconds() -> None:
    assert delays(RetryPolicy(max_attempts=4)) == [1.0, 2.0, 4.0]


def test_the_default_policy_retries_twice_then_escalates() -> None:
    policy = RetryPolicy()
    assert [decide(TRANSIENT, a, policy).action for a in (1, 2, 3)] == [
        Action.RETRY, Action.RETRY, Action.ESCALATE]


def test_delays_are_capped_at_max_delay_s() -> None:
    policy = RetryPolicy(max_attempts=8, initial_delay_s=1, backoff=3, max_delay_s=10)
    assert delays(policy) == [1, 3, 9, 10, 10, 10, 10]


def test_a_backoff_of_one_keeps_the_delay_constant() -> None:
    assert delays(RetryPolicy(max_attempts=4, initial_delay_s=0.5, backoff=1)) == [0.5, 0.5, 0.5]


# -- actions ------------------------------------------------------------------------------------


@pytest.mark.parametrize("error", [
    ErrorInfo("ValueError", "bad amount"),
    ErrorInfo("KeyError", "'amount'"),
    ErrorInfo("RuntimeError", "told not to retry", retryable=False),
    ErrorInfo("ExitCode", "command not found", exit_code=127, origin="shell"),
])
def test_a_permanent_failure_fails_at_once_whatever_the_attempts_left(error) -> None:
    decision = decide(error, 1, RetryPolicy(max_attempts=10))
    assert decision.action == Action.FAIL
    assert decision.classification == Classification.PERMANENT
    assert decision.delay_s == 0
    assert "permanent" in decision.reason


@pytest.mark.parametrize("error, kind", [
    (TRANSIENT, Classification.TRANSIENT),
    (ErrorInfo("Timeout", "too slow", origin="timeout"), Classification.TRANSIENT),
    (ErrorInfo("WorkerCrashedError", "died", origin="crash"), Classification.CRASH),
    (ErrorInfo("OutOfMemoryError", "oom", origin="oom"), Classification.RESOURCE),
])
def test_exhausted_retries_escalate(error, kind) -> None:
    policy = RetryPolicy(max_attempts=3)
    assert decide(error, 2, policy).action == Action.RETRY
    decision = decide(error, 3, policy)
    assert decision.action == Action.ESCALATE
    assert decision.classification == kind
    assert "3 attempt" in decision.reason


def test_a_crash_is_retried_on_a_fresh_worker() -> None:
    decision = decide(ErrorInfo("WorkerCrashedError", "worker died", origin="crash"), 1, RetryPolicy())
    assert decision.action == Action.RETRY
    assert decision.classification == Classification.CRASH
    assert "fresh worker" in decision.reason


def test_a_resource_failure_grows_memory_by_memory_growth() -> None:
    oom = ErrorInfo("OutOfMemoryError", "task used too much memory", origin="oom")
    policy = RetryPolicy(max_attempts=4, memory_growth=2.0)
    first = decide(oom, 1, policy, memory_mb=512)
    assert first.action == Action.RETRY and first.classification == Classification.RESOURCE
    assert first.memory_mb == 1024
    assert "1024 MiB" in first.reason
    assert decide(oom, 2, policy, memory_mb=first.memory_mb).memory_mb == 2048


def test_a_resource_failure_keeps_memory_without_growth_or_a_reservation() -> None:
    oom = ErrorInfo("MemoryError", "")
    assert decide(oom, 1, RetryPolicy(), memory_mb=512).memory_mb == 512
    assert decide(oom, 1, RetryPolicy(memory_growth=2.0), memory_mb=None).memory_mb is None


def test_a_transient_failure_does_not_touch_memory() -> None:
    assert decide(TRANSIENT, 1, RetryPolicy(memory_growth=4.0), memory_mb=256).memory_mb == 256


# -- classification -----------------------------------------------------------------------------


@pytest.mark.parametrize("code, kind", [
    (127, Classification.PERMANENT),
    (126, Classification.PERMANENT),
    (2, Classification.PERMANENT),
    (64, Classification.PERMANENT),
    (1, Classification.TRANSIENT),
    (3, Classification.TRANSIENT),
    (75, Classification.TRANSIENT),  # EX_TEMPFAIL
    (137, Classification.RESOURCE),
    (-9, Classification.RESOURCE),
])
def test_shell_exit_codes_are_classified(code, kind) -> None:
    assert classify(ErrorInfo("ExitCode", f"status {code}", exit_code=code, origin="shell")) == kind


def test_the_handlers_own_verdict_wins_over_the_exception_type() -> None:
    assert classify(ErrorInfo("ValueError", "x", retryable=True)) == Classification.TRANSIENT
    assert classify(ErrorInfo("ConnectionError", "x", retryable=False)) == Classification.PERMANENT


def test_timeouts_crashes_and_oom_are_classified_by_origin() -> None:
    assert classify(ErrorInfo("Timeout", "", origin="timeout")) == Classification.TRANSIENT
    assert classify(ErrorInfo("ValueError", "", origin="crash")) == Classification.CRASH
    assert classify(ErrorInfo("Whatever", "", origin="oom")) == Classification.RESOURCE


def test_exceptions_become_error_info_with_the_handlers_verdict() -> None:
    assert error_from_exception(RetryableError("503")).retryable is True
    info = error_from_exception(PermanentError("404 not found\nmore detail"))
    assert info.retryable is False and info.type == "PermanentError"
    assert info.message == "404 not found"
    assert classify(error_from_exception(ValueError("bad"))) == Classification.PERMANENT
    assert classify(error_from_exception(ConnectionError("reset"))) == Classification.TRANSIENT
    assert str(error_from_exception(OSError())) == "OSError"


# -- properties --------------------------------------------------------------------------------

policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(1, 30),
    initial_delay_s=st.floats(0, 120, allow_nan=False),
    backoff=st.floats(1, 10, allow_nan=False),
    max_delay_s=st.floats(0, 600, allow_nan=False),
)


@given(policies)
def test_delays_never_decrease_and_never_exceed_max_delay_s(policy) -> None:
    got = delays(policy)
    assert len(got) == policy.max_attempts - 1
    assert all(0 <= d <= policy.max_delay_s for d in got)
    assert all(a <= b for a, b in zip(got, got[1:]))


@given(policies, st.integers(1, 40),
       st.sampled_from(["ValueError", "ConnectionError", "TimeoutError", "RuntimeError", "KeyError"]))
def test_every_decision_is_retry_fail_or_escalate_as_the_rules_say(policy, attempt, error_type) -> None:
    error = ErrorInfo(error_type, "x")
    decision = decide(error, attempt, policy)
    if classify(error) == Classification.PERMANENT:
        assert decision.action == Action.FAIL
    elif attempt >= policy.max_attempts:
        assert decision.action == Action.ESCALATE
    else:
        assert decision.action == Action.RETRY
        assert decision.delay_s == policy.delay_before(attempt + 1)
