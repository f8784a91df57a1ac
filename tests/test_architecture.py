"""The code's shape: no import circle, dependencies pointing one way, small units.

Read from the source with `ast`, nothing imported. Every import counts: one inside a
function is still a dependency, and so is one under `if TYPE_CHECKING:` (a module that
names another's types depends on it as much as one that calls it).

Exercised by: pytest tests/test_architecture.py
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("orchestrator", "strategies", "models")
MAX_FUNCTION_LINES = 60
MAX_CLASS_LINES = 150

# Which top-level package may import which: orchestrator -> strategies -> torch;
# models are built by the orchestrator and split by strategies, never the reverse.
ALLOWED = {
    "orchestrator": {"orchestrator", "strategies", "models"},
    "strategies": {"strategies"},
    "models": {"models"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        imported = _imported_names(ast.parse(path.read_text()), name, path.name == "__init__.py")
        graph[name] = {target for target in imported if target in modules and target != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_the_import_graph_is_read():
    graph = _graph()
    assert "orchestrator.config.loading" in graph["orchestrator.cli.commands"]
    assert "orchestrator.config.checks" in graph["orchestrator.config.loading"]


def test_no_import_circle():
    assert _cycles(_graph()) == []


def test_a_circle_is_found():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_dependencies_point_one_way():
    wrong = [
        f"{source} imports {target}"
        for source, targets in _graph().items()
        for target in targets
        if target.split(".")[0] not in ALLOWED[source.split(".")[0]]
    ]
    assert wrong == []


def _units(kind: type, limit: int) -> list[str]:
    over = []
    for package in ("orchestrator", "strategies"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, kind):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > limit:
                        over.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    return over


@pytest.mark.parametrize(
    "kind,limit", [(ast.FunctionDef, MAX_FUNCTION_LINES), (ast.ClassDef, MAX_CLASS_LINES)],
    ids=["functions", "classes"],
)
def test_units_stay_small(kind, limit):
    assert _units(kind, limit) == []
