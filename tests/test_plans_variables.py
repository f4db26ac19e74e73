"""Placeholders: what a plan uses, what is undefined, and substitution."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmo.plans import (
    PlanError,
    builtin_variables,
    config_priority,
    config_variables,
    load_plan,
    parse_plan,
    placeholders,
    resolve_goal,
    run_variables,
    substitute,
    undefined_placeholders,
)
from llmo.plans.variables import config_placeholders, names_in, substitute_known

DATA = Path(__file__).parent / "data" / "plans"
VARS = {"BATCH_PATH": "/h/b1", "NAME": "x y", "N": "3"}

SUBSTITUTIONS = [
    ("plain text", None, "plain text"),
    ("{BATCH_PATH}/m.json", None, "/h/b1/m.json"),
    ("--n {N} --n {N}", None, "--n 3 --n 3"),
    ("echo ${HOME} $HOME", None, "echo ${HOME} $HOME"),
    ("cp {a,b} x; echo '{\"k\": 1}'", None, "cp {a,b} x; echo '{\"k\": 1}'"),
    ("{ITEM}", "scalar", "scalar"),
    ("{ITEM}", 7, "7"),
    ("{ITEM}", {"id": "a", "n": 1}, '{"id":"a","n":1}'),
    ("{ITEM.id}-{ITEM.meta.size}", {"id": "a", "meta": {"size": 4}}, "a-4"),
    ("{ITEM.parts.1}", {"parts": ["p", "q"]}, "q"),
    ("{ITEM.ok} {ITEM.none}", {"ok": True, "none": None}, "true null"),
    ("{ITEM.text}", {"text": "héllo wörld"}, "héllo wörld"),
]


@pytest.mark.parametrize(("text", "item", "expected"), SUBSTITUTIONS)
def test_substitute(text, item, expected):
    assert substitute(text, VARS, item) == expected


UNDEFINED = [
    ("{MISSING}", None, "undefined placeholder {MISSING}"),
    ("{A} {B} {A}", None, "undefined placeholders {A}, {B}"),
    ("{ITEM.id}", None, "{ITEM.id}"),
    ("{ITEM.nope}", {"id": "a"}, "{ITEM.nope} (the item is"),
    ("{ITEM.parts.5}", {"parts": []}, "{ITEM.parts.5}"),
    ("{ITEM.id.x}", {"id": "a"}, "{ITEM.id.x}"),
]


@pytest.mark.parametrize(("text", "item", "words"), UNDEFINED)
def test_substitute_refuses_undefined(text, item, words):
    with pytest.raises(PlanError) as info:
        substitute(text, VARS, item)
    assert words in str(info.value)


def test_substitute_known_leaves_undefined_alone():
    assert substitute_known("{BATCH_PATH}/{X}/{ITEM.id}", VARS) == "/h/b1/{X}/{ITEM.id}"
    assert substitute_known("{ITEM.id}.json", VARS, {"id": "a"}) == "a.json"


@given(st.text(alphabet=st.characters(exclude_characters="{}"), max_size=30))
def test_text_without_braces_is_unchanged(text):
    assert substitute(text, {}, None) == text
    assert names_in(text) == ()


@given(
    st.dictionaries(st.from_regex(r"[A-Z][A-Z0-9_]{0,8}", fullmatch=True), st.text(), max_size=5)
)
def test_every_defined_placeholder_is_replaced(variables):
    text = " ".join("{" + name + "}" for name in variables)
    assert substitute(text, variables) == " ".join(variables.values())


def test_variable_builders():
    assert builtin_variables("/p", "/p/history/b", "b") == {
        "PLAN_PATH": "/p",
        "BATCH_PATH": "/p/history/b",
        "BATCH_ID": "b",
    }
    assert config_variables({"N": 3, "S": "s", "F": 1.5, "B": False}) == {
        "N": "3",
        "S": "s",
        "F": "1.5",
        "B": "false",
    }
    merged = run_variables("/p", "/b", "id", {"BATCH_ID": "spoof", "K": "v"})
    assert merged["BATCH_ID"] == "id" and merged["K"] == "v"


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({}, None),
        ({"PRIORITY": ""}, None),
        ({"PRIORITY": "high"}, "high"),
        ({"PRIORITY": "URGENT"}, "urgent"),
    ],
)
def test_config_priority(config, expected):
    assert config_priority(config) == expected


@pytest.mark.parametrize("value", ["top", 5, True])
def test_config_priority_refuses_unknown(value):
    with pytest.raises(PlanError, match="PRIORITY"):
        config_priority({"PRIORITY": value})


def test_placeholders_of_a_plan():
    plan, _ = load_plan(DATA / "original")
    uses = placeholders(plan)
    assert uses["REPO_PATH"] == ["list_files"]
    assert uses["ITEM.path"] == ["review_file"]
    assert uses["BATCH_ID"] == ["embed_files", "review_file", "verify_findings", "report"]
    assert config_placeholders(plan) == ["REPO_PATH", "MAX_FILES"]


def test_goal_target_counts_as_a_placeholder():
    plan, _ = parse_plan((DATA / "valid" / "goal.md").read_text())
    assert placeholders(plan)["TARGET_COUNT"] == ["(goal)"]
    (problem,) = undefined_placeholders(plan, {})
    assert (problem.line, problem.task) == (18, "")
    assert "the goal's target uses {TARGET_COUNT}" in problem.message
    assert undefined_placeholders(plan, {"TARGET_COUNT": 3}) == []


def test_undefined_placeholders_one_problem_per_task_and_name():
    text = """# Plan: p
## Tasks
### a
- **executor**: worker
- **task_class**: cpu
- **command**: `run {X} {X} {Y} {BATCH_ID}`
- **depends_on**: none
### b
- **executor**: worker
- **task_class**: cpu
- **command**: `run {X}`
- **depends_on**: {STAGE}_a
"""
    plan, problems = parse_plan(text)
    assert problems == []
    found = [(p.task, p.line, p.message.split(",")[0]) for p in undefined_placeholders(plan, {})]
    assert found == [
        ("a", 6, "command uses {X}"),
        ("a", 6, "command uses {Y}"),
        ("b", 11, "command uses {X}"),
        ("b", 12, "depends_on uses {STAGE}"),
    ]
    assert undefined_placeholders(plan, {"X": 1, "Y": 2, "STAGE": "s"}) == []


def test_item_is_defined_in_foreach_command_and_depends_on():
    plan, problems = parse_plan((DATA / "valid" / "per_item_pipeline.md").read_text())
    assert problems == [] and undefined_placeholders(plan, {}) == []


@pytest.mark.parametrize(
    ("target", "variables", "expected"),
    [(5, {}, 5), ("{T}", {"T": "7"}, 7), ("{T}", {"T": " 12 "}, 12)],
)
def test_resolve_goal(target, variables, expected):
    plan, _ = parse_plan((DATA / "valid" / "goal.md").read_text())
    goal = plan.goal.__class__(**{**_fields(plan.goal), "target": target})
    resolved = resolve_goal(goal, variables)
    assert resolved.target == expected
    assert resolved.max_candidates == expected * 4


@pytest.mark.parametrize(("variables", "words"), [({}, "undefined"), ({"T": "ten"}, "not a whole")])
def test_resolve_goal_refuses(variables, words):
    plan, _ = parse_plan((DATA / "valid" / "goal.md").read_text())
    goal = plan.goal.__class__(**{**_fields(plan.goal), "target": "{T}"})
    assert goal.max_candidates is None
    with pytest.raises(PlanError, match=words):
        resolve_goal(goal, variables)


def _fields(goal):
    return {name: getattr(goal, name) for name in goal.__dataclass_fields__}
