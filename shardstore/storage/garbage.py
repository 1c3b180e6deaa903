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

Everything is listed, created, moved and deleted through directory file
descriptors (:mod:`shardstore.storage.safefs`): a symlink is never followed. A
control area (``.shardstore``) that is not a real directory stops the
collection with a :class:`~shardstore.errors.ChecksumError` before anything
is touched; a symlink (or any entry of the wrong kind) at one of the places
above, such as ``.shardstore/trash`` or a ``v-<id>`` link, is reported in
:attr:`GcReport.damaged` and left alone; inside a tree being deleted, links
are unlinked, never entered.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from shardstore.errors import ChecksumError, InvalidInputError
from shardstore.storage.fsutil import write_file_at
from shardstore.storage.layout import (
    CONTROL_DIR,
    V1_TMP_MANIFEST,
    VERSION_DIR,
    _current_manifest,
    dataset_lock_path,
    default_grace,
    manifest_state,
    referenced_dirs,
    tidy_control_dir,
    writer_lock_path,
)
from shardstore.storage.locks import FileLock
from shardstore.storage.safefs import Directory, Entry

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
    damaged : ``"<relative path>: <what is wrong>"`` for each entry that is not
        what belongs there (a symlink, a file where a directory belongs...):
        left alone, never followed.
    """

    removed: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    kept_retired: list[tuple[str, float]] = field(default_factory=list)
    in_progress: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict."""
        return {
            "removed": self.removed,
            "bytes_freed": self.bytes_freed,
            "kept_retired": [{"path": p, "seconds_left": s} for p, s in self.kept_retired],
            "in_progress": self.in_progress,
            "damaged": self.damaged,
        }


class _Writers:
    """Probes writer locks; holds the ones it takes until :meth:`release`."""

    def __init__(self, root: Path, report: GcReport) -> None:
        self.root = root
        self._report = report
        self._taken: dict[str, FileLock] = {}
        self._running: dict[str, bool] = {}

    def running(self, version_id: str) -> bool:
        if version_id not in self._running:
            lock = FileLock(writer_lock_path(self.root, version_id), below=self.root)
            try:
                got = lock.acquire(blocking=False, create=False)
            except ChecksumError as exc:  # a link or a non-file at the lock's (or its dir's) place
                rel = f"{CONTROL_DIR}/writers/{version_id}.lock"
                if exc.file:
                    rel = os.path.relpath(exc.file, self.root)
                if not any(line.startswith(f"{rel}: ") for line in self._report.damaged):
                    self._report.damaged.append(f"{rel}: {exc.what}")
                got = False  # treat the writer as running: touch nothing of it
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


class _Area:
    """The open directories of one dataset being collected, and the damage seen in them."""

    def __init__(self, root: Directory, stack: ExitStack, report: GcReport) -> None:
        self.root = root
        self._stack = stack
        self._report = report
        self._subs: dict[str, Directory | None] = {"": root}

    def sub(self, rel: str, *, create: bool = False) -> Directory | None:
        """The directory ``rel`` (``None``: missing or damaged, the damage reported once)."""
        if rel in self._subs and (self._subs[rel] is not None or not create):
            return self._subs[rel]
        try:
            d = self.root.sub(rel, create=True) if create else self.root.try_sub(rel)
        except ChecksumError as exc:
            self.damage(rel, exc.what)
            d = None
        if d is not None:
            self._stack.enter_context(d)
        self._subs[rel] = d
        return d

    def entries(self, rel: str) -> list[Entry]:
        d = self.sub(rel)
        return d.entries() if d is not None else []

    def damage(self, rel: str, what: str) -> None:
        """Report ``rel`` once (the first description of what is wrong with it)."""
        if not any(line.startswith(f"{rel}: ") for line in self._report.damaged):
            line = f"{rel}: {what}"
            self._report.damaged.append(line)
            log.warning("gc: %s (left alone)", line)

    def wrong_kind(self, rel: str, entry: Entry, expected: str) -> None:
        if entry.is_symlink:
            self.damage(rel, "is a symbolic link (never followed)")
        else:
            self.damage(rel, f"is {entry.kind}, not {expected}")


def collect(
    path: str | os.PathLike[str], *, grace: float | None = None, dry_run: bool = False
) -> GcReport:
    """Remove the leftovers of crashed writes and superseded versions older than ``grace``.

    Parameters
    ----------
    path : the dataset directory (a symlink to it is followed: it is what the
        caller named; nothing below it is).
    grace : seconds a superseded version is kept after the overwrite that
        replaced it (default: ``$SHARDSTORE_GC_GRACE_SECONDS`` or 24 hours).
        ``0`` removes every superseded version now, which breaks readers
        still using one.
    dry_run : only report what would be removed.

    Returns
    -------
    GcReport

    Raises
    ------
    ChecksumError
        ``.shardstore`` is a symlink or not a directory (nothing is touched).
    """
    root = Path(path)
    if grace is None:
        grace = default_grace()
    if isinstance(grace, bool) or not isinstance(grace, int | float) or not grace >= 0:
        raise InvalidInputError(
            f"grace must be a number of seconds >= 0, got {grace!r}", params=("grace",)
        )
    report = GcReport()
    try:
        rootdir = Directory.open(root, damage=True)
    except (FileNotFoundError, NotADirectoryError):
        return report
    with ExitStack() as stack:
        stack.enter_context(rootdir)
        top = rootdir.entries()
        ctl = next((e for e in top if e.name == CONTROL_DIR), None)
        if ctl is None and not any(_ours(e.name) for e in top):
            return report
        if ctl is not None and not ctl.is_dir:
            rootdir.sub(CONTROL_DIR).close()  # raises the damage error naming it
        area = _Area(rootdir, stack, report)
        moved = _decide(root, area, top, grace, dry_run, report)
        if moved is None:
            return report
        trash = area.sub(f"{CONTROL_DIR}/trash")
        for name in moved:
            if trash is not None:
                report.bytes_freed += trash.remove_tree(name)
    with contextlib.suppress(OSError):
        tidy_control_dir(root)
    if report.removed:
        log.info("gc %s: removed %d item(s), %d bytes", root, len(report.removed),
                 report.bytes_freed)  # fmt: skip
    return report


def _ours(name: str) -> bool:
    return bool(VERSION_DIR.fullmatch(name) or V1_TMP_MANIFEST.fullmatch(name))


def _decide(
    root: Path,
    area: _Area,
    top: list[Entry],
    grace: float,
    dry_run: bool,
    report: GcReport,
) -> list[str] | None:
    """Under the dataset lock: find what to delete, and move it into the trash.

    Returns the names moved into ``.shardstore/trash`` (``None`` with ``dry_run``).
    """
    now = time.time()
    #: (directory relpath, entry name, is a directory) of everything to delete
    doomed: list[tuple[str, str, bool]] = []
    writers = _Writers(root, report)
    stale_locks: set[str] = set()
    lock = FileLock(dataset_lock_path(root), below=root)
    lock.acquire()
    try:
        state = manifest_state(root)
        current = _current_manifest(root) if state.exists else None
        referenced = referenced_dirs(current) if current is not None else set()
        trust_listing = current is not None or not state.exists
        staging_rel = f"{CONTROL_DIR}/staging"
        retired_rel = f"{CONTROL_DIR}/retired"
        trash_rel = f"{CONTROL_DIR}/trash"

        for e in area.entries(staging_rel):
            rel = f"{staging_rel}/{e.name}"
            if not (e.is_dir or e.is_file):
                area.wrong_kind(rel, e, "a directory")
                continue
            version_id = e.name[2:] if VERSION_DIR.fullmatch(e.name) else None
            if version_id is not None and writers.running(version_id):
                report.in_progress.append(version_id)
                continue
            doomed.append((staging_rel, e.name, e.is_dir))
        for e in area.entries(CONTROL_DIR):
            if not (e.name.startswith("manifest-") and e.name.endswith(".tmp")):
                if e.name in ("staging", "retired", "trash", "writers") and not e.is_dir:
                    area.wrong_kind(f"{CONTROL_DIR}/{e.name}", e, "a directory")
                continue
            if not e.is_file:
                area.wrong_kind(f"{CONTROL_DIR}/{e.name}", e, "a regular file")
            elif not writers.running(e.name[len("manifest-") : -len(".tmp")]):
                doomed.append((CONTROL_DIR, e.name, False))
        for e in top:
            if V1_TMP_MANIFEST.fullmatch(e.name):  # format v1 writers
                if e.is_file:
                    doomed.append(("", e.name, False))
                else:
                    area.wrong_kind(e.name, e, "a regular file")
        for e in area.entries(f"{CONTROL_DIR}/writers"):
            if e.name.endswith(".lock") and writers.stale(e.name[: -len(".lock")]):
                stale_locks.add(e.name[: -len(".lock")])

        retired: dict[str, Entry] = {}
        for e in area.entries(retired_rel):
            if e.is_file:
                retired[e.name] = e
            else:
                area.wrong_kind(f"{retired_rel}/{e.name}", e, "a regular file")
        present = {e.name for e in top}
        for e in top:
            if not VERSION_DIR.fullmatch(e.name):
                continue
            if not e.is_dir:
                area.wrong_kind(e.name, e, "a directory")
                continue
            if not trust_listing:
                continue
            name, version_id = e.name, e.name[2:]
            if name in referenced:
                if name in retired:  # re-used by the current manifest: not garbage
                    doomed.append((retired_rel, name, False))
                continue
            if writers.running(version_id):
                report.in_progress.append(version_id)
                continue
            if name in retired:
                age = now - retired[name].stat.st_mtime
                if age >= grace:
                    doomed += [("", name, True), (retired_rel, name, False)]
                else:
                    report.kept_retired.append((name, grace - age))
                continue
            if version_id in stale_locks or grace == 0:
                doomed.append(("", name, True))  # never published (or the caller wants it all)
                continue
            report.kept_retired.append((name, grace))  # unknown origin: start the clock
            if not dry_run:
                marker_dir = area.sub(retired_rel, create=True)
                if marker_dir is not None and marker_dir.lstat(name) is None:
                    write_file_at(marker_dir, name, b'{"retired_at": "first seen by gc"}')
        for name in retired:
            if name not in present and (retired_rel, name, False) not in doomed:
                doomed.append((retired_rel, name, False))
        for e in area.entries(trash_rel):
            if e.is_dir or e.is_file:
                doomed.append((trash_rel, e.name, e.is_dir))
            else:
                area.wrong_kind(f"{trash_rel}/{e.name}", e, "a directory")

        report.removed = sorted({f"{d}/{n}" if d else n for d, n, _ in doomed})
        if dry_run:
            return None
        moved: list[str] = []
        for rel, name, is_dir in doomed:
            src = area.sub(rel)
            if src is None:
                continue
            if rel == trash_rel:
                moved.append(name)
                continue
            if not is_dir:
                try:
                    report.bytes_freed += src.unlink(name, missing_ok=True)
                except OSError as exc:
                    log.warning("gc: cannot remove %s: %s", src.child(name), exc)
                continue
            trash = area.sub(trash_rel, create=True)
            if trash is None:
                continue  # reported as damage
            dest = f"{name}.{secrets.token_hex(4)}"
            try:
                src.rename(name, trash, dest)
            except OSError as exc:
                log.warning("gc: cannot move %s to the trash: %s", src.child(name), exc)
                continue
            moved.append(dest)
        return moved
    finally:
        writers.release(unlink=stale_locks if not dry_run else set())
        lock.release()
