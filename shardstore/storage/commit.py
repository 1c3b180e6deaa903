"""The write transaction: staging area, locks, compare-and-swap publish, retirement.

Shared by everything that creates a dataset (:class:`~shardstore.writing.writer.Writer`,
:func:`~shardstore.writing.adopt.index_tfrecords`). A dataset directory looks like::

    <dataset>/
      manifest.json                  the commit point
      v-<version_id>/                shard files of a committed version (current or retired)
      .shardstore/                   control area (absent when there is nothing to say)
        lock                         the dataset lock (flock), short critical sections
        writers/<version_id>.lock    held (flock) by a running writer for its whole life
        staging/v-<version_id>/      where a running writer writes its shard files
        manifest-<version_id>.tmp    its manifest, before publication
        retired/v-<version_id>       marker: that version was superseded at this file's mtime
        trash/                       what garbage collection is deleting

A write (:class:`Transaction`) goes: :meth:`~Transaction.begin` creates and
locks its writer lock and its staging directory (under the dataset lock), and
collects garbage older than the grace period; the source writes shard files
into ``staging/v-<id>/``; :meth:`~Transaction.commit` stages the manifest,
then, under the dataset lock,

1. checks that ``manifest.json`` is still exactly what it was when the write
   started (compare-and-swap): if another writer committed meanwhile, this
   write fails with :class:`~shardstore.errors.CommitConflictError` and
   publishes nothing, so no commit is ever lost silently;
2. marks the version being replaced as retired (``retired/v-<old>``);
3. renames ``staging/v-<id>`` to ``v-<id>`` and publishes the manifest
   (``link`` for a first write, ``rename`` over the old one otherwise).

A crash at any point leaves either the previous state or the new one; what
it leaves behind is in ``.shardstore/`` (plus, for a crash between the
rename and the publication, one unreferenced ``v-<id>/`` whose writer lock
says it was never published), and :func:`shardstore.storage.garbage.collect` removes it.
Superseded versions are kept for a grace period so that readers that opened
them keep working (see ``docs/reliability.md``).

Every file and directory here is reached from the dataset root through
:mod:`shardstore.storage.safefs` (directory descriptors, ``O_NOFOLLOW``): a control
area, staging directory or lock file replaced by a symlink or by something
that is not a directory is refused as damage
(:class:`~shardstore.errors.ChecksumError`), never followed. The dataset root
is used as the caller names it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import stat
import time
from contextlib import ExitStack
from pathlib import Path

from shardstore.errors import (
    CommitConflictError,
    DatasetExistsError,
    from_os_error,
)
from shardstore.format.manifest import MANIFEST_NAME, Manifest
from shardstore.storage.fsutil import HashingFile, write_file_at
from shardstore.storage.garbage import collect
from shardstore.storage.layout import (
    CONTROL_DIR,
    DEFAULT_GRACE_SECONDS,
    GRACE_ENV_VAR,
    VERSION_DIR,
    ManifestState,
    _current_manifest,
    _open_root,
    control_dir,
    dataset_lock_path,
    default_grace,
    foreign_entries,
    manifest_state,
    referenced_dirs,
    retired_dir,
    staging_dir,
    tidy_control_dir,
    tmp_manifest_path,
    trash_dir,
    writer_lock_path,
    writers_dir,
)
from shardstore.storage.locks import FileLock, locked
from shardstore.storage.safefs import Directory

__all__ = [
    "CONTROL_DIR",
    "DEFAULT_GRACE_SECONDS",
    "GRACE_ENV_VAR",
    "VERSION_DIR",
    "ManifestState",
    "Transaction",
    "control_dir",
    "dataset_lock_path",
    "default_grace",
    "foreign_entries",
    "manifest_state",
    "referenced_dirs",
    "retired_dir",
    "staging_dir",
    "tidy_control_dir",
    "tmp_manifest_path",
    "trash_dir",
    "writer_lock_path",
    "writers_dir",
]

log = logging.getLogger(__name__)


class Transaction:
    """One write's claim on a dataset directory (see the module docstring).

    Parameters
    ----------
    root : the dataset directory.
    version_id : the new version's id (names ``v-<version_id>/``).
    overwrite : replace an existing dataset; without it, one that appears
        before the commit makes the commit fail, and a directory holding
        anything else than a dataset is refused.
    fsync : flush files and directories before publishing.
    base : the state of ``manifest.json`` when the write started (read it
        with :func:`manifest_state` before doing anything else); the commit
        succeeds only if it is unchanged.
    """

    def __init__(
        self,
        root: Path,
        version_id: str,
        *,
        overwrite: bool,
        fsync: bool,
        base: ManifestState,
    ) -> None:
        if not overwrite and base.exists:
            raise DatasetExistsError(
                f"a dataset already exists at {root}; pass overwrite=True to replace it",
                params=("overwrite",),
            )
        if not overwrite and not base.exists:
            foreign = foreign_entries(root)
            if foreign:
                shown = ", ".join(repr(n) for n in foreign[:5])
                more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
                raise DatasetExistsError(
                    f"{str(root)!r} is not empty and holds no dataset ({shown}{more}); write "
                    "the dataset to a new or empty directory, or pass overwrite=True to write "
                    "it into this one anyway",
                    params=("overwrite",),
                )
        self.root = root
        self.version_id = version_id
        self.prefix = f"v-{version_id}"
        self.overwrite = overwrite
        self.fsync = fsync
        self.base = base
        self.state = "new"  # new -> open -> committed | aborted
        self._writer_lock = FileLock(writer_lock_path(root, version_id), below=root)
        self._moved = False
        self._created_root = not os.path.lexists(root)

    @property
    def shard_root(self) -> Path:
        """The directory to give sources as ``root``: their files go to ``shard_root/prefix/``."""
        return staging_dir(self.root)

    @property
    def staged(self) -> Path:
        """This write's staging directory."""
        return staging_dir(self.root) / self.prefix

    def _lock(self) -> contextlib.AbstractContextManager[FileLock]:
        return locked(dataset_lock_path(self.root), below=self.root)

    def begin(self, *, collect_garbage: bool = True) -> None:
        """Lock this write in and create its staging directory (idempotent)."""
        if self.state == "open":
            return
        if self.state != "new":
            raise RuntimeError(f"this write is {self.state}")
        with Directory.open(self.root, create=True, damage=True) as d, self._lock():
            self._writer_lock.acquire()
            try:
                d.sub(f"{CONTROL_DIR}/staging/{self.prefix}", create=True).close()
            except BaseException:
                self._writer_lock.release(unlink=True)
                raise
        self.state = "open"
        if collect_garbage:
            try:
                collect(self.root)
            except Exception as exc:  # garbage collection must never fail a write
                log.warning("garbage collection in %s failed: %s", self.root, exc)

    def commit(self, manifest: Manifest) -> None:
        """Publish ``manifest`` (whose files are under :attr:`staged`), or raise.

        Raises
        ------
        CommitConflictError
            ``manifest.json`` changed since the write started (another writer
            committed first). Nothing of this write was published.
        ChecksumError
            The control area or this write's staging directory was replaced
            meanwhile by something that is not a directory (a symlink...).
        """
        if manifest.version_id != self.version_id:
            raise ValueError("the manifest belongs to another write")
        self.begin()
        tmp_name = tmp_manifest_path(self.root, self.version_id).name
        ours = self.prefix in referenced_dirs(manifest)
        with ExitStack() as stack:
            d = stack.enter_context(Directory.open(self.root, damage=True))
            ctl = stack.enter_context(d.sub(CONTROL_DIR))
            with HashingFile(ctl.child(tmp_name), fsync=self.fsync, below=self.root) as f:
                f.write(manifest.to_json().encode("utf-8"))
            staging = stack.enter_context(ctl.sub("staging"))
            if ours:
                st = staging.lstat(self.prefix)
                if st is None or not stat.S_ISDIR(st.st_mode):  # replaced under us
                    with staging.sub(self.prefix):
                        pass  # raises the damage error naming what is there
                if self.fsync:
                    with staging.sub(self.prefix) as staged:
                        staged.fsync_tree()
            with self._lock():
                now = manifest_state(self.root)
                if now != self.base:
                    raise self._conflict(now)
                if now.exists:
                    self._retire_current(d, referenced_dirs(manifest))
                if ours:
                    staging.rename(self.prefix, d, self.prefix)
                    self._moved = True
                    if self.fsync:
                        d.fsync()
                self._publish(ctl, tmp_name, d, replace=now.exists)
                self.state = "committed"
            if not ours:
                staging.remove_tree(self.prefix)
        self._writer_lock.release(unlink=True)
        with contextlib.suppress(OSError):
            tidy_control_dir(self.root)

    def _publish(self, ctl: Directory, tmp: str, root: Directory, *, replace: bool) -> None:
        """Atomically make ``ctl/tmp`` visible as ``root/manifest.json``.

        With ``replace=False`` the publication is create-only: if the manifest
        appears first (another writer committed), raise ``DatasetExistsError``.
        Readers see the old file or the new one, never a partial one.
        """
        if replace:
            ctl.replace(tmp, root, MANIFEST_NAME)
            root.fsync()
            return
        try:
            ctl.link(tmp, root, MANIFEST_NAME)
        except FileExistsError:
            raise DatasetExistsError(
                f"{self.root}: another writer committed a dataset here first"
            ) from None
        except OSError as exc:  # filesystems without hard links
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise from_os_error(exc, "publish", root.child(MANIFEST_NAME)) from exc
            if root.lstat(MANIFEST_NAME) is not None:
                raise DatasetExistsError(
                    f"{self.root}: another writer committed a dataset here first"
                ) from None
            ctl.replace(tmp, root, MANIFEST_NAME)
            root.fsync()
            return
        ctl.unlink(tmp, missing_ok=True)
        root.fsync()

    def suspend(self) -> None:
        """Let go of this write but keep its staging directory, for a resumable write.

        The writer lock is released, so a later run can take the write over
        (or garbage collection, run by another write, can remove it).
        """
        if self.state != "open":
            return
        self.state = "suspended"
        self._writer_lock.release(unlink=True)

    def abort(self) -> None:
        """Remove everything this write created; a committed dataset is untouched."""
        if self.state in ("committed", "aborted"):
            return
        was_open = self.state == "open"
        self.state = "aborted"
        if not was_open:
            return
        d = _open_root(self.root)
        if d is not None:
            with d:
                staging = _try_sub(d, f"{CONTROL_DIR}/staging")
                if staging is not None:
                    with staging:
                        staging.remove_tree(self.prefix)
                if self._moved:  # renamed into place, but the publication failed
                    d.remove_tree(self.prefix)
                ctl = _try_sub(d, CONTROL_DIR)
                if ctl is not None:
                    with ctl, contextlib.suppress(OSError):
                        ctl.unlink(tmp_manifest_path(self.root, self.version_id).name,
                                   missing_ok=True)  # fmt: skip
        with contextlib.suppress(OSError):
            self._writer_lock.release(unlink=True)
        with contextlib.suppress(OSError):
            tidy_control_dir(self.root)
        if self._created_root:
            with contextlib.suppress(OSError):
                self.root.rmdir()  # only if empty: never removes anything this write did not

    def _conflict(self, now: ManifestState) -> DatasetExistsError:
        if not self.base.exists:
            what = "committed a dataset here"
        else:
            what = f"replaced version {self.base.version_id or '(unreadable)'}"
        by = f" with version {now.version_id}" if now.version_id else ""
        if not now.exists:
            what, by = "deleted the dataset this write was to replace", ""
        return CommitConflictError(
            f"{self.root}: another writer {what}{by} after this write started; "
            "nothing of this write was published (start it again to write over the new state)"
        )

    def _retire_current(self, root: Directory, keep: set[str]) -> None:
        """Mark the directories of the manifest being replaced as superseded now."""
        current = _current_manifest(self.root)
        if current is None:
            return
        names = sorted(n for n in referenced_dirs(current) - keep if VERSION_DIR.fullmatch(n))
        if not names:
            return
        stamp = json.dumps({"retired_at": time.time(), "by": self.version_id}).encode()
        with root.sub(f"{CONTROL_DIR}/retired", create=True) as retired:
            for name in names:
                if retired.lstat(name) is not None:
                    retired.touch(name)  # a link or a non-file there is refused as damage
                else:
                    write_file_at(retired, name, stamp)


def _try_sub(d: Directory, rel: str) -> Directory | None:
    """``d.try_sub(rel)``, also ``None`` when something on the way is not a real directory."""
    try:
        return d.try_sub(rel)
    except OSError:
        return None
