"""The tree reads as the loop: imports between engine/ subpackages point one way, the library never
imports the CLI, and nothing but the CLI imports training/."""

from __future__ import annotations

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[1] / "engine"


def _imports() -> list[tuple[str, str]]:
    """(importing module, imported module) for every engine module, relative imports resolved."""
    out = []
    for path in ENGINE.rglob("*.py"):
        parts = list(path.relative_to(ENGINE.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        module = ".".join(parts)
        package = parts if is_pkg else parts[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                out += [(module, a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - (node.level - 1)]
                    out.append((module, ".".join([*base, *([node.module] if node.module else [])])))
                elif node.module:
                    out.append((module, node.module))
    return out


def _part(module: str) -> str:
    p = module.split(".")
    return p[1] if len(p) > 1 else ""


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
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
                found.append(sorted(comp))

    for v in list(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_between_engine_parts():
    edges: dict[str, set[str]] = {}
    for a, b in _imports():
        if b.startswith("engine.") and _part(a) and _part(b) and _part(a) != _part(b):
            edges.setdefault(_part(a), set()).add(_part(b))
    assert {"data", "model", "decision", "policy", "monitoring", "feedback", "cli"} <= set(edges) | {
        b for v in edges.values() for b in v}
    assert _cycles(edges) == []


def test_the_library_never_imports_the_cli_and_only_the_cli_imports_training():
    imports = _imports()
    assert [(a, b) for a, b in imports if b.startswith("engine.cli") and not a.startswith("engine.cli")] == []
    assert [(a, b) for a, b in imports if b.split(".")[0] == "training" and not a.startswith("engine.cli")] == []


def test_a_cycle_would_be_found():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
