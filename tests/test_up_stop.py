"""``llmo up``'s stop: the grace it gives running tasks, and the order of its stages."""

from __future__ import annotations

import argparse

import pytest

from llmo.cli import up_cmd
from llmo.cli.main import main

pytestmark = pytest.mark.timeout(60)


def parsed(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    up_cmd.configure(parser)
    return parser.parse_args(list(argv))


def test_workers_get_the_stop_grace_and_stop_first(tmp_path):
    args = parsed("--rig-dir", str(tmp_path / "rig"), "--model", "m.gguf", "--stop-grace", "7")
    where, children = up_cmd.plan_children(args)
    for name in where["workers"]:
        argv = dict(children)[name]
        assert argv[argv.index("--stop-deadline") + 1] == "7.0"
    stages = up_cmd.stop_stages(where, args.stop_grace)
    assert [names for names, _ in stages] == [where["workers"], ["brain"], ["broker"]]
    workers_timeout = stages[0][1]
    assert workers_timeout > 7.0 + up_cmd.WORKER_KILL_S  # the grace, the kill, the results


@pytest.mark.parametrize("grace", ["-1", "nan", "1e9"])
def test_a_bad_stop_grace_is_refused_before_anything_starts(tmp_path, capsys, grace):
    rig = tmp_path / "rig"
    code = main(["up", "--rig-dir", str(rig), "--model", "m.gguf", f"--stop-grace={grace}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--stop-grace" in err and "seconds from 0" in err, err
    assert not (rig / "logs").exists()
