"""A local cache of whole shards from object storage: bounded, verified, shared by processes.

Reading a dataset from S3 (or GCS, Azure...) shard by shard through a local disk keeps
the fast local read paths (memory maps, ``preadv``) and makes later epochs run at local
speed. The cache:

* keeps **whole shards** (every file of a shard), laid out as in the dataset under
  ``<cache_dir>/<store>/``, so a source reads a cached shard exactly as a local one;
* **verifies** every file while it downloads (size and checksum from the manifest)
  into a temporary file, and renames it into place only if it matches: no byte of a
  damaged object reaches a reader (:class:`~shardstore.errors.ChecksumError` names it);
* is **bounded** by ``limit`` bytes: least recently used shards are evicted first, and
  never one that a reader or the prefetcher holds (an advisory ``flock`` per shard:
  shared while in use, exclusive while downloaded or evicted, so the kernel releases
  it when a process dies);
* is **shared** by every process on the machine that uses the same directory: one
  downloads a shard, the others wait for it and then read the same files;
* **prefetches** ahead of the reader: given the order in which shards will be read
  (known in advance from the shuffle seed and the epoch), up to ``depth`` shards
  download concurrently ahead of the one being read.

Layout of the directory::

    <cache_dir>/
      .lock                        serialises eviction decisions between processes
      .tmp/<entry>-<random>        downloads in progress (sized to the final file)
      <store>/                     one folder per dataset location (hash + readable tail)
        <relpath>...               the shard files, as in the dataset
        .entries/<entry>.lock      the shard's lock (shared: in use; exclusive: changing)
        .entries/<entry>.done      the shard is complete and verified; mtime = last use
        .entries/<entry>.ranged    the shard has sparse copies under .ranges/; mtime = last use
        .ranges/<relpath>...       sparse copies of shard files, filled block by block
                                   (:mod:`shardstore.storage.partial`, for ``ds[i]``)
      .scratch/<token>/<relpath>   a reader's private copy of the blocks it reads while
                                   every sparse copy is in use (gone when it is done)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterator, Sequence
from concurrent import futures
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType

import numpy as np

from shardstore.errors import ChecksumError, InvalidInputError, StorageError
from shardstore.format.manifest import FileEntry, ShardEntry
from shardstore.storage.base import Store
from shardstore.storage.checksum import format_digest, new_hasher

__all__ = [
    "CACHE_DIR_ENV",
    "CACHE_LIMIT_ENV",
    "DEFAULT_DEPTH",
    "CacheFullError",
    "ShardCache",
    "default_cache_dir",
    "parse_size",
]

log = logging.getLogger(__name__)

#: Environment variables for the default cache directory and size limit.
CACHE_DIR_ENV = "SHARDSTORE_CACHE_DIR"
CACHE_LIMIT_ENV = "SHARDSTORE_CACHE_LIMIT"
#: Shards downloaded concurrently ahead of the reader.
DEFAULT_DEPTH = 8
#: Shards a process keeps pinned after it last used them (besides the prefetched ones).
DEFAULT_KEEP = 8
#: Bytes per read from the store while downloading.
CHUNK_BYTES = 8 << 20
#: A part file unlocked and untouched this long (s) was left by a process that died.
STALE_PART_SECONDS = 60.0
#: How long a download waits for room held by other processes before giving up (s).
ROOM_TIMEOUT = 120.0
#: How long a reader's private copy waits for room held by readers before going over (s).
OVERDRAW_WAIT = 1.0
#: Readers' private copies (blocks read when every sparse copy is in use), in the cache.
SCRATCH_DIR = ".scratch"
#: How a private copy's reservation is named in ``.tmp``.
SCRATCH_PREFIX = "scratch-"

_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12,
    "tb": 10**12, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
}  # fmt: skip
_SIZE_PARAM = ("shard_size",)
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(size: int | str) -> int:
    """Bytes from an ``int`` or a string such as ``"64MiB"``, ``"1GB"``, ``"512k"``."""
    if isinstance(size, bool):
        raise InvalidInputError(f"shard_size must be a size, got {size!r}", params=_SIZE_PARAM)
    if isinstance(size, int | np.integer):
        value = int(size)
    elif isinstance(size, str) and (m := _SIZE.match(size)) and m.group(2).lower() in _UNITS:
        value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    else:
        raise InvalidInputError(
            f"shard_size {size!r} is not a size; use bytes or a string like '64MiB'",
            params=_SIZE_PARAM,
        )
    if value <= 0:
        raise InvalidInputError(f"shard_size must be > 0 bytes, got {size!r}", params=_SIZE_PARAM)
    return value


class CacheFullError(StorageError):
    """The cache cannot make room: everything in it is in use (raise ``cache_limit``)."""


def default_cache_dir() -> Path:
    """``$SHARDSTORE_CACHE_DIR``, else ``$XDG_CACHE_HOME/shardstore`` or ``~/.cache/shardstore``."""
    value = os.environ.get(CACHE_DIR_ENV)
    if value:
        return Path(value)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "shardstore"


def _store_folder(store: Store) -> str:
    h = new_hasher()
    h.update(store.url.encode())
    tail = re.sub(r"[^A-Za-z0-9_.-]+", "_", store.url.split("://", 1)[-1])[-48:].strip("_.")
    return f"{h.hexdigest()[:12]}-{tail or 'store'}"


def entry_id(shard: ShardEntry) -> str:
    """The cache name of a shard: a hash of its files' paths and checksums."""
    h = new_hasher()
    for f in shard.stored_files:
        h.update(f"{f.path}\0{f.checksum}\n".encode())
    return h.hexdigest()


class _Pin:
    """This process's shared lock on one cached shard (refcounted)."""

    __slots__ = ("count", "fd", "key")

    def __init__(self, key: tuple[str, str], fd: int) -> None:
        self.key = key
        self.fd = fd
        self.count = 0


class ShardCache:
    """See the module docstring.

    Parameters
    ----------
    directory : the cache directory (default :func:`default_cache_dir`).
    limit : bytes the cached shards (and downloads in progress) may take, an int or a
        size string such as ``"200GiB"``. Default: ``$SHARDSTORE_CACHE_LIMIT``, else
        half the free space of the directory's file system when the cache is created.
    depth : shards downloaded concurrently ahead of the reader.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        limit: int | str | None = None,
        *,
        depth: int = DEFAULT_DEPTH,
    ) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        try:
            (self.directory / ".tmp").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidInputError(
                f"cannot use {str(self.directory)!r} as the shard cache: {exc.strerror}"
            ) from None
        if limit is None:
            limit = os.environ.get(CACHE_LIMIT_ENV) or None
        if limit is None:
            usage = shutil.disk_usage(self.directory)
            self.limit = max(1, usage.free // 2)
        else:
            try:
                self.limit = parse_size(limit)
            except InvalidInputError:
                raise InvalidInputError(
                    f"cache_limit {limit!r} is not a size; use bytes or a string like '200GiB'"
                ) from None
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise InvalidInputError(f"the prefetch depth must be an integer >= 1, got {depth!r}")
        self.depth = depth
        self.keep = DEFAULT_KEEP
        #: Shards a reader may still be reading after releasing them (the shards of a
        #: ``tf.data`` interleave are read after the Python step that fetched them):
        #: the most recently released ones stay pinned, even under pressure. Set by
        #: :meth:`plan`; 0 (nothing kept) for readers that hold what they read.
        self.readers = 0
        self._recent: deque[tuple[str, str]] = deque(maxlen=self.readers)
        #: Seconds a download waits for room that other readers hold before failing.
        self.room_timeout = ROOM_TIMEOUT
        self._lock = threading.Lock()
        self._pins: dict[tuple[str, str], _Pin] = {}
        self._idle: OrderedDict[tuple[str, str], _Pin] = OrderedDict()  # pinned, unused
        self._pending: dict[tuple[str, str], Future[None]] = {}
        self._planned: list[tuple[Store, ShardEntry]] = []
        self._plan_pos = 0
        self._pid = os.getpid()
        #: Bytes downloaded and requests made by this process (for benchmarks and logs).
        self.bytes_downloaded = 0
        self.downloads = 0

    def __repr__(self) -> str:
        return f"ShardCache({str(self.directory)!r}, limit={self.limit})"

    # -- paths ------------------------------------------------------------------------------
    def root(self, store: Store) -> Path:
        """Where the shards of ``store`` are kept (the dataset's layout under it)."""
        return self.directory / _store_folder(store)

    def path(self, store: Store, relpath: str) -> Path:
        """The cached copy of ``relpath`` (present while its shard is acquired)."""
        return self.root(store) / relpath

    def _entry_paths(self, store: Store, eid: str) -> tuple[Path, Path]:
        meta = self.root(store) / ".entries"
        return meta / f"{eid}.lock", meta / f"{eid}.done"

    def check_room(self, shard_bytes: int, shards: int, *, what: str) -> None:
        """Refuse a reader that needs ``shards`` shards of up to ``shard_bytes`` at once.

        Raises
        ------
        InvalidInputError
            ``limit`` is smaller than what the reader holds at once: waiting for room
            could never end, so it fails now.
        """
        need = shard_bytes * shards
        if need > self.limit:
            raise InvalidInputError(
                f"cache_limit {self.limit} bytes cannot hold the {shards} shards {what} keeps "
                f"at once (up to {shard_bytes} bytes each, {need} bytes): raise cache_limit to "
                f"at least {need} bytes, or write the dataset with smaller shards"
            )

    @contextlib.contextmanager
    def entry_held(self, store: Store, shard: ShardEntry) -> Iterator[bool]:
        """Hold ``shard``'s entry shared (nothing evicts its files meanwhile).

        Yields whether the whole shard is in the cache, complete and verified.
        Waits while another thread or process downloads or evicts it.
        """
        self._after_fork()
        lock_path, done_path = self._entry_paths(store, entry_id(shard))
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield self._complete(store, shard, done_path)
        finally:
            os.close(fd)

    def try_room(self, nbytes: int) -> contextlib.AbstractContextManager[None] | None:
        """Reserve ``nbytes`` now if room can be made, for a sparse copy filled in place.

        Sparse copies grow block by block and count by the blocks they hold; the
        reservation (a context manager: held while the bytes are written) counts
        them until they are on disk, for an instant twice, never less, so fills
        and downloads running at once never together pass ``limit``. ``None``
        when nothing evictable is left: readers in flight hold every copy.
        """
        self._after_fork()
        got = self._reserve(nbytes, "ranged", when_full="none")
        return None if got is None else self._held_reservation(*got)

    def room(self, nbytes: int, *, name: str) -> contextlib.AbstractContextManager[None]:
        """Reserve ``nbytes`` while the block holds (for a reader's private copy, ``name``).

        Waits up to ``OVERDRAW_WAIT`` seconds for room, then reserves anyway: the
        bytes are in flight, read by one reader and gone when the block ends, so
        readers that together read more than the limit at once exceed it for that
        long instead of waiting on each other.
        """
        self._after_fork()
        got = self._reserve(nbytes, name, when_full="overdraw")
        assert got is not None
        return self._held_reservation(*got)

    @contextlib.contextmanager
    def _held_reservation(self, path: Path, fd: int) -> Iterator[None]:
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
            os.close(fd)

    # -- acquiring --------------------------------------------------------------------------
    def acquire(self, store: Store, shard: ShardEntry) -> None:
        """Make sure every file of ``shard`` is in the cache, and pin it (blocking).

        Pair with :meth:`release`. The files are then at :meth:`path` and stay there
        (no process evicts a pinned shard) until released.
        """
        self._after_fork()
        key = (_store_folder(store), entry_id(shard))
        with self._lock:
            pin = self._pins.get(key)
            if pin is not None:
                pin.count += 1
                self._idle.pop(key, None)
                moved = self._advance(key)
            future = self._pending.get(key)
        if pin is None:
            if future is not None:
                future.result()  # the prefetcher is downloading it: wait, then pin below
            fd = self._ensure(store, shard)
            with self._lock:
                pin = self._pins.get(key)
                if pin is None:
                    pin = self._pins[key] = _Pin(key, fd)
                else:  # pinned meanwhile (by the prefetcher or another thread)
                    os.close(fd)
                pin.count += 1
                self._idle.pop(key, None)
                moved = self._advance(key)
        if moved:
            self._fill()

    def release(self, store: Store, shard: ShardEntry) -> None:
        """Undo one :meth:`acquire`; the shard stays pinned while recently used."""
        key = (_store_folder(store), entry_id(shard))
        with self._lock:
            pin = self._pins.get(key)
            if pin is None or pin.count == 0:
                return
            pin.count -= 1
            if key in self._recent:
                self._recent.remove(key)
            if self.readers:
                self._recent.append(key)
            if pin.count == 0:
                self._idle[key] = pin
                self._idle.move_to_end(key)
                self._trim()

    def _trim(self) -> None:
        """Unpin the least recently used idle shards beyond ``keep`` (not those planned next)."""
        planned = {(_store_folder(s), entry_id(sh)) for s, sh in self._window()}
        victims = [k for k in self._idle if k not in planned and k not in self._recent]
        excess = len(self._idle) - self.keep
        for key in victims[: max(0, excess)]:
            pin = self._idle.pop(key)
            self._pins.pop(key, None)
            os.close(pin.fd)

    def _unpin_idle(self) -> bool:
        """Let go of this process's idle pins (not those planned next); whether any was.

        Idle pins keep recently used shards from eviction while there is room; when a
        download needs room, they must not keep it from this very process.
        """
        with self._lock:
            planned = {(_store_folder(s), entry_id(sh)) for s, sh in self._window()}
            victims = [k for k in self._idle if k not in planned and k not in self._recent]
            for key in victims:
                pin = self._idle.pop(key)
                self._pins.pop(key, None)
                os.close(pin.fd)
        return bool(victims)

    def close(self) -> None:
        """Stop prefetching and drop every pin of this process."""
        with self._lock:
            self._planned = []
            pending = list(self._pending.values())
        futures.wait(pending)
        with self._lock:
            for pin in self._pins.values():
                with contextlib.suppress(OSError):
                    os.close(pin.fd)
            self._pins.clear()
            self._idle.clear()
            self._pending.clear()

    def __enter__(self) -> ShardCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _after_fork(self) -> None:
        if self._pid != os.getpid():  # a forked child: the parent's locks and threads are not ours
            self._lock = threading.Lock()
            self._pins, self._idle, self._pending = {}, OrderedDict(), {}
            self._recent = deque(maxlen=self.readers)
            self._planned, self._plan_pos = [], 0
            self._pid = os.getpid()

    # -- prefetching ------------------------------------------------------------------------
    def plan(self, store: Store, shards: Sequence[ShardEntry], *, readers: int = 1) -> None:
        """Read ``shards`` next, in this order: download ahead of :meth:`acquire` calls.

        ``readers``: how many shards the reader reads at once (they stay pinned).
        """
        self._after_fork()
        with self._lock:
            if readers != self.readers:
                self.readers = max(0, readers)
                self._recent = deque(self._recent, maxlen=self.readers)
            self._planned = [(store, s) for s in shards]
            self._plan_pos = 0
        self._fill()

    def _window(self) -> list[tuple[Store, ShardEntry]]:
        return self._planned[self._plan_pos : self._plan_pos + self.depth]

    def _advance(self, key: tuple[str, str]) -> bool:
        """The reader reached ``key``: the prefetch window moves past it (lock held)."""
        for offset, (s, sh) in enumerate(self._window()):
            if (_store_folder(s), entry_id(sh)) == key:
                self._plan_pos += offset + 1
                return True
        return False

    def _fill(self) -> None:
        # one thread per download, gone when it is done: a cache whose reader was abandoned
        # (or whose pipeline TensorFlow keeps alive) keeps no idle threads
        with self._lock:
            for store, shard in self._window():
                key = (_store_folder(store), entry_id(shard))
                if key in self._pins or key in self._pending:
                    continue
                done: Future[None] = Future()
                self._pending[key] = done
                threading.Thread(
                    target=self._prefetch_one,
                    args=(store, shard, key, done),
                    name=f"shardstore-fetch-{shard.index}",
                ).start()

    def _prefetch_one(
        self, store: Store, shard: ShardEntry, key: tuple[str, str], done: Future[None]
    ) -> None:
        try:
            self._prefetch(store, shard, key)
        finally:
            done.set_result(None)

    def _prefetch(self, store: Store, shard: ShardEntry, key: tuple[str, str]) -> None:
        try:
            fd = self._ensure(store, shard)
        except Exception as exc:  # the reader's own acquire retries and raises it
            log.debug("prefetch of shard %d from %s failed: %s", shard.index, store.url, exc)
            with self._lock:
                self._pending.pop(key, None)
            return
        with self._lock:
            self._pending.pop(key, None)
            if key in self._pins:
                os.close(fd)
                return
            pin = self._pins[key] = _Pin(key, fd)
            self._idle[key] = pin  # pinned for the reader; trimmed once it has passed
            self._idle.move_to_end(key)

    # -- the shared directory ---------------------------------------------------------------
    def _ensure(self, store: Store, shard: ShardEntry) -> int:
        """Return a descriptor holding a shared lock on the complete, verified shard."""
        eid = entry_id(shard)
        lock_path, done_path = self._entry_paths(store, eid)
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_SH)
                if self._complete(store, shard, done_path):
                    with contextlib.suppress(OSError):
                        os.utime(done_path)  # last use, for LRU eviction
                    return fd
                fcntl.flock(fd, fcntl.LOCK_EX)  # drops the shared lock first
                if not self._complete(store, shard, done_path):
                    self._download(store, shard, done_path)
                fcntl.flock(fd, fcntl.LOCK_SH)
                if self._complete(store, shard, done_path):
                    return fd
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # evicted between the two locks: start over

    def _complete(self, store: Store, shard: ShardEntry, done_path: Path) -> bool:
        if not done_path.exists():
            return False
        for f in shard.stored_files:
            try:
                if os.stat(self.path(store, f.path)).st_size != f.size:
                    return False
            except OSError:
                return False
        return True

    def _download(self, store: Store, shard: ShardEntry, done_path: Path) -> None:
        """Download every file of ``shard`` (exclusive lock held), verified, then mark it done.

        The room for the whole shard is reserved first (a sparse file of its size in
        ``.tmp``, counted as used while its download lives), so that files already in
        place and files still downloading are never left out of the accounting.
        """
        with contextlib.suppress(FileNotFoundError):
            done_path.unlink()
        total = sum(f.size for f in shard.stored_files)
        got = self._reserve(total, done_path.stem)
        assert got is not None
        reservation, reservation_fd = got
        try:
            for f in shard.stored_files:
                self._download_file(store, shard, f, done_path.stem)
            done = json.dumps({"size": total, "files": [f.path for f in shard.stored_files]})
            tmp_done = done_path.with_name(f".{done_path.name}.{secrets.token_hex(4)}")
            tmp_done.write_text(done)
            os.replace(tmp_done, done_path)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(reservation)
            os.close(reservation_fd)

    def _download_file(self, store: Store, shard: ShardEntry, f: FileEntry, stem: str) -> None:
        """One file of ``shard``: into a part file, verified, then renamed into place."""
        dest = self.path(store, f.path)
        part = self.directory / ".parts" / f"{stem}-{secrets.token_hex(6)}"
        part.parent.mkdir(exist_ok=True)
        fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)  # a live download (a stale one is unlocked)
        try:
            hasher = new_hasher()
            size = 0
            try:
                chunks = iter(store.iter_chunks(f.path, CHUNK_BYTES))
                first = next(chunks, None)
            except FileNotFoundError:
                raise ChecksumError.in_file(
                    store.url, shard.index, f.path, "is missing", errno=errno.ENOENT
                ) from None
            for chunk in itertools.chain(() if first is None else (first,), chunks):
                view = memoryview(chunk).cast("B")
                if size + view.nbytes > f.size:
                    raise ChecksumError(
                        f"{store.key_url(f.path)} holds more than the {f.size} bytes "
                        f"its manifest records (shard {shard.index})",
                        dataset=store.url,
                        shard=shard.index,
                        file=f.path,
                    )
                hasher.update(view)
                os.pwrite(fd, view, size)
                size += view.nbytes
            checksum = format_digest(hasher)
            if size != f.size or checksum != f.checksum:
                what = (
                    f"has {size} bytes, the manifest records {f.size}"
                    if size != f.size
                    else f"has checksum {checksum}, the manifest records {f.checksum}"
                )
                raise ChecksumError(
                    f"dataset {store.url!r}, shard {shard.index}: object "
                    f"{store.key_url(f.path)!r} {what}",
                    dataset=store.url,
                    shard=shard.index,
                    file=f.path,
                )
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(part, dest)
            self.bytes_downloaded += size
            self.downloads += 1
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(part)
            raise
        finally:
            os.close(fd)

    # -- room -------------------------------------------------------------------------------
    def _reserve(
        self, nbytes: int, eid: str, *, when_full: str = "raise"
    ) -> tuple[Path, int] | None:
        """A temporary file sized ``nbytes`` (counted as used), after evicting what is needed.

        When no room can be made: ``"raise"`` waits up to ``room_timeout`` seconds for
        other readers to let go, then raises :class:`CacheFullError`; ``"none"``
        returns ``None`` at once; ``"overdraw"`` waits ``OVERDRAW_WAIT`` seconds, then
        reserves over the limit.
        """
        tmp = self.directory / ".tmp" / f"{eid}-{secrets.token_hex(6)}"
        start = time.monotonic()
        while True:
            waited = time.monotonic() - start
            with self._global_lock():
                roomy = self._make_room(nbytes)
                overdraw = when_full == "overdraw" and waited > OVERDRAW_WAIT
                if roomy or overdraw:
                    if not roomy:
                        log.debug(
                            "shard cache: %d bytes over its limit for reads in flight", nbytes
                        )
                    return tmp, self._reservation(tmp, nbytes)
            if self._unpin_idle():
                continue  # this process let go of shards it was only keeping: try again now
            if when_full == "none":
                return None
            if when_full == "raise" and waited > self.room_timeout:
                raise CacheFullError(
                    f"the shard cache {str(self.directory)!r} (limit {self.limit} bytes) has "
                    f"no room for {nbytes} more bytes: every cached shard is in use by a "
                    "reader; raise cache_limit or run fewer readers on this cache"
                )
            time.sleep(0.1 if when_full == "raise" else 0.02)

    def _reservation(self, tmp: Path, nbytes: int) -> int:
        """Create the locked reservation file ``tmp`` of ``nbytes`` (global lock held)."""
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)  # a live download (a stale one is unlocked)
        try:
            os.ftruncate(fd, nbytes)
        except OSError as exc:
            os.close(fd)
            os.unlink(tmp)
            if exc.errno == errno.ENOSPC:
                raise CacheFullError(
                    f"the disk of the shard cache {str(self.directory)!r} is full"
                ) from None
            raise
        return fd

    @contextlib.contextmanager
    def _global_lock(self) -> Iterator[None]:
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def usage(self) -> int:
        """Bytes the cache holds now: complete shards plus downloads in progress."""
        return sum(size for _, _, size, _ in self._entries()) + self._downloading()

    def _downloading(self) -> int:
        """Bytes reserved by live downloads; removes what dead processes left behind."""
        parts = self.directory / ".parts"
        for part in parts.iterdir() if parts.is_dir() else ():
            self._remove_if_stale(part)
        total = 0
        for tmp in (self.directory / ".tmp").iterdir():
            try:
                fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    total += os.fstat(fd).st_size  # a live download
                    continue
                with contextlib.suppress(OSError):
                    os.unlink(tmp)  # left by a process that died
            finally:
                os.close(fd)
        self._remove_dead_scratch()
        return total

    def _remove_dead_scratch(self) -> None:
        """Remove readers' private copies whose reservation is gone (their process died)."""
        scratch = self.directory / SCRATCH_DIR
        if not scratch.is_dir():
            return
        live = {p.name for p in (self.directory / ".tmp").iterdir()}
        for folder in scratch.iterdir():
            prefix = f"{SCRATCH_PREFIX}{folder.name}-"
            if not any(name.startswith(prefix) for name in live):
                shutil.rmtree(folder, ignore_errors=True)

    @staticmethod
    def _remove_if_stale(path: Path) -> None:
        """Remove a part file no live download holds (one just created is not locked yet)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            if time.time() - os.fstat(fd).st_mtime < STALE_PART_SECONDS:
                return
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        finally:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)

    def _entries(self) -> list[tuple[float, Path, int, Path]]:
        """``(last use, marker, bytes, store folder)`` of every complete shard and sparse copy.

        A complete shard (``.done``) counts its files' sizes; a sparse copy
        (``.ranged``) the bytes its files hold on disk.
        """
        out = []
        for folder in self.directory.iterdir():
            meta = folder / ".entries"
            if not meta.is_dir():
                continue
            for marker in meta.iterdir():
                if marker.suffix not in (".done", ".ranged"):
                    continue
                try:
                    st = marker.stat()
                    content = json.loads(marker.read_text())
                    if marker.suffix == ".done":
                        size = int(content["size"])
                    else:
                        size = sum(_held_bytes(folder / rel) for rel in content["files"])
                except (OSError, ValueError, KeyError, TypeError):
                    continue
                out.append((st.st_mtime, marker, size, folder))
        return out

    def _make_room(self, nbytes: int) -> bool:
        """Evict least recently used unpinned shards until ``nbytes`` fit (global lock held)."""
        entries = sorted(self._entries(), key=lambda e: e[0])
        used = sum(e[2] for e in entries) + self._downloading()
        for _, done, size, folder in entries:
            if used + nbytes <= self.limit:
                break
            if self._evict(done, folder):
                used -= size
        return used + nbytes <= self.limit

    def _evict(self, done: Path, folder: Path) -> bool:
        lock_path = done.with_suffix(".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # in use (a reader, a prefetch, or a download)
            try:
                files = json.loads(done.read_text())["files"]
            except (OSError, ValueError, KeyError, TypeError):
                files = []
            with contextlib.suppress(OSError):
                done.unlink()
            for rel in files:
                with contextlib.suppress(OSError):
                    if done.suffix == ".ranged":
                        # emptied, not removed: a reader's open descriptor or memory map
                        # of a sparse copy keeps seeing the file that is filled again
                        os.truncate(folder / rel, 0)
                    else:
                        os.unlink(folder / rel)
            log.debug("shard cache: evicted %s", done.stem)
            return True
        finally:
            os.close(fd)


def _held_bytes(path: Path) -> int:
    """Bytes a (sparse) file takes on disk; 0 when it is gone."""
    try:
        return os.stat(path).st_blocks * 512
    except OSError:
        return 0
