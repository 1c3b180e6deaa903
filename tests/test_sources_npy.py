"""The npy source: every numeric dtype and shape round-trips bit for bit through tf.data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import shardstore
from shardstore.sources.npy import NpySource, npy_header
from shardstore.testing import SourceConformance, assert_bitwise_equal, collect

DTYPES = [
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "complex64", "complex128",
]  # fmt: skip
SHAPES = [(), (5,), (3, 2, 4)]


def random_records(dtype: np.dtype, shape: tuple[int, ...], n: int, seed: int) -> np.ndarray:
    """Records using the full bit range of the dtype (NaN payloads, -0.0, extremes)."""
    rng = np.random.default_rng(seed)
    if dtype == np.bool_:
        return rng.integers(0, 2, (n, *shape)).astype(bool)
    raw = rng.integers(0, 256, n * int(np.prod(shape, dtype=np.int64)) * dtype.itemsize,
                       dtype=np.uint8)  # fmt: skip
    return raw.view(dtype).reshape(n, *shape)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"shape{list(s)}")
def test_dtype_shape_round_trip(tmp_path: Path, dtype: str, shape: tuple[int, ...]) -> None:
    data = random_records(np.dtype(dtype), shape, 37, seed=len(dtype) + len(shape))
    ds = shardstore.write(tmp_path / "d", {"v": data}, records_per_shard=10)
    assert ds.features["v"].dtype == np.dtype(dtype)
    out = collect(ds.to_tf(batch_size=8, features="v"))
    assert_bitwise_equal(out, data)
    # the files are plain .npy: np.load reads them without shardstore
    first = np.load(ds.path / ds.shards[0].files[0].path, allow_pickle=False)
    assert_bitwise_equal(first, data[:10])


def test_capabilities() -> None:
    assert NpySource.capabilities() == {
        "tf_native": True,
        "random_access": False,
        "supports_ragged": True,  # stored here, read by index through memmap
    }


def test_header_matches_numpy(tmp_path: Path) -> None:
    arr = np.zeros((7, 3), "<f8")
    np.save(tmp_path / "ref.npy", arr)
    header = npy_header(arr.dtype, arr.shape)
    assert (tmp_path / "ref.npy").read_bytes()[: len(header)] == header
    assert len(header) % 64 == 0


def test_large_block_counts(tmp_path: Path) -> None:
    """Shards longer than a block: several full blocks plus a partial one per shard."""
    data = np.arange(3 * 70_000, dtype=np.int64).reshape(-1, 3)  # 24 B/record
    ds = shardstore.write(tmp_path / "d", {"v": data}, records_per_shard=50_000)
    out = collect(ds.to_tf(batch_size=4096, features="v"))
    assert_bitwise_equal(out, data)


class TestNpyConformance(SourceConformance):
    source = "npy"
