"""Dependencies point one way: ``sop`` <- ``runtime`` <- ``actors`` <- ``agents``, with no import cycles.

Every import in every module of the four packages is read with ``ast`` (imports
inside functions and ``TYPE_CHECKING`` blocks included: a lazy import is still
a dependency). A layer may import its own package and the layers below it; the
layers above reach it only through plugins (:mod:`runtime.plugins`). Between
modules, an import cycle is refused unless it is only through imports done at
call time (inside a function), which Python resolves after both modules load.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["sop", "runtime", "actors", "agents"]
"""Lowest first: a package may import only itself and the packages before it."""


def modules() -> dict[str, Path]:
    found = {}
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports(path: Path, module: str) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno, top) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: from the package the module is in
                    anchor = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                found.append((base, child.lineno, top))
                found.extend((f"{base}.{alias.name}", child.lineno, top) for alias in child.names)
            visit(child, inner)

    visit(tree, True)
    return found


def lazy_targets(path: Path) -> list[str]:
    """Modules named in a package's lazy-export table (``_LAZY = {"Name": "module"}``)."""
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "_LAZY" for t in node.targets):
            return [v.value for v in node.value.values if isinstance(v, ast.Constant)]  # type: ignore[union-attr]
    return []


MODULES = modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_a_layer_above_its_own(module: str) -> None:
    own = LAYERS.index(module.split(".")[0])
    upward = []
    for name, line, _ in imports(MODULES[module], module):
        top = name.split(".")[0]
        if top in LAYERS and LAYERS.index(top) > own:
            upward.append(f"{MODULES[module].relative_to(ROOT)}:{line} imports {name}")
    for target in lazy_targets(MODULES[module]):
        top = target.split(".")[0]
        if top in LAYERS and LAYERS.index(top) > own:
            upward.append(f"{MODULES[module].relative_to(ROOT)}: lazily exports from {target}")
    assert not upward, "imports against the layering sop <- runtime <- actors <- agents:\n" + "\n".join(upward)


def _graph(top_level_only: bool) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for name, _, top in imports(path, module):
            if top_level_only and not top:
                continue
            target = name if name in MODULES else name.rpartition(".")[0]
            if target in MODULES and target != module and not module.startswith(target + "."):
                graph[module].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            connect(v)
    return found


def test_no_import_cycle_between_modules_at_load_time() -> None:
    cycles = _cycles(_graph(top_level_only=True))
    assert not cycles, "modules that import each other when loaded:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_checker_sees_an_upward_import_and_a_cycle(tmp_path: Path) -> None:
    """The test itself can fail: a planted upward import and a planted cycle are found."""
    bad = tmp_path / "bad.py"
    bad.write_text("from actors.fronts import Actors\n\ndef f():\n    import agents.host\n")
    assert [(n, top) for n, _, top in imports(bad, "runtime.bad")] == [
        ("actors.fronts", True), ("actors.fronts.Actors", True), ("agents.host", False)]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
