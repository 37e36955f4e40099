"""The import graph of the packages: no module imports one that imports it back (top-level, TYPE_CHECKING and
function-level imports all count), layers import downwards only, and no module reaches into another module's
private members."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from harness.paths import repo_root

ROOT = repo_root()
PACKAGES = ("loaders", "harness", "engines", "runtimes", "schedulers", "placement", "experiments")
# what each layer may not import: loaders < harness < engines < runtimes < schedulers, placement < experiments
FORBIDDEN = {"loaders": {"harness", "engines", "runtimes", "schedulers", "placement", "experiments"},
             "harness": {"engines", "runtimes", "schedulers", "placement", "experiments"},
             "engines": {"runtimes", "schedulers", "placement", "experiments"},
             "runtimes": {"schedulers", "placement", "experiments"},
             "schedulers": {"placement", "experiments"},
             "placement": {"schedulers", "experiments"},
             "experiments": set()}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> Iterator[tuple[str, int]]:
    """Every project module ``name`` imports, with the line (``from pkg import mod`` counts as importing mod)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES:
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base
                                                                                                    else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in MODULES:
                    yield sub, node.lineno
                elif base in MODULES:
                    yield base, node.lineno


GRAPH = {name: {m for m, _ in _imports(name, path) if m != name} for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_the_packages() -> None:
    assert {"harness.run", "harness.config", "loaders.native.loader", "schedulers.simulator"} <= set(GRAPH)
    assert "harness.config" in GRAPH["harness.run"]
    assert "loaders.native.convert" in GRAPH["harness.checkpoints"]  # a function-level import counts


def test_no_import_cycles() -> None:
    assert _cycles(GRAPH) == []


def test_a_cycle_is_found() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_layers_import_downwards_only() -> None:
    bad = [f"{m} imports {d}" for m, deps in GRAPH.items() for d in deps
           if d.split(".")[0] in FORBIDDEN[m.split(".")[0]]]
    assert bad == []


# Third-party internals used on purpose, each with its reason at the use: transformers' architecture → class map
# (harness/modelbuild.py), Ray's single-machine switch (harness/raycluster.py), the HiGHS bindings' solver class
# (placement/solver.py: a start vector and a progress callback, with a tested fallback to scipy's milp), the
# transformers config's attention switch (placement/real/blocks.py).
THIRD_PARTY_PRIVATE = {"_model_mapping", "_private", "_Highs", "_attn_implementation"}


def _private_reaches(name: str, path: Path) -> Iterator[str]:
    """``x._attr`` where ``_attr`` is defined in none of this module's own code: a reach into another module."""
    tree = ast.parse(path.read_text())
    own = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)}
    own |= {t.attr for n in ast.walk(tree) if isinstance(n, ast.Assign | ast.AnnAssign | ast.AugAssign)
            for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
            if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id in ("self", "cls")}
    own |= {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign | ast.AnnAssign)
            for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) if isinstance(t, ast.Name)}
    own |= {a.arg for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) for a in n.args.kwonlyargs}
    modules = {a.asname or a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
               for a in n.names}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.endswith("_")):
            continue  # (dunders and Hydra's ``_target_``-style keys end with an underscore)
        if node.attr in THIRD_PARTY_PRIVATE:
            continue
        base = node.value
        if isinstance(base, ast.Name) and (base.id in ("self", "cls") or base.id in modules):
            continue  # own members, or a library's documented underscore API (os._exit, sys._getframe)
        if node.attr not in own:
            yield f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{node.lineno} .{node.attr}"


def test_no_module_reaches_into_another_modules_private_members() -> None:
    bad = [hit for name, path in MODULES.items() for hit in _private_reaches(name, path)]
    assert bad == []


def test_a_private_reach_is_found(tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_text("import os\n\nclass A:\n    def __init__(self):\n        self._mine = 1\n\n"
                    "def f(sim, a, s):\n    os._exit(0)\n    s.dram._names = None\n"
                    "    return sim._retry_flag, a._mine, a._target_\n")
    assert sorted(hit.rsplit(" ", 1)[1] for hit in _private_reaches("m", path)) == ["._names", "._retry_flag"]
