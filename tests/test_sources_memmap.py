"""The memmap source: conformance, reading npy shards, honest failures."""

from __future__ import annotations

from pathlib import Path

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
    with pytest.raises(ChecksumError, match="has checksum"):  # the default: hashed first
        shardstore.open(ds.path)[5]
    with pytest.raises(ManifestError, match="manifest says"):  # the source's own check
        shardstore.open(ds.path, verify="size")[5]


def test_open_maps_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memmap_module, "MAX_OPEN_MAPS", 3)
    data = np.arange(40, dtype=np.int16)
    ds = shardstore.write(tmp_path / "d", {"v": data}, records_per_shard=2)
    source = shardstore.get_source("memmap")
    assert isinstance(source, memmap_module.MemmapSource)
    for i in range(40):
        assert ds[i]["v"] == i
    assert len(source._maps) <= 3
