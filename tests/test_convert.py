"""convert(): every built-in format to every other, bit for bit, metadata kept."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

import shardstore
from shardstore.errors import DatasetExistsError, InvalidInputError
from shardstore.testing import assert_bitwise_equal, random_records
from shardstore.writing.convert import convert

FORMATS = ["npy", "memmap", "zarr", "tfrecord"]


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    return {
        "c": random_records(np.dtype("complex64"), (2,), 57, seed=1),
        "u": random_records(np.dtype("uint64"), (), 57, seed=2),
        "b": random_records(np.dtype("bool"), (3, 2), 57, seed=3),
    }


@pytest.mark.parametrize(("src_format", "dst_format"), list(itertools.permutations(FORMATS, 2)))
def test_convert_is_bit_exact(
    tmp_path: Path, data: dict[str, np.ndarray], src_format: str, dst_format: str
) -> None:
    shardstore.write(tmp_path / "src", data, format=src_format, records_per_shard=10,
                     metadata={"origin": src_format}, fsync=False)  # fmt: skip
    out = convert(tmp_path / "src", tmp_path / "dst", format=dst_format, fsync=False)
    assert set(out.manifest.sources) == {dst_format}
    assert [s.num_records for s in out.shards] == [10] * 5 + [7]
    assert dict(out.metadata) == {"origin": src_format}
    out.verify(progress=False)
    batches = list(shardstore.open(tmp_path / "dst").iter_numpy(batch_size=13))
    for name, expected in data.items():
        assert_bitwise_equal(np.concatenate([b[name] for b in batches]), expected)


def test_convert_with_new_shard_size_and_refusals(tmp_path: Path, data: dict) -> None:
    shardstore.write(tmp_path / "src", data, records_per_shard=10)
    out = convert(tmp_path / "src", tmp_path / "dst", format="npy", records_per_shard=25)
    assert [s.num_records for s in out.shards] == [25, 25, 7]
    with pytest.raises(DatasetExistsError):
        convert(tmp_path / "src", tmp_path / "dst", format="npy")
    with pytest.raises(InvalidInputError, match="different"):
        convert(tmp_path / "src", tmp_path / "src", format="npy", overwrite=True)


def test_iter_numpy_without_random_access_uses_tf(tmp_path: Path, data: dict) -> None:
    shardstore.write(tmp_path / "src", data, records_per_shard=10)
    explicit = shardstore.open(tmp_path / "src", source="npy")
    got = list(explicit.iter_numpy(batch_size=20))
    assert [len(b["u"]) for b in got] == [20, 20, 17]
    assert_bitwise_equal(np.concatenate([b["c"] for b in got]), data["c"])


def test_convert_cli(tmp_path: Path, data: dict, capsys: pytest.CaptureFixture[str]) -> None:
    from shardstore.cli import main

    shardstore.write(tmp_path / "src", data, records_per_shard=10)
    args = ["--format", "zarr", "-o", "compression=lz4", "--records-per-shard", "30"]
    code = main(["convert", str(tmp_path / "src"), str(tmp_path / "dst"), *args, "--no-progress"])
    assert code == 0
    assert "57 records, 2 shards" in capsys.readouterr().out
    out = shardstore.open(tmp_path / "dst")
    assert out.manifest.sources == ("zarr",)
    assert_bitwise_equal(np.concatenate([b["u"] for b in out.iter_numpy()]), data["u"])
    assert main(["convert", str(tmp_path / "src"), str(tmp_path / "x"), "--format", "zarr",
                 "-o", "compression=rar"]) == 2  # fmt: skip
    assert "compression" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
