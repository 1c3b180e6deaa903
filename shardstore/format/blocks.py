"""Per-block checksums: the block layout of a file and the per-shard index that holds them.

Every file a shard is made of is cut into *blocks*, and the xxh3-64 of each
block is stored in a small binary index file next to the shard,
``<prefix>/<index:06d>.blocks``, which the manifest lists (with its own size
and checksum) in the shard's ``blocks`` entry. A reader that reads part of a
file then verifies exactly the blocks it touched, instead of hashing the whole
file first: the first batch comes in constant time, and bytes are read once.
``docs/format.md`` (section 7.5) is the normative description; this module
implements it, and :mod:`shardstore.storage.integrity` uses it on the read path.

**Layout.** A file's blocks are ``[0, first)`` (only when ``first > 0``: a
header, e.g. a ``.npy`` header), then runs of ``block`` bytes from ``first``
to the end of the file (the last one may be shorter). The storage layer
(:class:`shardstore.storage.fsutil.HashingFile`) hashes blocks while a file is
written, so every source gets them without doing anything. A source whose
records have a fixed size may align blocks to them
(:meth:`shardstore.sources.base.ShardFile.align_blocks`): then a random read
of one record verifies its own bytes and no more. Block sizes were chosen by
measurement (``benchmarks/blocks.py``; ``docs/format.md``): about
:data:`TARGET_BLOCK_BYTES`.

**Index file** (all integers little-endian)::

    magic   8 bytes   b"SSBLOCKS"
    version u32       1
    count   u32       number of file sections
    count sections, each:
      size     u64    the file's size in bytes
      checksum u64    the file's whole-file xxh3-64 (the manifest's checksum, as an integer)
      first    u64    end of the first block (0: no header block)
      block    u64    size of the other blocks (>= 1)
      hashes   u64 x n   xxh3-64 (seed 0) of each block, in file order

Sections are found by ``(size, checksum)``, not by path, so a dataset whose
files are renamed (merged, relocated) keeps a valid index. Two files with the
same size and checksum have the same blocks.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import xxhash

from shardstore.errors import ChecksumError

__all__ = [
    "INDEX_SUFFIX",
    "INDEX_VERSION",
    "MAGIC",
    "TARGET_BLOCK_BYTES",
    "BlockHasher",
    "BlockIndexError",
    "FileBlocks",
    "choose_layout",
    "decode_index",
    "encode_index",
]

#: Suffix of a shard's index file (``<prefix>/<index:06d>.blocks``).
INDEX_SUFFIX = ".blocks"
MAGIC = b"SSBLOCKS"
#: The index format this release writes; it reads this one only (others: whole-file checks).
INDEX_VERSION = 1
#: Target block size. Measured (``benchmarks/blocks.py``): xxh3 from Python runs at
#: 19 GB/s on 48-64 KiB blocks against 23 GB/s on 1 MiB ones, while a random read of one
#: record verifies ``block / record`` times its bytes: small blocks win for random access.
TARGET_BLOCK_BYTES = 64 << 10
#: Largest number of blocks one section may declare (2^40 bytes in 64 KiB blocks, many times
#: over): a bound checked before anything is allocated from a section's header.
MAX_BLOCKS = 1 << 34

_HEADER = struct.Struct("<8sII")
_SECTION = struct.Struct("<QQQQ")


class BlockIndexError(ChecksumError):
    """A block index file that cannot be used: damaged, truncated, or of an unknown version."""


def choose_layout(start: int = 0, unit: int = 0) -> tuple[int, int]:
    """``(first, block)`` for a file whose records start at ``start``, ``unit`` bytes each.

    Without a record size (``unit == 0``) blocks are :data:`TARGET_BLOCK_BYTES`
    from ``start``. With one, a block holds as many whole records as fit in the
    target (at least one), so a read of whole records never needs a
    neighbour's bytes to be verified; records larger than the target are cut
    into target-sized blocks.
    """
    if start < 0 or unit < 0:
        raise ValueError(f"invalid block layout start={start} unit={unit}")
    if 0 < unit <= TARGET_BLOCK_BYTES:
        block = unit * (TARGET_BLOCK_BYTES // unit)
    else:
        block = TARGET_BLOCK_BYTES
    return start, block


def num_blocks(size: int, first: int, block: int) -> int:
    """How many blocks a file of ``size`` bytes has with this layout."""
    if size <= 0:
        return 0
    head = 1 if first > 0 else 0
    rest = size - min(first, size)
    return head + -(-rest // block)


@dataclass(frozen=True)
class FileBlocks:
    """One file's section of an index: its identity, its block layout, its block hashes."""

    size: int
    checksum: int
    first: int
    block: int
    hashes: np.ndarray  # uint64, one per block

    @property
    def count(self) -> int:
        """Number of blocks."""
        return len(self.hashes)

    def block_span(self, i: int) -> tuple[int, int]:
        """Byte range ``[lo, hi)`` of block ``i``."""
        if self.first and i == 0:
            return 0, min(self.first, self.size)
        j = i - (1 if self.first else 0)
        lo = self.first + j * self.block
        return lo, min(self.size, lo + self.block)

    def block_spans(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Byte ranges ``[lo, hi)`` of blocks ``ids`` (:meth:`block_span`, vectorised)."""
        if self.first:
            lo = np.where(ids == 0, 0, self.first + (ids - 1) * self.block)
            hi = np.where(ids == 0, min(self.first, self.size), lo + self.block)
        else:
            lo = ids * self.block
            hi = lo + self.block
        return lo, np.minimum(hi, self.size)

    def blocks_of(self, lo: int, hi: int) -> tuple[int, int]:
        """Blocks ``[b0, b1)`` that hold any byte of ``[lo, hi)`` (``hi > lo``)."""
        return self.block_at(lo), self.block_at(hi - 1) + 1

    def block_at(self, offset: int) -> int:
        """The block holding byte ``offset``."""
        if self.first:
            if offset < self.first:
                return 0
            return 1 + (offset - self.first) // self.block
        return offset // self.block


class BlockHasher:
    """Hashes the blocks of a byte stream fed in order, with a given layout."""

    def __init__(self, first: int = 0, block: int = TARGET_BLOCK_BYTES) -> None:
        if block < 1 or first < 0:
            raise ValueError(f"invalid block layout first={first} block={block}")
        self.first = first
        self.block = block
        self.hashes: list[int] = []
        self._hasher = xxhash.xxh3_64()
        self._pos = 0
        self._boundary = first if first else block
        self._open = 0  # bytes in the current block

    def set_layout(self, first: int, block: int) -> None:
        """Change the layout; only before the first byte."""
        if self._pos:
            raise RuntimeError("the block layout must be set before the first write")
        self.__init__(first, block)  # type: ignore[misc]

    def update(self, data: Any) -> None:
        """Feed the next bytes (any contiguous buffer)."""
        view = memoryview(data).cast("B")
        n = len(view)
        at = 0
        while at < n:
            take = min(n - at, self._boundary - self._pos)
            self._hasher.update(view[at : at + take])
            at += take
            self._pos += take
            self._open += take
            if self._pos == self._boundary:
                self.hashes.append(self._hasher.intdigest())
                self._hasher.reset()
                self._open = 0
                self._boundary += self.block

    def finish(self, size: int, checksum: str) -> FileBlocks:
        """The section of the finished file (``checksum``: the manifest string)."""
        if size != self._pos:
            raise RuntimeError(f"hashed {self._pos} bytes of a {size}-byte file")
        hashes = list(self.hashes)
        if self._open:
            hashes.append(self._hasher.intdigest())
        first = min(self.first, size)
        return FileBlocks(size, checksum_int(checksum), first, self.block,
                          np.array(hashes, dtype=np.uint64))  # fmt: skip


def checksum_int(checksum: str) -> int:
    """``"xxh3_64:<hex>"`` as an integer (how the index stores whole-file checksums)."""
    return int(checksum.partition(":")[2], 16)


def encode_index(files: list[FileBlocks]) -> bytes:
    """The bytes of an index file holding ``files``' sections, in that order."""
    parts = [_HEADER.pack(MAGIC, INDEX_VERSION, len(files))]
    for f in files:
        parts.append(_SECTION.pack(f.size, f.checksum, f.first, f.block))
        parts.append(np.ascontiguousarray(f.hashes, dtype="<u8").tobytes())
    return b"".join(parts)


def decode_index(data: bytes) -> dict[tuple[int, int], FileBlocks]:
    """The sections of an index file, by ``(size, checksum)``.

    Raises
    ------
    BlockIndexError
        Bad magic, an unknown version, or sections that do not add up to
        exactly the bytes given (a truncated or damaged index).
    """
    if len(data) < _HEADER.size:
        raise BlockIndexError(f"a block index of {len(data)} bytes is too short for its header")
    magic, version, count = _HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise BlockIndexError(f"not a block index (magic {magic!r})")
    if version != INDEX_VERSION:
        raise BlockIndexError(
            f"block index version {version} is not supported (this release reads "
            f"version {INDEX_VERSION}); files are then verified whole"
        )
    out: dict[tuple[int, int], FileBlocks] = {}
    pos = _HEADER.size
    for i in range(count):
        if len(data) < pos + _SECTION.size:
            raise BlockIndexError(f"block index cut short in the header of section {i}")
        size, checksum, first, block = _SECTION.unpack_from(data, pos)
        pos += _SECTION.size
        if block < 1 or first > size:
            raise BlockIndexError(f"section {i} has an invalid layout (first={first}, "
                                  f"block={block}, size={size})")  # fmt: skip
        n = num_blocks(size, first, block)
        if n > MAX_BLOCKS or len(data) < pos + 8 * n:
            raise BlockIndexError(f"block index cut short in the hashes of section {i}")
        hashes = np.frombuffer(data, "<u8", n, pos).astype(np.uint64)
        pos += 8 * n
        out[(size, checksum)] = FileBlocks(size, checksum, first, block, hashes)
    if pos != len(data):
        raise BlockIndexError(f"{len(data) - pos} unexpected bytes after the last section")
    return out
