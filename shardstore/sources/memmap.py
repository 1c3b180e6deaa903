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

import math
import mmap
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from shardstore.caches import ByteBudgetCache
from shardstore.errors import ChecksumError, ManifestError
from shardstore.manifest import FileEntry, ShardEntry
from shardstore.ragged import OFFSETS_CACHE_BYTES, RaggedArray, offsets_problem
from shardstore.random_access import aligned_empty
from shardstore.safefs import open_regular
from shardstore.sources.base import ArrayLike, ReadContext, ShardWriteContext, Source
from shardstore.sources.npy import (
    NpyHeader,
    NpySource,
    npy_header,
    npy_layout,
    ragged_layout,
    read_npy_header,
)

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
#: Smaller scattered records are read with one ``pread`` of the rows' whole
#: span when it is at most this long (small shards: no memory map to open).
SPAN_READ_BYTES = 256 << 10


class MemmapSource(Source):
    """Random-access reader (and writer) of ``.npy`` shards."""

    name: ClassVar[str] = "memmap"
    tf_native: ClassVar[bool] = False
    random_access: ClassVar[bool] = True
    supports_ragged: ClassVar[bool] = True
    gather_batches: ClassVar[bool] = True
    reads: ClassVar[frozenset[str]] = frozenset({"npy"})

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # keyed by (dataset directory, manifest path, checksum): resolved (symlinks
        # checked) once; another file at the same path is opened anew
        self._maps: OrderedDict[tuple[Path, str, str], np.ndarray] = OrderedDict()
        self._files: OrderedDict[tuple[Path, str, str], int] = OrderedDict()
        # ragged features: each shard's offsets table
        self._offset_tables: ByteBudgetCache[tuple[Path, str, str]] = ByteBudgetCache(
            OFFSETS_CACHE_BYTES
        )

    def __del__(self) -> None:
        for fd in getattr(self, "_files", {}).values():
            os.close(fd)

    def write_shard(self, shard: ShardWriteContext, arrays: Mapping[str, ArrayLike]) -> None:
        """Write standard ``.npy`` files, exactly as the ``npy`` source does."""
        NpySource().write_shard(shard, arrays)

    def check_shards(self, ctx: ReadContext) -> None:
        """Check every file's recorded header length and size against the features."""
        npy_layout(ctx)

    def _map(self, ctx: ReadContext, position: int, feature: str) -> np.ndarray:
        """A read-only memory map of a fixed-shape feature's records in one shard (cached).

        Mapped from the descriptor of :meth:`_file`, so the header has been
        checked against the manifest; no ``np.load`` and no size a header
        claims is ever allocated.
        """
        shard = ctx.shards[position]
        entry = shard.file_for(feature)
        key = (ctx.root, entry.path, entry.checksum)
        with self._lock:
            cached = self._maps.get(key)
            if cached is not None:
                self._maps.move_to_end(key)
                return cached
        spec = ctx.features[feature]
        expected = (shard.num_records, *(int(d or 0) for d in spec.shape))
        data_bytes = spec.record_nbytes * shard.num_records
        fd, header = self._file(ctx, position, feature)
        try:  # the map holds its own duplicate of the descriptor
            buf = mmap.mmap(fd, header + data_bytes, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:  # e.g. the file is shorter than the manifest says
            what = f"cannot be mapped ({exc})"
            raise ChecksumError.in_file(ctx.root, shard.index, entry.path, what) from None
        mm = np.frombuffer(buf, spec.dtype, math.prod(expected), header).reshape(expected)
        with self._lock:
            self._maps[key] = mm
            while len(self._maps) > MAX_OPEN_MAPS:
                self._maps.popitem(last=False)
        return mm

    def _file(self, ctx: ReadContext, position: int, feature: str) -> tuple[int, int]:
        """An open descriptor of a fixed-shape feature's file, and where its records start."""
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
    ) -> tuple[int, int]:
        """An open descriptor of ``entry`` (cached), and where its data starts.

        The ``.npy`` header is read and checked against the manifest the first
        time a file is opened, so a file that lies about its contents is refused.
        """
        key = (ctx.root, entry.path, entry.checksum)
        header = entry.info.get("header_bytes")
        if type(header) is not int or not 0 < header <= entry.size:
            raise ManifestError(
                f"shard {shard.index}, file {entry.path!r}: invalid info.header_bytes {header!r}"
            )
        with self._lock:
            fd = self._files.get(key)
            if fd is not None:
                self._files.move_to_end(key)
                return fd, header
        fd = open_regular(ctx.resolve_str(entry.path))  # a regular file, never a FIFO
        try:
            # the header NumPy (and so shardstore) writes for what the manifest
            # says: equal bytes need no parsing (10 us instead of ~100 us, which
            # matters when a global shuffle reopens thousands of small shards)
            ours = npy_header(dtype, expected)
            if len(ours) == header and os.pread(fd, header, 0) == ours:
                parsed = NpyHeader(dtype, expected, False, header)
            else:
                with os.fdopen(os.dup(fd), "rb") as f:
                    parsed = read_npy_header(f)
        except (ValueError, OSError) as exc:
            os.close(fd)
            what = f"is not a valid .npy file ({exc})"
            raise ChecksumError.in_file(ctx.root, shard.index, entry.path, what) from None
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
        with self._lock:
            self._files[key] = fd
            while len(self._files) > MAX_OPEN_FILES:
                os.close(self._files.popitem(last=False)[1])
        return fd, header

    def _offsets(self, ctx: ReadContext, position: int, feature: str) -> np.ndarray:
        """A ragged feature's offsets in one shard (validated, cached, read-only).

        ``table[-1]`` is then the row count of the shard's values file.
        """
        shard = ctx.shards[position]
        values, offsets = shard.ragged_files(feature)
        key = (ctx.root, offsets.path, offsets.checksum + values.checksum)
        table = self._offset_tables.get(key)
        if table is not None:
            return table
        _, rows, _, n = ragged_layout(ctx, position, feature)
        fd, header = self._open_npy(ctx, shard, offsets, np.dtype("<i8"), (n + 1,))
        table = np.empty(n + 1, np.int64)
        self._pread(ctx, shard, offsets.path, fd, table.view(np.uint8).data, header)
        problem = offsets_problem(table, rows)
        if problem:
            what = f"is damaged: {problem} ({values.path!r})"
            raise ChecksumError.in_file(ctx.root, shard.index, offsets.path, what)
        table.flags.writeable = False
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
            fd, header = self._open_npy(ctx, shard, entry, spec.dtype, (total, *spec.inner_shape))
            buf = values.reshape(-1).view(np.uint8).data
            # runs of records that follow each other in the file: one read each
            breaks = (np.flatnonzero(starts[1:] != ends[:-1]) + 1).tolist()
            dest = np.zeros(len(rows) + 1, np.int64)
            np.cumsum(lengths, out=dest[1:])
            for lo, hi in zip([0, *breaks], [*breaks, len(rows)], strict=True):
                a, b = int(dest[lo]), int(dest[hi])
                if a < b:
                    offset = header + int(starts[lo]) * row_bytes
                    part = buf[a * row_bytes : b * row_bytes]
                    self._pread(ctx, shard, entry.path, fd, part, offset)
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
        """Read ``rows`` (sorted, unique) of one shard into ``out``, preadv or memory map."""
        n = len(rows)
        if n == 0:
            return
        breaks = (np.flatnonzero(np.diff(rows) != 1) + 1).tolist()
        run_starts = [0, *breaks]
        run_ends = [*breaks, n]
        for feature, dest in out.items():
            record_bytes = ctx.features[feature].record_nbytes
            if record_bytes == 0:
                continue
            scattered = len(run_starts) > 1 and record_bytes < PREAD_MIN_RECORD_BYTES
            first, span = int(rows[0]), int(rows[-1]) - int(rows[0]) + 1
            if scattered and span * record_bytes > SPAN_READ_BYTES:
                np.take(self._map(ctx, position, feature), rows, axis=0, out=dest)
                continue
            fd, header = self._file(ctx, position, feature)
            shard = ctx.shards[position]
            path = shard.file_for(feature).path
            if scattered:  # one read of the span, then pick the rows (small shards)
                whole = np.empty((span, *dest.shape[1:]), dest.dtype)
                offset = header + first * record_bytes
                self._pread(ctx, shard, path, fd, whole.reshape(-1).view(np.uint8).data, offset)
                np.take(whole, rows - first, axis=0, out=dest)
                continue
            buf = dest.reshape(-1).view(np.uint8).data
            for lo, hi in zip(run_starts, run_ends, strict=True):
                offset = header + int(rows[lo]) * record_bytes
                part = buf[lo * record_bytes : hi * record_bytes]
                self._pread(ctx, shard, path, fd, part, offset)

    @staticmethod
    def _pread(
        ctx: ReadContext, shard: ShardEntry, path: str, fd: int, buf: memoryview, offset: int
    ) -> None:
        """Fill ``buf`` from ``offset`` of ``path``; a short file is damage, never zeros."""
        done = 0
        while done < len(buf):
            got = os.preadv(fd, [buf[done:]], offset + done)
            if got == 0:
                what = f"ends at byte {offset + done}, before the records the manifest records"
                raise ChecksumError.in_file(ctx.root, shard.index, path, what)
            done += got

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
