"""Sparse local copies of shards in object storage, filled block by block as reads need them.

``ds[i]`` on a dataset in object storage should not download a whole shard
for one record. A source that can say which bytes a read touches
(:meth:`~shardstore.sources.base.Source.record_ranges`) gets them here: the
blocks covering those bytes (:mod:`shardstore.format.blocks`) are fetched with ranged
GETs (merged per object), each verified against the shard's block index, and
written into a *sparse copy* of the file: a local file of the object's full
size whose other bytes are holes. The source then reads that copy through its
usual local path, and verifies the blocks it reads again, as for any local
file: it never reads a byte outside the blocks brought in.

The copies live in the shard cache (:class:`~shardstore.storage.cache.ShardCache`)
under ``<store folder>/.ranges/<relpath>``, one ``.ranged`` marker per shard
(its mtime is the last use), and count against ``cache_limit`` by the bytes
they hold on disk; the least recently used are evicted like whole shards.
Readers hold the shard's cache entry shared while they fill and read, so no
process evicts a copy in use. A block is present when its bytes match its
checksum (a hole reads as zeros), so several threads or processes may fill
the same copy at once: they write the same verified bytes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import xxhash

from shardstore.errors import ChecksumError
from shardstore.format.blocks import BlockIndexError, FileBlocks, checksum_int, decode_index
from shardstore.format.manifest import FileEntry, ShardEntry
from shardstore.storage.base import Store
from shardstore.storage.cache import SCRATCH_DIR, SCRATCH_PREFIX, ShardCache, entry_id

__all__ = ["RANGES_DIR", "PartialShards"]

#: The folder of sparse copies inside a store's cache folder.
RANGES_DIR = ".ranges"
#: The allocation unit of the cache's file system that a write of a block may touch.
PAGE = 4096


class PartialShards:
    """Sparse copies of the shards of ``store`` in ``cache`` (see the module docstring)."""

    def __init__(self, store: Store, cache: ShardCache) -> None:
        self.store = store
        self.cache = cache
        #: Bytes fetched by this object, and ranged requests made (for tests and benchmarks).
        self.bytes_fetched = 0

    @property
    def root(self) -> Path:
        """Where the sparse copies keep the dataset's layout."""
        return self.cache.root(self.store) / RANGES_DIR

    def fill(
        self,
        shard: ShardEntry,
        spans: Mapping[str, Sequence[tuple[int, int]]],
        held: contextlib.ExitStack,
    ) -> Path | None:
        """Have the blocks holding every byte of ``spans`` (``path -> [(lo, hi)]``) in place.

        Call with the shard's entry held (:meth:`ShardCache.entry_held`). Brings
        the shard's block index whole first. The blocks go into the shared sparse
        copy (under :attr:`root`; returns ``None``) when the cache has room for
        them. When it has none, because readers in flight hold every copy it could
        evict, they go into a *private* copy instead, read by this reader only and
        removed when ``held`` closes (returns its root, laid out as the dataset):
        the cache never grows past its limit by what readers keep using.

        Raises
        ------
        ChecksumError
            An object or a block does not match the manifest (naming the object).
        """
        index = self._index(shard)
        self._mark(shard)
        wanted = self._wanted(shard, index, spans)
        with contextlib.ExitStack() as fds:
            missing: list[list[int]] = []
            shared: list[int] = []
            for entry, blocks, ids in wanted:
                fd = _open_copy(self.root / entry.path, entry.size)
                fds.callback(os.close, fd)
                shared.append(fd)
                missing.append([i for i in ids if not _present(fd, blocks, i)])
            need = sum(
                _room(blocks, miss) for (_, blocks, _), miss in zip(wanted, missing, strict=True)
            )
            if not need:
                return None
            reservation = self.cache.try_room(need)
            if reservation is not None:
                with reservation:
                    for (entry, blocks, _), fd, miss in zip(wanted, shared, missing, strict=True):
                        self._fetch_into(shard, entry, blocks, miss, fd)
                return None
            return self._private_copy(shard, wanted, shared, missing, held)

    def _wanted(
        self,
        shard: ShardEntry,
        index: Mapping[tuple[int, int], FileBlocks],
        spans: Mapping[str, Sequence[tuple[int, int]]],
    ) -> list[tuple[FileEntry, FileBlocks, list[int]]]:
        """``(file, its blocks, the block numbers spans touch)`` for every file of ``spans``."""
        by_path = {f.path: f for f in shard.files}
        out = []
        for path, ranges in spans.items():
            entry = by_path.get(path)
            if entry is None:
                raise ValueError(f"shard {shard.index} has no file {path!r}")
            blocks = index.get((entry.size, checksum_int(entry.checksum)))
            if blocks is None:
                raise ChecksumError(
                    f"dataset {self.store.url!r}, shard {shard.index}: the block index has no "
                    f"section for {path!r}; run 'shardstore verify' to check the dataset",
                    dataset=self.store.url,
                    shard=shard.index,
                    file=path,
                )
            ids: set[int] = set()
            for lo, hi in ranges:
                if hi > lo:
                    b0, b1 = blocks.blocks_of(max(0, lo), min(hi, entry.size))
                    ids.update(range(b0, b1))
            if ids:
                out.append((entry, blocks, sorted(ids)))
        return out

    def _private_copy(
        self,
        shard: ShardEntry,
        wanted: list[tuple[FileEntry, FileBlocks, list[int]]],
        shared: list[int],
        missing: list[list[int]],
        held: contextlib.ExitStack,
    ) -> Path:
        """The blocks of ``wanted`` in a copy of this reader's own (see :meth:`fill`)."""
        need = sum(_room(blocks, ids) for _, blocks, ids in wanted)
        token = secrets.token_hex(8)
        held.enter_context(self.cache.room(need, name=f"{SCRATCH_PREFIX}{token}"))
        root = self.cache.directory / SCRATCH_DIR / token
        held.callback(shutil.rmtree, root, ignore_errors=True)  # before the room is given back
        for (entry, blocks, ids), src, miss in zip(wanted, shared, missing, strict=True):
            path = root / entry.path
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.ftruncate(fd, entry.size)
                absent = set(miss)
                for a, b in _runs([i for i in ids if i not in absent]):  # verified just now
                    lo, hi = blocks.block_span(a)[0], blocks.block_span(b - 1)[1]
                    os.pwrite(fd, os.pread(src, hi - lo, lo), lo)
                self._fetch_into(shard, entry, blocks, miss, fd)
            finally:
                os.close(fd)
        return root

    # -- one file ---------------------------------------------------------------------------
    def _fetch_into(
        self, shard: ShardEntry, entry: FileEntry, blocks: FileBlocks, ids: list[int], fd: int
    ) -> None:
        """Fetch blocks ``ids`` of ``entry`` (merged in runs), check them, write them to ``fd``."""
        if not ids:
            return
        runs = _runs(ids)
        starts = [blocks.block_span(a)[0] for a, _ in runs]
        ends = [blocks.block_span(b - 1)[1] for _, b in runs]
        try:
            got = self.store.get_ranges(entry.path, starts, ends)
        except FileNotFoundError:
            raise self._missing(shard, entry.path) from None
        for (a, b), start, data in zip(runs, starts, got, strict=True):
            view = memoryview(data).cast("B")
            self._check_blocks(shard, entry, blocks, range(a, b), view, start)
            os.pwrite(fd, view, start)
            self.bytes_fetched += len(view)

    def _check_blocks(
        self,
        shard: ShardEntry,
        entry: FileEntry,
        blocks: FileBlocks,
        ids: range,
        view: memoryview,
        start: int,
    ) -> None:
        """Check blocks ``ids`` of ``view`` (bytes from ``start``) against the block index."""
        for i in ids:
            lo, hi = blocks.block_span(i)
            piece = view[lo - start : hi - start]
            if len(piece) != hi - lo or xxhash.xxh3_64_intdigest(piece) != blocks.hashes[i]:
                raise self._damaged(
                    shard,
                    entry.path,
                    f"is damaged: bytes {lo}-{hi} (block {i}) do not match their checksum "
                    "in the block index",
                )

    def _damaged(self, shard: ShardEntry, path: str, what: str) -> ChecksumError:
        """``ChecksumError`` for object ``path`` of ``shard``: it ``what``."""
        return ChecksumError(
            f"dataset {self.store.url!r}, shard {shard.index}: object "
            f"{self.store.key_url(path)!r} {what}",
            dataset=self.store.url,
            shard=shard.index,
            file=path,
        )

    def _missing(self, shard: ShardEntry, path: str) -> ChecksumError:
        """The damage of an object the manifest lists and the store does not hold."""
        return ChecksumError.in_file(
            self.store.url, shard.index, path, "is missing", errno=errno.ENOENT
        )

    # -- the shard's block index and marker ---------------------------------------------------
    def _index(self, shard: ShardEntry) -> dict[tuple[int, int], FileBlocks]:
        """The shard's block index: its copy here (whole, checked), fetched if need be."""
        from shardstore.storage.integrity import max_index_bytes, read_index

        entry = shard.blocks
        assert entry is not None, "sparse copies need a block index"
        path = self.root / entry.path
        with contextlib.suppress(BlockIndexError, OSError):
            return read_index(str(path), entry, limit=max_index_bytes(shard))
        limit = max_index_bytes(shard)
        try:
            data = self.store.get(entry.path, max_size=min(limit, entry.size) + 1)
        except FileNotFoundError:
            raise self._missing(shard, entry.path) from None
        checksum = f"xxh3_64:{xxhash.xxh3_64_hexdigest(data)}"
        if len(data) != entry.size or checksum != entry.checksum:
            raise self._damaged(
                shard,
                entry.path,
                f"(its block index) has {len(data)} bytes and checksum {checksum}, the "
                f"manifest records {entry.size} and {entry.checksum}",
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        self.bytes_fetched += len(data)
        return decode_index(data)

    def _mark(self, shard: ShardEntry) -> None:
        """Write (or touch) the shard's ``.ranged`` marker: its files, for accounting."""
        meta = self.cache.root(self.store) / ".entries"
        marker = meta / f"{entry_id(shard)}.ranged"
        try:
            os.utime(marker)  # last use, for LRU eviction
            return
        except FileNotFoundError:
            pass
        files = [f"{RANGES_DIR}/{f.path}" for f in shard.stored_files]
        tmp = meta / f".{marker.name}.{secrets.token_hex(4)}"
        tmp.write_text(json.dumps({"files": files}))
        os.replace(tmp, marker)


def _present(fd: int, blocks: FileBlocks, i: int) -> bool:
    """Whether block ``i`` of the sparse copy holds its bytes (a hole reads as zeros)."""
    lo, hi = blocks.block_span(i)
    data = os.pread(fd, hi - lo, lo)
    return len(data) == hi - lo and xxhash.xxh3_64_intdigest(data) == blocks.hashes[i]


def _open_copy(path: Path, size: int) -> int:
    """Open (creating) the shared sparse copy at ``path``, sized ``size`` (holes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        if os.fstat(fd).st_size != size:
            os.ftruncate(fd, size)  # holes: nothing is allocated
    except BaseException:
        os.close(fd)
        raise
    return fd


def _room(blocks: FileBlocks, ids: list[int]) -> int:
    """Bytes writing blocks ``ids`` allocates: whole file-system pages per run of blocks."""
    total = 0
    for a, b in _runs(ids):
        lo, hi = blocks.block_span(a)[0], blocks.block_span(b - 1)[1]
        total += -(-hi // PAGE) * PAGE - (lo // PAGE) * PAGE
    return total


def _runs(ids: list[int]) -> list[tuple[int, int]]:
    """Consecutive block numbers of ``ids`` (sorted) as ``[a, b)`` runs."""
    runs: list[tuple[int, int]] = []
    for i in ids:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs
