"""The ``memmap`` source: random access to ``.npy`` shards, straight into the caller's arrays.

It reads the very files the ``npy`` source writes (``reads = {"npy"}``),
after parsing each file's header and checking it against the manifest (never
``np.load``). Runs of consecutive records are read with ``os.preadv``
directly into the output array (one copy, from the page cache; the GIL is
released during the read, so several reader threads run in parallel);
scattered small records are gathered from a read-only ``np.memmap`` map
instead, where one system call per record would cost more than the copy.
That gives ``ds[i]``, ``ds[i:j]``, ``ds[[i, k]]`` without TensorFlow, and the
batch gathers behind every ``to_tf`` pipeline of an ``npy`` dataset.

Reading goes through ``tf.numpy_function`` (one call per block or batch,
never per record), so pipelines built on it are not serialisable:
``tf_native = False``.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from shardstore.errors import ChecksumError, ManifestError
from shardstore.format.manifest import FileEntry, ShardEntry
from shardstore.format.ragged import OFFSETS_CACHE_BYTES, RaggedArray, offsets_problem
from shardstore.sources.base import (
    ArrayLike,
    ReadContext,
    ShardWriteContext,
    Source,
    aligned_empty,
)
from shardstore.sources.npy import (
    NpyHeader,
    NpySource,
    npy_header,
    npy_layout,
    ragged_layout,
    read_npy_header,
)
from shardstore.storage.caches import ByteBudgetCache
from shardstore.storage.integrity import FileCheck
from shardstore.storage.safefs import open_regular

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = ["MemmapSource"]

#: Memory maps kept open at once (each costs a virtual memory area, not RAM).
MAX_OPEN_MAPS = 1024
#: File descriptors kept open at once (well under the usual 1024 soft limit).
MAX_OPEN_FILES = 256
#: Records at least this large are read with one ``preadv`` per run of
#: consecutive rows; smaller scattered records are gathered from a memory map.
PREAD_MIN_RECORD_BYTES = 4096
#: A run of records at least this long is read as a sequential read (with the
#: kernel's readahead), at once, never put off by :func:`deferred_reads`.
SEQUENTIAL_READ_BYTES = 1 << 20
#: Smaller scattered records are read with one ``pread`` of the rows' whole
#: span when it is at most this long (small shards: no memory map to open).
SPAN_READ_BYTES = 256 << 10


class _Handle:
    """An open file descriptor, closed when the last reference to it goes.

    The source's cache of descriptors drops the least recently used ones;
    a reader still using a dropped descriptor keeps it open (a descriptor
    closed under a reader could be reused for another file meanwhile).
    """

    __slots__ = ("fd", "random")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.random = False  # posix_fadvise(RANDOM) given: no readahead

    def __del__(self) -> None:
        os.close(self.fd)


#: Reads in flight at once for scattered records missing from the page cache: what a
#: disk (or a network file system) needs to reach its throughput on random reads.
READ_THREADS = 16
_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_nowait = hasattr(os, "RWF_NOWAIT")


def _read_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="shardstore-read")
        return _pool


def _after_fork() -> None:  # a forked child must not use the parent's threads
    global _pool
    _pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def _advise(fd: int, advice: str) -> None:
    """``posix_fadvise(fd, 0, 0, advice)`` where the platform has it."""
    with contextlib.suppress(OSError, AttributeError):
        os.posix_fadvise(fd, 0, 0, getattr(os, advice))


_deferred = threading.local()  # .reads: the reads put off by this thread, or None


@contextlib.contextmanager
def deferred_reads() -> Any:
    """Put off the page-cache misses of scattered reads until the block ends, then do them at once.

    Inside the block, :func:`read_runs` copies what the page cache holds
    and leaves the rest; when the block ends, everything left by every file
    read in it is read by :data:`READ_THREADS` threads together. A gather
    touching many shards with a record or two each (a global shuffle of a
    large dataset) would otherwise wait for one read at a time, shard after
    shard. The buffers are filled (and verified) only when the block ends;
    nothing is read if it raises. Nested blocks join the outermost one.
    """
    if getattr(_deferred, "reads", None) is not None:
        yield
        return
    reads: list[tuple[_Handle, FileCheck, memoryview, int]] = []
    _deferred.reads = reads
    try:
        yield
    finally:
        _deferred.reads = None
    _read_all([(check, handle.fd, view, offset) for handle, check, view, offset in reads])


def _read_all(reads: list[tuple[FileCheck, int, memoryview, int]]) -> None:
    """Do each ``(check, fd, buffer, offset)`` read: one here, several from the read threads.

    From the threads in the order given; any error is raised here, in the caller's thread.
    """
    if len(reads) == 1:
        check, fd, view, offset = reads[0]
        check.pread_into(fd, view, offset)
    elif reads:
        pool = _read_pool()
        for future in [pool.submit(c.pread_into, fd, v, o) for c, fd, v, o in reads]:
            future.result()


def read_runs(handle: _Handle, check: FileCheck, runs: list[tuple[memoryview, int]]) -> None:
    """Fill each ``(buffer, offset)`` of ``runs`` from the file of ``handle``, verified.

    What the page cache holds is copied at once (``preadv`` with
    ``RWF_NOWAIT``, which never waits for the disk); the rest is read by
    :data:`READ_THREADS` threads, so that many reads are in flight, as storage
    needs for random reads. With records scattered over the file, the file is
    advised ``POSIX_FADV_RANDOM`` (no readahead: only the records' own pages
    are read).
    """
    global _nowait
    fd = handle.fd
    if not handle.random:
        handle.random = True
        _advise(fd, "POSIX_FADV_RANDOM")
    missing: list[tuple[memoryview, int]] = []
    verified = check.done
    for view, offset in runs:
        got = 0
        if _nowait:
            try:
                got = os.preadv(fd, [view], offset, os.RWF_NOWAIT)
            except BlockingIOError:
                got = 0
            except OSError:  # RWF_NOWAIT unsupported here: read everything in order
                _nowait = False
        if got == len(view):
            if not verified:
                check.verify_range(offset, view, lambda at, n: os.pread(fd, n, at))
        else:
            missing.append((view, offset))
    if not missing:
        return
    put_off = getattr(_deferred, "reads", None)
    if put_off is not None:  # read with the other files' misses (deferred_reads)
        put_off.extend((handle, check, view, offset) for view, offset in missing)
        return
    _read_all([(check, fd, view, offset) for view, offset in missing])


class MemmapSource(Source):
    """Random-access reader (and writer) of ``.npy`` shards."""

    name: ClassVar[str] = "memmap"
    tf_native: ClassVar[bool] = False
    random_access: ClassVar[bool] = True
    supports_ragged: ClassVar[bool] = True
    gather_batches: ClassVar[bool] = True
    verifies_reads: ClassVar[bool] = True
    reads: ClassVar[frozenset[str]] = frozenset({"npy"})

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # keyed by (dataset directory, manifest path, checksum): resolved (symlinks
        # checked) once; another file at the same path is opened anew
        self._maps: OrderedDict[tuple[Path, str, str], tuple[np.ndarray, mmap.mmap]] = OrderedDict()
        self._files: OrderedDict[tuple[Path, str, str], _Handle] = OrderedDict()
        # ragged features: each shard's offsets table
        self._offset_tables: ByteBudgetCache[tuple[Path, str, str]] = ByteBudgetCache(
            OFFSETS_CACHE_BYTES
        )

    def __del__(self) -> None:
        getattr(self, "_files", {}).clear()  # each descriptor closes once no reader holds it

    def write_shard(self, shard: ShardWriteContext, arrays: Mapping[str, ArrayLike]) -> None:
        """Write standard ``.npy`` files, exactly as the ``npy`` source does."""
        NpySource().write_shard(shard, arrays)

    def check_shards(self, ctx: ReadContext) -> None:
        """Check every file's recorded header length and size against the features."""
        npy_layout(ctx)

    def open_shards(self, ctx: ReadContext, positions: Sequence[int]) -> None:
        """Open (and check) the fixed-shape features' files of ``positions``, from threads.

        On cold storage, opening a shard reads its block index and each
        file's header: a few reads of latency each. A gather that touches
        hundreds of new shards (``shuffle="global"``) opens them with
        :data:`READ_THREADS` reads in flight instead of one at a time.
        """
        names = [n for n, spec in ctx.features.items() if not spec.is_ragged]
        jobs = [(p, n) for p in positions for n in names]
        if len(jobs) < 2:
            return

        # a few jobs of many files each: a job per file would cost more in handing it to
        # a thread than opening a file whose pages are cached
        def open_all(part: list[tuple[int, str]]) -> None:
            for position, name in part:
                self._file(ctx, position, name)

        pool = _read_pool()
        parts = [jobs[i::READ_THREADS] for i in range(min(READ_THREADS, len(jobs)))]
        for future in [pool.submit(open_all, part) for part in parts]:
            future.result()

    def gathering(self) -> contextlib.AbstractContextManager[None]:
        """Scattered reads of a gather missing from the page cache go together at its end."""
        return deferred_reads()

    def _map(self, ctx: ReadContext, position: int, feature: str) -> tuple[np.ndarray, mmap.mmap]:
        """A read-only memory map of a fixed-shape feature's file in one shard (cached).

        Returns the records (an array over the map) and the map of the whole
        file (for verification). Mapped from the descriptor of :meth:`_file`, so
        the header has been checked against the manifest; no ``np.load`` and
        no size a header claims is ever allocated.
        """
        shard = ctx.shards[position]
        entry = shard.file_for(feature)
        key = (ctx.root, entry.path, entry.checksum)
        # first the descriptor: a file replaced since it was mapped drops its map
        handle, header, _ = self._file(ctx, position, feature)
        with self._lock:
            cached = self._maps.get(key)
            if cached is not None:
                self._maps.move_to_end(key)
                return cached
        spec = ctx.features[feature]
        expected = (shard.num_records, *(int(d or 0) for d in spec.shape))
        data_bytes = spec.record_nbytes * shard.num_records
        try:  # the map holds its own duplicate of the descriptor
            buf = mmap.mmap(handle.fd, header + data_bytes, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:  # e.g. the file is shorter than the manifest says
            what = f"cannot be mapped ({exc})"
            raise ChecksumError.in_file(ctx.root, shard.index, entry.path, what) from None
        mm = np.frombuffer(buf, spec.dtype, math.prod(expected), header).reshape(expected)
        evicted = []  # unmapped once the lock is released: other threads need it meanwhile
        with self._lock:
            self._maps[key] = (mm, buf)
            while len(self._maps) > MAX_OPEN_MAPS:
                evicted.append(self._maps.popitem(last=False))
        del evicted
        return mm, buf

    def _file(
        self, ctx: ReadContext, position: int, feature: str
    ) -> tuple[_Handle, int, FileCheck]:
        """A fixed-shape feature's file: open descriptor, where records start, its check."""
        shard = ctx.shards[position]
        spec = ctx.features[feature]
        expected = (shard.num_records, *(int(d or 0) for d in spec.shape))
        return self._open_npy(ctx, shard, shard.file_for(feature), spec.dtype, expected)

    def _open_npy(
        self,
        ctx: ReadContext,
        shard: ShardEntry,
        entry: FileEntry,
        dtype: np.dtype[Any],
        expected: tuple[int, ...],
    ) -> tuple[_Handle, int, FileCheck]:
        """An open descriptor of ``entry`` (cached), where its data starts, and its check.

        The ``.npy`` header is read (and verified) and checked against the
        manifest the first time a file is opened, so a file that lies about its
        contents is refused. The first time a reader (``ctx``) uses a cached
        descriptor, it must still be the file at the manifest's path (same
        device, inode, size and times); else the file is opened anew.
        """
        key = (ctx.root, entry.path, entry.checksum)
        header = entry.info.get("header_bytes")
        if type(header) is not int or not 0 < header <= entry.size:
            raise ManifestError(
                f"shard {shard.index}, file {entry.path!r}: invalid info.header_bytes {header!r}"
            )
        checker = ctx.checker
        with self._lock:
            handle = self._files.get(key)
            if handle is not None:
                self._files.move_to_end(key)
        if handle is not None:
            if checker.known(entry) or self._still_there(ctx, entry, handle.fd):
                return handle, header, checker.file(shard, entry, fd=handle.fd)
            self._drop(key)
        check = checker.file(shard, entry)  # missing, or another size than the manifest's
        fd = open_regular(check.location)  # a regular file, never a FIFO or a link
        try:
            # the header NumPy (and so shardstore) writes for what the manifest
            # says: equal bytes need no parsing (10 us instead of ~100 us, which
            # matters when a global shuffle reopens thousands of small shards)
            ours = npy_header(dtype, expected)
            head = bytearray(header)
            # no readahead for the header alone (up to read_ahead_kb, often MiBs, of records
            # a random reader may never want); sequential readers start their own below
            _advise(fd, "POSIX_FADV_RANDOM")
            check.pread_into(fd, head, 0)
            _advise(fd, "POSIX_FADV_NORMAL")
            if len(ours) == header and head == ours:
                parsed = NpyHeader(dtype, expected, False, header)
            else:
                with os.fdopen(os.dup(fd), "rb") as f:
                    parsed = read_npy_header(f)
        except (ValueError, OSError) as exc:
            os.close(fd)
            if isinstance(exc, ChecksumError):
                raise
            what = f"is not a valid .npy file ({exc})"
            raise ChecksumError.in_file(ctx.root, shard.index, entry.path, what) from None
        except BaseException:
            os.close(fd)
            raise
        if (
            parsed.shape != expected
            or parsed.dtype != dtype
            or parsed.fortran_order
            or parsed.data_offset != header
        ):
            os.close(fd)
            raise ManifestError(
                f"shard {shard.index}, file {entry.path!r}: holds {parsed.dtype} {parsed.shape} "
                f"(data at byte {parsed.data_offset}), the manifest says {dtype} {expected} "
                f"at byte {header}"
            )
        handle = _Handle(fd)  # closed when neither the cache nor a reader holds it
        evicted = []  # closed once the lock is released: other threads need it meanwhile
        with self._lock:
            raced = self._files.get(key)
            if raced is not None:
                evicted.append(handle)  # another thread opened it meanwhile: share its one
                handle = raced
            else:
                self._files[key] = handle
            self._files.move_to_end(key)
            while len(self._files) > MAX_OPEN_FILES:
                evicted.append(self._files.popitem(last=False)[1])
        del evicted
        return handle, header, check

    @staticmethod
    def _still_there(ctx: ReadContext, entry: FileEntry, fd: int) -> bool:
        """Whether ``fd`` is still the file at ``entry``'s path."""
        try:
            a, b = os.fstat(fd), os.stat(ctx.resolve_str(entry.path))
        except OSError:
            return False
        return (a.st_dev, a.st_ino, a.st_size, a.st_mtime_ns, a.st_ctime_ns) == (
            b.st_dev, b.st_ino, b.st_size, b.st_mtime_ns, b.st_ctime_ns
        )  # fmt: skip

    def _drop(self, key: tuple[Path, str, str]) -> None:
        """Forget the descriptor and map of ``key`` (the file was replaced)."""
        with self._lock:
            self._files.pop(key, None)
            self._maps.pop(key, None)

    def _offsets(self, ctx: ReadContext, position: int, feature: str) -> np.ndarray:
        """A ragged feature's offsets in one shard (validated, cached, read-only).

        ``table[-1]`` is then the row count of the shard's values file.
        """
        shard = ctx.shards[position]
        values, offsets = shard.ragged_files(feature)
        key = (ctx.root, offsets.path, offsets.checksum + values.checksum)
        table = self._offset_tables.get(key)
        if table is not None and ctx.checker.known(offsets):
            return table
        _, rows, _, n = ragged_layout(ctx, position, feature)
        handle, header, check = self._open_npy(ctx, shard, offsets, np.dtype("<i8"), (n + 1,))
        table = np.empty(n + 1, np.int64)
        check.pread_into(handle.fd, table.view(np.uint8).data, header)
        problem = offsets_problem(table, rows)
        if problem:
            what = f"is damaged: {problem} ({values.path!r})"
            raise ChecksumError.in_file(ctx.root, shard.index, offsets.path, what)
        table.flags.writeable = False
        self._offset_tables.pop(key)
        self._offset_tables.put(key, table)
        return table

    def read_ragged(
        self, ctx: ReadContext, position: int, feature: str, rows: np.ndarray
    ) -> RaggedArray:
        """Records ``rows`` (sorted, unique) of a ragged feature: one ``preadv`` per run."""
        shard = ctx.shards[position]
        spec = ctx.features[feature]
        table = self._offsets(ctx, position, feature)
        total = int(table[-1])
        rows = np.asarray(rows, np.int64)
        starts, ends = table[rows], table[rows + 1]
        lengths = ends - starts
        values = aligned_empty((int(lengths.sum()), *spec.inner_shape), spec.dtype)
        row_bytes = spec.row_nbytes
        if len(values) and row_bytes:
            entry = shard.ragged_files(feature)[0]
            handle, header, check = self._open_npy(
                ctx, shard, entry, spec.dtype, (total, *spec.inner_shape)
            )
            buf = values.reshape(-1).view(np.uint8).data
            # runs of records that follow each other in the file: one read each
            breaks = (np.flatnonzero(starts[1:] != ends[:-1]) + 1).tolist()
            dest = np.zeros(len(rows) + 1, np.int64)
            np.cumsum(lengths, out=dest[1:])
            for lo, hi in zip([0, *breaks], [*breaks, len(rows)], strict=True):
                a, b = int(dest[lo]), int(dest[hi])
                if a < b:
                    offset = header + int(starts[lo]) * row_bytes
                    check.pread_into(handle.fd, buf[a * row_bytes : b * row_bytes], offset)
        return RaggedArray.from_lengths(values, lengths)

    def read_records(self, ctx: ReadContext, position: int, rows: np.ndarray) -> dict[str, Any]:
        """Gather ``rows`` (sorted) of one shard."""
        out = {
            name: aligned_empty((len(rows), *(int(d or 0) for d in spec.shape)), spec.dtype)
            for name, spec in ctx.features.items()
            if not spec.is_ragged
        }
        self.read_records_into(ctx, position, rows, out)
        got: dict[str, Any] = dict(out)
        for name, spec in ctx.features.items():
            if spec.is_ragged:
                got[name] = self.read_ragged(ctx, position, name, rows)
        return {name: got[name] for name in ctx.features}

    def read_records_into(
        self,
        ctx: ReadContext,
        position: int,
        rows: np.ndarray,
        out: Mapping[str, np.ndarray],
    ) -> None:
        """Read ``rows`` (sorted, unique) of one shard into ``out``, preadv or memory map.

        Every block read is verified against the shard's block index (once
        per process, :mod:`shardstore.storage.integrity`) before this returns.
        """
        if not len(rows):
            return
        runs = _runs(rows)
        for feature, dest in out.items():
            record_bytes = ctx.features[feature].record_nbytes
            if record_bytes == 0:
                continue
            handle, header, check = self._file(ctx, position, feature)
            how = _read_plan(rows, runs, record_bytes)
            if how == "map":
                records, whole_file = self._map(ctx, position, feature)
                check.verify_spans(whole_file, header + rows * record_bytes, record_bytes)
                np.take(records, rows, axis=0, out=dest)
                continue
            if how == "span":  # one read of the span, then pick the rows (small shards)
                first, span = int(rows[0]), int(rows[-1]) - int(rows[0]) + 1
                whole = np.empty((span, *dest.shape[1:]), dest.dtype)
                offset = header + first * record_bytes
                check.pread_into(handle.fd, whole.reshape(-1).view(np.uint8).data, offset)
                np.take(whole, rows - first, axis=0, out=dest)
                continue
            buf = dest.reshape(-1).view(np.uint8).data
            reads = [
                (buf[lo * record_bytes : hi * record_bytes], header + int(rows[lo]) * record_bytes)
                for lo, hi in runs
            ]
            deferring = getattr(_deferred, "reads", None) is not None
            if len(reads) == 1 and (len(reads[0][0]) >= SEQUENTIAL_READ_BYTES or not deferring):
                if handle.random and len(reads[0][0]) >= SEQUENTIAL_READ_BYTES:  # readahead again
                    handle.random = False
                    _advise(handle.fd, "POSIX_FADV_NORMAL")
                check.pread_into(handle.fd, *reads[0])
            else:
                read_runs(handle, check, reads)

    def record_ranges(
        self, ctx: ReadContext, position: int, rows: np.ndarray
    ) -> dict[str, list[tuple[int, int]]] | None:
        """The header and exactly the record bytes :meth:`read_records_into` reads.

        ``None`` when a ragged feature is asked for (its offsets table is read whole).
        """
        if any(spec.is_ragged for spec in ctx.features.values()):
            return None
        shard = ctx.shards[position]
        out: dict[str, list[tuple[int, int]]] = {}
        runs = _runs(rows) if len(rows) else []
        for feature, spec in ctx.features.items():
            entry = shard.file_for(feature)
            header = entry.info.get("header_bytes")
            if type(header) is not int or not 0 < header <= entry.size:
                return None  # refused with its error by the read itself
            nb = spec.record_nbytes
            spans = [(0, header)]
            how = _read_plan(rows, runs, nb) if nb and len(rows) else "none"
            if how == "map":
                spans += [(header + r * nb, header + (r + 1) * nb) for r in rows.tolist()]
            elif how == "span":
                spans.append((header + int(rows[0]) * nb, header + (int(rows[-1]) + 1) * nb))
            elif how == "runs":
                spans += [
                    (header + int(rows[lo]) * nb, header + (int(rows[hi - 1]) + 1) * nb)
                    for lo, hi in runs
                ]
            out[entry.path] = spans
        return out

    def tf_reader(self, ctx: ReadContext) -> Callable[[tf.Tensor], tf.data.Dataset]:
        """Blocks of records, each read by one ``numpy_function``."""
        import tensorflow as tf

        counts = tf.constant([s.num_records for s in ctx.shards], tf.int64)
        names = list(ctx.features)
        dtypes = [tf.as_dtype(ctx.features[n].dtype) for n in names]
        shapes = [[None, *ctx.features[n].shape] for n in names]
        block = ctx.block_records

        def fetch(position: Any, start: Any, stop: Any) -> list[np.ndarray]:
            got = self.read_records(ctx, int(position), np.arange(int(start), int(stop)))
            return [got[n] for n in names]

        def read_shard(position: tf.Tensor) -> tf.data.Dataset:
            n = counts[position]
            starts = tf.data.Dataset.range(0, n, block)

            def read_block(start: tf.Tensor) -> dict[str, tf.Tensor]:
                stop = tf.minimum(start + block, n)
                parts = tf.numpy_function(fetch, [position, start, stop], dtypes, stateful=False)
                return {
                    name: tf.ensure_shape(part, shape)
                    for name, part, shape in zip(names, parts, shapes, strict=True)
                }

            return starts.map(read_block)

        return read_shard


def _runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """``[lo, hi)`` index ranges of ``rows`` (sorted, unique) holding consecutive rows."""
    if len(rows) and int(rows[-1]) - int(rows[0]) == len(rows) - 1:  # one run (sorted, unique)
        return [(0, len(rows))]
    breaks = (np.flatnonzero(np.diff(rows) != 1) + 1).tolist()
    return list(zip([0, *breaks], [*breaks, len(rows)], strict=True))


def _read_plan(rows: np.ndarray, runs: list[tuple[int, int]], record_bytes: int) -> str:
    """How :meth:`MemmapSource.read_records_into` reads rows in ``runs`` of one file.

    ``"runs"``: one read per run of consecutive rows; ``"span"``: scattered
    small records in a short span, read at once; ``"map"``: scattered small
    records far apart, copied out of a memory map (only their blocks are read).
    """
    if len(runs) <= 1 or record_bytes >= PREAD_MIN_RECORD_BYTES:
        return "runs"
    span = int(rows[-1]) - int(rows[0]) + 1
    return "span" if span * record_bytes <= SPAN_READ_BYTES else "map"
