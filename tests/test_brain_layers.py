"""The brain's modules form layers: each imports only modules below it.

Every module of ``brain/`` is parsed with ``ast`` and its imports of other
brain modules are collected, at module level and inside functions alike.
The graph must have no cycle; a cycle is named in the failure. Print the
graph, lowest layer first, with::

    .venv/bin/python -m tests.test_brain_layers
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(30)

BRAIN = Path(__file__).resolve().parent.parent / "brain"
PACKAGE = "llmo.brain"


def brain_modules() -> list[str]:
    return sorted(p.stem for p in BRAIN.glob("*.py") if p.stem != "__init__")


def imported(node: ast.Import | ast.ImportFrom, modules: set[str]) -> set[str]:
    """The brain modules one import statement names."""
    found: set[str] = set()
    if isinstance(node, ast.Import):
        for alias in node.names:
            parts = alias.name.split(".")
            if parts[:2] == ["llmo", "brain"] and len(parts) > 2:
                found.add(parts[2])
        return found & modules
    base = node.module or ""
    if node.level:  # relative: ``from . import x`` or ``from .x import y``
        base = f"{PACKAGE}.{base}" if base else PACKAGE
    if base == PACKAGE:
        found.update(alias.name for alias in node.names)
    elif base.startswith(PACKAGE + "."):
        found.add(base.split(".")[2])
    return found & modules


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Per module: every brain module it imports, and those it imports inside a function."""
    modules = set(brain_modules())
    graph: dict[str, set[str]] = {}
    nested: dict[str, set[str]] = {}
    for name in sorted(modules):
        tree = ast.parse((BRAIN / f"{name}.py").read_text(), f"brain/{name}.py")
        top = {id(n) for n in tree.body}
        deps: set[str] = set()
        inner: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = imported(node, modules) - {name}
                deps |= names
                if id(node) not in top:
                    inner |= names
        graph[name] = deps
        nested[name] = inner
    return graph, nested


def layers(graph: dict[str, set[str]]) -> dict[str, int]:
    """Each module's layer: 0 imports no brain module, else one above its highest import."""
    level: dict[str, int] = {}
    for name in graphlib.TopologicalSorter(graph).static_order():
        level[name] = 1 + max((level[d] for d in graph[name]), default=-1)
    return level


def describe(graph: dict[str, set[str]]) -> list[str]:
    level = layers(graph)
    order = sorted(graph, key=lambda n: (level[n], n))
    return [f"{level[n]:2d} {n} -> {', '.join(sorted(graph[n])) or '-'}" for n in order]


def test_every_brain_module_is_seen():
    graph, _ = import_graph()
    assert {"core", "tasks", "goal", "state"} <= set(graph)
    assert "tasks" in graph["core"]  # the parser finds ``from llmo.brain import x``
    assert "state" in graph["ctx"]  # and ``from llmo.brain.x import y``


def test_brain_imports_have_no_cycle():
    graph, _ = import_graph()
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        cycle = exc.args[1]
        pytest.fail("brain modules import each other in a cycle: " + " -> ".join(cycle))


def test_brain_modules_import_each_other_at_module_level():
    _, nested = import_graph()
    inside = {name: sorted(deps) for name, deps in nested.items() if deps}
    assert not inside, f"brain modules imported inside functions: {inside}"


def test_the_core_sits_on_top_of_the_policies():
    level = layers(import_graph()[0])
    for low, high in [
        ("state", "tasks"),
        ("tasks", "goal"),
        ("goal", "submit"),
        ("models", "dispatch"),
        ("dispatch", "core"),
    ]:
        assert level[low] < level[high], f"{low} should sit below {high}"


if __name__ == "__main__":
    print("\n".join(describe(import_graph()[0])))
