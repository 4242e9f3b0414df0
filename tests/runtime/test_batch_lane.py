"""The admission's batch lane and its preemption signal (the names the coordinator relies on)."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from runtime.admission import LocalAdmission
from runtime.seams import Claim

ops = st.lists(st.one_of(st.tuples(st.just("acquire"), st.booleans(), st.integers(0, 5)),
                         st.tuples(st.just("release"), st.just(False), st.just(0))), max_size=60)


@settings(max_examples=300, deadline=None)
@given(capacity=st.integers(1, 4), steps=ops)
def test_batch_claims_never_go_before_a_waiting_realtime_claim(capacity, steps):
    """For any sequence: a batch claim is granted only while no real-time claim waits; ``on_blocked`` hears
    of every real-time claim that queues while batch work holds slots; ``holding()`` matches the grants."""
    blocked: list[Claim] = []
    adm = LocalAdmission(lambda: capacity, on_blocked=blocked.append)
    held: list[tuple[Claim, object]] = []
    """Claims holding a slot, with the grant they were taken by (``release`` names the grant)."""
    waiting_rt = [0]

    def granted(claim: Claim):
        def grant() -> None:
            if claim.batch:
                assert waiting_rt[0] == 0, "a batch claim went before a waiting real-time one"
            else:
                waiting_rt[0] -= 1
            held.append((claim, grant))
        return grant

    for n, (op, batch, who) in enumerate(steps):
        if op == "acquire":
            claim = Claim(execution=f"{'b' if batch else 'r'}{who}", batch=batch, since=float(n))
            batch_held = any(c.batch for c, _ in held)
            before = len(blocked)
            if not batch:
                waiting_rt[0] += 1
            grant = granted(claim)
            if adm.acquire(claim, grant):
                if not batch:
                    waiting_rt[0] -= 1
                held.append((claim, grant))
            elif not batch:
                assert len(blocked) == before + (1 if batch_held else 0)
        elif held:
            adm.release(held.pop(0)[1])
        counts: dict[str, int] = {}
        for c, _ in held:
            counts[c.execution] = counts.get(c.execution, 0) + 1
        assert {k: v.count for k, v in adm.holding().items()} == counts
        assert adm.waiting_realtime() == waiting_rt[0]
