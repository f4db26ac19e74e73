"""The task graph of a plan before expansion: edges, cycles, levels.

Theory of operation
-------------------
Before a run the graph is known at the level of the plan's tasks: a
``foreach`` template stands for all the tasks it will expand into. A
``depends_on`` entry is one of

* a task id: an edge to that task;
* ``<template>_{ITEM...}`` in a ``foreach`` task: a per-item edge to one
  expansion of ``<template>``, which at plan level is an edge to the template;
* an entry with other placeholders (a configuration value): unknown until
  submission, so it adds no edge here.

Cycles are found with Tarjan's strongly connected components (iterative, so
a long chain cannot overflow the stack); each component with more than one
task, or a task that depends on itself, is reported once as a concrete cycle
``a -> b -> c -> a`` read as "a depends on b, which depends on c, ...".
Levels are longest-path depths: level 0 has no dependencies and a task sits
one level below its deepest dependency.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence

from llmo.plans.model import Plan, PlanError, Task

ITEM_MARK = "{ITEM"


def item_entry_template(entry: str, templates: Iterable[str]) -> str | None:
    """The template a per-item entry like ``extract_{ITEM.id}`` refers to, if any."""
    prefix = entry.split("{", 1)[0]
    if not prefix.endswith("_"):
        return None
    name = prefix[:-1]
    return name if name in set(templates) else None


def task_edges(tasks: Sequence[Task]) -> dict[str, tuple[str, ...]]:
    """Task id -> the ids it depends on at plan level (unknown ids kept)."""
    templates = {t.id for t in tasks if t.foreach is not None}
    edges: dict[str, tuple[str, ...]] = {}
    for task in tasks:
        deps: list[str] = []
        for entry in task.depends_on:
            if "{" not in entry:
                target: str | None = entry
            elif ITEM_MARK in entry:
                target = item_entry_template(entry, templates)
            else:
                target = None
            if target is not None and target not in deps:
                deps.append(target)
        edges[task.id] = tuple(deps)
    return edges


def find_cycles(edges: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """One concrete cycle per cyclic component, each as ``[a, b, ..., a]``.

    Only ids that are keys of ``edges`` take part; the order of ``edges``
    decides where each reported cycle starts.
    """
    order = {node: i for i, node in enumerate(edges)}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in edges:
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, child = work.pop()
            if child == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            deps = [d for d in edges[node] if d in order]
            if child < len(deps):
                work.append((node, child + 1))
                dep = deps[child]
                if dep not in index:
                    work.append((dep, 0))
                elif dep in on_stack:
                    low[node] = min(low[node], index[dep])
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    cycles = []
    for component in components:
        members = set(component)
        start = min(component, key=order.__getitem__)
        if len(component) == 1 and start not in edges[start]:
            continue
        cycles.append(_shortest_cycle(start, members, edges))
    cycles.sort(key=lambda c: order[c[0]])
    return cycles


def _shortest_cycle(start: str, members: set[str], edges: Mapping[str, Sequence[str]]) -> list[str]:
    parent: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for dep in edges[node]:
            if dep == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [start, *reversed(path[:-1]), start]
            if dep in members and dep not in parent:
                parent[dep] = node
                queue.append(dep)
    raise AssertionError("a strongly connected component without a cycle")  # pragma: no cover


def levels_of(edges: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Longest-path levels, each in the order of ``edges``; ``PlanError`` on a cycle."""
    known = {node for node in edges}
    deps = {node: [d for d in edges[node] if d in known] for node in edges}
    dependents: dict[str, list[str]] = {node: [] for node in edges}
    waiting = {node: len(set(deps[node])) for node in edges}
    for node, node_deps in deps.items():
        for dep in set(node_deps):
            dependents[dep].append(node)
    level = {node: 0 for node in edges}
    ready = deque(node for node in edges if waiting[node] == 0)
    placed = 0
    while ready:
        node = ready.popleft()
        placed += 1
        for child in dependents[node]:
            level[child] = max(level[child], level[node] + 1)
            waiting[child] -= 1
            if waiting[child] == 0:
                ready.append(child)
    if placed != len(edges):
        cycle = find_cycles(edges)[0]
        raise PlanError(f"dependency cycle: {' -> '.join(cycle)}")
    out: list[list[str]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for node in edges:
        out[level[node]].append(node)
    return out


def dependency_levels(plan: Plan) -> list[list[str]]:
    """The plan's task ids by dependency level (level 0 first).

    A ``foreach`` template appears once, standing for its expansions. Raises
    ``PlanError`` when the plan has a dependency cycle.
    """
    return levels_of(task_edges(plan.tasks))


def dependents_of(plan: Plan, task_id: str) -> list[str]:
    """Ids of the tasks that depend on ``task_id`` (directly), in file order."""
    edges = task_edges(plan.tasks)
    return [t for t, deps in edges.items() if task_id in deps]
