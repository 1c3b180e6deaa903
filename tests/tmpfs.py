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


def remount_read_only(where: Path) -> None:
    """Make the tmpfs at ``where`` read-only (``EROFS`` for every change)."""
    proc = _run("mount", "-o", "remount,ro", str(where))
    assert proc.returncode == 0, proc.stderr
