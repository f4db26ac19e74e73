"""The confinement of a shell started with ``vfork``: set on a short thread, never on the worker."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from llmo.worker import landlock

pytestmark = pytest.mark.timeout(60)

ABI, WHY = landlock.probe()


@pytest.mark.skipif(ABI < 1, reason=f"no Landlock here: {WHY}")
def test_confined_call_confines_its_own_thread_only(tmp_path):
    allowed, other = tmp_path / "allowed", tmp_path / "other"
    allowed.mkdir()
    other.mkdir()
    confine = landlock.Confinement(abi=ABI, writable=(str(allowed),))
    ruleset = confine.ruleset()

    def write_both() -> str:
        (allowed / "ok").write_text("ok")
        try:
            (other / "no").write_text("no")
        except PermissionError as exc:
            return f"refused: {exc.strerror}"
        return "written"

    try:
        assert landlock.confined_call(ruleset, write_both) == "refused: Permission denied"
    finally:
        os.close(ruleset)
    (other / "after").write_text("the calling thread is not confined")
    assert (other / "after").exists() and not (other / "no").exists()


def test_confined_call_hands_the_error_to_the_caller():
    def fails() -> None:
        raise ValueError("from the thread")

    with pytest.raises(ValueError, match="from the thread"):
        landlock.confined_call(-1, fails)


def test_rulesets_are_shared_until_their_time_is_up_and_their_folders_do_not_linger(tmp_path):
    now = [0.0]
    rulesets = landlock.Rulesets(lambda: now[0])
    confine = landlock.Confinement(abi=ABI, writable=(str(tmp_path),))
    fd, root = rulesets.get(confine)
    assert os.path.isdir(root) and os.path.basename(root).startswith("llmo-tasks-")
    assert rulesets.get(confine) == (fd, root), "a fan-out's attempts share one"
    busy = Path(root) / "llmo-task-running"
    busy.mkdir()  # an attempt still runs in it
    now[0] += landlock.RULESET_TTL_S
    _, root2 = rulesets.get(confine)
    assert root2 != root, "planned again after its time"
    assert os.path.isdir(root), "kept while an attempt uses it"
    busy.rmdir()
    other = landlock.Confinement(abi=ABI, writable=(str(tmp_path / "x"),))
    now[0] += landlock.RULESET_TTL_S
    rulesets.get(other)
    assert not os.path.exists(root) and not os.path.exists(root2), "gone once empty"
    shutil.rmtree(rulesets.get(other)[1])
    assert os.path.isdir(rulesets.get(other)[1]), "a folder removed under it is made again"
    roots = [kept.root for kept in rulesets.kept.values()]
    rulesets.close()
    assert not any(os.path.exists(r) for r in roots)


@pytest.mark.skipif(ABI < 1, reason=f"no Landlock here: {WHY}")
def test_a_kept_ruleset_spawns_on_one_confined_thread_until_it_is_dropped(tmp_path):
    # Starting a thread and confining it took as long as the shell's own start:
    # a fan-out's attempts share one thread, confined once, while the ruleset is kept.
    import threading

    allowed, other = tmp_path / "allowed", tmp_path / "other"
    allowed.mkdir()
    other.mkdir()
    now = [0.0]
    rulesets = landlock.Rulesets(lambda: now[0])
    confine = landlock.Confinement(abi=ABI, writable=(str(allowed),))
    fd, _ = rulesets.get(confine)

    def attempt(n: int):
        (allowed / f"ok{n}").write_text("ok")
        try:
            (other / f"no{n}").write_text("no")
        except PermissionError:
            return threading.current_thread(), "refused"
        return threading.current_thread(), "written"

    first = rulesets.call(fd, lambda: attempt(1))
    second = rulesets.call(fd, lambda: attempt(2))
    assert first[1] == second[1] == "refused"
    assert first[0] is second[0] is not threading.current_thread()
    spawners = [t for t in threading.enumerate() if t.name == "llmo-spawn"]
    assert len(spawners) == 1
    (other / "caller").write_text("the worker's own thread is not confined")
    with pytest.raises(ValueError, match="inside"):
        rulesets.call(fd, lambda: (_ for _ in ()).throw(ValueError("inside")))
    assert rulesets.call(fd, lambda: attempt(3))[1] == "refused", "an error leaves it serving"

    now[0] += landlock.RULESET_TTL_S
    fd2, _ = rulesets.get(confine)
    assert rulesets.call(fd2, lambda: attempt(4))[0] is not first[0], "a new ruleset, a new thread"
    spawners[0].join(timeout=5)
    assert not spawners[0].is_alive(), "the dropped ruleset's thread ends"
    rulesets.close()
    for thread in [t for t in threading.enumerate() if t.name == "llmo-spawn"]:
        thread.join(timeout=5)
        assert not thread.is_alive(), "the worker's exit ends every spawning thread"
    assert not list(other.glob("no*"))


def test_an_emptied_temporary_folder_is_handed_out_again_under_a_new_name(tmp_path):
    # Making and removing a folder per attempt cost more than renaming one: an
    # attempt's TMPDIR that it left empty (and as it was made) serves the next
    # attempt under a fresh name, so a path the first one knew leads nowhere.
    rulesets = landlock.Rulesets(lambda: 0.0)
    confine = landlock.Confinement(abi=max(ABI, 1), writable=(str(tmp_path),))
    _, root = rulesets.get(confine)
    first = rulesets.tmp_in(root)
    inode = os.stat(first).st_ino
    assert rulesets.recycle(first)
    second = rulesets.tmp_in(root)
    assert second != first and not os.path.exists(first)
    assert os.stat(second).st_ino == inode and os.listdir(second) == []
    assert stat.S_IMODE(os.stat(second).st_mode) == 0o700

    used = rulesets.tmp_in(root)
    Path(used, "left").write_text("a file an attempt left")
    assert not rulesets.recycle(used), "a folder with something in it is removed"
    opened = rulesets.tmp_in(root)
    os.chmod(opened, 0o777)
    assert not rulesets.recycle(opened), "a folder whose mode was changed is removed"
    swapped = rulesets.tmp_in(root)
    os.rmdir(swapped)
    os.symlink(tmp_path, swapped)
    assert not rulesets.recycle(swapped), "a link put in its place is not handed out"
    assert not rulesets.recycle(str(tmp_path / "elsewhere")), "only folders under a kept root"

    assert rulesets.recycle(second)
    rulesets.close()
    assert not os.path.exists(root) and not os.path.exists(second)


def test_a_shell_attempt_gives_its_empty_tmpdir_back_and_removes_a_used_one(tmp_path):
    from llmo.worker.shell import ShellAttempt

    rulesets = landlock.Rulesets(lambda: 0.0)
    confine = landlock.Confinement(abi=ABI, writable=(str(tmp_path),)) if ABI >= 1 else None

    def run(command: str) -> str:
        shell = ShellAttempt.spawn(
            command,
            cwd=str(tmp_path),
            env={"PATH": os.environ["PATH"]},
            log_path=str(tmp_path / "log"),
            confine=confine,
            rulesets=rulesets,
        )
        tmp = shell.tmp
        while not shell.exited():
            pass
        shell.reap(clean=False)
        shell.clean(rulesets)
        return tmp

    if confine is None:
        pytest.skip(f"no Landlock here: {WHY}")
    used = run('echo data > "$TMPDIR/file"')
    assert not os.path.exists(used)
    quiet = run("true")
    assert os.listdir(quiet) == [], "kept, empty, for the next attempt"
    third = run('test "$(ls -A "$TMPDIR")" = ""')
    assert third != quiet and not os.path.exists(quiet)
    _, root = rulesets.get(confine)
    assert os.listdir(root) == [os.path.basename(third)]
    rulesets.close()
    assert not os.path.exists(root)
