"""Import structure: petl never imports benchmarks, and modules do not import each other in a circle.

Read from the source (ast), not by importing, so a lazy import inside a function counts too: a cycle hidden in a
function body is still two modules that cannot be understood, tested or replaced one without the other.
"""

from __future__ import annotations

import ast
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("petl", "benchmarks")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(name: str, path: Path, known: set[str], top_level_only: bool) -> set[str]:
    """Project modules ``name`` imports (``from pkg import sub`` counts ``pkg.sub`` when that is a module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, (ast.Import, ast.ImportFrom)) and not (top_level_only and in_function):
                targets: list[str] = []
                if isinstance(child, ast.Import):
                    targets = [a.name for a in child.names]
                else:
                    base = child.module or ""
                    if child.level:
                        anchor = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                        base = ".".join(anchor + ([base] if base else []))
                    subs = [f"{base}.{a.name}" for a in child.names if f"{base}.{a.name}" in known]
                    # ``from pkg import sub`` imports the module pkg.sub; ``from mod import name`` imports mod
                    targets = subs + ([base] if len(subs) < len(child.names) else [])
                found.update(t for t in targets if t in known and t != name)
            visit(child, nested)

    visit(tree, False)
    return found


def _graph(top_level_only: bool) -> dict[str, set[str]]:
    modules = _modules()
    return {n: _imports(n, p, set(modules), top_level_only) for n, p in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_the_scan_sees_real_imports() -> None:
    graph = _graph(top_level_only=False)
    assert "petl.registry" in graph["petl.api"] and "benchmarks.config" in graph["benchmarks.engine"]
    assert "petl.methods" in graph["petl.registry"]          # a lazy import inside a function counts


def test_petl_never_imports_benchmarks() -> None:
    graph = _graph(top_level_only=False)
    offenders = {m: sorted(t for t in targets if t.startswith("benchmarks"))
                 for m, targets in graph.items() if m.startswith("petl")}
    assert not {m: t for m, t in offenders.items() if t}


def test_no_import_cycle_at_import_time() -> None:
    assert _cycles(_graph(top_level_only=True)) == []


def test_no_import_cycle_even_through_lazy_imports() -> None:
    assert _cycles(_graph(top_level_only=False)) == []


def test_run_and_launch_do_not_import_each_other() -> None:
    """run.py is the CLI; it may import launch.py, and both import execution.py (running one planned run)."""
    graph = _graph(top_level_only=False)
    assert "benchmarks.run" not in graph["benchmarks.launch"] and "benchmarks.execution" in graph["benchmarks.launch"]
    assert ["benchmarks.launch", "benchmarks.run"] not in _cycles(graph)
