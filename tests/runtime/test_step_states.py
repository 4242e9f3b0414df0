"""The fold tells queued attempts from running ones (pure: no Ray)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.events import Event, EventKind
from runtime.state import fold
from runtime.status import StepStatus


def _submitted() -> Event:
    return Event("e", 1, EventKind.SUBMITTED, 1.0, data={"sop": "s", "version": "1", "mode": "system_design",
                                                         "steps": ["a"]})


def test_a_queued_attempt_is_queued_until_it_starts() -> None:
    events = [_submitted(), Event("e", 2, EventKind.STARTED, 2.0),
              Event("e", 3, EventKind.STEP_QUEUED, 3.0, "a", 1, {"reason": "waiting for a run slot"})]
    state = fold(events)
    assert state.steps["a"].status == StepStatus.QUEUED and state.steps["a"].attempts == 1
    assert state.steps["a"].started_at is None  # queued is not started
    state = fold([Event("e", 4, EventKind.STEP_STARTED, 4.0, "a", 1, {"inputs": "x"})], state)
    assert state.steps["a"].status == StepStatus.RUNNING and state.steps["a"].started_at == 4.0
    assert "waiting for a run slot" in events[2].describe()


@settings(max_examples=300)
@given(st.lists(st.booleans(), min_size=1, max_size=6))
def test_property_queueing_does_not_change_how_attempts_end(queued: list[bool]) -> None:
    """For any attempts, some of which waited for a slot: the outcome and attempt count are the same."""
    def history(with_queue: bool) -> list[Event]:
        events, seq = [_submitted(), Event("e", 2, EventKind.STARTED, 2.0)], 2
        for attempt, waits in enumerate(queued, start=1):
            kinds = [EventKind.STEP_QUEUED] if waits and with_queue else []
            kinds += [EventKind.STEP_STARTED, EventKind.STEP_FAILED]
            for kind in kinds:
                seq += 1
                data = {"final": attempt == len(queued), "error": "x"} if kind == EventKind.STEP_FAILED else {}
                events.append(Event("e", seq, kind, float(seq), "a", attempt, data))
        return events

    plain, with_queue = fold(history(False)), fold(history(True))
    assert plain.steps["a"].status == with_queue.steps["a"].status == StepStatus.FAILED
    assert plain.steps["a"].attempts == with_queue.steps["a"].attempts == len(queued)
