"""The plan-level task graph: edges, cycles, dependency levels."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmo.plans import PlanError, Task, dependents_of, parse_plan, task_edges
from llmo.plans.graph import find_cycles, item_entry_template, levels_of


def task(id: str, *deps: str, foreach: str | None = None) -> Task:
    return Task(id, "worker", "cpu", "true", tuple(deps), foreach)


def test_edges_resolve_per_item_entries_and_skip_config_ones():
    tasks = [
        task("prep"),
        task("extract", "prep", foreach="m.json:items"),
        task("sum", "extract_{ITEM.id}", "{STAGE}_x", foreach="m.json:items"),
    ]
    assert task_edges(tasks) == {"prep": (), "extract": ("prep",), "sum": ("extract",)}


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("extract_{ITEM.id}", "extract"),
        ("extract_{ITEM}", "extract"),
        ("ex_tract_{ITEM.id}", None),
        ("{ITEM.dep}", None),
        ("extract{ITEM.id}", None),
    ],
)
def test_item_entry_template(entry, expected):
    assert item_entry_template(entry, {"extract", "tract"}) == expected


def test_levels_are_longest_paths():
    edges = {"a": (), "b": ("a",), "c": ("a", "b"), "d": ()}
    assert levels_of(edges) == [["a", "d"], ["b"], ["c"]]


def test_levels_refuse_a_cycle():
    with pytest.raises(PlanError, match="dependency cycle: a -> b -> a"):
        levels_of({"a": ("b",), "b": ("a",)})


def test_each_cycle_is_reported_once_from_its_first_task():
    edges = {
        "x": (),
        "a": ("b",),
        "b": ("c",),
        "c": ("a", "x"),
        "s": ("s",),
        "p": ("q",),
        "q": ("p",),
    }
    assert find_cycles(edges) == [["a", "b", "c", "a"], ["s", "s"], ["p", "q", "p"]]


def test_dependents_of():
    plan, _ = parse_plan(
        "# Plan: p\n## Tasks\n"
        + "".join(
            f"### {name}\n- **executor**: worker\n- **task_class**: cpu\n"
            f"- **command**: `true`\n- **depends_on**: {deps}\n"
            for name, deps in [("a", "none"), ("b", "a"), ("c", "a, b")]
        )
    )
    assert dependents_of(plan, "a") == ["b", "c"]
    assert dependents_of(plan, "c") == []


@st.composite
def dags(draw):
    """Random DAGs: node i depends only on nodes before it."""
    n = draw(st.integers(1, 25))
    names = [f"t{i}" for i in range(n)]
    edges = {}
    for i, name in enumerate(names):
        edges[name] = tuple(draw(st.lists(st.sampled_from(names[:i]), unique=True))) if i else ()
    return edges


@given(dags())
def test_levels_respect_every_dependency(edges):
    levels = levels_of(edges)
    level = {node: n for n, nodes in enumerate(levels) for node in nodes}
    assert sorted(level) == sorted(edges)
    for node, deps in edges.items():
        for dep in deps:
            assert level[dep] < level[node]
        if deps:
            assert level[node] == 1 + max(level[d] for d in deps)
        else:
            assert level[node] == 0
    assert find_cycles(edges) == []


def reaches(edges, start, goal) -> bool:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            todo.extend(edges[node])
    return False


@given(dags(), st.data())
def test_a_back_edge_is_found_as_a_real_cycle(edges, data):
    names = list(edges)
    late = data.draw(st.sampled_from(names))
    early = data.draw(st.sampled_from(names[: names.index(late) + 1]))
    # make `early` depend on `late`, which (transitively or not) may depend on `early`
    edges = {**edges, early: (*edges[early], late)}
    cycles = find_cycles(edges)
    for cycle in cycles:
        assert cycle[0] == cycle[-1]
        for node, dep in itertools.pairwise(cycle):
            assert dep in edges[node]
    if early == late:
        assert [early, early] in cycles
    assert bool(cycles) == (early == late or reaches(edges, late, early))
    if cycles:
        with pytest.raises(PlanError):
            levels_of(edges)
    else:
        levels_of(edges)
