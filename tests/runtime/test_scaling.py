"""The autoscaling policy (property 31, ``utilisation_scaling``) on hundreds of load traces, with its own clock.

A trace is a run of segments, each holding one load (a CPU share in use, some attempts waiting
for capacity) for a number of observations a few seconds apart. A reference reading of the rules
is checked against every decision the policy takes, both ways: each request and withdrawal has
its cause, and each cause gets its request or withdrawal at the first observation it is due.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.config import EngineConfig
from runtime.scaling import MAX_BUNDLES, Action, ScalingPolicy, Usage, asks_more, bundles_for, request_for, totals
from runtime.seams import Demand

UP, DOWN = 0.8, 0.3
UP_AFTER, DOWN_AFTER = 30.0, 300.0
CPUS = 16.0

demands = st.builds(
    Demand,
    cpu=st.sampled_from([0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0]),
    memory_mb=st.sampled_from([0, 0, 256, 2048]),
    gpu=st.sampled_from([0.0, 0.0, 0.0, 1.0]),
    capabilities=st.sampled_from([(), (), ("ssd",)]))
# Shares on both sides of both thresholds, and on them (the rules are strict: > 80%, < 30%).
shares = st.sampled_from([0.0, 0.1, 0.29, 0.3, 0.5, 0.8, 0.81, 0.95, 1.0])
# Memory is mostly idle (CPU fills nodes), sometimes the busiest resource: the dominant share counts.
memory_shares = st.sampled_from([0.0, 0.0, 0.0, 0.5, 0.9])
segments = st.lists(st.tuples(st.integers(1, 40), shares, memory_shares, st.lists(demands, max_size=4)),
                    min_size=1, max_size=12)
gaps = st.sampled_from([1.0, 5.0, 10.0, 29.0, 30.0, 60.0])


def policy() -> ScalingPolicy:
    return ScalingPolicy(UP, DOWN, UP_AFTER, DOWN_AFTER)


def observations(trace, gap: float):
    """``(now, usage, unmet)`` for every observation of ``trace``, ``gap`` seconds apart."""
    now = 1000.0
    for count, share, memory, unmet in trace:
        for _ in range(count):
            yield now, Usage(cpu_total=CPUS, cpu_used=share * CPUS, memory_mb_total=65536.0,
                             memory_mb_used=memory * 65536.0), unmet
            now += gap


def covers(bundles, usage: Usage, unmet) -> bool:
    """The request holds what runs and every waiting demand: enough of each resource, and every big
    demand's own shape."""
    if len(bundles) >= MAX_BUNDLES:
        return True  # cut at the cap on purpose
    have, want = totals(bundles), totals(bundles_for(unmet))
    want["CPU"] = want.get("CPU", 0.0) + usage.cpu_used
    want["memory"] = want.get("memory", 0.0) + usage.memory_mb_used * 2**20
    shapes = [b for b in bundles_for(unmet) if b.get("CPU", 0) >= 1 or "GPU" in b]
    return all(have.get(k, 0.0) >= v - 1e-6 for k, v in want.items()) and all(s in bundles for s in shapes)


@settings(max_examples=400, deadline=None)
@given(trace=segments, gap=gaps)
def test_utilisation_scaling(trace, gap) -> None:
    """Property 31: below 30% for over 5 minutes: the request is withdrawn; above 80% sustained (or
    attempts waiting): more is asked for; never otherwise, never twice for the same, never flapping."""
    p = policy()
    standing = None  # what the test believes was last sent (None: unknown, as at start)
    busy_since = quiet_since = None
    last_up = last_down = None
    for now, usage, unmet in observations(trace, gap):
        share = usage.fraction()
        busy = bool(unmet) or share > UP
        quiet = not unmet and share < DOWN
        busy_since = (now if busy_since is None else busy_since) if busy else None
        quiet_since = (now if quiet_since is None else quiet_since) if quiet else None
        action = p.observe(now, usage, unmet)
        if action is None:
            # Liveness: nothing is due that was not done.
            if busy and now - busy_since >= UP_AFTER:
                target = request_for(usage, unmet, (UP + DOWN) / 2 if share > UP else 1.0)
                assert not target or (standing is not None and not asks_more(target, standing)), \
                    (now, usage, unmet, standing)
            if quiet and now - quiet_since > DOWN_AFTER:
                assert standing == ()
            continue
        if action.withdraw:
            assert quiet and now - quiet_since > DOWN_AFTER, "withdrawn without 5 quiet minutes"
            assert standing != (), "withdrawn twice in a row"
            if last_up is not None:
                assert now - last_up > DOWN_AFTER, "flapped: withdrawn soon after asking"
            last_down = now
        else:
            assert busy and now - busy_since >= UP_AFTER, "asked without sustained pressure"
            assert standing is None or asks_more(action.bundles, standing), "asked again for no more"
            assert covers(action.bundles, usage, unmet), (action.bundles, usage, unmet)
            if share > UP and len(action.bundles) < MAX_BUNDLES:  # headroom: the share would drop into the band
                asked = totals(action.bundles)
                assert asked.get("CPU", 0.0) * UP >= usage.cpu_used
                assert asked.get("memory", 0.0) / 2**20 * UP >= usage.memory_mb_used
            if last_down is not None:
                assert now - last_down >= UP_AFTER, "flapped: asked soon after withdrawing"
            last_up = now
        standing = action.bundles
        assert p.requested == standing


@settings(max_examples=200, deadline=None)
@given(unmet=st.lists(demands, max_size=60))
def test_waiting_demands_become_bundles_that_fit_one_node_each(unmet) -> None:
    """Small CPU demands are packed up to one CPU; the rest keep their shape; nothing is lost."""
    bundles = bundles_for(unmet)
    big = max((d.cpu for d in unmet), default=0.0)
    for b in bundles:
        assert b, "an empty bundle asks for nothing"
        assert b.get("CPU", 0.0) <= max(1.0, big) + 1e-9
    assert math.isclose(totals(bundles).get("CPU", 0.0), sum(d.cpu for d in unmet), abs_tol=1e-6)
    assert math.isclose(totals(bundles).get("GPU", 0.0), sum(d.gpu for d in unmet), abs_tol=1e-6)
    assert math.isclose(totals(bundles).get("memory", 0.0),
                        sum(d.memory_mb for d in unmet) * 2**20, abs_tol=1.0)


def test_a_clock_that_goes_back_earns_no_credit() -> None:
    p = policy()
    full = Usage(cpu_total=4, cpu_used=4)
    assert p.observe(100.0, full, []) is None
    assert p.observe(50.0, full, []) is None  # went back: the pressure starts again at 50
    assert p.observe(79.0, full, []) is None
    assert p.observe(80.0, full, []) is not None


def test_a_huge_queue_asks_for_at_most_max_bundles() -> None:
    action = policy().observe(0.0, Usage(cpu_total=2, cpu_used=2), [Demand(cpu=2.0)] * 5000)
    assert action is None  # not sustained yet
    p = ScalingPolicy(up_after_s=0.0)
    action = p.observe(0.0, Usage(cpu_total=2, cpu_used=2), [Demand(cpu=2.0)] * 5000)
    assert isinstance(action, Action) and len(action.bundles) == MAX_BUNDLES


def test_the_first_quiet_period_withdraws_a_request_a_previous_life_may_have_left() -> None:
    p = ScalingPolicy(down_after_s=10.0)
    idle = Usage(cpu_total=8, cpu_used=0)
    assert p.observe(0.0, idle, []) is None
    action = p.observe(10.5, idle, [])
    assert action is not None and action.withdraw and "below 30%" in action.reason
    assert p.observe(100.0, idle, []) is None  # once


def test_usage_from_ray_reads_the_busiest_resource() -> None:
    usage = Usage.from_ray({"CPU": 8.0, "memory": 8 * 2**30, "GPU": 2.0},
                           {"CPU": 6.0, "memory": 8 * 2**30, "GPU": 0.0})
    assert usage.cpu_used == 2.0 and usage.memory_mb_used == 0.0 and usage.gpu_used == 2.0
    assert usage.fraction() == 1.0  # both GPUs are taken: the cluster is full for GPU work
    assert Usage().fraction() == 0.0
    # Ray leaves a resource out of available_resources() when none of it is left.
    assert Usage.from_ray({"CPU": 4.0}, {}).fraction() == 1.0


@pytest.mark.parametrize("fields, message", [
    ({"scale_up_utilisation": 1.5}, "scale_up_utilisation must be a share above 0 and at most 1"),
    ({"scale_down_utilisation": 0}, "scale_down_utilisation must be a share above 0"),
    ({"scale_down_utilisation": 0.9}, "must be below scale_up_utilisation (0.8), or scaling would flap"),
    ({"scale_up_after_s": -1}, "scale_up_after_s must be a number of seconds >= 0"),
    ({"scale_down_after_s": float("inf")}, "scale_down_after_s must be a number of seconds >= 0"),
    ({"scale_check_every_s": 0}, "scale_check_every_s must be a number of seconds > 0"),
    ({"autoscale": "yes"}, "autoscale must be true or false"),
])
def test_scaling_settings_are_checked(fields, message) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        EngineConfig(**fields)


def test_a_policy_made_directly_checks_its_thresholds_too() -> None:
    with pytest.raises(ValueError, match="or scaling would flap"):
        ScalingPolicy(up_utilisation=0.3, down_utilisation=0.3)
    with pytest.raises(ValueError, match="durations must be seconds >= 0"):
        ScalingPolicy(down_after_s=-1.0)


def test_the_policy_takes_its_settings_from_the_engine_config() -> None:
    config = EngineConfig(scale_up_utilisation=0.9, scale_down_utilisation=0.2, scale_up_after_s=1.0,
                          scale_down_after_s=2.0)
    p = ScalingPolicy.from_config(config)
    assert (p.up_utilisation, p.down_utilisation, p.up_after_s, p.down_after_s) == (0.9, 0.2, 1.0, 2.0)


def test_the_node_types_the_autoscaler_may_add_come_from_its_config(tmp_path) -> None:
    from runtime.resources import Capacity, Node, ResourceRequestError, check_fits
    from runtime.scaling import scalable_shapes
    from sop import loads as parse_sop

    config = tmp_path / "ray_bootstrap_config.yaml"
    config.write_text(
        "available_node_types:\n"
        "  head: {resources: {CPU: 2}, max_workers: 0}\n"                 # never added: not a shape
        "  big: {resources: {CPU: 32, GPU: 1, memory: 68719476736, 'capability:ssd': 1}, max_workers: 4}\n"
        "  cpu: {resources: {CPU: 8}, max_workers: 10}\n"                 # memory not declared: unbounded
        "  odd: {resources: {CPU: lots}, max_workers: 1}\n")              # unreadable: left out
    shapes = scalable_shapes(str(config))
    assert sorted(s.node_id for s in shapes) == ["autoscaler:big", "autoscaler:cpu"]
    big = next(s for s in shapes if s.node_id == "autoscaler:big")
    assert big.total == Capacity(32, 65536, 1) and big.capabilities == frozenset({"ssd"})

    sop = parse_sop("sop: train\nversion: 1\nsteps:\n  - id: fit\n    uses: shell\n    run: 'true'\n"
                    "    resources: {cpu: 16, gpu: 1, capabilities: [ssd]}\n")
    nodes = [Node("head", Capacity(2, 4096))]
    check_fits(sop, nodes, shapes)  # the autoscaler can add a node that takes it: it waits for one
    with pytest.raises(ResourceRequestError, match="step 'fit' of train"):
        check_fits(sop, nodes, scalable_shapes(str(tmp_path / "missing.yaml")))  # no autoscaler: refused
    (tmp_path / "broken.yaml").write_text("available_node_types: [\n")
    assert scalable_shapes(str(tmp_path / "broken.yaml")) == []
