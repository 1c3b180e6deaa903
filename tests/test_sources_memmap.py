"""The memmap source: conformance, reading npy shards, honest failures."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import shardstore
from shardstore.errors import ChecksumError, ManifestError
from shardstore.sources import memmap as memmap_module
from shardstore.testing import SourceConformance, assert_bitwise_equal, collect


class TestMemmapConformance(SourceConformance):
    source = "memmap"


def test_reads_npy_written_shards_explicitly(tmp_path: Path) -> None:
    data = np.arange(60, dtype=np.uint32).reshape(20, 3)
    shardstore.write(tmp_path / "d", {"v": data}, records_per_shard=6)
    ds = shardstore.open(tmp_path / "d", source="memmap")
    assert ds.source.name == "memmap"
    assert_bitwise_equal(ds[[19, 0, 7]]["v"], data[[19, 0, 7]])
    assert_bitwise_equal(collect(ds.to_tf(batch_size=4, features="v")), data)


def test_memmap_written_shards_are_npy_files(tmp_path: Path) -> None:
    data = np.linspace(0, 1, 30).reshape(10, 3)
    ds = shardstore.write(tmp_path / "d", {"v": data}, format="memmap", records_per_shard=4)
    assert_bitwise_equal(np.load(ds.path / ds.shards[0].files[0].path), data[:4])
    npy = shardstore.open(tmp_path / "d", source="npy")  # and the TF-native reader reads them
    assert_bitwise_equal(collect(npy.to_tf(batch_size=3, features="v")), data)


def test_file_that_contradicts_the_manifest_is_refused(tmp_path: Path) -> None:
    ds = shardstore.write(tmp_path / "d", {"v": np.zeros((8, 2), np.float32)},
                          records_per_shard=4)  # fmt: skip
    victim = ds.path / ds.shards[1].files[0].path
    victim.unlink()
    np.save(victim, np.zeros((4, 2), np.float64)[:, :1])  # other dtype/shape, same byte size
    with pytest.raises(ChecksumError, match="do not match their checksum"):  # verified as read
        shardstore.open(ds.path)[5]
    with pytest.raises(ManifestError, match="manifest says"):  # the source's own check
        shardstore.open(ds.path, verify="size")[5]


def test_open_maps_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memmap_module, "MAX_OPEN_MAPS", 3)
    monkeypatch.setattr(memmap_module, "SPAN_READ_BYTES", 0)  # scattered rows: memory maps
    data = np.arange(40, dtype=np.int16)
    ds = shardstore.write(tmp_path / "d", {"v": data}, records_per_shard=4)
    source = shardstore.get_source("memmap")
    assert isinstance(source, memmap_module.MemmapSource)
    for i in range(0, 40, 4):
        assert_bitwise_equal(ds[[i, i + 2]]["v"], data[[i, i + 2]])
    assert len(source._maps) == 3


@pytest.mark.parametrize("span_bytes", [0, 1 << 20])
def test_scattered_small_records_by_span_read_or_memory_map(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, span_bytes: int
) -> None:
    """Small scattered records come from one read of their span, or (long spans) a map."""
    monkeypatch.setattr(memmap_module, "SPAN_READ_BYTES", span_bytes)
    data = np.arange(600, dtype=np.int16).reshape(200, 3)
    ds = shardstore.write(tmp_path / "d", {"v": data}, records_per_shard=50)
    source = shardstore.get_source("memmap")
    assert isinstance(source, memmap_module.MemmapSource)
    source._maps.clear()
    picked = np.random.default_rng(3).permutation(200)[:120]
    assert_bitwise_equal(ds[picked]["v"], data[picked])
    assert_bitwise_equal(ds[np.sort(picked)]["v"], data[np.sort(picked)])
    assert (len(source._maps) > 0) == (span_bytes == 0)


def test_a_header_with_the_same_meaning_in_other_bytes_is_accepted(tmp_path: Path) -> None:
    """Headers are compared byte for byte with NumPy's; other spellings are parsed."""
    data = np.arange(24, dtype=np.float32).reshape(8, 3)
    ds = shardstore.write(tmp_path / "d", {"v": data}, records_per_shard=4)
    victim = ds.path / ds.shards[1].files[0].path
    raw = victim.read_bytes()
    ours = b"'descr': '<f4', 'fortran_order': False, 'shape': (4, 3), }"
    theirs = b"'shape': (4, 3), 'fortran_order': False, 'descr': '<f4', }"
    assert ours in raw and len(ours) == len(theirs)
    victim.write_bytes(raw.replace(ours, theirs))
    assert_bitwise_equal(shardstore.open(ds.path, verify="size")[[1, 5, 7]]["v"], data[[1, 5, 7]])


def test_gathered_arrays_are_aligned_for_tensorflow(tmp_path: Path) -> None:
    """TensorFlow adopts a numpy_function result without copying it only if 64-byte aligned."""
    from shardstore.reading.random_access import ALIGNMENT, gather_records
    from shardstore.sources.base import ReadContext

    x = np.arange(300 * 5000, dtype=np.float32).reshape(300, 5000)  # 20 KB records: preadv
    ds = shardstore.write(tmp_path / "d", {"x": x, "y": np.arange(300)}, records_per_shard=70)
    source = shardstore.get_source("memmap")
    ctx = ReadContext(ds.path, tuple(ds.shards), dict(ds.features), 16)
    for indices in (np.arange(10, 150), np.array([3, 99, 200, 201, 299]), np.array([5, 2, 5])):
        got = gather_records(source, ctx, indices)
        for name, arr in got.items():
            assert arr.ctypes.data % ALIGNMENT == 0, (name, indices)
            assert_bitwise_equal(arr, ds[indices][name])


def test_first_gather_reads_one_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Small records are gathered ~4 MiB per call, but the first call is one batch only,
    so the first batch does not wait for megabytes of reading."""
    ds = shardstore.write(tmp_path / "d", {"v": np.arange(50_000, dtype=np.int32)},
                          records_per_shard=1000)  # fmt: skip
    source = shardstore.get_source("memmap")
    calls: list[int] = []
    read = source.read_records_into

    def spy(ctx: Any, position: int, rows: np.ndarray, out: Any) -> None:
        calls.append(len(rows))
        read(ctx, position, rows, out)

    monkeypatch.setattr(source, "read_records_into", spy)
    tfds = ds.to_tf(batch_size=10, features="v", num_parallel_reads=1, prefetch=False)
    it = iter(tfds)
    assert_bitwise_equal(next(it).numpy(), np.arange(10, dtype=np.int32))
    assert sum(calls[:1]) == 10  # the first group: one batch
    rest = np.concatenate([b.numpy() for b in it])
    assert_bitwise_equal(rest, np.arange(10, 50_000, dtype=np.int32))
    assert max(calls) > 10  # later groups hold many batches


def test_a_file_cut_short_after_its_checks_is_not_mapped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The memory map covers exactly what the manifest says; a shorter file is damage."""
    monkeypatch.setattr(memmap_module, "SPAN_READ_BYTES", 0)  # scattered rows: memory maps
    data = np.arange(64, dtype=np.int32).reshape(16, 4)
    written = shardstore.write(tmp_path / "d", {"v": data}, records_per_shard=8, fsync=False)
    ds = shardstore.open(written.path)
    assert_bitwise_equal(ds[[8, 9]]["v"], data[[8, 9]])  # shard 1 checked, read by preadv
    victim = ds.path / ds.shards[1].files[0].path
    os.truncate(victim, victim.stat().st_size - 16)
    with pytest.raises(ChecksumError, match=r"shard 1: file .* cannot be mapped") as exc:
        ds[[8, 12]]
    assert exc.value.shard == 1


@pytest.mark.parametrize("damaged", [False, True])
def test_a_gathers_page_cache_misses_are_read_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damaged: bool
) -> None:
    """One record from each of 40 shards, none in the page cache: read 16 at a time, verified."""
    import threading
    import time

    from shardstore.storage.integrity import FileCheck

    data = {"x": np.random.default_rng(3).standard_normal((320, 1024)).astype(np.float32)}
    ds = shardstore.write(tmp_path / "d", data, records_per_shard=8, fsync=False)
    wanted = np.arange(3, 320, 8)  # record 3 of every shard
    if damaged:
        entry = ds.shards[17].file_for("x")
        path = ds.path / entry.path
        raw = bytearray(path.read_bytes())
        raw[entry.info["header_bytes"] + 3 * 4096 + 100] ^= 1
        path.write_bytes(bytes(raw))
    real_preadv = os.preadv

    def no_page_cache(fd: int, buffers: Any, offset: int, flags: int = 0) -> int:
        if flags:  # RWF_NOWAIT: as if nothing were cached
            raise BlockingIOError
        return real_preadv(fd, buffers, offset)

    monkeypatch.setattr(memmap_module.os, "preadv", no_page_cache)
    monkeypatch.setattr(memmap_module, "_nowait", True)
    busy, most = [0], [0]
    lock = threading.Lock()
    real_read = FileCheck.pread_into

    def slow_read(self: FileCheck, fd: int, buf: Any, offset: int) -> None:
        with lock:
            busy[0] += 1
            most[0] = max(most[0], busy[0])
        try:
            time.sleep(0.02)  # a disk's latency
            real_read(self, fd, buf, offset)
        finally:
            with lock:
                busy[0] -= 1

    monkeypatch.setattr(FileCheck, "pread_into", slow_read)
    fresh = shardstore.open(ds.path, source="memmap")
    if damaged:
        with pytest.raises(ChecksumError, match="000017"):
            fresh[wanted]
        return
    fresh[wanted]  # every shard's files opened (their header reads, from threads too)
    most[0] = 0
    got = fresh[wanted]
    assert_bitwise_equal(got["x"], data["x"][wanted])
    assert most[0] >= 8, most[0]  # one read at a time, shard after shard, without
