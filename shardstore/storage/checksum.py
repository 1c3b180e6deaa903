"""File checksums: xxh3-64, fast enough to compute on every write and verify.

Checksums are stored as ``"xxh3_64:<16 hex digits>"`` so that a later format
version can name another algorithm without ambiguity.
"""

from __future__ import annotations

import os
from typing import Protocol

import xxhash

from shardstore.format.manifest import CHECKSUM_ALGORITHM
from shardstore.storage.safefs import open_regular

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
    """Return ``(size, checksum)`` of a file, reading it in chunks.

    A file no longer than one chunk is read with a single ``read`` (many
    datasets have thousands of small shard files, hashed when first read).
    The file is opened with :func:`shardstore.storage.safefs.open_regular`: a link, a
    FIFO or a device is refused, never read.
    """
    hasher = new_hasher()
    fd = open_regular(path)
    try:
        expected = os.fstat(fd).st_size
        if expected < chunk_bytes:
            data = os.read(fd, expected + 1)  # +1: see the end in the same call
            hasher.update(data)
            size = len(data)
            if size <= expected:
                return size, format_digest(hasher)
            # the file grew since fstat: hash the rest as any large file
        else:
            size = 0
        buf = bytearray(chunk_bytes)
        view = memoryview(buf)
        with open(fd, "rb", buffering=0, closefd=False) as f:
            while n := f.readinto(buf):
                hasher.update(view[:n])
                size += n
        return size, format_digest(hasher)
    finally:
        os.close(fd)
