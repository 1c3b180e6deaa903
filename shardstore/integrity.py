"""Checksums on the read path: every file is verified before this process first reads it.

The policy (``docs/reliability.md`` has the measured cost):

``verify="once"`` (the default)
    Before a shard file is read for the first time in this process, its
    size and its xxh3 checksum are compared with the manifest; a mismatch
    raises :class:`~shardstore.errors.ChecksumError` naming the dataset, the
    shard and the file, before a single record is returned. Files are
    hashed in parallel threads (xxh3 and file reads release the GIL). A file
    that passed is remembered by its real path, device, inode, size,
    ``mtime_ns`` and ``ctime_ns``, so later epochs, later ``to_tf`` calls and
    other ``Dataset`` objects over the same files only ``stat`` it.
``verify="size"``
    Only existence and size are checked (the cost of a ``stat``): for
    storage you trust, or datasets too big to hash at start-up.

Set the default for a process with ``SHARDSTORE_VERIFY=size`` (or ``once``);
choose per dataset with ``shardstore.open(path, verify=...)``.
:meth:`Dataset.verify` always re-hashes every file, whatever the mode.

What this does not catch: a file that changes *after* this process verified
it without its size, mtime or inode changing (bit rot under a running job).
Shard files are never rewritten in place by shardstore itself.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from shardstore.checksum import hash_file
from shardstore.errors import ChecksumError, InvalidInputError
from shardstore.manifest import MAX_EXPANSION, FileEntry, ShardEntry

__all__ = [
    "ENV_VAR",
    "MAX_EXPANSION",
    "VERIFY_MODES",
    "check_shards",
    "default_mode",
    "forget",
    "hash_files",
    "normalize_mode",
]

#: The accepted values of ``verify``.
VERIFY_MODES: tuple[str, ...] = ("once", "size")
#: Environment variable that sets the default mode.
ENV_VAR = "SHARDSTORE_VERIFY"
#: Threads hashing files at once (bounded: beyond the storage's bandwidth it only thrashes).
MAX_THREADS = 8

_Signature = tuple[int, int, int, int, int]
_lock = threading.Lock()
_verified: dict[tuple[str, str], _Signature] = {}


def default_mode() -> str:
    """``$SHARDSTORE_VERIFY`` if set to a valid mode, else ``"once"``."""
    value = os.environ.get(ENV_VAR, "").strip().lower()
    return value if value in VERIFY_MODES else "once"


def normalize_mode(mode: str | None) -> str:
    """Validate a ``verify=`` argument (``None``: the default mode)."""
    if mode is None:
        return default_mode()
    if mode not in VERIFY_MODES:
        raise InvalidInputError(
            f"verify must be one of {', '.join(repr(m) for m in VERIFY_MODES)}, got {mode!r}"
        )
    return mode


def forget() -> None:
    """Forget which files this process has verified (the next read hashes them again)."""
    with _lock:
        _verified.clear()


def _signature(st: os.stat_result) -> _Signature:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


Damaged = Callable[[ShardEntry, str, str], ChecksumError]


def check_shards(
    shards: Iterable[ShardEntry],
    resolve_stat: Callable[[str], tuple[str, os.stat_result | None]],
    damaged: Damaged,
    *,
    mode: str,
    rehash: bool = False,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Check every file of ``shards`` according to ``mode``; raise the first damage found.

    Parameters
    ----------
    shards : the shard entries to check.
    resolve_stat : manifest path -> (real path inside the dataset, its ``stat`` or
        ``None`` when missing); refuses escapes
        (:meth:`shardstore.fsutil.InsideResolver.resolve_stat`).
    damaged : builds the ``ChecksumError`` for ``(shard, relpath, what)``.
    mode : ``"once"`` or ``"size"`` (see the module docstring).
    rehash : hash every file even if it was verified before (``Dataset.verify``).
    progress : called with the byte count of each file once it is checked.

    Raises
    ------
    ChecksumError
        The first missing, resized or altered file, in shard order.
    ManifestError
        A path that leaves the dataset directory.
    """
    todo: list[tuple[ShardEntry, FileEntry, str, _Signature]] = []
    for shard in shards:
        for f in shard.files:
            path, st = resolve_stat(f.path)
            if st is None:
                raise damaged(shard, f.path, "is missing")
            if st.st_size != f.size:
                what = f"has {st.st_size} bytes, the manifest records {f.size}"
                raise damaged(shard, f.path, what)
            sig = _signature(st)
            if mode == "size" and not rehash:
                continue
            if not rehash:
                with _lock:
                    if _verified.get((path, f.checksum)) == sig:
                        if progress is not None:
                            progress(f.size)
                        continue
            todo.append((shard, f, path, sig))
    if not todo:
        return
    results = hash_files([path for _, _, path, _ in todo], progress=progress)
    for (shard, f, path, sig), (size, checksum) in zip(todo, results, strict=True):
        if isinstance(checksum, BaseException):
            raise damaged(shard, f.path, f"cannot be read ({checksum})") from checksum
        if size != f.size:
            raise damaged(shard, f.path, f"has {size} bytes, the manifest records {f.size}")
        if checksum != f.checksum:
            raise damaged(
                shard, f.path, f"has checksum {checksum}, the manifest records {f.checksum}"
            )
        try:
            unchanged = _signature(os.stat(path)) == sig
        except OSError:
            unchanged = False
        if unchanged:  # do not vouch for a file that changed while it was hashed
            with _lock:
                _verified[(path, f.checksum)] = sig


def hash_files(
    paths: Sequence[str | Path], *, progress: Callable[[int], None] | None = None
) -> list[tuple[int, str | BaseException]]:
    """``(size, checksum)`` of each file, hashed by up to :data:`MAX_THREADS` threads.

    Each thread hashes a contiguous slice of ``paths`` (one task per thread,
    not per file: a dataset of many small files would otherwise spend more
    time queueing futures than hashing). A file that cannot be read gives
    ``(0, the OSError)`` instead of raising, so the caller reports the first
    problem in its own order.
    """

    def one(path: str | Path) -> tuple[int, str | BaseException]:
        try:
            size, checksum = hash_file(path)
        except OSError as exc:
            return 0, exc
        if progress is not None:
            progress(size)
        return size, checksum

    threads = min(MAX_THREADS, os.cpu_count() or 1, len(paths))
    if threads <= 1:
        return [one(p) for p in paths]
    # slices interleaved by size rank would balance better; contiguous slices keep
    # each thread's reads sequential on disk, and shard files are of similar sizes
    step = -(-len(paths) // threads)
    slices = [paths[i : i + step] for i in range(0, len(paths), step)]
    with ThreadPoolExecutor(len(slices), thread_name_prefix="shardstore-verify") as pool:
        parts = pool.map(lambda part: [one(p) for p in part], slices)
        return [r for part in parts for r in part]
