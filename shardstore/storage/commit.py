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
import re
import stat
import time
from contextlib import ExitStack
from pathlib import Path

from shardstore.errors import (
    CommitConflictError,
    DatasetExistsError,
    ShardStoreError,
    from_os_error,
)
from shardstore.format.checksum import new_hasher
from shardstore.format.manifest import MANIFEST_NAME, Manifest
from shardstore.storage.fsutil import HashingFile, read_manifest_bytes, write_file_at
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

CONTROL_DIR = ".shardstore"
#: Names of version directories (``v-`` and a version id).
VERSION_DIR = re.compile(r"v-[0-9a-f]{8,64}")
#: Superseded versions are kept at least this long (seconds) before collection.
DEFAULT_GRACE_SECONDS = 24 * 3600.0
#: Environment variable overriding :data:`DEFAULT_GRACE_SECONDS`.
GRACE_ENV_VAR = "SHARDSTORE_GC_GRACE_SECONDS"


#: Names of manifests of format version 1 writers being written (``.manifest-<id>.tmp``).
V1_TMP_MANIFEST = re.compile(r"\.manifest-.*\.tmp")


def control_dir(root: Path) -> Path:
    """``<root>/.shardstore``."""
    return root / CONTROL_DIR


def dataset_lock_path(root: Path) -> Path:
    """The dataset lock file."""
    return control_dir(root) / "lock"


def writers_dir(root: Path) -> Path:
    """Where running writers keep their lock files."""
    return control_dir(root) / "writers"


def writer_lock_path(root: Path, version_id: str) -> Path:
    """The lock a running writer of ``version_id`` holds."""
    return writers_dir(root) / f"{version_id}.lock"


def staging_dir(root: Path) -> Path:
    """The staging area: writers write ``v-<id>/`` here and rename it out at commit."""
    return control_dir(root) / "staging"


def retired_dir(root: Path) -> Path:
    """Markers of superseded versions (their mtime is when they were superseded)."""
    return control_dir(root) / "retired"


def trash_dir(root: Path) -> Path:
    """Directories being deleted by garbage collection."""
    return control_dir(root) / "trash"


def tmp_manifest_path(root: Path, version_id: str) -> Path:
    """Where the manifest of ``version_id`` is staged before it is published."""
    return control_dir(root) / f"manifest-{version_id}.tmp"


def default_grace() -> float:
    """The grace period in seconds: ``$SHARDSTORE_GC_GRACE_SECONDS`` or 24 hours."""
    value = os.environ.get(GRACE_ENV_VAR, "").strip()
    if value:
        try:
            grace = float(value)
            if grace >= 0:
                return grace
        except ValueError:
            pass
        log.warning("ignoring %s=%r: not a number of seconds >= 0", GRACE_ENV_VAR, value)
    return DEFAULT_GRACE_SECONDS


class ManifestState:
    """What ``manifest.json`` holds right now, compared byte for byte.

    ``token`` is ``None`` when there is no manifest, else a hash of its bytes
    (or a description of why it cannot be read); ``version_id`` is the
    manifest's ``version_id`` when it can be told.
    """

    def __init__(self, token: str | None, version_id: str | None) -> None:
        self.token = token
        self.version_id = version_id

    @property
    def exists(self) -> bool:
        """Whether something is at ``manifest.json``."""
        return self.token is not None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ManifestState) and other.token == self.token

    def __hash__(self) -> int:
        return hash(self.token)

    def __repr__(self) -> str:
        return f"ManifestState(token={self.token!r}, version_id={self.version_id!r})"


def _open_root(root: Path) -> Directory | None:
    """The dataset directory, opened as named; ``None`` when there is none."""
    try:
        return Directory.open(root, damage=True)
    except (FileNotFoundError, NotADirectoryError):
        return None


def manifest_state(root: Path) -> ManifestState:
    """Read ``<root>/manifest.json`` (never through a symlink, never blocking) into a state."""
    d = _open_root(root)
    if d is None:
        return ManifestState(None, None)
    with d:
        st = d.lstat(MANIFEST_NAME)
        if st is None:
            return ManifestState(None, None)
        if not stat.S_ISREG(st.st_mode):  # a link, a directory, a FIFO...: damage
            return ManifestState(f"unreadable:mode {st.st_mode:o}:{st.st_ino}", None)
        try:
            data = read_manifest_bytes(d, MANIFEST_NAME)
        except (OSError, ShardStoreError) as exc:
            return ManifestState(f"unreadable:{getattr(exc, 'errno', None)}:{st.st_ino}", None)
    if data is None:
        return ManifestState(None, None)
    hasher = new_hasher()
    hasher.update(data)
    version_id = None
    with contextlib.suppress(ValueError, AttributeError, RecursionError):
        value = json.loads(data).get("version_id")
        version_id = value if isinstance(value, str) else None
    return ManifestState(f"xxh3_64:{hasher.hexdigest()}", version_id)


def referenced_dirs(manifest: Manifest) -> set[str]:
    """The top-level names (e.g. ``v-<id>``) the manifest's files live under."""
    return {f.path.split("/", 1)[0] for s in manifest.shards for f in s.files}


def _current_manifest(root: Path) -> Manifest | None:
    """The committed manifest, or ``None`` if there is none or it is invalid."""
    d = _open_root(root)
    if d is None:
        return None
    try:
        with d:
            data = read_manifest_bytes(d, MANIFEST_NAME)
        return None if data is None else Manifest.from_json(data)
    except Exception as exc:  # any unreadable or invalid manifest: retire nothing
        log.warning("cannot read the manifest of %s (%s)", root, exc)
        return None


def foreign_entries(root: Path) -> list[str]:
    """Names in ``root`` that shardstore did not put there (empty if ``root`` is missing)."""
    d = _open_root(root)
    if d is None:
        return []
    with d:
        return [
            n
            for n in d.names()
            if n not in (CONTROL_DIR, MANIFEST_NAME)
            and not VERSION_DIR.fullmatch(n)
            and not V1_TMP_MANIFEST.fullmatch(n)
        ]


def tidy_control_dir(root: Path) -> None:
    """Remove ``.shardstore/`` pieces that are empty, and the whole of it if nothing is left."""
    d = _open_root(root)
    if d is None:
        return
    with d:
        st = d.lstat(CONTROL_DIR)
        if st is None or not stat.S_ISDIR(st.st_mode):
            return
        lock = FileLock(dataset_lock_path(root), below=root)
        lock.acquire()
        try:
            with d.sub(CONTROL_DIR) as ctl:
                for sub in ("staging", "writers", "retired", "trash"):
                    sst = ctl.lstat(sub)
                    if sst is not None and stat.S_ISDIR(sst.st_mode):
                        with contextlib.suppress(OSError):
                            ctl.rmdir(sub)
                if ctl.names() == ["lock"]:
                    lock.release(unlink=True)
                    with contextlib.suppress(OSError):
                        d.rmdir(CONTROL_DIR)
        finally:
            lock.release()


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
            from shardstore.storage.garbage import collect

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
