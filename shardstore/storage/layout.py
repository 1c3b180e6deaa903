"""The layout of a dataset: version directories, the control area, locks and leases.

What the write transaction (:mod:`shardstore.storage.commit`,
:mod:`shardstore.storage.objcommit` in an object store) and garbage collection
(:mod:`shardstore.storage.garbage`, :mod:`shardstore.storage.objgc`) both need to know
about a dataset: where things are, what the current manifest is, which version
directories it references, and how long superseded versions and silent writers are
given.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import stat
from pathlib import Path

from shardstore.errors import (
    ShardStoreError,
)
from shardstore.format.manifest import MANIFEST_NAME, Manifest
from shardstore.storage.checksum import new_hasher
from shardstore.storage.fsutil import read_manifest_bytes
from shardstore.storage.locks import FileLock
from shardstore.storage.safefs import Directory

__all__ = [
    "CONTROL_DIR",
    "DEFAULT_GRACE_SECONDS",
    "GRACE_ENV_VAR",
    "LEASES",
    "RETIRED",
    "V1_TMP_MANIFEST",
    "VERSION_DIR",
    "WRITER_TIMEOUT_ENV",
    "WRITER_TIMEOUT_SECONDS",
    "ManifestState",
    "control_dir",
    "dataset_lock_path",
    "default_grace",
    "foreign_entries",
    "lease_key",
    "manifest_state",
    "referenced_dirs",
    "referenced_prefixes",
    "retired_dir",
    "staging_dir",
    "tidy_control_dir",
    "tmp_manifest_path",
    "trash_dir",
    "writer_lock_path",
    "writer_timeout",
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


# -- in an object store (no directories, no locks: leases and markers) -------------------
#: Where running writers keep their leases, and where superseded versions are marked.
LEASES = ".shardstore/writers/"
RETIRED = ".shardstore/retired/"
#: A lease not refreshed for this long (seconds) belongs to a writer that is gone.
WRITER_TIMEOUT_SECONDS = 600.0
#: Environment variable overriding :data:`WRITER_TIMEOUT_SECONDS`.
WRITER_TIMEOUT_ENV = "SHARDSTORE_WRITER_TIMEOUT_SECONDS"


def writer_timeout() -> float:
    """Seconds after which an unrefreshed lease is dead (``$SHARDSTORE_WRITER_TIMEOUT_SECONDS``)."""
    value = os.environ.get(WRITER_TIMEOUT_ENV, "").strip()
    if value:
        try:
            seconds = float(value)
            if seconds > 0:
                return seconds
        except ValueError:
            pass
        log.warning("ignoring %s=%r: not a number of seconds > 0", WRITER_TIMEOUT_ENV, value)
    return WRITER_TIMEOUT_SECONDS


def lease_key(version_id: str) -> str:
    """The lease object of the writer of ``version_id``."""
    return f"{LEASES}{version_id}.json"


def referenced_prefixes(manifest: Manifest) -> set[str]:
    """The top-level names (``v-<id>``) the manifest's files live under."""
    return {f.path.split("/", 1)[0] for s in manifest.shards for f in s.stored_files}
