"""The write transaction: staging area, locks, compare-and-swap publish, retirement.

Shared by everything that creates a dataset (:class:`~shardstore.writer.Writer`,
:func:`~shardstore.adopt.index_tfrecords`). A dataset directory looks like::

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
says it was never published), and :func:`shardstore.garbage.collect` removes it.
Superseded versions are kept for a grace period so that readers that opened
them keep working (see ``docs/reliability.md``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from pathlib import Path

from shardstore import faults
from shardstore.checksum import new_hasher
from shardstore.errors import CommitConflictError, DatasetExistsError
from shardstore.fsutil import (
    fsync_dir,
    fsync_tree,
    make_dirs,
    publish,
    remove_quietly,
    remove_tree,
    rename,
    write_new_file,
)
from shardstore.locks import FileLock, locked
from shardstore.manifest import MANIFEST_NAME, Manifest

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


def manifest_state(root: Path) -> ManifestState:
    """Read ``<root>/manifest.json`` (never through a symlink) into a :class:`ManifestState`."""
    path = root / MANIFEST_NAME
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return ManifestState(None, None)
    except OSError as exc:  # a symlink (ELOOP), a directory, no permission...
        return ManifestState(f"unreadable:{exc.errno}:{os.lstat(path).st_ino}", None)
    try:
        with os.fdopen(fd, "rb") as f:
            data = f.read()
    except OSError as exc:
        return ManifestState(f"unreadable:{exc.errno}", None)
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
    try:
        fd = os.open(root / MANIFEST_NAME, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as f:
            return Manifest.from_json(f.read())
    except FileNotFoundError:
        return None
    except Exception as exc:  # any unreadable or invalid manifest: retire nothing
        log.warning("cannot read the manifest of %s (%s)", root, exc)
        return None


def tidy_control_dir(root: Path) -> None:
    """Remove ``.shardstore/`` pieces that are empty, and the whole of it if nothing is left."""
    ctl = control_dir(root)
    if not ctl.is_dir():
        return
    lock = FileLock(dataset_lock_path(root))
    lock.acquire()
    try:
        for sub in (staging_dir(root), writers_dir(root), retired_dir(root), trash_dir(root)):
            with contextlib.suppress(OSError):
                sub.rmdir()
                faults.storage_op("rmdir")
        with contextlib.suppress(OSError):
            if os.listdir(ctl) == ["lock"]:
                lock.release(unlink=True)
                ctl.rmdir()
                faults.storage_op("rmdir")
    finally:
        lock.release()


class Transaction:
    """One write's claim on a dataset directory (see the module docstring).

    Parameters
    ----------
    root : the dataset directory.
    version_id : the new version's id (names ``v-<version_id>/``).
    overwrite : replace an existing dataset; without it, one that appears
        before the commit makes the commit fail.
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
        self.root = root
        self.version_id = version_id
        self.prefix = f"v-{version_id}"
        self.overwrite = overwrite
        self.fsync = fsync
        self.base = base
        self.state = "new"  # new -> open -> committed | aborted
        self._writer_lock = FileLock(writer_lock_path(root, version_id))
        self._moved = False
        self._created_root = not root.exists()

    @property
    def shard_root(self) -> Path:
        """The directory to give sources as ``root``: their files go to ``shard_root/prefix/``."""
        return staging_dir(self.root)

    @property
    def staged(self) -> Path:
        """This write's staging directory."""
        return staging_dir(self.root) / self.prefix

    def begin(self, *, collect_garbage: bool = True) -> None:
        """Lock this write in and create its staging directory (idempotent)."""
        if self.state == "open":
            return
        if self.state != "new":
            raise RuntimeError(f"this write is {self.state}")
        make_dirs(self.root)
        with locked(dataset_lock_path(self.root)):
            self._writer_lock.acquire()
            make_dirs(self.staged)
        self.state = "open"
        if collect_garbage:
            from shardstore.garbage import collect

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
        """
        if manifest.version_id != self.version_id:
            raise ValueError("the manifest belongs to another write")
        self.begin()
        tmp = tmp_manifest_path(self.root, self.version_id)
        write_new_file(tmp, manifest.to_json().encode("utf-8"), fsync=self.fsync)
        ours = self.prefix in referenced_dirs(manifest)
        if self.fsync and ours:
            fsync_tree(self.staged)
        with locked(dataset_lock_path(self.root)):
            now = manifest_state(self.root)
            if now != self.base:
                raise self._conflict(now)
            if now.exists:
                self._retire_current(referenced_dirs(manifest))
            if ours:
                rename(self.staged, self.root / self.prefix)
                self._moved = True
                if self.fsync:
                    fsync_dir(self.root)
            publish(tmp, self.root / MANIFEST_NAME, replace=now.exists)
            self.state = "committed"
        if not ours:
            remove_tree(self.staged)
        self._writer_lock.release(unlink=True)
        with contextlib.suppress(OSError):
            tidy_control_dir(self.root)

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
        remove_tree(self.staged)
        if self._moved:  # renamed into place, but the publication failed
            remove_tree(self.root / self.prefix)
        remove_quietly(tmp_manifest_path(self.root, self.version_id))
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

    def _retire_current(self, keep: set[str]) -> None:
        """Mark the directories of the manifest being replaced as superseded now."""
        current = _current_manifest(self.root)
        if current is None:
            return
        names = sorted(n for n in referenced_dirs(current) - keep if VERSION_DIR.fullmatch(n))
        if not names:
            return
        make_dirs(retired_dir(self.root))
        stamp = json.dumps({"retired_at": time.time(), "by": self.version_id}).encode()
        for name in names:
            marker = retired_dir(self.root) / name
            if marker.exists():
                os.utime(marker)
                faults.storage_op("touch")
            else:
                write_new_file(marker, stamp, fsync=False)
