"""What starting one shell task costs the worker, against a bare ``Popen`` in the same run.

    .venv/bin/python bench/spawn.py [--tasks 300] [--rounds 3]

Each round starts ``--tasks`` attempts of ``true`` one after another the way a
worker does (``ShellAttempt.spawn``: its log, resource limits, a Landlock
ruleset when the kernel has Landlock, a private ``TMPDIR``; then the exit
``reap`` and ``clean``), and as many bare ``subprocess.Popen(["/bin/sh", "-c",
"true"]).wait()`` (the floor), alternating. Printed per task: CPU of this
process (the worker's share), CPU of the children, wall time; and the
ratio of the floor's wall time to the worker's path.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from llmo.worker import landlock
from llmo.worker.rlimits import Rlimits
from llmo.worker.shell import ShellAttempt


def usage() -> tuple[float, float, float]:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime, time.monotonic()


def per_task(run, n: int) -> tuple[float, float, float]:
    before = usage()
    run(n)
    after = usage()
    return tuple((b - a) / n * 1000 for a, b in zip(before, after, strict=True))  # type: ignore[return-value]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    abi, why = landlock.probe()
    folder = tempfile.mkdtemp(prefix="llmo-bench-spawn-")
    confine = landlock.Confinement(
        abi=abi, writable=(folder,), secret=(os.path.expanduser("~/.ssh"),)
    )
    rulesets = landlock.Rulesets(time.monotonic)
    env = {"PATH": "/usr/bin:/bin"}

    def worker_path(n: int) -> None:
        for _ in range(n):
            shell = ShellAttempt.spawn(
                "true",
                cwd=folder,
                env=env,
                log_path=os.path.join(folder, "task.log"),
                rlimits=Rlimits(open_files=1024),
                confine=confine,
                rulesets=rulesets,
            )
            while not shell.exited():
                time.sleep(0.0002)
            shell.reap(clean=False)
            shell.clean(rulesets)  # as the worker does: an empty TMPDIR serves again

    def floor(n: int) -> None:
        for _ in range(n):
            subprocess.Popen(["/bin/sh", "-c", "true"], env=env).wait()

    llmo, bare = [], []
    try:
        for n in range(1, args.rounds + 1):
            llmo.append(per_task(worker_path, args.tasks))
            bare.append(per_task(floor, args.tasks))
            print(f"round {n}: worker path {llmo[-1][2]:.2f} ms, floor {bare[-1][2]:.2f} ms")
    finally:
        rulesets.close()
    print(f"\nLandlock ABI {abi or 'none'}{': ' + why if why else ''}; medians of {args.rounds}")
    for name, rows in (("worker path", llmo), ("bare Popen", bare)):
        me, kids, wall = (statistics.median(r[i] for r in rows) for i in range(3))
        print(
            f"  {name:12} {me:5.2f} ms CPU here, {kids:5.2f} ms in the child, {wall:5.2f} ms wall"
        )
    ratio = statistics.median(r[2] for r in bare) / statistics.median(r[2] for r in llmo)
    print(f"  ratio (floor / worker path, wall): {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
