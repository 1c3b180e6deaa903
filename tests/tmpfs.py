"""A small tmpfs mounted for a test: a real full disk and a real read-only file system.

The tests run as root (here and in CI). Where mounting is forbidden (an
unprivileged developer machine, a container without ``CAP_SYS_ADMIN``) the
test is skipped, except in CI (``$CI`` set), where the machine is known to
allow it and a skip would hide a missing check: there it fails.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60)


@contextlib.contextmanager
def mounted_tmpfs(where: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (e.g. ``"1m"``) at ``where`` for the block, then unmount it."""
    where.mkdir(parents=True, exist_ok=True)
    proc = _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where))
    if proc.returncode != 0:
        why = f"cannot mount a tmpfs here: {proc.stderr.strip() or proc.stdout.strip()}"
        if os.environ.get("CI"):
            pytest.fail(why + " (CI runs as root and must run this test)")
        pytest.skip(why)
    try:
        yield where
    finally:
        _run("umount", "-l", str(where))


@contextlib.contextmanager
def other_file_system(near: Path) -> Iterator[Path]:
    """A writable directory on another file system than ``near``: ``/dev/shm``, else a tmpfs.

    For cross-device tests (no hard links across file systems). Like
    :func:`mounted_tmpfs`, it skips only off CI.
    """
    shm = Path("/dev/shm")
    usable = shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != near.stat().st_dev
    if usable:
        with tempfile.TemporaryDirectory(dir=shm) as d:
            yield Path(d)
        return
    with mounted_tmpfs(near.parent / f"{near.name}-other-fs", "256m") as where:
        yield where


def remount_read_only(where: Path) -> None:
    """Make the tmpfs at ``where`` read-only (``EROFS`` for every change)."""
    proc = _run("mount", "-o", "remount,ro", str(where))
    assert proc.returncode == 0, proc.stderr
