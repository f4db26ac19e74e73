"""Fuzzing the plan reader: malformed plan.md at ``parse_plan`` and at
``llmo submit --dry-run``.

Hypothesis writes plan-shaped markdown (titles, sections, task blocks and
goal fields, each field right, wrong, duplicated or unknown, with
placeholders, foreach sources, odd numbers, cycles, CRLF, byte-order marks
and fences) and mangles the example plans (lines dropped, doubled, swapped,
cut, garbled). Whatever comes in: no exception escapes, the result is a plan
or a list of problems that says why not (a plan with errors is never passed
as runnable), and the CLI answers with exit status 0 or 2, never a
traceback.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from llmo.plans import (
    dependency_levels,
    has_errors,
    parse_plan,
    placeholders,
    split_problems,
    undefined_placeholders,
)
from llmo.plans.model import PlanError
from llmo.plans.parser import KNOWN_FIELDS
from tests.test_fuzz_tally import examples, fuzz_tally  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(180)

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "plans" / "examples").glob("*/plan.md"))
EXAMPLE_TEXTS = [p.read_text(encoding="utf-8") for p in EXAMPLES]

ids = st.sampled_from(["a", "b", "c", "extract", "t-1", "x.y", "", " ", "a b", "ü", "{ITEM.id}"])
VALUES = {
    "executor": st.sampled_from(["worker", "brain", "gpu", "", "Worker"]),
    "task_class": st.sampled_from(["cpu", "script", "llm", "brain", "meta", "gpu", ""]),
    "command": st.one_of(
        st.sampled_from(
            [
                "`echo {BATCH_PATH}`",
                "`python3 {PLAN_PATH}/x.py --n {TARGET_COUNT}`",
                "`echo {ITEM} {ITEM.id} {ITEMS_FILE}`",
                "`load_llm`",
                "`unbalanced",
                "``",
                "no backticks",
                "`{`",
                "`{}`",
                "`{{NOPE}}`",
            ]
        ),
        st.text(max_size=30).map(lambda t: f"`{t}`"),
    ),
    "depends_on": st.one_of(
        st.sampled_from(
            ["none", "a", "a, b", "b, a", "c", "self", "a,,b", "", "extract_{ITEM.id}"]
        ),
        st.lists(ids, max_size=3).map(", ".join),
    ),
    "foreach": st.sampled_from(
        ["items.json", "items.json:data.list", "{BATCH_PATH}/x.json:", ":", "", "a:b:c", "../x"]
    ),
    "batch_size": st.sampled_from(["1", "0", "-3", "10", "1e9", "two", "", "99999999999999999999"]),
    "timeout": st.sampled_from(["60", "0", "-1", "1.5", "nan", "inf", "forever", "1e400"]),
    "vram_estimate_mb": st.sampled_from(["1024", "-1", "0", "lots", "1e12"]),
    "vram_policy": st.sampled_from(["estimate", "full", "none", "?"]),
    "llm_model": st.sampled_from(["qwen", "", "{MODEL}"]),
    "llm_min_tier": st.sampled_from(["7b", "huge", ""]),
    "llm_placement": st.sampled_from(["single", "split", "any", ""]),
    "requires": st.sampled_from(["{BATCH_PATH}/a.json", "", "x, y"]),
    "produces": st.sampled_from(["{BATCH_PATH}/b.json", "", "{ITEM.id}.json"]),
}
GOAL_FIELDS = st.sampled_from(
    [
        "- **type**: count",
        "- **type**: maximize",
        "- **target**: {TARGET_COUNT}",
        "- **target**: -2",
        "- **target**: many",
        "- **tolerance**: 0.5",
        "- **tolerance**: 2",
        "- **tracked_task**: c",
        "- **tracked_task**: nope",
        "- **discovery_tasks**: a, b",
        "- **discovery_tasks**: ",
        "- **max_attempts_multiplier**: 0",
        "- **max_attempts_multiplier**: 5",
    ]
)


@st.composite
def fields(draw) -> list[str]:
    names = draw(
        st.lists(
            st.sampled_from([*KNOWN_FIELDS, "bogus", "Command", "depends on"]),
            max_size=len(KNOWN_FIELDS) + 2,
        )
    )
    lines = []
    for name in names:
        value = draw(VALUES.get(name, st.text(max_size=15)))
        style = draw(st.sampled_from(["- **{n}**: {v}", "- **{n}:** {v}", "* **{n}**:{v}"]))
        lines.append(style.format(n=name, v=value))
        if draw(st.integers(0, 5)) == 0:
            lines.append(f"  - {draw(st.text(max_size=10))}")  # an indented sub-bullet
    return lines


@st.composite
def plan_documents(draw) -> str:
    """plan.md-shaped text: the grammar's shapes with random contents."""
    lines = []
    if draw(st.booleans()):
        lines.append(draw(st.sampled_from(["# Plan: fuzz", "# Plan:", "# fuzz", "#Plan: x"])))
    for section in draw(
        st.lists(st.sampled_from(["Objective", "Inputs", "Notes", "Tasks", "Goal", "Tasks"]))
    ):
        lines.append(f"## {section}")
        if section == "Tasks":
            for _ in range(draw(st.integers(0, 5))):
                lines.append(f"### {draw(ids)}")
                lines += draw(fields())
                lines.append("")
        elif section == "Goal":
            lines += draw(st.lists(GOAL_FIELDS, max_size=6))
        else:
            lines.append(draw(st.text(max_size=40)))
        if draw(st.integers(0, 6)) == 0:
            lines += ["```bash", "# not a heading", "### not a task"]  # maybe unclosed
            if draw(st.booleans()):
                lines.append("```")
        if draw(st.integers(0, 8)) == 0:
            lines.append("<!-- ### hidden")
    text = draw(st.sampled_from(["\n", "\r\n", "\r"])).join(lines)
    if draw(st.integers(0, 8)) == 0:
        text = "\ufeff" + text
    return text


@st.composite
def mangled_examples(draw) -> str:
    lines = draw(st.sampled_from(EXAMPLE_TEXTS)).splitlines()
    for _ in range(draw(st.integers(1, 6))):
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        how = draw(st.sampled_from(["drop", "double", "swap", "garble", "cut", "null"]))
        if how == "drop":
            del lines[i]
        elif how == "double":
            lines.insert(i, lines[i])
        elif how == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif how == "garble":
            lines[i] = draw(st.text(max_size=60))
        elif how == "cut":
            lines[i] = lines[i][: draw(st.integers(0, max(0, len(lines[i]) - 1)))]
        else:
            lines[i] = lines[i] + "\x00"
    return "\n".join(lines)


documents = st.one_of(plan_documents(), mangled_examples(), st.text(max_size=300))


@given(text=documents)
@settings(
    max_examples=examples(400),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
def test_parse_plan_gives_a_plan_or_its_problems(text, fuzz_tally):  # noqa: F811
    fuzz_tally.add("plans")
    plan, problems = parse_plan(text, "fuzz/plan.md")
    errors, _ = split_problems(problems)
    assert all(str(p) for p in problems)
    event("no plan" if plan is None else "errors" if errors else "a runnable plan")
    if plan is None:
        assert errors, "no plan and no error saying why"
        return
    assert plan.tasks or errors, "a plan without tasks that is not an error"
    uses = placeholders(plan)
    undefined_placeholders(plan, dict.fromkeys(uses, "1"))
    try:
        levels = dependency_levels(plan)
    except PlanError:
        assert has_errors(problems), "a cycle nobody reported"
    else:
        if not errors:
            assert sorted(t for level in levels for t in level) == sorted(t.id for t in plan.tasks)


@pytest.fixture(scope="module")
def plan_folder():
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


CONFIGS = st.one_of(
    st.none(),
    st.sampled_from(['{"TARGET_COUNT": 3}', "{}", "[1]", "not json", '{"MODEL": null}', "@/nope"]),
)


def dry_run(plan_dir: Path, config: str | None) -> tuple[int, str, str]:
    from llmo.cli.main import main

    argv = ["submit", str(plan_dir), "--dry-run"]
    if config is not None:
        argv += ["--config", config]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@given(text=documents, config=CONFIGS, as_json=st.booleans())
@settings(
    max_examples=examples(150),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
def test_submit_dry_run_answers_every_plan(plan_folder, text, config, as_json, fuzz_tally):  # noqa: F811
    fuzz_tally.add("plans")
    (plan_folder / "plan.md").write_text(text, encoding="utf-8", errors="surrogatepass")
    code, out, err = dry_run(plan_folder, config)
    event(f"exit {code}")
    assert code in (0, 2), (code, out, err)
    assert "Traceback" not in out + err
    if code == 2:
        assert "error" in err or "--config" in err, err
    else:
        assert "dry run: nothing was sent" in out
    if as_json and code == 0:
        from llmo.cli.main import main

        buffer = io.StringIO()
        argv = ["submit", str(plan_folder), "--dry-run", "--json"]
        if config is not None:
            argv += ["--config", config]
        with contextlib.redirect_stdout(buffer):
            assert main(argv) == 0
        assert json.loads(buffer.getvalue())["ok"] is True


def test_the_real_command_line_never_shows_a_traceback(tmp_path, fuzz_tally):  # noqa: F811
    """A few of the worst inputs through the installed ``llmo``, as an operator runs it."""
    worst = [
        "",
        "\x00\x01\x02",
        "## Tasks\n### a\n- **depends_on**: a\n",
        "# Plan: x\n## Tasks\n### a\n- **command**: `unbalanced\n```\n### b",
        EXAMPLE_TEXTS[0][: len(EXAMPLE_TEXTS[0]) // 2],
    ]
    for i, text in enumerate(worst):
        folder = tmp_path / f"p{i}"
        folder.mkdir()
        (folder / "plan.md").write_text(text, encoding="utf-8")
        done = subprocess.run(
            [sys.executable, "-m", "llmo.cli.main", "submit", str(folder), "--dry-run"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode in (0, 2), done
        assert "Traceback" not in done.stdout + done.stderr, done.stderr
        fuzz_tally.add("plans")
    bad = tmp_path / "bad-bytes"
    bad.mkdir()
    (bad / "plan.md").write_bytes(b"# Plan: x\n\xff\xfe\n## Tasks\n")
    done = subprocess.run(
        [sys.executable, "-m", "llmo.cli.main", "submit", str(bad), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "cannot read the plan" in done.stderr
    fuzz_tally.add("plans")
