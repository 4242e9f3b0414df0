"""The dependency graph of an SOP: adjacency lists over integer ids.

Edges point from a dependency to its dependent (``a -> b`` means ``b`` depends
on ``a`` and runs after it). Node ids are the step ids; internally they are
indices into ``nodes`` so the hot loops touch only lists of ints, which keeps
the checks of a 10,000-step graph in the same league as networkx.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from sop.errors import SopflowError


class GraphError(SopflowError):
    """Raised when a graph change would add a cycle or names an unknown/duplicate node."""

    def __init__(self, message: str, *, cycles: Sequence[Sequence[str]] = (),
                 unknown: Sequence[tuple[str, str]] = (), duplicates: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.cycles = [list(c) for c in cycles]
        self.unknown = list(unknown)
        self.duplicates = list(duplicates)

    def __reduce__(self) -> tuple:  # survive pickling across Ray with the original arguments
        return (_rebuild_graph_error, (str(self), self.cycles, self.unknown, self.duplicates))


def _rebuild_graph_error(message: str, cycles: list, unknown: list, duplicates: list) -> GraphError:
    return GraphError(message, cycles=cycles, unknown=unknown, duplicates=duplicates)


def format_cycle(cycle: Sequence[str]) -> str:
    """``['a', 'b', 'c']`` -> ``a -> b -> c -> a`` (each depends on the next)."""
    return " -> ".join([*cycle, cycle[0]])


@dataclass(frozen=True, slots=True)
class CriticalPath:
    """The longest chain of steps by expected duration."""

    steps: tuple[str, ...]
    duration_s: float


class Graph:
    """A directed graph of steps, checked acyclic on demand and on every incremental change."""

    __slots__ = ("nodes", "index", "succ", "pred")

    def __init__(self, nodes: Iterable[str] = (), edges: Iterable[tuple[str, str]] = ()) -> None:
        self.nodes: list[str] = []
        self.index: dict[str, int] = {}
        self.succ: list[list[int]] = []
        self.pred: list[list[int]] = []
        for n in nodes:
            self._add_node(n)
        index = self.index
        for a, b in edges:
            i, j = index[a], index[b]
            self.succ[i].append(j)
            self.pred[j].append(i)

    @classmethod
    def from_dependencies(cls, depends_on: Mapping[str, Sequence[str]]) -> Graph:
        """Build from ``{step: [its dependencies]}``; every dependency must be a key."""
        g = cls(depends_on)
        index, succ, pred = g.index, g.succ, g.pred
        for step, deps in depends_on.items():
            j = index[step]
            pj = pred[j]
            for d in deps:
                i = index[d]
                succ[i].append(j)
                pj.append(i)
        return g

    def _add_node(self, name: str) -> int:
        if name in self.index:
            raise GraphError(f"step {name!r} is already in the graph", duplicates=[name])
        i = len(self.nodes)
        self.nodes.append(name)
        self.index[name] = i
        self.succ.append([])
        self.pred.append([])
        return i

    def __len__(self) -> int:
        return len(self.nodes)

    def __contains__(self, name: object) -> bool:
        return name in self.index

    @property
    def edge_count(self) -> int:
        return sum(len(s) for s in self.succ)

    def dependencies(self, name: str) -> list[str]:
        return [self.nodes[i] for i in self.pred[self.index[name]]]

    def dependents(self, name: str) -> list[str]:
        return [self.nodes[i] for i in self.succ[self.index[name]]]

    def roots(self) -> list[str]:
        return [n for n, p in zip(self.nodes, self.pred) if not p]

    # -- ordering -------------------------------------------------------------------------

    def _levels(self) -> tuple[list[int], list[int]]:
        """Kahn's algorithm: (order, level per node); order is short when there is a cycle."""
        succ = self.succ
        indeg = [len(p) for p in self.pred]
        level = [0] * len(indeg)
        order = [i for i, d in enumerate(indeg) if d == 0]
        k = 0
        while k < len(order):
            i = order[k]
            k += 1
            li = level[i] + 1
            for j in succ[i]:
                if level[j] < li:
                    level[j] = li
                indeg[j] -= 1
                if indeg[j] == 0:
                    order.append(j)
        return order, level

    def is_acyclic(self) -> bool:
        return len(self._levels()[0]) == len(self.nodes)

    def topological_order(self) -> list[str]:
        """Every step after all its dependencies.

        Raises:
            GraphError: the graph has a cycle (the error lists each one).
        """
        order, _ = self._levels()
        if len(order) != len(self.nodes):
            self._raise_cycles()
        return [self.nodes[i] for i in order]

    def stages(self) -> list[list[str]]:
        """Groups that can run in parallel: each step in the stage right after its latest dependency.

        Raises:
            GraphError: the graph has a cycle.
        """
        order, level = self._levels()
        if len(order) != len(self.nodes):
            self._raise_cycles()
        out: list[list[str]] = [[] for _ in range(max(level, default=-1) + 1)]
        for i in order:
            out[level[i]].append(self.nodes[i])
        return out

    def _raise_cycles(self) -> None:
        cycles = self.find_cycles()
        shown = "; ".join(format_cycle(c) for c in cycles[:5])
        raise GraphError(f"dependency cycle: {shown}", cycles=cycles)

    # -- cycles ---------------------------------------------------------------------------

    def find_cycles(self) -> list[list[str]]:
        """One cycle per strongly connected component that has one, in depends_on order.

        Each cycle ``[a, b, c]`` reads "a depends on b, b depends on c, c depends on a".
        """
        order, _ = self._levels()
        if len(order) == len(self.nodes):
            return []
        done = set(order)
        rest = [i for i in range(len(self.nodes)) if i not in done]
        cycles = []
        for component in self._strongly_connected(rest):
            cyc = self._cycle_in(component)
            if cyc:
                cycles.append([self.nodes[i] for i in cyc])
        return cycles

    def _strongly_connected(self, members: list[int]) -> list[list[int]]:
        """Tarjan's algorithm, iterative, restricted to ``members``."""
        allowed = set(members)
        index_of: dict[int, int] = {}
        low: dict[int, int] = {}
        on_stack: set[int] = set()
        stack: list[int] = []
        out: list[list[int]] = []
        counter = 0
        for root in members:
            if root in index_of:
                continue
            work = [(root, 0)]
            while work:
                v, pos = work.pop()
                if pos == 0:
                    index_of[v] = low[v] = counter
                    counter += 1
                    stack.append(v)
                    on_stack.add(v)
                succ = self.succ[v]
                recursed = False
                while pos < len(succ):
                    w = succ[pos]
                    pos += 1
                    if w not in allowed:
                        continue
                    if w not in index_of:
                        work.append((v, pos))
                        work.append((w, 0))
                        recursed = True
                        break
                    if w in on_stack:
                        low[v] = min(low[v], index_of[w])
                if recursed:
                    continue
                if low[v] == index_of[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    out.append(comp)
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[v])
        return out

    def _cycle_in(self, component: list[int]) -> list[int] | None:
        members = set(component)
        start = min(component, key=lambda i: self.nodes[i])  # deterministic, readable
        if len(component) == 1 and start not in self.pred[start]:
            return None
        # Walk dependencies inside the component until a node repeats.
        seen: dict[int, int] = {}
        path: list[int] = []
        v = start
        while v not in seen:
            seen[v] = len(path)
            path.append(v)
            v = next(p for p in sorted(self.pred[v], key=lambda i: self.nodes[i]) if p in members)
        return path[seen[v]:]

    # -- reachability ---------------------------------------------------------------------

    def _reach(self, start: Iterable[int], adjacency: list[list[int]]) -> set[int]:
        seen: set[int] = set()
        todo = list(start)
        while todo:
            v = todo.pop()
            for w in adjacency[v]:
                if w not in seen:
                    seen.add(w)
                    todo.append(w)
        return seen

    def ancestors(self, name: str) -> set[str]:
        """Every step ``name`` transitively depends on."""
        return {self.nodes[i] for i in self._reach([self.index[name]], self.pred)}

    def descendants(self, name: str) -> set[str]:
        """Every step that transitively depends on ``name``."""
        return {self.nodes[i] for i in self._reach([self.index[name]], self.succ)}

    def critical_path(self, durations: Mapping[str, float | None]) -> CriticalPath:
        """The chain with the largest total expected duration (ties: more steps).

        Raises:
            GraphError: the graph has a cycle.
        """
        order, _ = self._levels()
        if len(order) != len(self.nodes):
            self._raise_cycles()
        weight = [float(durations.get(n) or 0.0) for n in self.nodes]
        best: list[tuple[float, int]] = [(0.0, 0)] * len(self.nodes)
        via = [-1] * len(self.nodes)
        for i in order:
            base = (0.0, 0)
            for p in self.pred[i]:
                if best[p] > base:
                    base = best[p]
                    via[i] = p
            best[i] = (base[0] + weight[i], base[1] + 1)
        if not order:
            return CriticalPath((), 0.0)
        end = max(range(len(best)), key=best.__getitem__)
        chain = []
        while end != -1:
            chain.append(self.nodes[end])
            end = via[end]
        return CriticalPath(tuple(reversed(chain)), best[self.index[chain[0]]][0])

    # -- incremental change ---------------------------------------------------------------

    def add(self, nodes: Iterable[str], edges: Iterable[tuple[str, str]]) -> None:
        """Add nodes and edges, checking only what changed; on any error nothing is added.

        A new edge ``u -> v`` closes a cycle exactly when ``u`` is already reachable
        from ``v``, so the check walks from each new edge's head, not the whole graph.

        Raises:
            GraphError: a node already exists, an edge names an unknown node, or an
                edge would close a cycle (the error carries the cycle path).
        """
        nodes, edges = list(nodes), list(edges)
        dupes = [n for n in nodes if n in self.index]
        seen: set[str] = set()
        dupes += [n for n in nodes if n in seen or seen.add(n)]  # type: ignore[func-returns-value]
        if dupes:
            raise GraphError(f"step(s) already defined: {', '.join(sorted(set(dupes)))}",
                             duplicates=sorted(set(dupes)))
        known = self.index.keys() | set(nodes)
        unknown = [(a, b) for a, b in edges if a not in known or b not in known]
        if unknown:
            raise GraphError("unknown step(s) in new dependencies: " + ", ".join(
                f"{b} depends on {a}" for a, b in unknown), unknown=unknown)
        base = len(self.nodes)
        for n in nodes:
            self._add_node(n)
        added: list[tuple[int, int]] = []
        try:
            for a, b in edges:
                u, v = self.index[a], self.index[b]
                path = self._path(v, u)
                if path is not None:
                    # v ->...-> u plus the new u -> v: report in depends_on order (reverse).
                    cycle = [self.nodes[i] for i in reversed(path)]
                    raise GraphError(f"dependency cycle: {format_cycle(cycle)}", cycles=[cycle])
                self.succ[u].append(v)
                self.pred[v].append(u)
                added.append((u, v))
        except GraphError:
            for u, v in reversed(added):
                self.succ[u].pop()
                self.pred[v].pop()
            for n in self.nodes[base:]:
                del self.index[n]
            del self.nodes[base:], self.succ[base:], self.pred[base:]
            raise

    def _path(self, src: int, dst: int) -> list[int] | None:
        """A path src ->...-> dst along edges, or None."""
        if src == dst:
            return [src]
        parent = {src: -1}
        todo = [src]
        while todo:
            v = todo.pop()
            for w in self.succ[v]:
                if w in parent:
                    continue
                parent[w] = v
                if w == dst:
                    out = [w]
                    while parent[out[-1]] != -1:
                        out.append(parent[out[-1]])
                    return list(reversed(out))
                todo.append(w)
        return None
