"""File checksums: the same digest whatever the file size and read path; many files in order."""

from __future__ import annotations

from pathlib import Path

import pytest
import xxhash

from shardstore.storage import integrity
from shardstore.storage.checksum import hash_file


def expected(data: bytes) -> tuple[int, str]:
    return len(data), f"xxh3_64:{xxhash.xxh3_64(data).hexdigest()}"


@pytest.mark.parametrize("size", [0, 1, 63, 64, 65, 200, 1000])
def test_hash_file_matches_xxh3_of_the_bytes(tmp_path: Path, size: int) -> None:
    """Small files (one read), a file of exactly one chunk and multi-chunk files agree."""
    data = bytes((i * 37 + 11) % 256 for i in range(size))
    path = tmp_path / "f"
    path.write_bytes(data)
    assert hash_file(path, chunk_bytes=64) == expected(data)
    assert hash_file(path) == expected(data)


def test_hash_files_keeps_the_order_of_many_files(tmp_path: Path) -> None:
    """Files are split among threads in slices; results come back in the order asked."""
    paths, wanted = [], []
    for i in range(103):
        data = i.to_bytes(2, "little") * (i + 1)
        path = tmp_path / f"{i:03d}"
        path.write_bytes(data)
        paths.append(path)
        wanted.append(expected(data))
    missing = tmp_path / "missing"
    got = integrity.hash_files([*paths, missing, *paths[:3]])
    assert got[:103] == wanted and got[104:] == wanted[:3]
    size, error = got[103]
    assert size == 0 and isinstance(error, FileNotFoundError)
