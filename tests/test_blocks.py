"""The block index format: layouts, streaming block hashes, encoding and its damage."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from shardstore.format.blocks import (
    MAGIC,
    TARGET_BLOCK_BYTES,
    BlockHasher,
    BlockIndexError,
    FileBlocks,
    choose_layout,
    decode_index,
    encode_index,
    num_blocks,
)


def spans(size: int, first: int, block: int) -> list[tuple[int, int]]:
    """The blocks of a file, by the definition in docs/format.md 7.5."""
    out = [(0, min(first, size))] if first and size else []
    at = min(first, size)
    while at < size:
        out.append((at, min(size, at + block)))
        at += block
    return out


def test_layouts_hold_whole_records() -> None:
    assert choose_layout() == (0, TARGET_BLOCK_BYTES)
    assert choose_layout(128, 49152) == (128, 49152)  # a 48 KiB image: one record per block
    assert choose_layout(128, 72) == (128, 72 * (TARGET_BLOCK_BYTES // 72))  # tabular rows
    assert choose_layout(64, TARGET_BLOCK_BYTES) == (64, TARGET_BLOCK_BYTES)
    assert choose_layout(64, 3 << 20) == (64, TARGET_BLOCK_BYTES)  # huge records: cut
    with pytest.raises(ValueError):
        choose_layout(-1, 8)


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(max_size=3000),
    first=st.integers(0, 400),
    block=st.integers(1, 700),
    cuts=st.lists(st.integers(0, 3000), max_size=8),
)
def test_streamed_block_hashes_equal_hashes_of_the_blocks(
    data: bytes, first: int, block: int, cuts: list[int]
) -> None:
    """However the bytes arrive (any write sizes), each block is hashed exactly."""
    hasher = BlockHasher(first, block)
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    for lo, hi in itertools.pairwise(bounds):
        hasher.update(data[lo:hi])
    checksum = f"xxh3_64:{xxhash.xxh3_64_hexdigest(data)}"
    blocks = hasher.finish(len(data), checksum)
    expected = [xxhash.xxh3_64_intdigest(data[lo:hi]) for lo, hi in spans(len(data), first, block)]
    assert blocks.hashes.tolist() == expected
    assert blocks.count == num_blocks(len(data), blocks.first, block)
    for i, span in enumerate(spans(len(data), first, block)):
        assert blocks.block_span(i) == span
        assert blocks.block_at(span[0]) == i and blocks.block_at(span[1] - 1) == i
    decoded = decode_index(encode_index([blocks]))
    again = decoded[(len(data), blocks.checksum)]
    assert (again.first, again.block, again.hashes.tolist()) == (blocks.first, block, expected)


def test_layout_is_fixed_once_writing_started() -> None:
    hasher = BlockHasher()
    hasher.set_layout(10, 20)  # before the first byte: fine
    hasher.update(b"x")
    with pytest.raises(RuntimeError):
        hasher.set_layout(0, 20)


def sample() -> list[FileBlocks]:
    out = []
    for seed, (size, first, block) in enumerate([(1000, 128, 96), (0, 0, 64), (70, 0, 64)]):
        data = np.random.default_rng(seed).bytes(size)
        hasher = BlockHasher(first, block)
        hasher.update(data)
        out.append(hasher.finish(size, f"xxh3_64:{xxhash.xxh3_64_hexdigest(data)}"))
    return out


def test_sections_are_found_by_size_and_checksum() -> None:
    files = sample()
    decoded = decode_index(encode_index(files))
    assert set(decoded) == {(f.size, f.checksum) for f in files}
    for f in files:
        assert decoded[(f.size, f.checksum)].hashes.tolist() == f.hashes.tolist()


def test_every_truncation_and_trailing_bytes_are_refused() -> None:
    raw = encode_index(sample())
    for cut in range(len(raw)):
        with pytest.raises(BlockIndexError):
            decode_index(raw[:cut])
    with pytest.raises(BlockIndexError, match="unexpected bytes"):
        decode_index(raw + b"\0")


def test_bad_magic_version_and_layout_are_refused() -> None:
    raw = bytearray(encode_index(sample()))
    with pytest.raises(BlockIndexError, match="magic"):
        decode_index(b"X" + bytes(raw[1:]))
    newer = bytearray(raw)
    newer[8] = 2
    with pytest.raises(BlockIndexError, match="version 2 is not supported"):
        decode_index(bytes(newer))
    bad = bytearray(raw)
    bad[16 + 24 : 16 + 32] = (0).to_bytes(8, "little")  # block size 0
    with pytest.raises(BlockIndexError, match="invalid layout"):
        decode_index(bytes(bad))
    assert bytes(raw[:8]) == MAGIC


@pytest.mark.parametrize(
    ("size", "first", "block"), [(1000, 0, 64), (1000, 100, 64), (50, 100, 64)]
)
def test_block_spans_are_block_span_for_many_blocks(size: int, first: int, block: int) -> None:
    count = (1 if first else 0) + -(-max(0, size - first) // block) if size > first else 1
    blocks = FileBlocks(size, 0, first, block, np.zeros(count, np.uint64))
    ids = np.arange(blocks.count, dtype=np.int64)
    lo, hi = blocks.block_spans(ids)
    assert list(zip(lo.tolist(), hi.tolist(), strict=True)) == [
        blocks.block_span(i) for i in range(blocks.count)
    ]
