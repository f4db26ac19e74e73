"""The example plans run: their scripts, driven through the plans API in order.

A tiny sequential driver stands in for the brain (one task at a time, no
retries): it is enough to show that the plans, their foreach sources and
their scripts fit together. The summarize example talks to a stand-in
OpenAI-compatible endpoint served from this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from llmo.plans import (
    Plan,
    dependency_levels,
    expand_foreach,
    load_plan,
    read_foreach_items,
    resolve_goal,
    resolve_task,
    run_variables,
)

EXAMPLES = Path(__file__).parent.parent / "plans" / "examples"
TRY_LATER = 75


class Run:
    def __init__(self, name: str, tmp_path: Path, config: dict, env: dict | None = None):
        self.plan_dir = EXAMPLES / name
        plan, problems = load_plan(self.plan_dir)
        assert problems == [], [str(p) for p in problems]
        self.plan: Plan = plan
        self.batch = tmp_path / "history" / "20250101_000000"
        self.batch.mkdir(parents=True)
        self.vars = run_variables(str(self.plan_dir), str(self.batch), self.batch.name, config)
        self.env = {
            "PATH": os.environ["PATH"],
            "PLAN_PATH": str(self.plan_dir),
            "BATCH_PATH": str(self.batch),
            "BATCH_ID": self.batch.name,
            **(env or {}),
        }
        self.log: list[tuple[str, int]] = []

    def shell(self, task_id: str, command: str, values: dict[str, str] | None = None) -> int:
        done = subprocess.run(
            ["sh", "-c", command],
            cwd=self.batch,
            env={**self.env, **(values or {}), "TASK_ID": task_id},
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.log.append((task_id, done.returncode))
        return done.returncode

    def task(self, task_id: str) -> list[int]:
        spec = self.plan.task(task_id)
        if spec.foreach is None:
            resolved = resolve_task(spec, self.vars)
            return [self.shell(task_id, resolved.command, resolved.env)]
        items = read_foreach_items(spec.foreach, self.vars, base_dir=str(self.batch))
        return [self.shell(t.id, t.command, t.env) for t in expand_foreach(spec, items, self.vars)]

    def all(self) -> None:
        for level in dependency_levels(self.plan):
            for task_id in level:
                assert set(self.task(task_id)) <= {0}, self.log


def test_hello(tmp_path):
    run = Run("hello", tmp_path, {})
    run.all()
    assert [name for name, _ in run.log] == [
        "make_manifest",
        "greet_batch_0001_0002",
        "greet_batch_0003_0004",
        "greet_batch_0005_0005",
        "aggregate",
    ]
    out = json.loads((run.batch / "output" / "greetings.json").read_text())
    assert out["count"] == 5 and out["greetings"][0] == "Hello, Ada Lovelace!"


def test_goal_example_reaches_its_target(tmp_path):
    run = Run("goal_example", tmp_path, {"TARGET_COUNT": 4})
    goal = resolve_goal(run.plan.goal, run.vars)
    assert (goal.target, goal.tracked_task) == (4, "validate_item")
    accepted = tried = 0
    while accepted < goal.target - goal.tolerance and tried < goal.max_candidates:
        for task_id in goal.discovery_tasks:
            assert run.task(task_id) == [0]
        checks = run.task("check_item")
        assert set(checks) == {0}
        results = run.task("validate_item")
        tried += len(results)
        accepted += results.count(0)
    assert run.task("report") == [0]
    report = json.loads((run.batch / "output" / "report.json").read_text())
    assert report["accepted"] == accepted >= 3
    assert all(all(p % d for d in range(2, p)) for p in report["primes"])


class FakeCompletions(BaseHTTPRequestHandler):
    requests: list[dict] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append({"path": self.path, **body})
        reply = {
            "model": body.get("model", ""),
            "choices": [{"text": " A short summary.\n", "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 80, "completion_tokens": 5},
        }
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint():
    FakeCompletions.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeCompletions)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.mark.parametrize("suffix", ["", "/v1"])
def test_summarize_with_an_endpoint(tmp_path, endpoint, suffix):
    env = {"LLM_API_BASE": endpoint + suffix, "LLM_MODEL": "gemma-3-270m"}
    run = Run("summarize", tmp_path, {}, env)
    run.all()
    assert len(FakeCompletions.requests) == 4
    request = FakeCompletions.requests[0]
    assert request["path"] == "/v1/completions" and request["model"] == "gemma-3-270m"
    assert request["prompt"].endswith("Headline:") and request["max_tokens"] == 48
    result = json.loads((run.batch / "results" / "library.json").read_text())
    assert result["summary"] == "A short summary." and result["completion_tokens"] == 5
    summaries = json.loads((run.batch / "output" / "summaries.json").read_text())
    assert summaries["count"] == 4 and summaries["tokens"] == 20
    assert "## Library hours" in (run.batch / "output" / "summaries.md").read_text()


@pytest.mark.parametrize("base", [None, "http://127.0.0.1:9"])
def test_summarize_asks_to_be_tried_later_without_a_model(tmp_path, base):
    env = {} if base is None else {"LLM_API_BASE": base}
    run = Run("summarize", tmp_path, {}, env)
    assert run.task("prepare") == [0]
    assert run.task("summarize") == [TRY_LATER] * 4


def test_example_scripts_use_only_the_standard_library():
    allowed = set(sys.stdlib_module_names)
    for script in EXAMPLES.glob("*/scripts/*.py"):
        for line in script.read_text().splitlines():
            words = line.split()
            if words[:1] == ["import"] or (words[:1] == ["from"] and "import" in words):
                assert words[1].split(".")[0] in allowed, f"{script}: {line}"
