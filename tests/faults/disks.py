"""Small real file systems for the full-disk tests: a tmpfs of a few MiB, and a
file that fills it."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest


def mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


def mount_tmpfs(folder: Path, size: str) -> None:
    """Mount a tmpfs of ``size`` (``1m``) on ``folder``; skip the test, saying why,
    where that is not allowed. Undo with ``unmount``."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    done = mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder))
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


def unmount(folder: Path) -> None:
    subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path, leave: int = 0) -> Path:
    """Fill the file system of ``folder`` to its last byte, then free ``leave`` bytes;
    the filler file."""
    filler = folder / "filler"
    with open(filler, "wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    # The buffered tail that did not fit: write it byte by byte until none fits.
    fd = os.open(filler, os.O_WRONLY | os.O_APPEND)
    try:
        while True:
            os.write(fd, b"\0" * 512)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    if leave:
        os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler
