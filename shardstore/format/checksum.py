"""File checksums: xxh3-64, fast enough to compute on every write and verify.

Checksums are stored as ``"xxh3_64:<16 hex digits>"`` so that a later format
version can name another algorithm without ambiguity.
"""

from __future__ import annotations

from typing import Protocol

import xxhash

from shardstore.format.manifest import CHECKSUM_ALGORITHM

__all__ = ["CHUNK_BYTES", "Hasher", "format_digest", "new_hasher"]

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


def __getattr__(name: str) -> object:
    # hash_file opens a file, so it lives with the storage layer now
    if name == "hash_file":
        raise ImportError(
            "shardstore.format.checksum.hash_file is now shardstore.storage.fsutil.hash_file"
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
