"""The ResourceManager and shape-aware admission, without Ray: placement, leases, the impossible request.

Property 30 (resource_lifecycle) drives a :class:`LocalAdmission` over a lease of random nodes
with random demands, starts and ends; the lease rules are driven with a controllable clock.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.admission import LocalAdmission
from runtime.resources import (ZERO, Capacity, Node, ResourceManager, ResourceRequestError, best_fit, check_fits,
                               validate_demand)
from runtime.seams import Claim, Demand

NODES = st.lists(st.tuples(st.sampled_from([1.0, 2.0, 4.0, 8.0]), st.sampled_from([1024, 4096, 16384]),
                           st.sampled_from([0.0, 0.0, 1.0]), st.sampled_from([(), ("ssd",)])),
                 min_size=1, max_size=4).map(lambda rows: [
                     Node(f"n{i}", Capacity(c, m, g), frozenset(k)) for i, (c, m, g, k) in enumerate(rows)])
DEMANDS = st.builds(Demand, cpu=st.sampled_from([0.25, 0.5, 1.0, 2.0, 3.0]),
                    memory_mb=st.sampled_from([0, 256, 2048, 8192]), gpu=st.sampled_from([0.0, 0.0, 0.0, 0.5, 1.0]),
                    capabilities=st.sampled_from([(), (), ("ssd",)]))
OPS = st.lists(st.one_of(st.tuples(st.just("start"), DEMANDS, st.booleans()),
                         st.tuples(st.just("end"), st.integers(0, 40))), max_size=60)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def leased_admission(nodes: list[Node], slots: int = 1000) -> LocalAdmission:
    adm = LocalAdmission(lambda: slots)
    adm.set_lease(ResourceManager(nodes).lease("coordinator"))
    return adm


def check_invariants(adm: LocalAdmission, nodes: list[Node]) -> None:
    total = {n.node_id: n.total for n in nodes}
    for node, used in adm.in_use.items():
        assert total[node].covers(used), f"{node} over capacity: {used} > {total[node]}"
    free = adm.free()
    for lane in adm._queues.values():  # nobody waits at the head of a class while it would fit
        for queue in lane.values():
            if queue:
                assert best_fit(adm._leased_nodes(), free, queue[0][3].demand) is None


@settings(max_examples=300, deadline=None)
@given(NODES, OPS)
def test_resource_lifecycle(nodes: list[Node], ops: list[tuple]) -> None:
    """For any nodes and any starts and ends of steps: a step is placed by best fit when it is scheduled,
    its resources go back as soon as it ends (and waiting steps that now fit get them), and no node is
    ever used beyond its capacity."""
    adm = leased_admission(nodes)
    running: list[tuple] = []  # (grant, demand)
    queued: dict[int, Demand] = {}
    grants: dict[int, object] = {}
    for i, op in enumerate(ops):
        if op[0] == "start":
            demand, batch = op[1], op[2]
            claim = Claim(execution=f"e{i}", batch=batch, demand=demand)
            expected = best_fit(adm._leased_nodes(), adm.free(), demand)

            def grant(i: int = i) -> None:
                running.append((grants[i], queued.pop(i)))
            grants[i] = grant
            if adm.acquire(claim, grant):
                if not any(adm._queues[False].values()) and not any(adm._queues[True].values()):
                    assert adm.placement(grant) == expected  # best fit at the moment it was scheduled
                running.append((grant, demand))
            else:
                queued[i] = demand
        elif running:
            grant, demand = running.pop(op[1] % len(running))
            node, before, count = adm.placement(grant), dict(adm.in_use), len(running)
            adm.release(grant)
            assert adm.placement(grant) is None
            # Given back at once: the node has the step's demand less in use, plus what waiting steps took.
            took = [d for g, d in running[count:] if adm.placement(g) == node]
            expected = before[node] - Capacity.of(demand) + sum(map(Capacity.of, took), ZERO)
            got = adm.in_use.get(node, ZERO)
            assert all(abs(a - b) < 1e-6 for a, b in zip((got.cpu, got.memory_mb, got.gpu),
                                                          (expected.cpu, expected.memory_mb, expected.gpu)))
        check_invariants(adm, nodes)
        assert adm.used == len(running)
    while running:
        adm.release(running.pop(0)[0])
        check_invariants(adm, nodes)
    # Everything that can run somewhere has run; what is left asks for more than any node has.
    for demand in queued.values():
        assert not any(n.accepts(demand) for n in nodes), demand
    assert all(v == ZERO for v in adm.in_use.values()) and adm.used == 0


def test_best_fit_fills_the_tightest_node_and_keeps_gpus_for_gpu_steps() -> None:
    nodes = [Node("big", Capacity(8, 32768)), Node("small", Capacity(2, 4096)),
             Node("gpu", Capacity(4, 16384, 1))]
    free = {n.node_id: n.total for n in nodes}
    assert best_fit(nodes, free, Demand(cpu=1)) == "small"
    assert best_fit(nodes, free, Demand(cpu=1, gpu=1)) == "gpu"
    assert best_fit(nodes, {**free, "small": Capacity(0.5, 4096)}, Demand(cpu=1)) == "big"
    assert best_fit(nodes, free, Demand(cpu=1, capabilities=("ssd",))) is None


def test_an_impossible_request_names_the_step_what_it_asks_and_the_largest_node() -> None:
    from sop import loads as parse_sop

    sop = parse_sop("sop: train\nversion: 1\nsteps:\n  - id: fit\n    uses: shell\n    run: 'true'\n"
                    "    resources: {cpu: 64, memory_mb: 1000}\n")
    nodes = [Node("a", Capacity(4, 8192)), Node("b", Capacity(16, 65536, 1))]
    with pytest.raises(ResourceRequestError) as e:
        check_fits(sop, nodes)
    message = str(e.value)
    assert "step 'fit' of train" in message and "cpu=64" in message and "memory_mb=1000" in message
    assert "cpu=16, memory_mb=65536, gpu=1" in message and "lower the step's resources" in message
    assert e.value.exit_code == 2
    check_fits(sop, nodes, scalable_shapes=[Node("xl", Capacity(96, 393216))])  # autoscaling can add it


def test_an_impossible_request_is_refused_at_submit_not_queued() -> None:
    from runtime import Engine

    engine = Engine.in_process()
    try:
        with pytest.raises(ResourceRequestError, match="step 'fit' of huge asks for cpu=1, gpu=2, more than any node has.*gpu=0"):
            engine.submit("sop: huge\nversion: 1\nsteps:\n  - id: fit\n    uses: shell\n    run: 'true'\n"
                          "    resources: {gpu: 2}\n")
        assert engine.list() == []
        view = engine.resources()
        assert view["enabled"] and view["nodes"]["local"]["total"]["gpu"] == 0
    finally:
        engine.shutdown()


@pytest.mark.parametrize("demand", [
    Demand(cpu=-1), Demand(cpu=math.nan), Demand(cpu=math.inf), Demand(cpu=1e12), Demand(memory_mb=-5),
    Demand(memory_mb=2**60), Demand(gpu=math.nan), Demand(gpu=-0.5), Demand(cpu=True), Demand(cpu="2"),
])
def test_hostile_demands_are_refused_before_they_reach_a_lease(demand: Demand) -> None:
    with pytest.raises(ResourceRequestError, match="resources must be numbers"):
        validate_demand(demand)
    with pytest.raises(ResourceRequestError):
        ResourceManager([Node("a", Capacity(4, 4096))]).lease("h", unmet=[demand])
    if not isinstance(demand.cpu, str):  # a holder reporting such a use is refused too
        with pytest.raises(ResourceRequestError):
            ResourceManager([Node("a", Capacity(4, 4096))]).lease(
                "h", used={"a": Capacity(demand.cpu, demand.memory_mb, demand.gpu)})


def test_hostile_resources_in_an_sop_never_reach_the_admission() -> None:
    from sop import loads as parse_sop
    from sop.errors import SopflowError

    for bad in ("cpu: -1", "cpu: .nan", "cpu: .inf", "gpu: -2", "memory_mb: -1"):
        with pytest.raises(SopflowError):
            sop = parse_sop(f"sop: bad\nversion: 1\nsteps:\n  - id: s\n    uses: shell\n    run: 'true'\n"
                            f"    resources: {{{bad}}}\n")
            check_fits(sop, [Node("a", Capacity(4, 4096))])


def test_a_node_leaving_takes_its_leases_and_new_steps_go_to_the_nodes_left() -> None:
    a, b = Node("a", Capacity(2, 4096)), Node("b", Capacity(2, 4096))
    rm = ResourceManager([a, b])
    adm = LocalAdmission(lambda: 100)
    adm.set_lease(rm.lease("c"))
    grants = [lambda: None for _ in range(4)]
    assert all(adm.acquire(Claim(execution=f"e{i}", demand=Demand(cpu=1)), g) for i, g in enumerate(grants))
    assert sorted(adm.placement(g) for g in grants) == ["a", "a", "b", "b"]
    rm.set_nodes([a])  # b left: its lease is gone; the steps that ran there end (their tasks failed)
    adm.set_lease(rm.lease("c", used=adm.in_use))
    assert set(adm.lease) == {"a"}
    for g in [g for g in grants if adm.placement(g) == "b"]:
        adm.release(g)
    waiting = lambda: None  # noqa: E731
    assert not adm.acquire(Claim(execution="late", demand=Demand(cpu=1)), waiting)  # a is full
    adm.release(grants[0])
    assert adm.placement(waiting) == "a"


def test_an_expired_lease_of_a_dead_holder_is_reclaimed() -> None:
    clock = Clock()
    rm = ResourceManager([Node("a", Capacity(4, 4096))], ttl_s=30, clock=clock)
    first = rm.lease("dead", used={"a": Capacity(2, 0)})
    assert first.lease["a"] == Capacity(4, 4096)  # all of it: nobody else waits
    waiting = rm.lease("alive", unmet=[Demand(cpu=1)])
    assert waiting.lease.get("a", ZERO) == ZERO  # held by the first holder until it expires
    assert rm.unmet() == [Demand(cpu=1)]  # what an autoscaler would be asked for
    clock.now = 29.0
    assert rm.lease("alive", unmet=[Demand(cpu=1)]).lease.get("a", ZERO) == ZERO
    clock.now = 31.0  # "dead" did not renew within its TTL
    assert rm.lease("alive", unmet=[Demand(cpu=1)]).lease["a"] == Capacity(4, 4096)
    assert "dead" not in rm.holders


HOLDER_OPS = st.lists(st.tuples(st.sampled_from(["h1", "h2", "h3"]),
                                st.lists(DEMANDS, max_size=4), st.floats(0, 1), st.floats(0, 20)), max_size=30)


@settings(max_examples=200, deadline=None)
@given(NODES, HOLDER_OPS)
def test_two_holders_never_lease_the_same_capacity(nodes: list[Node], ops: list[tuple]) -> None:
    """For any renewals by several holders (using part of what they hold, asking for more, dying):
    the leases on a node never add up to more than the node has."""
    clock = Clock()
    rm = ResourceManager(nodes, ttl_s=30, clock=clock)
    held: dict[str, dict[str, Capacity]] = {}
    for holder, unmet, share, advance in ops:
        clock.now += advance
        used = {k: Capacity(v.cpu * share, v.memory_mb * share, v.gpu * share)
                for k, v in held.get(holder, {}).items()}
        held[holder] = rm.lease(holder, used=used, unmet=unmet).lease
        for node in nodes:
            total = sum((h.leases.get(node.node_id, ZERO) for h in rm.holders.values()), ZERO)
            assert node.total.covers(total), (node, total)


def test_batch_claims_wait_while_real_time_work_could_use_the_room_and_on_blocked_is_told() -> None:
    blocked: list[Claim] = []
    adm = LocalAdmission(lambda: 100, on_blocked=blocked.append)
    adm.set_lease(ResourceManager([Node("a", Capacity(2, 4096))]).lease("c"))
    batch = [lambda: None, lambda: None]
    assert adm.acquire(Claim(execution="b1", batch=True, demand=Demand(cpu=1)), batch[0])
    assert adm.acquire(Claim(execution="b2", batch=True, demand=Demand(cpu=1)), batch[1])
    rt, late_batch = (lambda: None), (lambda: None)
    assert not adm.acquire(Claim(execution="rt", demand=Demand(cpu=1)), rt)
    assert [c.execution for c in blocked] == ["rt"]
    assert not adm.acquire(Claim(execution="b3", batch=True, demand=Demand(cpu=1), since=-1), late_batch)
    assert adm.position("rt") == 1 and adm.position("b3") == 2 and adm.position("nobody") is None
    held = adm.holding()
    assert set(held) == {"b1", "b2"} and held["b1"].batch and held["b1"].count == 1
    adm.release(batch[0])  # the room goes to the real-time claim, not to the older batch one
    assert adm.placement(rt) == "a" and adm.placement(late_batch) is None
    adm.release(batch[1])
    assert adm.placement(late_batch) == "a"
    use = adm.utilisation()["a"]
    assert use["used"]["cpu"] == 2 and use["total"]["cpu"] == 2


def test_a_step_waiting_for_a_node_runs_once_one_joins_through_the_lease_keeper() -> None:
    """The keeper renews in the background; a claim no node can take waits (without holding up others)
    until a node that fits joins, then it is granted there."""
    import asyncio

    from runtime.leases import LeaseKeeper, direct

    async def scenario() -> None:
        rm = ResourceManager([Node("small", Capacity(1, 1024))], ttl_s=3)
        adm = LocalAdmission(lambda: 100)
        keeper = LeaseKeeper(adm, direct(rm), "coordinator")
        await keeper.start()
        try:
            big, small = (lambda: None), (lambda: None)
            assert not adm.acquire(Claim(execution="big", demand=Demand(cpu=4)), big)
            assert adm.acquire(Claim(execution="small", demand=Demand(cpu=1)), small)  # not held up
            assert adm.position("big") == 1 and "node big enough" in adm.why_queued(
                Claim(demand=Demand(cpu=4)))
            renewals = keeper.renewals
            rm.set_nodes([Node("small", Capacity(1, 1024)), Node("large", Capacity(8, 8192))])
            for _ in range(100):  # the keeper renews within UNMET_RETRY_S while "big" waits
                if adm.placement(big) is not None:
                    break
                await asyncio.sleep(0.05)
            assert adm.placement(big) == "large" and keeper.renewals > renewals
            assert {n.node_id for n in keeper.nodes} == {"small", "large"}
        finally:
            keeper.stop()

    asyncio.run(scenario())
