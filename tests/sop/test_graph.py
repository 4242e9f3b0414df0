"""Properties of :class:`sop.Graph`: ordering, stages, cycles and incremental checks.

Edges point from a dependency to its dependent: ``("a", "b")`` means ``b``
depends on ``a``. networkx serves as the reference implementation.
"""

from __future__ import annotations

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sop import CriticalPath, Graph, GraphError

NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=6)


@st.composite
def dags(draw: st.DrawFn, min_nodes: int = 0, max_nodes: int = 12) -> tuple[list[str], list[tuple[str, str]]]:
    """Nodes in a random order and edges ``names[i] -> names[j]`` only for ``i < j``."""
    names = draw(st.lists(NAME, min_size=min_nodes, max_size=max_nodes, unique=True))
    names = draw(st.permutations(names))
    pairs = [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))]
    chosen = draw(st.lists(st.sampled_from(pairs), unique=True, max_size=30)) if pairs else []
    return list(names), [(names[i], names[j]) for i, j in chosen]


@st.composite
def cyclic_graphs(draw: st.DrawFn) -> tuple[list[str], list[tuple[str, str]]]:
    """A DAG plus one back edge (or a self-loop), so at least one cycle exists."""
    names, edges = draw(dags(min_nodes=1))
    if len(names) == 1 or draw(st.booleans()) and not edges:
        node = draw(st.sampled_from(names))
        return names, [*edges, (node, node)]
    if not edges:
        # Make a path to close.
        i, j = sorted(draw(st.lists(st.integers(0, len(names) - 1), min_size=2, max_size=2,
                                    unique=True)))
        edges = [(names[i], names[j])]
    a, b = draw(st.sampled_from(edges))
    # a -> b exists; a path from b to a is closed by b ... a via the back edge b -> a.
    return names, [*edges, (b, a)]


def reference(names: list[str], edges: list[tuple[str, str]]) -> nx.DiGraph:
    g = nx.DiGraph()
    g.add_nodes_from(names)
    g.add_edges_from(edges)
    return g


def edge_set(g: Graph) -> set[tuple[str, str]]:
    return {(a, b) for a in g.nodes for b in g.dependents(a)}


# -- ordering --------------------------------------------------------------------------------


@settings(max_examples=200)
@given(dags())
def test_topological_order_puts_every_step_after_its_dependencies(dag: tuple) -> None:
    names, edges = dag
    order = Graph(names, edges).topological_order()
    assert sorted(order) == sorted(names)
    position = {n: k for k, n in enumerate(order)}
    for a, b in edges:
        assert position[a] < position[b], f"{b} depends on {a} but runs first"


@settings(max_examples=200)
@given(dags())
def test_topological_order_is_valid_for_networkx(dag: tuple) -> None:
    names, edges = dag
    ref = reference(names, edges)
    order = Graph(names, edges).topological_order()
    assert nx.is_directed_acyclic_graph(ref)
    # networkx agrees this is a topological order: no edge goes backwards.
    position = {n: k for k, n in enumerate(order)}
    assert all(position[u] < position[v] for u, v in ref.edges)
    assert set(order) == set(ref.nodes)


@settings(max_examples=200)
@given(dags())
def test_stages_are_minimal(dag: tuple) -> None:
    names, edges = dag
    g = Graph(names, edges)
    stages = g.stages()
    stage_of = {n: s for s, members in enumerate(stages) for n in members}
    assert sorted(stage_of) == sorted(names), "every step is in exactly one stage"
    assert sum(len(s) for s in stages) == len(names)
    assert all(stages), "no stage is empty"
    for n in names:
        deps = g.dependencies(n)
        if not deps:
            assert stage_of[n] == 0, f"root {n} is not in the first stage"
            continue
        assert all(stage_of[d] < stage_of[n] for d in deps), f"{n} runs with or before a dependency"
        assert any(stage_of[d] == stage_of[n] - 1 for d in deps), f"{n} could run a stage earlier"
    assert set(stages[0] if stages else []) == set(g.roots())


@settings(max_examples=200)
@given(dags(min_nodes=1))
def test_ancestors_and_descendants_match_networkx(dag: tuple) -> None:
    names, edges = dag
    g = Graph(names, edges)
    ref = reference(names, edges)
    for n in names:
        assert g.ancestors(n) == nx.ancestors(ref, n)
        assert g.descendants(n) == nx.descendants(ref, n)


@settings(max_examples=200)
@given(dags())
def test_from_dependencies_builds_the_same_graph_as_edges(dag: tuple) -> None:
    names, edges = dag
    depends = {n: [a for a, b in edges if b == n] for n in names}
    g = Graph.from_dependencies(depends)
    assert edge_set(g) == set(edges)
    assert g.is_acyclic()
    assert g.find_cycles() == []


# -- cycles ----------------------------------------------------------------------------------


def assert_real_cycle(cycle: list[str], edges: set[tuple[str, str]]) -> None:
    """``[a, b, c]`` reads "a depends on b, b on c, c on a": edges b->a, c->b, a->c."""
    assert cycle, "a reported cycle is never empty"
    assert len(set(cycle)) == len(cycle), f"cycle {cycle} repeats a step"
    for k, step in enumerate(cycle):
        dependency = cycle[(k + 1) % len(cycle)]
        assert (dependency, step) in edges, f"{step} does not depend on {dependency} in {cycle}"


@settings(max_examples=200)
@given(cyclic_graphs())
def test_every_reported_cycle_is_a_real_cycle(graph: tuple) -> None:
    names, edges = graph
    g = Graph(names, edges)
    assert not nx.is_directed_acyclic_graph(reference(names, edges))
    assert not g.is_acyclic()
    cycles = g.find_cycles()
    assert cycles, "a cyclic graph reports at least one cycle"
    for cycle in cycles:
        assert_real_cycle(cycle, set(edges))


@settings(max_examples=200)
@given(cyclic_graphs())
def test_one_cycle_per_cyclic_strongly_connected_component(graph: tuple) -> None:
    names, edges = graph
    ref = reference(names, edges)
    cyclic_components = [c for c in nx.strongly_connected_components(ref)
                         if len(c) > 1 or any(ref.has_edge(n, n) for n in c)]
    cycles = Graph(names, edges).find_cycles()
    assert len(cycles) == len(cyclic_components)
    for component in cyclic_components:
        assert sum(set(c) <= component for c in cycles) == 1


@settings(max_examples=200)
@given(cyclic_graphs())
def test_ordering_a_cyclic_graph_raises_with_the_cycles(graph: tuple) -> None:
    names, edges = graph
    g = Graph(names, edges)
    for order in (g.topological_order, g.stages, lambda: g.critical_path({})):
        with pytest.raises(GraphError) as info:
            order()
        assert info.value.cycles
        for cycle in info.value.cycles:
            assert_real_cycle(cycle, set(edges))
        assert "dependency cycle: " in str(info.value)


def test_self_loop_is_a_cycle_of_one_step() -> None:
    g = Graph(["a", "b"], [("a", "b"), ("b", "b")])
    assert g.find_cycles() == [["b"]]
    with pytest.raises(GraphError) as info:
        g.topological_order()
    assert info.value.cycles == [["b"]]
    assert "b -> b" in str(info.value)


def test_cycle_message_reads_in_depends_on_order() -> None:
    # b depends on a, c on b, a on c.
    g = Graph.from_dependencies({"a": ["c"], "b": ["a"], "c": ["b"]})
    with pytest.raises(GraphError) as info:
        g.topological_order()
    assert info.value.cycles == [["a", "c", "b"]]
    assert str(info.value) == "dependency cycle: a -> c -> b -> a"


def test_steps_downstream_of_a_cycle_are_not_reported_as_cycles() -> None:
    g = Graph.from_dependencies({"a": ["b"], "b": ["a"], "after": ["a"], "free": []})
    assert g.find_cycles() == [["a", "b"]]


# -- incremental change ----------------------------------------------------------------------


@st.composite
def growth_plans(draw: st.DrawFn) -> tuple[list[str], list[tuple[str, str]], list[tuple[list[str], list]]]:
    """A base DAG and increments of (new nodes, new edges) in any direction, cycles allowed."""
    names = draw(st.lists(NAME, min_size=1, max_size=10, unique=True))
    base_n = draw(st.integers(1, len(names)))
    base_names = names[:base_n]
    pairs = [(i, j) for i in range(base_n) for j in range(i + 1, base_n)]
    base_edges = draw(st.lists(st.sampled_from(pairs), unique=True, max_size=12)) if pairs else []
    used = set(base_edges)
    increments = []
    known = base_n
    for _ in range(draw(st.integers(1, 5))):
        fresh = draw(st.integers(0, len(names) - known))
        known += fresh
        candidates = [(i, j) for i in range(known) for j in range(known) if (i, j) not in used]
        new = draw(st.lists(st.sampled_from(candidates), unique=True, max_size=5)) if candidates else []
        used.update(new)
        increments.append((names[known - fresh:known], [(names[i], names[j]) for i, j in new]))
    return base_names, [(names[i], names[j]) for i, j in base_edges], increments


@settings(max_examples=200)
@given(growth_plans())
def test_add_accepts_exactly_when_the_union_is_acyclic(plan: tuple) -> None:
    base_names, base_edges, increments = plan
    g = Graph(base_names, base_edges)
    ref = reference(base_names, base_edges)
    for new_nodes, new_edges in increments:
        union = ref.copy()
        union.add_nodes_from(new_nodes)
        union.add_edges_from(new_edges)
        acyclic = nx.is_directed_acyclic_graph(union)
        before_nodes, before_count, before_edges = list(g.nodes), g.edge_count, edge_set(g)
        try:
            g.add(new_nodes, new_edges)
        except GraphError as e:
            assert not acyclic, f"add refused an acyclic change: {e}"
            assert e.cycles, "a refused change names the cycle it would close"
            assert_real_cycle(e.cycles[0], set(union.edges))
            # Nothing of the change stays behind.
            assert g.nodes == before_nodes
            assert g.edge_count == before_count
            assert edge_set(g) == before_edges
            assert all(n not in g for n in new_nodes)
            assert g.is_acyclic()
            # The refused steps can still be added without the offending edges.
            g.add(new_nodes, [])
            ref.add_nodes_from(new_nodes)
        else:
            assert acyclic, "add accepted a change that closes a cycle"
            ref = union
            assert set(g.nodes) == set(ref.nodes)
            assert edge_set(g) == set(ref.edges)
            assert g.edge_count == ref.number_of_edges()
            order = g.topological_order()
            position = {n: k for k, n in enumerate(order)}
            assert all(position[u] < position[v] for u, v in ref.edges)


def test_add_refuses_a_node_that_already_exists() -> None:
    g = Graph(["a", "b"], [("a", "b")])
    with pytest.raises(GraphError) as info:
        g.add(["c", "a"], [("b", "c")])
    assert info.value.duplicates == ["a"]
    assert str(info.value) == "step(s) already defined: a"
    assert g.nodes == ["a", "b"] and g.edge_count == 1 and "c" not in g


def test_add_refuses_the_same_new_node_twice() -> None:
    g = Graph(["a"])
    with pytest.raises(GraphError) as info:
        g.add(["b", "b"], [])
    assert info.value.duplicates == ["b"]
    assert g.nodes == ["a"]


def test_add_refuses_an_edge_to_an_unknown_node() -> None:
    g = Graph(["a", "b"], [("a", "b")])
    with pytest.raises(GraphError) as info:
        g.add(["c"], [("b", "c"), ("ghost", "c")])
    assert info.value.unknown == [("ghost", "c")]
    assert "c depends on ghost" in str(info.value)
    assert g.nodes == ["a", "b"] and g.edge_count == 1 and "c" not in g


def test_add_refuses_a_self_loop_and_names_it() -> None:
    g = Graph(["a"])
    with pytest.raises(GraphError) as info:
        g.add(["b"], [("a", "b"), ("b", "b")])
    assert info.value.cycles == [["b"]]
    assert "b -> b" in str(info.value)
    assert g.nodes == ["a"] and g.edge_count == 0


def test_add_reports_the_cycle_it_would_close_with_existing_steps() -> None:
    g = Graph(["a", "b", "c"], [("a", "b"), ("b", "c")])
    with pytest.raises(GraphError) as info:
        g.add([], [("c", "a")])  # a would depend on c, which depends on b, which depends on a
    assert info.value.cycles == [["c", "b", "a"]]
    assert "c -> b -> a -> c" in str(info.value)
    assert g.edge_count == 2 and g.topological_order() == ["a", "b", "c"]


# -- critical path ---------------------------------------------------------------------------


def test_critical_path_follows_the_longest_expected_duration() -> None:
    g = Graph.from_dependencies({
        "fetch": [], "statement": [], "check": ["fetch", "statement"], "escalate": ["check"],
        "notify": ["fetch"],
    })
    path = g.critical_path({"fetch": 1, "statement": 5, "check": 2, "escalate": None, "notify": 3})
    assert path == CriticalPath(("statement", "check", "escalate"), 7.0)


def test_critical_path_without_durations_is_the_longest_chain() -> None:
    g = Graph.from_dependencies({"a": [], "b": ["a"], "c": ["b"], "x": []})
    assert g.critical_path({}).steps == ("a", "b", "c")
    assert g.critical_path({}).duration_s == 0.0


def test_critical_path_of_an_empty_graph_is_empty() -> None:
    assert Graph().critical_path({}) == CriticalPath((), 0.0)


@settings(max_examples=100)
@given(dags(min_nodes=1), st.data())
def test_critical_path_is_a_chain_no_shorter_than_any_path(dag: tuple, data: st.DataObject) -> None:
    names, edges = dag
    durations = {n: data.draw(st.integers(0, 20)) for n in names}
    path = Graph(names, edges).critical_path(durations)
    assert all((a, b) in set(edges) for a, b in zip(path.steps, path.steps[1:]))
    assert path.duration_s == sum(durations[n] for n in path.steps)
    ref = reference(names, edges)
    longest: dict[str, float] = {}
    for n in nx.topological_sort(ref):
        longest[n] = durations[n] + max((longest[p] for p in ref.predecessors(n)), default=0)
    assert path.duration_s == max(longest.values())
