"""File checksums: xxh3-64, fast enough to compute on every write and verify.

Checksums are stored as ``"xxh3_64:<16 hex digits>"`` so that a later format
version can name another algorithm without ambiguity.
"""

from __future__ import annotations

import os
from typing import Protocol

import xxhash

from shardstore.manifest import CHECKSUM_ALGORITHM

__all__ = ["CHUNK_BYTES", "Hasher", "format_digest", "hash_file", "new_hasher"]

#: Read/write granularity for streaming hashes and copies.
CHUNK_BYTES = 8 << 20


class Hasher(Protocol):
    """The part of an ``xxhash`` hasher shardstore uses."""

    def update(self, data: bytes | memoryview) -> None: ...

    def hexdigest(self) -> str: ...


def new_hasher() -> Hasher:
    """A fresh streaming hasher for :data:`CHECKSUM_ALGORITHM`."""
    return xxhash.xxh3_64()


def format_digest(hasher: Hasher) -> str:
    """The manifest string for a finished hasher."""
    return f"{CHECKSUM_ALGORITHM}:{hasher.hexdigest()}"


def hash_file(path: str | os.PathLike[str], *, chunk_bytes: int = CHUNK_BYTES) -> tuple[int, str]:
    """Return ``(size, checksum)`` of a file, reading it in chunks."""
    hasher = new_hasher()
    size = 0
    with open(path, "rb", buffering=0) as f:
        # a buffer no larger than the file (+1 to see its end in one read)
        buf = bytearray(max(1, min(chunk_bytes, os.fstat(f.fileno()).st_size + 1)))
        view = memoryview(buf)
        while True:
            n = f.readinto(buf)
            if not n:
                break
            hasher.update(view[:n])
            size += n
    return size, format_digest(hasher)
