"""Sparse local copies of shards in object storage, filled block by block as reads need them.

``ds[i]`` on a dataset in object storage should not download a whole shard
for one record. A source that can say which bytes a read touches
(:meth:`~shardstore.sources.base.Source.record_ranges`) gets them here: the
blocks covering those bytes (:mod:`shardstore.blocks`) are fetched with ranged
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
from collections.abc import Mapping, Sequence
from pathlib import Path

import xxhash

from shardstore.blocks import BlockIndexError, FileBlocks, checksum_int, decode_index
from shardstore.errors import ChecksumError
from shardstore.manifest import FileEntry, ShardEntry
from shardstore.storage.base import Store
from shardstore.storage.cache import ShardCache, entry_id

__all__ = ["RANGES_DIR", "PartialShards"]

#: The folder of sparse copies inside a store's cache folder.
RANGES_DIR = ".ranges"


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

    def fill(self, shard: ShardEntry, spans: Mapping[str, Sequence[tuple[int, int]]]) -> None:
        """Have the blocks holding every byte of ``spans`` (``path -> [(lo, hi)]``) in place.

        Call with the shard's entry held (:meth:`ShardCache.entry_held`). Brings
        the shard's block index whole first.

        Raises
        ------
        ChecksumError
            An object or a block does not match the manifest (naming the object).
        """
        index = self._index(shard)
        self._mark(shard)
        by_path = {f.path: f for f in shard.files}
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
            self._fill_file(shard, entry, blocks, ranges)

    # -- one file ---------------------------------------------------------------------------
    def _fill_file(
        self,
        shard: ShardEntry,
        entry: FileEntry,
        blocks: FileBlocks,
        ranges: Sequence[tuple[int, int]],
    ) -> None:
        wanted: set[int] = set()
        for lo, hi in ranges:
            if hi > lo:
                b0, b1 = blocks.blocks_of(max(0, lo), min(hi, entry.size))
                wanted.update(range(b0, b1))
        if not wanted:
            return
        path = self.root / entry.path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            if os.fstat(fd).st_size != entry.size:
                os.ftruncate(fd, entry.size)  # holes: nothing is allocated
            missing = [i for i in sorted(wanted) if not _present(fd, blocks, i)]
            if not missing:
                return
            runs = _runs(missing)
            starts = [blocks.block_span(a)[0] for a, _ in runs]
            ends = [blocks.block_span(b - 1)[1] for _, b in runs]
            self.cache.make_room(sum(e - s for s, e in zip(starts, ends, strict=True)))
            try:
                got = self.store.get_ranges(entry.path, starts, ends)
            except FileNotFoundError:
                raise self._missing(shard, entry.path) from None
            for (a, b), start, data in zip(runs, starts, got, strict=True):
                view = memoryview(data).cast("B")
                for i in range(a, b):
                    lo, hi = blocks.block_span(i)
                    piece = view[lo - start : hi - start]
                    if len(piece) != hi - lo or xxhash.xxh3_64_intdigest(piece) != blocks.hashes[i]:
                        raise ChecksumError(
                            f"dataset {self.store.url!r}, shard {shard.index}: object "
                            f"{self.store.key_url(entry.path)!r} is damaged: bytes {lo}-{hi} "
                            f"(block {i}) do not match their checksum in the block index",
                            dataset=self.store.url,
                            shard=shard.index,
                            file=entry.path,
                        )
                os.pwrite(fd, view, start)
                self.bytes_fetched += len(view)
        finally:
            os.close(fd)

    def _missing(self, shard: ShardEntry, path: str) -> ChecksumError:
        """The damage of an object the manifest lists and the store does not hold."""
        return ChecksumError.in_file(
            self.store.url, shard.index, path, "is missing", errno=errno.ENOENT
        )

    # -- the shard's block index and marker ---------------------------------------------------
    def _index(self, shard: ShardEntry) -> dict[tuple[int, int], FileBlocks]:
        """The shard's block index: its copy here (whole, checked), fetched if need be."""
        from shardstore.integrity import max_index_bytes, read_index

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
            raise ChecksumError(
                f"dataset {self.store.url!r}, shard {shard.index}: object "
                f"{self.store.key_url(entry.path)!r} (its block index) has {len(data)} bytes "
                f"and checksum {checksum}, the manifest records {entry.size} and "
                f"{entry.checksum}",
                dataset=self.store.url,
                shard=shard.index,
                file=entry.path,
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


def _runs(ids: list[int]) -> list[tuple[int, int]]:
    """Consecutive block numbers of ``ids`` (sorted) as ``[a, b)`` runs."""
    runs: list[tuple[int, int]] = []
    for i in ids:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs
