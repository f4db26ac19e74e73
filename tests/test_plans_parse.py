"""The plan parser and validator, driven by the corpus in tests/data/plans/.

One valid plan per feature, one broken plan per error kind (each problem must
name its line and task), the warnings, and a plan in the original system's
format with every field.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from llmo.plans import (
    Goal,
    Plan,
    Problem,
    dependency_levels,
    load_plan,
    parse_plan,
    split_problems,
    undefined_placeholders,
)

DATA = Path(__file__).parent / "data" / "plans"


def read(kind: str, name: str) -> tuple[Plan | None, list[Problem]]:
    path = DATA / kind / f"{name}.md"
    plan, problems = parse_plan(path.read_text(), path.name)
    if plan is not None:
        problems = problems + undefined_placeholders(plan, {})
    return plan, problems


# name -> (line, task, words the message must contain)
BROKEN: dict[str, tuple[int, str, str]] = {
    "no_tasks_section": (1, "", "no '## Tasks' section"),
    "empty_tasks_section": (3, "", "has no tasks"),
    "missing_executor": (15, "b", "no executor field"),
    "missing_task_class": (9, "a", "no task_class field"),
    "missing_command": (9, "a", "no command field"),
    "missing_depends_on": (9, "a", "no depends_on field"),
    "unknown_executor": (10, "a", "executor must be worker or brain, not 'gpu'"),
    "unknown_task_class": (11, "a", "task_class must be cpu, script, llm, brain or meta"),
    "unknown_meta_command": (12, "load", "meta command 'load_model' is not known"),
    "unknown_placement": (14, "a", "llm_placement must be single_gpu or split_gpu"),
    "unknown_vram_policy": (14, "a", "vram_policy must be default, infer or fixed"),
    "bad_batch_size": (15, "a", "batch_size must be a whole number of at least 1, not '0'"),
    "bad_batch_size_text": (15, "a", "not 'four'"),
    "bad_vram_estimate": (14, "a", "vram_estimate_mb must be a whole number"),
    "bad_llm_min_tier": (14, "a", "llm_min_tier must be a whole number"),
    "bad_timeout": (14, "a", "timeout must be a positive number of seconds"),
    "duplicate_id": (21, "a", "already used by the task at line 9"),
    "unknown_dependency": (19, "work", "'prepar', which is not a task of this plan"),
    "dependency_cycle": (19, "a", "dependency cycle: a -> c -> b -> a"),
    "self_dependency": (13, "a", "depends on itself"),
    "unclosed_backtick": (12, "a", "backtick is never closed"),
    "empty_command": (12, "a", "the command is empty"),
    "empty_depends_on": (13, "a", "depends_on is empty"),
    "empty_foreach": (14, "a", "foreach is empty"),
    "bad_task_id": (9, "make manifest", "a task id may use only"),
    "item_dependency_without_template": (19, "b", "'extract_{ITEM.id}' names no foreach task"),
    "item_dependency_on_batches": (21, "b", "a groups its items (batch_size 2)"),
    "goal_unknown_tracked_task": (19, "", "tracked_task 'validate' is not a task"),
    "goal_unknown_type": (17, "", "type must be target_count, not 'best_effort'"),
    "goal_bad_target": (18, "", "target must be a whole number or one placeholder"),
    "goal_missing_target": (16, "", "the goal has no target"),
    "goal_unknown_discovery_task": (20, "", "discovery task 'find' is not a task"),
    "goal_bad_multiplier": (20, "", "max_attempts_multiplier must be a whole number of at least 1"),
    "item_outside_foreach": (12, "a", "{ITEM...} is defined only in tasks with a foreach"),
    "item_in_foreach_source": (14, "a", "foreach uses {ITEM.path}"),
    "undefined_placeholder": (12, "a", "{MODEL_NAME}, which is not defined"),
}


def test_every_broken_plan_is_in_the_table():
    assert {p.stem for p in (DATA / "broken").glob("*.md")} == set(BROKEN)


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_plan_is_refused_with_line_and_task(name):
    line, task, words = BROKEN[name]
    _, problems = read("broken", name)
    errors, _ = split_problems(problems)
    assert len(errors) == 1, [str(p) for p in errors]
    problem = errors[0]
    assert (problem.line, problem.task) == (line, task), str(problem)
    assert words in problem.message
    where = f"{name}.md:{line}: " + (f"task {task}: " if task else "")
    assert str(problem) == where + problem.message


# name -> (line, task, words)
WARNINGS: dict[str, tuple[int, str, str]] = {
    "llm_field_on_cpu_task": (14, "a", "llm_model applies only to llm tasks"),
    "vram_field_on_llm_task": (14, "a", "vram_estimate_mb applies only to script tasks"),
    "batch_size_without_foreach": (14, "a", "batch_size applies only to foreach tasks"),
    "unknown_field": (14, "a", "unknown field 'dependson' is ignored (did you mean 'depends_on'?)"),
    "command_without_backticks": (12, "a", "not in backticks"),
    "brain_class_on_worker": (10, "a", "so the executor is brain"),
    "llm_model_on_brain_executor": (14, "a", "the rig chooses the brain model"),
    "fixed_vram_without_estimate": (14, "a", "1024 MB is assumed"),
    "field_given_twice": (14, "a", "command is given twice"),
    "none_mixed_with_ids": (19, "b", "'none' is ignored"),
    "not_a_field": (14, "a", "is not a field"),
    "text_after_command": (12, "a", "the text after the command is ignored: '(prints hi)'"),
    "no_title": (1, "", "no '# Plan: <name>' title"),
    "tracked_task_without_foreach": (18, "", "has no foreach"),
}


def test_every_warning_plan_is_in_the_table():
    assert {p.stem for p in (DATA / "warnings").glob("*.md")} == set(WARNINGS)


@pytest.mark.parametrize("name", sorted(WARNINGS))
def test_warning_is_located_and_does_not_block(name):
    line, task, words = WARNINGS[name]
    plan, problems = read("warnings", name)
    errors, warnings = split_problems(problems)
    assert plan is not None and errors == []
    assert [(w.line, w.task) for w in warnings] == [(line, task)], [str(w) for w in warnings]
    assert words in warnings[0].message


def test_warning_side_effects():
    plan, _ = read("warnings", "brain_class_on_worker")
    assert plan.task("a").executor == "brain"
    plan, _ = read("warnings", "field_given_twice")
    assert plan.task("a").command == "echo again"
    plan, _ = read("warnings", "no_title")
    assert plan.name == "no_title"


def _check_minimal(plan: Plan) -> None:
    (task,) = plan.tasks
    assert (task.id, task.executor, task.task_class, task.command) == (
        "only",
        "worker",
        "cpu",
        "true",
    )
    assert task.depends_on == () and task.foreach is None and task.batch_size == 1


def _check_foreach_batch(plan: Plan) -> None:
    work = plan.task("work")
    assert work.foreach == "{BATCH_PATH}/manifest.json:data.items"
    assert work.batch_size == 8 and work.depends_on == ("prepare",)
    assert [t.id for t in plan.templates] == ["work"]
    assert dependency_levels(plan) == [["prepare"], ["work"], ["collect"]]


def _check_per_item_pipeline(plan: Plan) -> None:
    assert plan.task("summarize").depends_on == ("extract_{ITEM.id}",)
    assert dependency_levels(plan) == [["prepare"], ["extract"], ["summarize"]]


def _check_goal(plan: Plan) -> None:
    assert plan.goal == Goal(
        type="target_count",
        target="{TARGET_COUNT}",
        tolerance=2,
        tracked_task="validate",
        discovery_tasks=("discover",),
        max_attempts_multiplier=4,
        line=18,
    )


def _check_meta_commands(plan: Plan) -> None:
    assert [t.meta_command for t in plan.tasks] == ["load_split_llm", "reset_gpu_runtime"]


def _check_brain_task(plan: Plan) -> None:
    task = plan.task("plan_work")
    assert (task.executor, task.task_class, task.timeout_s) == ("brain", "brain", 600.0)


def _check_field_variants(plan: Plan) -> None:
    first, second = plan.tasks
    assert first.id == "first" and first.task_class == "cpu"
    assert first.command == "echo `date` done"
    assert first.requires == ("a.json", "b.json", "c.json")
    assert second.command == (
        "python3 -c 'import json; print(json.dumps({\"k\": 1}))' && echo ${HOME} {a,b}"
    )
    assert second.depends_on == ("first",)
    assert (second.vram_policy, second.timeout_s, second.vram_mb) == ("infer", 90.0, 1024)


def _check_opaque_regions(plan: Plan) -> None:
    assert plan.task_ids == ("real",)
    assert "### not a task" in plan.sections["Available Scripts"]


def _check_config_placeholders(plan: Plan) -> None:
    assert plan.task("run").command.count("{") == 3


VALID = {
    "minimal": _check_minimal,
    "foreach_batch": _check_foreach_batch,
    "per_item_pipeline": _check_per_item_pipeline,
    "goal": _check_goal,
    "meta_commands": _check_meta_commands,
    "brain_task": _check_brain_task,
    "field_variants": _check_field_variants,
    "opaque_regions": _check_opaque_regions,
    "config_placeholders": _check_config_placeholders,
}


def test_every_valid_plan_is_in_the_table():
    assert {p.stem for p in (DATA / "valid").glob("*.md")} == set(VALID)


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_plan(name):
    path = DATA / "valid" / f"{name}.md"
    plan, problems = parse_plan(path.read_text(), str(path))
    assert problems == []
    assert plan is not None and plan.name == name and plan.file == str(path)
    VALID[name](plan)


def test_original_format_plan_with_every_field():
    plan, problems = load_plan(DATA / "original")
    assert problems == []
    assert plan.name == "Code Review Pipeline"
    assert plan.file == str(DATA / "original" / "plan.md")
    assert list(plan.sections) == [
        "Objective",
        "Inputs",
        "Outputs",
        "Available Scripts",
        "Tasks",
        "Notes",
    ]
    assert plan.task_ids == (
        "load_model",
        "list_files",
        "embed_files",
        "review_file",
        "verify_findings",
        "unload_model",
        "report",
    )
    load = plan.task("load_model")
    assert (load.task_class, load.command, load.meta_command) == ("meta", "load_llm", "load_llm")
    listing = plan.task("list_files")
    assert (listing.executor, listing.task_class) == ("brain", "cpu")
    assert listing.requires == ("{REPO_PATH}",)
    assert listing.produces == ("{BATCH_PATH}/manifest.json",)
    embed = plan.task("embed_files")
    assert (embed.vram_policy, embed.vram_estimate_mb, embed.vram_mb) == ("fixed", 2048, 2048)
    review = plan.task("review_file")
    assert review.llm_model == "qwen2.5-coder:7b"
    assert (review.llm_min_tier, review.llm_placement) == ("2", "single_gpu")
    assert review.command == (
        "python {PLAN_PATH}/scripts/review_file.py --batch-id {BATCH_ID} "
        '--file-id {ITEM.id} --path "{ITEM.path}"'
    )
    assert review.depends_on == ("load_model", "list_files", "embed_files")
    assert (review.foreach, review.batch_size) == ("{BATCH_PATH}/manifest.json:files", 4)
    verify = plan.task("verify_findings")
    assert (verify.executor, verify.task_class, verify.llm_model) == ("brain", "llm", None)
    report = plan.task("report")
    assert report.requires == ("{BATCH_PATH}/results/*.json", "{BATCH_PATH}/verified.json")
    assert report.depends_on == ("verify_findings", "unload_model")
    assert report.line == 93
    assert dependency_levels(plan) == [
        ["load_model", "list_files"],
        ["embed_files"],
        ["review_file"],
        ["verify_findings", "unload_model"],
        ["report"],
    ]
    assert undefined_placeholders(plan, {"REPO_PATH": "/r", "MAX_FILES": 5}) == []
    missing = undefined_placeholders(plan, {})
    assert {(p.task, p.line) for p in missing} == {("list_files", 53)}
    assert len(missing) == 2


def test_all_problems_are_reported_at_once():
    text = (
        (DATA / "broken" / "unknown_executor.md")
        .read_text()
        .replace("- **task_class**: cpu", "- **task_class**: gpu")
    )
    text += "### b\n- **executor**: worker\n- **depends_on**: ghost\n"
    _, problems = parse_plan(text)
    messages = [p.message for p in problems]
    assert len(messages) == 5, messages
    assert [p.line for p in problems] == sorted(p.line for p in problems)


def test_problem_format_without_task():
    assert str(Problem("x/plan.md", 3, "", "no tasks")) == "x/plan.md:3: no tasks"
    assert str(Problem("p.md", 7, "t", "bad", "warning")) == "p.md:7: task t: bad"


def test_load_plan_missing_folder_and_file(tmp_path):
    plan, problems = load_plan(tmp_path / "nope")
    assert plan is None and "no plan folder" in problems[0].message
    plan, problems = load_plan(tmp_path)
    assert plan is None and "has no plan.md" in problems[0].message
    assert problems[0].file == str(tmp_path / "plan.md")


def test_load_plan_accepts_the_file_itself(tmp_path):
    (tmp_path / "plan.md").write_text((DATA / "valid" / "minimal.md").read_text())
    plan, problems = load_plan(tmp_path / "plan.md")
    assert problems == [] and plan.task_ids == ("only",)


def test_load_plan_unreadable_bytes(tmp_path):
    (tmp_path / "plan.md").write_bytes(b"# Plan: x\n\xff\xfe")
    plan, problems = load_plan(tmp_path)
    assert plan is None and "cannot read the plan" in problems[0].message


def test_plan_lookup():
    plan, _ = read("valid", "foreach_batch")
    assert plan.task("work").id == "work"
    assert plan.get("nope") is None and "work" in plan and "nope" not in plan
    with pytest.raises(KeyError):
        plan.task("nope")


def test_windows_line_endings_and_byte_order_mark():
    text = (DATA / "original" / "plan.md").read_text()
    plan, problems = parse_plan(text, "plan.md")
    other, other_problems = parse_plan("\ufeff" + text.replace("\n", "\r\n"), "plan.md")
    assert other_problems == problems == []
    assert other.tasks == plan.tasks and other.name == plan.name


def test_section_names_are_case_insensitive_for_tasks_and_goal():
    text = (DATA / "valid" / "goal.md").read_text()
    plan, problems = parse_plan(text.replace("## Tasks", "## tasks").replace("## Goal", "## GOAL"))
    assert problems == [] and plan.goal is not None and len(plan.tasks) == 2
