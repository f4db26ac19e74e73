"""foreach expansion: naming, batches, per-item dependencies, foreach sources."""

from __future__ import annotations

import json
import math
import subprocess

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from llmo.plans import (
    ForeachError,
    PlanError,
    Task,
    expand_foreach,
    expanded_dependencies,
    items_from_json,
    read_foreach_items,
    resolve_task,
)
from llmo.plans.expand import chain_commands, safe_name
from llmo.plans.files import split_foreach

VARS = {"BATCH_PATH": "/b", "PLAN_PATH": "/p", "BATCH_ID": "B1"}


def template(**fields) -> Task:
    base = dict(
        id="work",
        executor="worker",
        task_class="cpu",
        command="run {ITEM.id} --in {BATCH_PATH}",
        depends_on=("prepare",),
        foreach="{BATCH_PATH}/manifest.json:items",
        line=12,
    )
    base.update(fields)
    return Task(**base)


def test_one_task_per_item_named_by_id():
    items = [{"id": "a"}, {"id": "b"}]
    tasks = expand_foreach(template(), items, VARS)
    assert [t.id for t in tasks] == ["work_a", "work_b"]
    assert [t.command for t in tasks] == ['run "${LLMO_ITEM_ID}" --in /b'] * 2
    assert [t.env for t in tasks] == [{"LLMO_ITEM_ID": "a"}, {"LLMO_ITEM_ID": "b"}]
    assert all(t.depends_on == ("prepare",) for t in tasks)
    assert all(t.template == "work" and t.foreach is None and t.line == 12 for t in tasks)
    assert [t.items for t in tasks] == [({"id": "a"},), ({"id": "b"},)]


@pytest.mark.parametrize(
    "items",
    [["x", "y", "z"], [{"name": "x"}, {"name": "y"}, {"name": "z"}], [{"id": "a"}, {"n": 1}, {}]],
)
def test_items_without_ids_are_numbered_from_zero_as_the_original_did(items):
    tasks = expand_foreach(template(command="run {ITEM}"), items, VARS)
    assert [t.id for t in tasks] == ["work_0", "work_1", "work_2"]


def test_unsafe_ids_are_made_safe():
    tasks = expand_foreach(template(), [{"id": "src/a b.py"}, {"id": 7}], VARS)
    assert [t.id for t in tasks] == ["work_src_a_b.py", "work_7"]
    assert tasks[0].env == {"LLMO_ITEM_ID": "src/a b.py"}
    assert tasks[1].env == {"LLMO_ITEM_ID": "7"}


def test_duplicate_ids_are_an_error():
    with pytest.raises(ForeachError, match="items 1 and 3 of work both give the task name work_a"):
        expand_foreach(template(), [{"id": "a"}, {"id": "b"}, {"id": "a"}], VARS)


def test_reserved_names_are_an_error():
    with pytest.raises(ForeachError, match="work_a, which is already a task"):
        expand_foreach(template(), [{"id": "a"}], VARS, reserved={"work_a"})


def test_batches_are_named_one_based_and_inclusive():
    items = [{"id": str(n)} for n in range(5)]
    tasks = expand_foreach(template(batch_size=2), items, VARS)
    assert [t.id for t in tasks] == [
        "work_batch_0001_0002",
        "work_batch_0003_0004",
        "work_batch_0005_0005",
    ]
    assert tasks[0].command == (
        '( export LLMO_ITEM_ID="${LLMO_B1_ITEM_ID}"; run "${LLMO_ITEM_ID}" --in /b\n) && '
        '( export LLMO_ITEM_ID="${LLMO_B2_ITEM_ID}"; run "${LLMO_ITEM_ID}" --in /b\n)'
    )
    assert tasks[0].env == {"LLMO_B1_ITEM_ID": "0", "LLMO_B2_ITEM_ID": "1"}
    assert tasks[2].items == ({"id": "4"},)


def test_empty_items_expand_to_nothing():
    assert expand_foreach(template(), [], VARS) == []
    assert expanded_dependencies(("prepare", "work"), {"work": []}) == ("prepare",)


def test_undefined_placeholder_names_item_and_task():
    with pytest.raises(PlanError, match=r"item 2 of foreach task work: undefined placeholder"):
        expand_foreach(template(), [{"id": "a"}, {"name": "b"}], VARS)
    with pytest.raises(PlanError, match=r"\{CONFIG_KEY\}"):
        expand_foreach(template(command="run {CONFIG_KEY}"), ["a"], VARS)


def test_per_item_dependencies_form_pipelines():
    second = template(id="summarize", depends_on=("extract_{ITEM.id}", "prepare"))
    tasks = expand_foreach(second, [{"id": "a"}, {"id": "b/c"}], VARS)
    assert [t.depends_on for t in tasks] == [
        ("prepare", "extract_a"),
        ("prepare", "extract_b_c"),
    ]
    first = expand_foreach(template(id="extract"), [{"id": "a"}, {"id": "b/c"}], VARS)
    assert {d for t in tasks for d in t.depends_on} - {"prepare"} == {t.id for t in first}


def test_batch_depends_on_the_union_of_its_items():
    second = template(id="s", depends_on=("e_{ITEM.id}", "{BATCH_ID}_setup"), batch_size=3)
    (task,) = expand_foreach(second, [{"id": "a"}, {"id": "b"}], VARS)
    assert task.depends_on == ("B1_setup", "e_a", "e_b")


def test_requires_and_produces_keep_what_they_cannot_fill():
    tasks = expand_foreach(
        template(requires=("{BATCH_PATH}/m.json",), produces=("{BATCH_PATH}/r/{ITEM.id}.json",)),
        [{"id": "a"}],
        VARS,
    )
    assert tasks[0].requires == ("/b/m.json",)
    assert tasks[0].produces == ("/b/r/{ITEM.id}.json",)


def test_resolve_task():
    task = template(foreach=None, command="run {BATCH_ID}", depends_on=("{BATCH_ID}_x",))
    resolved = resolve_task(task, VARS)
    assert (resolved.command, resolved.depends_on) == ("run B1", ("B1_x",))
    with pytest.raises(PlanError, match="is a foreach template"):
        resolve_task(template(), VARS)
    with pytest.raises(PlanError, match=r"task work: undefined placeholder \{Z\}"):
        resolve_task(template(foreach=None, command="{Z}"), VARS)


# -- the batch command, run for real -------------------------------------------------------


def run_shell(command: str, cwd) -> int:
    return subprocess.run(["sh", "-c", command], cwd=cwd, timeout=10).returncode


def test_batch_command_runs_in_order_and_stops_at_first_failure(tmp_path):
    command = chain_commands(["echo 1 >> log", "echo 2 >> log; exit 3", "echo 3 >> log"])
    assert run_shell(command, tmp_path) == 3
    assert (tmp_path / "log").read_text() == "1\n2\n"


def test_batch_command_survives_exit_zero_and_comments(tmp_path):
    command = chain_commands(
        ["echo 1 >> log; exit 0", "echo 2 >> log # a comment", "echo 3 >> log"]
    )
    assert run_shell(command, tmp_path) == 0
    assert (tmp_path / "log").read_text() == "1\n2\n3\n"


# -- properties ----------------------------------------------------------------------------

safe_ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-.", min_size=1, max_size=8)
item_lists = st.one_of(
    st.lists(st.fixed_dictionaries({"id": safe_ids}), max_size=40, unique_by=lambda i: i["id"]),
    # (a NUL character cannot reach a process: refused, see test_any_ids_...)
    st.lists(
        st.integers() | st.text(st.characters(exclude_characters="\x00"), max_size=5), max_size=40
    ),
)


@given(items=item_lists, batch_size=st.integers(1, 12))
def test_expansion_properties(items, batch_size):
    tasks = expand_foreach(template(command="run {ITEM}", batch_size=batch_size), items, VARS)
    # count = ceil(items / batch_size)
    assert len(tasks) == math.ceil(len(items) / batch_size)
    # unique names
    assert len({t.id for t in tasks}) == len(tasks)
    # every item appears exactly once, in order
    assert [item for t in tasks for item in t.items] == items
    assert all(1 <= len(t.items) <= batch_size for t in tasks)
    # dependents wait for all expansions
    deps = expanded_dependencies(("prepare", "work"), {"work": [t.id for t in tasks]})
    assert deps == ("prepare", *[t.id for t in tasks])


@example(ids=["NUL", "NUL"])  # an id that reads like the refusal of a NUL byte
@given(ids=st.lists(st.text(max_size=6), min_size=1, max_size=20))
def test_any_ids_give_unique_safe_names_or_a_clear_error(ids):
    items = [{"id": i} for i in ids]
    try:
        tasks = expand_foreach(template(), items, VARS)
    except PlanError as exc:
        if "NUL character" in str(exc):  # no process can receive it: refused by name
            assert any("\x00" in i for i in ids)
            return
        assert "both give the task name" in str(exc)
        assert all(ids)
        assert len({safe_name(i) for i in ids}) < len(ids)
        return
    assert len({t.id for t in tasks}) == len(tasks) == len(items)
    assert all(safe_name(t.id) == t.id for t in tasks)


@given(
    n=st.integers(0, 30),
    batch_size=st.integers(1, 6),
)
def test_per_item_pipeline_edges_match_the_upstream_names(n, batch_size):
    items = [{"id": f"i{k}"} for k in range(n)]
    upstream = expand_foreach(template(id="extract"), items, VARS)
    downstream = expand_foreach(
        template(id="summarize", depends_on=("extract_{ITEM.id}",), batch_size=batch_size),
        items,
        VARS,
    )
    upstream_of = {t.items[0]["id"]: t.id for t in upstream}
    for task in downstream:
        assert task.depends_on == tuple(upstream_of[item["id"]] for item in task.items)


# -- foreach sources -----------------------------------------------------------------------

DOC = {"items": [1, 2], "data": {"runs": [{"items": ["a"]}]}, "name": "x", "n": None}


@pytest.mark.parametrize(
    ("data", "path", "expected"),
    [(DOC, "items", [1, 2]), (DOC, "data.runs.0.items", ["a"]), ([3, 4], "", [3, 4])],
)
def test_items_from_json(data, path, expected):
    assert items_from_json(data, path) == expected


@pytest.mark.parametrize(
    ("path", "words"),
    [
        (
            "missing",
            "there is no key 'missing' at the top level (keys there: items, data, name, n)",
        ),
        ("data.runs.3", "data.runs has 1 entries, so there is no entry 3"),
        ("name.x", "cannot look up 'x' in name: it is a string"),
        ("name", "'name' is a string, not an array of items"),
        ("data", "'data' is an object, not an array of items"),
        ("n", "'n' is null, not an array"),
        ("", "the document is an object, not an array"),
    ],
)
def test_items_from_json_errors(path, words):
    with pytest.raises(ForeachError) as info:
        items_from_json(DOC, path)
    assert words in str(info.value)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("/b/m.json:items", ("/b/m.json", "items")),
        ("m.json", ("m.json", "")),
        ("/b/m.json:", ("/b/m.json", "")),
        ("/b/m.json:a.b", ("/b/m.json", "a.b")),
    ],
)
def test_split_foreach(spec, expected):
    assert split_foreach(spec) == expected


def test_read_foreach_items(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"items": [{"id": "a"}]}))
    variables = {"BATCH_PATH": str(tmp_path)}
    assert read_foreach_items("{BATCH_PATH}/manifest.json:items", variables) == [{"id": "a"}]
    assert read_foreach_items("manifest.json:items", {}, base_dir=str(tmp_path)) == [{"id": "a"}]


@pytest.mark.parametrize(
    ("content", "spec", "words"),
    [
        (None, "{BATCH_PATH}/manifest.json:items", "manifest.json does not exist"),
        ("{not json", "{BATCH_PATH}/manifest.json:items", "is not valid JSON: "),
        ('{"items": 3}', "{BATCH_PATH}/manifest.json:items", "'items' is a number, not an array"),
        ('{"other": []}', "{BATCH_PATH}/manifest.json:items", "there is no key 'items'"),
        ("[]", "{NOPE}/manifest.json:items", "undefined placeholder {NOPE}"),
    ],
)
def test_read_foreach_items_errors(tmp_path, content, spec, words):
    if content is not None:
        (tmp_path / "manifest.json").write_text(content)
    with pytest.raises(ForeachError) as info:
        read_foreach_items(spec, {"BATCH_PATH": str(tmp_path)})
    assert words in str(info.value)
