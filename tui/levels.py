"""A batch's dependency graph by level, for the batch screen: pure functions of task rows.

Theory of operation
-------------------
A task's level is the length of its longest chain of dependencies: level 0
holds the tasks that depend on nothing, level 1 those whose dependencies are
all at level 0, and so on. A foreach template and its expanded items are one
node (a group) at the template's level, counted item by item, so a batch of
100,000 items is a handful of lines. An item's dependencies are its
template's; a dependency on an item counts as one on its group.

Dependencies come with the brain's snapshot of the batch; a task the monitor
learnt of from an event alone has ``deps`` None (not known), and counts as
depending on nothing until the next snapshot. A dependency the monitor does
not hold is left out, and a cycle (which the plan parser refuses, so only
from damaged input) is cut where it closes rather than looping.

In a goal-driven batch the tasks after the pipeline wait for the goal (the
dependency ``#goal``), not for each candidate. The goal is drawn as a node
of its own, one level past everything that does not wait for it, so those
tasks come after the whole pipeline.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from llmo.proto.states import TASK_ACTIVE
from llmo.tui.rows import TaskRow

GOAL_DEP = "#goal"  # the brain's dependency on a batch's goal (brain.tasks.GOAL_KEY)
FAILED = ("failed", "skipped")  # a skipped task's dependency failed: it failed with it
WAITING = ("pending", "ready", "delayed", "expanding")


@dataclass(slots=True)
class Node:
    """One line of the graph: a task, or a foreach template with its items (``group``)."""

    id: str
    state: str = ""
    deps: tuple[str, ...] = ()
    group: bool = False
    items: int = 0
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    row: TaskRow | None = None  # the task (or the template) itself, when the monitor holds it
    level: int = 0


def graph_nodes(tasks: Mapping[str, TaskRow]) -> dict[str, Node]:
    """The batch's tasks as graph nodes, in plan order, items folded into their group."""
    nodes: dict[str, Node] = {}
    for row in tasks.values():
        if row.template:
            group = nodes.get(row.template)
            if group is None:
                template = tasks.get(row.template)
                group = nodes[row.template] = Node(id=row.template, row=template)
                if template is not None:
                    group.state, group.deps = template.state, template.deps or ()
                else:
                    group.deps = row.deps or ()
            group.group = True
            group.items += 1
            group.counts[row.state] += 1
        elif row.id in nodes:  # a template listed after its first item
            node = nodes[row.id]
            node.row, node.state, node.deps = row, row.state, row.deps or node.deps
        else:
            nodes[row.id] = Node(id=row.id, state=row.state, deps=row.deps or (), row=row)
    return nodes


def graph_levels(tasks: Mapping[str, TaskRow]) -> list[list[Node]]:
    """The nodes by level (see the module's docstring), each level in plan order."""
    nodes = graph_nodes(tasks)
    if any(GOAL_DEP in node.deps for node in nodes.values()):
        after = _waiting_for_goal(nodes)
        before = tuple(name for name in nodes if name not in after)
        nodes[GOAL_DEP] = Node(id=GOAL_DEP, deps=before)

    def owner(dep: str) -> str:
        row = tasks.get(dep)
        return row.template if row is not None and row.template else dep

    levels: dict[str, int] = {}
    for start in nodes:
        if start in levels:
            continue
        # Depth first without recursion: a chain of 10,000 tasks must not overflow the stack.
        stack: list[tuple[str, list[str]]] = [(start, _deps_of(nodes, start, owner))]
        on_path = {start}
        while stack:
            name, pending = stack[-1]
            while pending and (pending[-1] in levels or pending[-1] in on_path):
                pending.pop()  # known already, or a cycle closing: cut it here
            if pending:
                dep = pending.pop()
                on_path.add(dep)
                stack.append((dep, _deps_of(nodes, dep, owner)))
                continue
            stack.pop()
            on_path.discard(name)
            known = [levels[d] for d in _deps_of(nodes, name, owner) if d in levels]
            levels[name] = 1 + max(known) if known else 0
    out: list[list[Node]] = [[] for _ in range(max(levels.values(), default=-1) + 1)]
    for name, node in nodes.items():
        node.level = levels[name]
        out[node.level].append(node)
    return out


def _waiting_for_goal(nodes: Mapping[str, Node]) -> set[str]:
    """The nodes that wait for the goal, directly or through another that does."""
    found = {name for name, node in nodes.items() if GOAL_DEP in node.deps}
    grew = True
    while grew:
        more = {n for n, node in nodes.items() if n not in found and found & set(node.deps)}
        found |= more
        grew = bool(more)
    return found


def _deps_of(nodes: Mapping[str, Node], name: str, owner: Callable[[str], str]) -> list[str]:
    found = (owner(d) for d in nodes[name].deps)
    return [d for d in dict.fromkeys(found) if d in nodes and d != name]


def group_text(node: Node) -> str:
    """``summarise[*] 37/120 done, 2 failed, 5 running``; a plain task: its id and state."""
    if node.id == GOAL_DEP:
        return "the goal: what comes after waits for it, not for each candidate"
    if not node.group:
        return f"{node.id} {node.state or '?'}"
    c = node.counts
    parts = [f"{node.id}[*] {c['done']}/{node.items} done"]
    failed = sum(c[s] for s in FAILED)
    running = sum(c[s] for s in TASK_ACTIVE)
    waiting = sum(c[s] for s in WAITING)
    for n, label in ((failed, "failed"), (c["cancelled"], "cancelled")):
        if n:
            parts.append(f"{n} {label}")
    for n, label in ((running, "running"), (waiting, "waiting")):
        if n:
            parts.append(f"{n} {label}")
    return ", ".join(parts)
