"""Coverage-guided fuzzing with atheris (libFuzzer), where it is installed.

atheris is not a dependency of llmo: ``pip install atheris`` adds it, and
without it these tests are skipped. Run as a script, this file is the
harness: ``python tests/test_fuzz_atheris.py TARGET -runs=N`` feeds libFuzzer's
inputs to one target:

- ``codec``: ``proto.codec.decode`` may raise ``ProtocolError`` and nothing else;
- ``plans``: ``plans.parse_plan`` never raises, and gives a plan or an error;
- ``policy``: ``worker.policy.check`` never raises and names a known rule.

The test runs each target for a fixed number of inputs in a child process
(libFuzzer exits the process when it is done) and adds them to the tally.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_fuzz_tally import examples, fuzz_tally  # noqa: F401  (fixture)

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        importlib.util.find_spec("atheris") is None, reason="atheris is not installed"
    ),
]

ROOT = Path(__file__).resolve().parent.parent
RULES = ("plan_roots", "protected_paths", "refused_patterns", "command_size", "unusable_text")


@pytest.mark.parametrize("target", ["codec", "plans", "policy"])
def test_atheris_finds_nothing(target, tmp_path, fuzz_tally):  # noqa: F811
    runs = examples(20_000)
    done = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            target,
            f"-runs={runs}",
            "-max_len=4096",
            "-seed=1",
            f"-artifact_prefix={tmp_path}/",
        ],
        capture_output=True,
        text=True,
        timeout=170,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    match = re.search(r"Done (\d+) runs", output)
    assert match, output[-2000:]
    fuzz_tally.add(f"atheris-{target}", int(match.group(1)))


# --- the harness ----------------------------------------------------------------------------


def _codec(data: bytes) -> None:
    from llmo.proto.codec import decode
    from llmo.proto.errors import ProtocolError

    try:
        decode(data)
    except ProtocolError:
        pass


def _plans(data: bytes) -> None:
    from llmo.plans import parse_plan, split_problems

    text = data.decode("utf-8", "replace")
    plan, problems = parse_plan(text, "fuzz/plan.md")
    errors, _ = split_problems(problems)
    if plan is None and not errors:
        raise AssertionError("no plan and no error saying why")


def _policy(data: bytes) -> None:
    from llmo.worker.policy import check
    from llmo.worker.rules import Policy

    policy = Policy(plan_roots=("/srv/plans",), protected_paths=("/etc/llmo/llmo.toml",))
    command = data.decode("utf-8", "surrogateescape")
    reason = check(command, "/srv/plans/p", "/srv/plans/p/history/b", policy, env={"HOME": "/h"})
    if reason is not None and reason.split(":", 1)[0] not in RULES:
        raise AssertionError(f"an unnamed rule: {reason!r}")


TARGETS = {"codec": _codec, "plans": _plans, "policy": _policy}


def main() -> None:
    import atheris

    target = TARGETS[sys.argv.pop(1)]
    with atheris.instrument_imports():
        import llmo.proto.codec
        import llmo.worker.policy  # noqa: F401
        from llmo import plans  # noqa: F401
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
