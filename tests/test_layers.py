"""The package's layers: the import graph of jaxrnn's modules has no cycle, and no module imports one
that docs/design.md's data-flow line puts above it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imports() -> dict[str, set[str]]:
    """Each module of jaxrnn/ and the jaxrnn modules it imports (at any depth of its code)."""
    graph = {}
    for path in sorted((ROOT / "jaxrnn").glob("*.py")):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jaxrnn"):
                found |= ({node.module.split(".")[1]} if "." in node.module else {a.name for a in node.names})
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("jaxrnn.")}
        graph[path.stem] = found - {path.stem}
    return graph


def test_no_module_imports_one_above_it_in_the_design_line() -> None:
    line = re.search(r"Data flows one way: `([^`]+)`", (ROOT / "docs" / "design.md").read_text()).group(1)
    order = [m.strip() for m in line.split("->")]
    graph = imports()
    assert set(order) <= set(graph), set(order) - set(graph)
    for low, module in enumerate(order):
        upward = {m for m in graph[module] if m in order and order.index(m) > low}
        assert not upward, f"{module} imports {upward}, above it"


def test_the_import_graph_has_no_cycle() -> None:
    graph, done, path = imports(), set(), []

    def visit(m: str) -> None:
        assert m not in path, " -> ".join(path[path.index(m):] + [m])
        if m in done:
            return
        path.append(m)
        for n in sorted(graph.get(m, ())):
            visit(n)
        path.pop()
        done.add(m)

    for m in graph:
        visit(m)
