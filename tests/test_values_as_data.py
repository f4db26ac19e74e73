"""Placeholder values reach the shell as data, and foreach sources stay inside the plan roots.

Manifests are often written by a model or a scraper, so an item's id or field
can hold anything: ``$(...)``, quotes, backticks, newlines. The command that
runs refers to such values as quoted expansions of variables the task's
environment carries (``"${LLMO_ITEM_ID}"``), so the shell never reads them as
code. The unit tests run the substituted commands with ``/bin/sh``; the
end-to-end ones run them as real tasks on a real rig.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmo.brain.commands import ReadManifest, ReadPlan
from llmo.brain.service import read_manifest, read_plan
from llmo.plans import PlanError, Task, expand_foreach, read_foreach_items, resolve_task
from llmo.plans.model import ForeachError
from llmo.plans.shellvalues import ShellCommand, env_name
from tests.e2e_fixtures import Rig, module_rig_factory, one_test
from tests.reporting import say

__all__ = ["module_rig_factory"]

pytestmark = pytest.mark.timeout(180)

VARS = {"PLAN_PATH": "/p", "BATCH_PATH": "/b", "BATCH_ID": "B1"}


def attacks(marks: Path) -> list[str]:
    """Values that run ``touch`` when pasted into a shell command, one marker file each."""
    return [
        f"$(touch {marks}/x1)",
        f'x"; touch {marks}/x2; echo "',
        f"`touch {marks}/x3`",
        f"a\ntouch {marks}/x4",
        f"it's'; touch {marks}/x5; echo '",
        f"${{IFS}}$(touch {marks}/x6)*",
    ]


def sh(command: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["/bin/sh", "-c", command],
        env={"PATH": os.environ["PATH"], **env},
        cwd=cwd,
        capture_output=True,
        timeout=30,
    )


def task(command: str, foreach: str | None = "{BATCH_PATH}/m.json:items", size: int = 1) -> Task:
    return Task("t", "worker", "cpu", command, (), foreach, size)


# --- the substitution -------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("echo {ITEM.id}", 'echo "${LLMO_ITEM_ID}"'),
        ('echo "{ITEM.id}"', 'echo "${LLMO_ITEM_ID}"'),
        ('echo "id={ITEM.id}!"', 'echo "id=${LLMO_ITEM_ID}!"'),
        ("echo '{ITEM.id}'", "echo ''\"${LLMO_ITEM_ID}\"''"),
        ("echo 'id: {ITEM.id}.'", "echo 'id: '\"${LLMO_ITEM_ID}\"'.'"),
        ("cat > out_{ITEM.id}.json", 'cat > out_"${LLMO_ITEM_ID}".json'),
        ("run {PLAN_PATH}/x.py {ITEM.id}", 'run /p/x.py "${LLMO_ITEM_ID}"'),
        ('echo "$(basename "{ITEM.id}")"', 'echo "$(basename "${LLMO_ITEM_ID}")"'),
        ("echo $(( {ITEM.n} + 1 ))", "echo $(( ${LLMO_ITEM_N} + 1 ))"),
        ("echo {ITEM}", 'echo "${LLMO_ITEM}"'),
        ("echo {ITEM.meta.lang} {ITEM.a-b}", 'echo "${LLMO_ITEM_META_LANG}" "${LLMO_ITEM_A_B}"'),
        ("echo ${HOME} {a,b} # it's {ITEM.id}", 'echo ${HOME} {a,b} # it\'s "${LLMO_ITEM_ID}"'),
    ],
)
def test_each_quoting_context_gets_an_expansion_that_stays_one_word(template, expected):
    assert ShellCommand(template, VARS).command == expected


def test_values_are_named_stably_and_collisions_get_a_number():
    command = ShellCommand("x {ITEM.a-b} {ITEM.a_b} {ITEM.a.b} {ITEM.a-b} {COUNT} {count}", VARS)
    assert command.names == {
        "ITEM.a-b": "LLMO_ITEM_A_B",
        "ITEM.a_b": "LLMO_ITEM_A_B_2",
        "ITEM.a.b": "LLMO_ITEM_A_B_3",
        "COUNT": "LLMO_VAR_COUNT",
        "count": "LLMO_VAR_COUNT_2",
    }
    assert env_name("ITEM.id") == "LLMO_ITEM_ID" and env_name("MODEL") == "LLMO_VAR_MODEL"


@pytest.mark.parametrize(
    "template",
    [
        "printf '%s' {ITEM.v} > out",
        "printf '%s' \"{ITEM.v}\" > out",
        "printf '%s' '{ITEM.v}' > out",
        'x="pre-{ITEM.v}"; printf \'%s\' "${x#pre-}" > out',
        "x='pre-'{ITEM.v}'.'; x=${x#pre-}; printf '%s' \"${x%.}\" > out",
        'sh -c \'printf "%s" "$1"\' sh {ITEM.v} > out',
        "v={ITEM.v}; printf '%s' \"$v\" > out",
        "echo `printf '%s' {ITEM.v}` > out",
    ],
)
def test_the_shell_receives_each_value_exactly_and_runs_none_of_it(tmp_path, template):
    marks = tmp_path / "marks"
    marks.mkdir()
    values = attacks(marks)
    items = [{"id": f"i{n}", "v": v} for n, v in enumerate(values)]
    for out, value in zip(expand_foreach(task(template), items, VARS), values, strict=True):
        done = sh(out.command, dict(out.env or {}), tmp_path)
        assert done.returncode == 0, (out.command, done.stderr)
        got = (tmp_path / "out").read_bytes()
        if "`" in template:  # an unquoted command substitution is split into words
            got = b" ".join(got.split())
            value = " ".join(value.split())
        assert got == value.encode(), (out.command, value)
    assert list(marks.iterdir()) == []


def test_a_batch_runs_each_item_with_its_own_values(tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    values = attacks(marks)
    items = [{"v": v, "n": n} for n, v in enumerate(values)]
    template = task("printf '%s' {ITEM.v} > out_{ITEM.n}; test -n \"$LLMO_ITEM_V\"", size=4)
    batches = expand_foreach(template, items, VARS)
    assert [t.id for t in batches] == ["t_batch_0001_0004", "t_batch_0005_0006"]
    for batch in batches:
        done = sh(batch.command, dict(batch.env or {}), tmp_path)
        assert done.returncode == 0, (batch.command, done.stderr)
    for n, value in enumerate(values):
        assert (tmp_path / f"out_{n}").read_bytes() == value.encode()
    assert list(marks.iterdir()) == []


def test_configuration_values_are_data_too(tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    (value,) = attacks(marks)[:1]
    resolved = resolve_task(task("printf '%s' {WHO} > out", foreach=None), {**VARS, "WHO": value})
    assert resolved.command == "printf '%s' \"${LLMO_VAR_WHO}\" > out"
    assert resolved.env == {"LLMO_VAR_WHO": value}
    assert sh(resolved.command, dict(resolved.env), tmp_path).returncode == 0
    assert (tmp_path / "out").read_bytes() == value.encode()
    assert list(marks.iterdir()) == []


def test_non_string_items_keep_their_json_form():
    items = [{"id": "a", "n": 3, "tags": ["x", "y"], "ok": True}]
    (out,) = expand_foreach(task("run {ITEM.n} {ITEM.tags} {ITEM.ok}"), items, VARS)
    assert out.env == {"LLMO_ITEM_N": "3", "LLMO_ITEM_TAGS": '["x","y"]', "LLMO_ITEM_OK": "true"}


def test_arithmetic_takes_only_numbers():
    items = [{"id": "a", "n": "a[$(touch /tmp/never)]"}]
    with pytest.raises(PlanError, match=r"item 1 of foreach task t: .*\{ITEM.n\}.*arithmetic"):
        expand_foreach(task("echo $(( {ITEM.n} + 1 ))"), items, VARS)
    (ok,) = expand_foreach(task("echo $(( {ITEM.n} + 1 ))"), [{"id": "a", "n": 41}], VARS)
    assert ok.env == {"LLMO_ITEM_N": "41"}


def test_a_value_a_process_cannot_receive_is_refused_by_name():
    with pytest.raises(PlanError, match=r"\{ITEM.id\}.*NUL"):
        expand_foreach(task("echo {ITEM.id}"), [{"id": "a\x00b"}], VARS)


def test_meta_commands_and_missing_values_keep_their_rules():
    meta = Task("m", "worker", "meta", "load_llm {MODEL}", ())
    assert resolve_task(meta, {**VARS, "MODEL": "m1"}).command == "load_llm m1"
    with pytest.raises(PlanError, match=r"undefined placeholder \{ITEM.name\}"):
        expand_foreach(task("echo {ITEM.name}"), [{"id": "a"}], VARS)


# --- foreach sources and plan files stay inside the plan roots ----------------------


@pytest.fixture
def layout(tmp_path) -> Iterator[tuple[Path, Path, Path]]:
    plan = tmp_path / "plans" / "p"
    batch = plan / "history" / "B1"
    batch.mkdir(parents=True)
    rig = tmp_path / "rig"
    rig.mkdir()
    (rig / "secret.json").write_text(json.dumps({"items": [{"id": "SECRET-TOKEN-42"}]}))
    yield plan, batch, rig


def test_a_foreach_source_outside_the_plan_roots_is_refused_before_it_is_read(layout):
    plan, batch, rig = layout
    variables = {"PLAN_PATH": str(plan), "BATCH_PATH": str(batch), "BATCH_ID": "B1"}
    (plan / "link.json").symlink_to(rig / "secret.json")
    for spec in ("{PLAN_PATH}/../../rig/secret.json:items", "{PLAN_PATH}/link.json:items"):
        with pytest.raises(ForeachError, match="outside the plan roots") as caught:
            read_foreach_items(spec, variables, base_dir=str(batch), roots=())
        assert str(rig / "secret.json") in str(caught.value)
        assert "SECRET" not in str(caught.value)
    (plan / "ok.json").write_text(json.dumps({"items": [1, 2]}))
    assert read_foreach_items("{PLAN_PATH}/ok.json:items", variables, roots=()) == [1, 2]
    # a configured root admits it
    spec = "{PLAN_PATH}/../../rig/secret.json:items"
    assert read_foreach_items(spec, variables, roots=(str(rig),)) == [{"id": "SECRET-TOKEN-42"}]
    answer = read_manifest(ReadManifest("B1", "t", spec, variables))
    assert answer.items is None and "outside the plan roots" in answer.error


def test_a_plan_file_outside_its_folder_or_the_roots_is_refused(layout):
    plan, _, rig = layout
    (rig / "plan.md").write_text("# Plan: stolen\n")
    (plan / "plan.md").symlink_to(rig / "plan.md")
    loaded = read_plan(ReadPlan("r1", str(plan)))
    assert loaded.text is None and "outside" in loaded.error and str(rig) in loaded.error
    (plan / "plan.md").unlink()
    (plan / "plan.md").write_text("# Plan: p\n")
    assert read_plan(ReadPlan("r2", str(plan))).text == "# Plan: p\n"
    refused = read_plan(ReadPlan("r3", str(plan)), roots=(str(rig),))
    assert refused.text is None and "outside the plan roots" in refused.error


# --- end to end -------------------------------------------------------------------

INJECT_PLAN = """# Plan: inject

## Tasks

### bare
- **executor**: worker
- **task_class**: cpu
- **command**: `printf '%s' {ITEM.v} > {BATCH_PATH}/bare_{ITEM.n}.txt`
- **depends_on**: none
- **foreach**: {PLAN_PATH}/manifest.json:items

### quoted
- **executor**: worker
- **task_class**: cpu
- **command**: `printf '%s' "{ITEM.id}" > "{BATCH_PATH}/quoted_{ITEM.n}.txt"`
- **depends_on**: none
- **foreach**: {PLAN_PATH}/manifest.json:items

### single
- **executor**: worker
- **task_class**: cpu
- **command**: `printf '%s' '{ITEM.v}' > {BATCH_PATH}/single_{ITEM.n}.txt`
- **depends_on**: none
- **foreach**: {PLAN_PATH}/manifest.json:items
- **batch_size**: 4

### config
- **executor**: worker
- **task_class**: cpu
- **command**: `printf '%s' {WHO} > {BATCH_PATH}/config.txt`
- **depends_on**: none
"""

LEAK_PLAN = """# Plan: leak

## Tasks

### each
- **executor**: worker
- **task_class**: cpu
- **command**: `echo {ITEM.id}`
- **depends_on**: none
- **foreach**: SOURCE:items
"""


@pytest.fixture(scope="module")
def shared_rig(module_rig_factory) -> Rig:
    return module_rig_factory(workers=2)


@pytest.fixture
def rig(shared_rig) -> Iterator[Rig]:
    yield from one_test(shared_rig)


def new_plan(rig: Rig, name: str, text: str) -> Path:
    plan = rig.plans_dir / name
    plan.mkdir()
    (plan / "plan.md").write_text(text)
    return plan


def test_manifest_values_run_as_data_on_a_real_rig(rig, tmp_path, request):
    marks = tmp_path / "marks"
    marks.mkdir()
    values = attacks(marks)
    plan = new_plan(rig, "inject", INJECT_PLAN)
    items = [{"id": v, "v": v, "n": n} for n, v in enumerate(values)]
    (plan / "manifest.json").write_text(json.dumps({"items": items}))

    run = rig.submit(plan, "--config", json.dumps({"WHO": values[0]}))

    assert run.state == "complete", run
    tried = 0
    for kind in ("bare", "quoted", "single"):
        for n, value in enumerate(values):
            assert (run.history / f"{kind}_{n}.txt").read_bytes() == value.encode(), (kind, n)
            tried += 1
    assert (run.history / "config.txt").read_bytes() == values[0].encode()
    tried += 1
    assert list(marks.iterdir()) == [], "a value ran as code"
    say(request.config, f"values as data: {tried} injection attempts tried, {tried} inert")


@pytest.mark.parametrize("how", ["dotdot", "symlink"])
def test_a_manifest_outside_the_plan_roots_fails_the_task_and_leaks_nothing(rig, how):
    secret = rig.rig_dir / f"secret-{how}.json"
    token = f"SECRET-{how}-7d1f"
    secret.write_text(json.dumps({"items": [{"id": token}]}))
    if how == "dotdot":
        source = f"{{PLAN_PATH}}/../../rig/{secret.name}"
    else:
        source = "{PLAN_PATH}/inputs.json"
    plan = new_plan(rig, f"leak-{how}", LEAK_PLAN.replace("SOURCE", source))
    if how == "symlink":
        (plan / "inputs.json").symlink_to(secret)

    run = rig.submit(plan)

    assert run.state == "failed", run
    row = run.rows()["each"]
    assert row["state"] == "failed"
    assert "outside the plan roots" in row["error"] and str(secret) in row["error"], row
    written = [p for p in run.history.rglob("*") if p.is_file()]
    assert written, "the batch left no history"
    for path in written:
        assert token not in path.read_text(errors="replace"), path
    assert token not in rig.logs()


# --- what an operator reads -----------------------------------------------------------


def test_a_failed_item_reports_its_command_and_values():
    from llmo.brain.commands import WriteFile
    from tests.brain_fixtures import Rig as BrainRig
    from tests.brain_fixtures import plan_text

    rig = BrainRig()
    rig.worker("w", slots=2)
    value = 'x"; touch /tmp/never'
    rig.manifests["each"] = [{"id": "a", "v": value}]
    batch = rig.submit(
        plan_text("each | cpu | run {ITEM.v} | none | foreach={BATCH_PATH}/m.json:items")
    ).batch_id
    rig.auto(lambda a: 1)
    assert rig.states(batch)["each_a"] == "failed"
    written = {c.path.rsplit("/", 1)[-1]: c.text for c in rig.commands if isinstance(c, WriteFile)}
    escalation = written["ESCALATION.md"]
    assert '- **command**: `run "${LLMO_ITEM_V}"`' in escalation
    assert f"- **LLMO_ITEM_V**: {json.dumps(value)}" in escalation
    rows = {r["id"]: r for r in json.loads(written["RUN_SUMMARY.json"])["tasks"]}
    assert rows["each_a"]["values"] == {"LLMO_ITEM_V": value}


def test_snapshots_from_before_task_values_still_load():
    import pickle

    from llmo.brain.state import TaskRun

    run = TaskRun(id="a", spec=Task("a", "worker", "cpu", "x"), command="x", env={"A": "1"})
    assert pickle.loads(pickle.dumps(run)).env == {"A": "1"}
    _, _, (_, slots), *_ = run.__reduce_ex__(2)
    del slots["env"]  # as a snapshot written before the field existed
    old = TaskRun.__new__(TaskRun)
    old.__setstate__((None, slots))
    assert old.env is None and old.command == "x"


def test_the_brain_takes_its_plan_roots_from_its_settings():
    from llmo.brain.config import BrainConfig

    config = BrainConfig.from_dict({"plan_roots": ["/srv/plans"]})
    assert config.plan_roots == ("/srv/plans",)
    assert BrainConfig.from_dict(config.to_dict()) == config
