"""Garbage collection: remove what crashed writes and superseded versions leave behind.

Run by every write when it starts, by :func:`shardstore.gc` and by
``shardstore gc PATH``. It decides under the dataset lock (so no writer can
start or commit meanwhile) and deletes afterwards, from ``.shardstore/trash/``.
What it removes, and when:

==========================================  ===========================================
what                                        removed
==========================================  ===========================================
``.shardstore/staging/v-<id>/``,            when no running writer holds ``<id>``'s lock
``.shardstore/manifest-<id>.tmp``           (the writer crashed or was killed)
``v-<id>/`` not in ``manifest.json`` whose  at once (a crash between moving the version
writer lock is left but not held           into place and publishing it: never visible)
``v-<id>/`` superseded by an overwrite      once ``grace`` seconds have passed since the
(marked in ``.shardstore/retired/``)        overwrite (default 24 h): readers that opened
                                            the old manifest keep working until then
``v-<id>/`` of unknown origin (not          marked retired on first sight, then as above
referenced, no marker, no writer lock)
``.shardstore/trash/*``                     always (an interrupted collection)
==========================================  ===========================================

Never removed: anything ``manifest.json`` references, anything a running
writer holds, anything when ``manifest.json`` exists but cannot be read
(then nobody can tell what is in use), names it does not recognise, and
anything reached through a symlink. Nothing here follows a path read from a
manifest: it only lists the fixed places above.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from shardstore.commit import (
    VERSION_DIR,
    _current_manifest,
    control_dir,
    dataset_lock_path,
    default_grace,
    manifest_state,
    referenced_dirs,
    retired_dir,
    staging_dir,
    tidy_control_dir,
    trash_dir,
    writer_lock_path,
    writers_dir,
)
from shardstore.errors import InvalidInputError
from shardstore.fsutil import make_dirs, remove_tree, rename, write_new_file
from shardstore.locks import FileLock

__all__ = ["GcReport", "collect"]

log = logging.getLogger(__name__)


@dataclass
class GcReport:
    """What one collection did (or, with ``dry_run``, would do).

    Attributes
    ----------
    removed : relative paths removed (or to remove).
    bytes_freed : bytes of the files removed (0 with ``dry_run``).
    kept_retired : ``(relative path, seconds left in the grace period)``.
    in_progress : writers running now (their version ids).
    """

    removed: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    kept_retired: list[tuple[str, float]] = field(default_factory=list)
    in_progress: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict."""
        return {
            "removed": self.removed,
            "bytes_freed": self.bytes_freed,
            "kept_retired": [{"path": p, "seconds_left": s} for p, s in self.kept_retired],
            "in_progress": self.in_progress,
        }


def _is_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _listdir(path: Path) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        return []


class _Writers:
    """Probes writer locks; holds the ones it takes until :meth:`release`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._taken: dict[str, FileLock] = {}
        self._running: dict[str, bool] = {}

    def running(self, version_id: str) -> bool:
        if version_id not in self._running:
            lock = FileLock(writer_lock_path(self.root, version_id))
            got = lock.acquire(blocking=False, create=False)
            self._running[version_id] = not got
            if lock.held:
                self._taken[version_id] = lock
        return self._running[version_id]

    def stale(self, version_id: str) -> bool:
        """A lock file is left, but its writer is gone."""
        return not self.running(version_id) and version_id in self._taken

    def release(self, *, unlink: set[str]) -> None:
        for version_id, lock in self._taken.items():
            lock.release(unlink=version_id in unlink)
        self._taken.clear()


def collect(
    path: str | os.PathLike[str], *, grace: float | None = None, dry_run: bool = False
) -> GcReport:
    """Remove the leftovers of crashed writes and superseded versions older than ``grace``.

    Parameters
    ----------
    path : the dataset directory.
    grace : seconds a superseded version is kept after the overwrite that
        replaced it (default: ``$SHARDSTORE_GC_GRACE_SECONDS`` or 24 hours).
        ``0`` removes every superseded version now, which breaks readers
        still using one.
    dry_run : only report what would be removed.

    Returns
    -------
    GcReport
    """
    root = Path(path)
    if grace is None:
        grace = default_grace()
    if isinstance(grace, bool) or not isinstance(grace, int | float) or not grace >= 0:
        raise InvalidInputError(
            f"grace must be a number of seconds >= 0, got {grace!r}", params=("grace",)
        )
    report = GcReport()
    if not _is_dir(root) or (not _is_dir(control_dir(root)) and not _has_version_dirs(root)):
        return report
    now = time.time()
    doomed: list[Path] = []
    writers = _Writers(root)
    stale_locks: set[str] = set()
    lock = FileLock(dataset_lock_path(root))
    lock.acquire()
    try:
        state = manifest_state(root)
        current = _current_manifest(root) if state.exists else None
        referenced = referenced_dirs(current) if current is not None else set()
        trust_listing = current is not None or not state.exists

        for name in _listdir(staging_dir(root)):
            version_id = name[2:] if VERSION_DIR.fullmatch(name) else None
            if version_id is not None and writers.running(version_id):
                report.in_progress.append(version_id)
                continue
            doomed.append(staging_dir(root) / name)
        for name in _listdir(control_dir(root)):
            is_tmp = name.startswith("manifest-") and name.endswith(".tmp")
            if is_tmp and not writers.running(name[len("manifest-") : -len(".tmp")]):
                doomed.append(control_dir(root) / name)
        for name in _listdir(root):
            if name.startswith(".manifest-") and name.endswith(".tmp"):  # format v1 writers
                doomed.append(root / name)
        for name in _listdir(writers_dir(root)):
            if name.endswith(".lock") and writers.stale(name[: -len(".lock")]):
                stale_locks.add(name[: -len(".lock")])

        retired = set(_listdir(retired_dir(root)))
        for name in _listdir(root):
            d = root / name
            if not VERSION_DIR.fullmatch(name) or not _is_dir(d) or not trust_listing:
                continue
            version_id = name[2:]
            if name in referenced:
                if name in retired:  # re-used by the current manifest: not garbage
                    doomed.append(retired_dir(root) / name)
                continue
            if writers.running(version_id):
                report.in_progress.append(version_id)
                continue
            marker = retired_dir(root) / name
            if name in retired:
                with contextlib.suppress(OSError):
                    age = now - marker.stat().st_mtime
                    if age >= grace:
                        doomed += [d, marker]
                    else:
                        report.kept_retired.append((name, grace - age))
                continue
            if version_id in stale_locks or grace == 0:
                doomed.append(d)  # never published (or the caller wants it all gone)
                continue
            report.kept_retired.append((name, grace))  # unknown origin: start the clock
            if not dry_run:
                make_dirs(retired_dir(root))
                with contextlib.suppress(FileExistsError):
                    write_new_file(marker, b'{"retired_at": "first seen by gc"}', fsync=False)
        for name in retired:
            if not (root / name).exists() and retired_dir(root) / name not in doomed:
                doomed.append(retired_dir(root) / name)
        doomed += [trash_dir(root) / n for n in _listdir(trash_dir(root))]

        report.removed = sorted({str(p.relative_to(root)) for p in doomed})
        if dry_run:
            return report
        moved: list[Path] = []
        for p in doomed:
            if p.parent == trash_dir(root) or not _is_dir(p):
                moved.append(p)
                continue
            make_dirs(trash_dir(root))
            dest = trash_dir(root) / f"{p.name}.{secrets.token_hex(4)}"
            try:
                rename(p, dest)
            except OSError as exc:
                log.warning("gc: cannot move %s to the trash: %s", p, exc)
                continue
            moved.append(dest)
    finally:
        writers.release(unlink=stale_locks if not dry_run else set())
        lock.release()
    for p in moved:
        report.bytes_freed += remove_tree(p)
    with contextlib.suppress(OSError):
        tidy_control_dir(root)
    if report.removed:
        log.info("gc %s: removed %d item(s), %d bytes", root, len(report.removed),
                 report.bytes_freed)  # fmt: skip
    return report


def _has_version_dirs(root: Path) -> bool:
    return any(VERSION_DIR.fullmatch(n) for n in _listdir(root)) or any(
        n.startswith(".manifest-") for n in _listdir(root)
    )
