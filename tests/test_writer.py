"""The writer: shard sizing, validation before writing, atomic commit, clean aborts."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import shardstore
from shardstore.errors import (
    DatasetExistsError,
    DatasetNotFoundError,
    InvalidInputError,
    ShardStoreError,
    SourceNotFoundError,
    UnsupportedDTypeError,
)
from shardstore.testing import assert_bitwise_equal
from shardstore.writing.writer import parse_size


def arrays(n: int = 100) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(n)
    return {
        "image": rng.random((n, 4, 4, 3), dtype=np.float32),
        "label": np.arange(n, dtype=np.int64),
    }


def read_back(ds: shardstore.Dataset) -> dict[str, np.ndarray]:
    """Read every shard with plain np.load: the files are standard .npy."""
    out: dict[str, list[np.ndarray]] = {}
    for shard in ds.shards:
        for f in shard.files:
            assert f.feature is not None
            out.setdefault(f.feature, []).append(np.load(ds.path / f.path, allow_pickle=False))
    return {k: np.concatenate(v) for k, v in out.items()}


def dataset_files(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (1, 1),
        ("64MiB", 64 << 20),
        ("1GB", 10**9),
        ("512k", 512_000),
        ("1.5KiB", 1536),
        (" 10 b ", 10),
        (np.int64(7), 7),
    ],
)
def test_parse_size(text: Any, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", [0, -1, "0MiB", "-3MiB", "lots", "12 parsecs", True, 1.5, None])
def test_parse_size_rejects(bad: Any) -> None:
    with pytest.raises(InvalidInputError, match="shard_size"):
        parse_size(bad)


def test_records_per_shard_cuts_exactly(tmp_path: Path) -> None:
    ds = shardstore.write(tmp_path / "d", arrays(1000), records_per_shard=128)
    assert [s.num_records for s in ds.shards] == [128] * 7 + [104]
    assert ds.num_records == 1000
    assert all(len(s.files) == 2 for s in ds.shards)
    back = read_back(ds)
    assert_bitwise_equal(back["image"], arrays(1000)["image"])
    assert_bitwise_equal(back["label"], arrays(1000)["label"])


def test_shard_size_in_bytes(tmp_path: Path) -> None:
    record_bytes = 4 * 4 * 3 * 4 + 8
    ds = shardstore.write(tmp_path / "d", arrays(1000), shard_size="16KiB")
    assert ds.shards[0].num_records == (16 << 10) // record_bytes
    assert max(s.nbytes for s in ds.shards) <= (16 << 10) + 2 * 128  # plus two .npy headers


def test_single_array_is_feature_x_and_lists_are_accepted(tmp_path: Path) -> None:
    ds = shardstore.write(tmp_path / "a", np.arange(10, dtype=np.int16))
    assert list(ds.features) == ["x"]
    ds2 = shardstore.write(tmp_path / "b", {"v": [[1.0, 2.0], [3.0, 4.0]]})
    assert ds2.features["v"].shape == (2,)
    assert_bitwise_equal(read_back(ds2)["v"], np.array([[1.0, 2.0], [3.0, 4.0]]))


def test_manifest_is_committed_last(tmp_path: Path) -> None:
    path = tmp_path / "d"
    with shardstore.Writer(path, records_per_shard=10) as w:
        w.write(arrays(35))
        assert any(path.rglob("*.npy"))  # shards are already on disk...
        assert not (path / "manifest.json").exists()
        with pytest.raises(DatasetNotFoundError):  # ...but no reader can see them
            shardstore.open(path)
    assert shardstore.open(path).num_records == 35


def test_streaming_writer_matches_one_shot_write(tmp_path: Path) -> None:
    data = arrays(500)
    one = shardstore.write(tmp_path / "one", data, records_per_shard=64)
    with shardstore.Writer(tmp_path / "many", records_per_shard=64) as w:
        for lo, hi in [(0, 7), (7, 300), (300, 301), (301, 301), (301, 450), (450, 500)]:
            w.write({k: v[lo:hi] for k, v in data.items()})
    many = shardstore.open(tmp_path / "many")
    assert [s.num_records for s in many.shards] == [s.num_records for s in one.shards]
    for k in data:
        assert_bitwise_equal(read_back(many)[k], read_back(one)[k])


def test_writer_copies_buffered_records(tmp_path: Path) -> None:
    """A caller reusing its batch buffer must not corrupt records buffered earlier."""
    buf = np.zeros((3, 2), np.int32)
    with shardstore.Writer(tmp_path / "d", records_per_shard=100) as w:
        for i in range(4):
            buf[:] = i
            w.write({"v": buf})
    back = read_back(shardstore.open(tmp_path / "d"))["v"]
    assert_bitwise_equal(back, np.repeat(np.arange(4, dtype=np.int32), 3)[:, None].repeat(2, 1))


def test_metadata_round_trip(tmp_path: Path) -> None:
    meta = {"origin": "unit test", "classes": ["cat", "dog"], "n": 3}
    shardstore.write(tmp_path / "d", arrays(5), metadata=meta)
    assert dict(shardstore.open(tmp_path / "d").metadata) == meta


def test_big_endian_and_strided_inputs_are_normalised(tmp_path: Path) -> None:
    be = np.arange(24, dtype=">i4").reshape(6, 4)
    strided = np.arange(48, dtype=np.float64).reshape(6, 8)[:, ::2]
    transposed = np.arange(24, dtype=np.uint16).reshape(4, 6).T
    ds = shardstore.write(tmp_path / "d", {"be": be, "s": strided, "t": transposed},
                          records_per_shard=4)  # fmt: skip
    assert ds.features["be"].dtype.str == "<i4"
    back = read_back(ds)
    assert_bitwise_equal(back["be"], be.astype("<i4"))
    assert_bitwise_equal(back["s"], np.ascontiguousarray(strided))
    assert_bitwise_equal(back["t"], np.ascontiguousarray(transposed))


class SliceSpy:
    """An array-like that records every slice the writer asks for."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data
        self.shape = data.shape
        self.dtype = data.dtype
        self.requests: list[int] = []

    def __getitem__(self, key: slice) -> Any:
        start, stop, _ = key.indices(self.shape[0])
        self.requests.append(stop - start)
        return self.data[key]


def test_array_likes_are_read_shard_by_shard(tmp_path: Path) -> None:
    spy = SliceSpy(np.arange(1000, dtype=np.int64))
    ds = shardstore.write(tmp_path / "d", {"v": spy}, records_per_shard=64)
    assert spy.requests and max(spy.requests) <= 64
    assert_bitwise_equal(read_back(ds)["v"], spy.data)


def test_memmap_input_is_never_loaded_whole(tmp_path: Path) -> None:
    n, width = 4096, 4096  # 64 MiB of float32
    mm = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.float32,
                                   shape=(n, width))  # fmt: skip
    mm[:] = np.arange(n, dtype=np.float32)[:, None]
    mm.flush()
    src = np.load(tmp_path / "big.npy", mmap_mode="r")
    tracemalloc.start()
    try:
        ds = shardstore.write(tmp_path / "d", {"m": src}, shard_size="8MiB", fsync=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"peak traced allocation {peak / 2**20:.1f} MiB for a 64 MiB input"
    assert ds.num_shards == 8
    assert_bitwise_equal(np.load(ds.path / ds.shards[3].files[0].path)[:, 0],
                         np.arange(1536, 2048, dtype=np.float32))  # fmt: skip


# --- bad input is refused before anything is written ------------------------------------


class Opaque:
    pass


BAD_INPUTS: dict[str, tuple[Any, type[Exception]]] = {
    "mismatched lengths": ({"a": np.zeros(3), "b": np.zeros(4)}, InvalidInputError),
    "object dtype": ({"a": np.array([1, "x"], dtype=object)}, UnsupportedDTypeError),
    "string dtype": ({"a": np.array(["ab", "cd"])}, UnsupportedDTypeError),
    "bytes dtype": ({"a": np.array([b"ab", b"cd"])}, UnsupportedDTypeError),
    "datetime dtype": ({"a": np.array(["2024-01-01"], dtype="datetime64[D]")},
                       UnsupportedDTypeError),
    "structured dtype": ({"a": np.zeros(2, dtype=[("f", "<i4")])}, UnsupportedDTypeError),
    "opaque object": ({"a": Opaque()}, UnsupportedDTypeError),
    "0-d array": ({"a": np.float32(1.0)}, InvalidInputError),
    "empty records": ({"a": np.zeros((4, 0))}, InvalidInputError),
    "empty mapping": ({}, InvalidInputError),
    "bad feature name": ({"a/b": np.zeros(3)}, InvalidInputError),
    "non-string name": ({1: np.zeros(3)}, InvalidInputError),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_refused_and_nothing_is_written(tmp_path: Path, case: str) -> None:
    data, error = BAD_INPUTS[case]
    with pytest.raises(error):
        shardstore.write(tmp_path / "d", data)
    assert not (tmp_path / "d").exists()


def test_longdouble_is_refused(tmp_path: Path) -> None:
    if np.dtype(np.longdouble).itemsize == 8:
        pytest.skip("longdouble is float64 on this platform, so it is storable")
    with pytest.raises(UnsupportedDTypeError, match=r"float128|longdouble"):
        shardstore.write(tmp_path / "d", {"a": np.zeros(3, np.longdouble)})


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"shard_size": 0}, InvalidInputError),
        ({"shard_size": "-1MiB"}, InvalidInputError),
        ({"records_per_shard": 0}, InvalidInputError),
        ({"records_per_shard": 2.5}, InvalidInputError),
        ({"shard_size": "1MiB", "records_per_shard": 3}, InvalidInputError),
        ({"format": "no-such-format"}, SourceNotFoundError),
        ({"compression": "zstd"}, InvalidInputError),
        ({"metadata": {"f": object()}}, InvalidInputError),
        ({"metadata": {"nan": float("nan")}}, InvalidInputError),
    ],
)
def test_bad_options_are_refused_before_writing(
    tmp_path: Path, kwargs: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        shardstore.write(tmp_path / "d", arrays(10), **kwargs)
    assert not (tmp_path / "d").exists()


def test_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("not a directory")
    with pytest.raises(InvalidInputError, match="not a directory"):
        shardstore.write(tmp_path / "f", arrays(3))


# --- existing datasets, overwrite, aborts -------------------------------------------------


def test_existing_dataset_is_not_replaced_without_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "d"
    shardstore.write(path, arrays(10))
    before = dataset_files(path)
    with pytest.raises(DatasetExistsError, match="overwrite=True"):
        shardstore.write(path, arrays(20))
    assert dataset_files(path) == before
    assert shardstore.open(path).num_records == 10


def test_overwrite_replaces_and_keeps_the_old_version_until_gc(tmp_path: Path) -> None:
    path = tmp_path / "d"
    old = shardstore.write(path, arrays(10))
    new = shardstore.write(path, {"z": np.ones((4, 2), np.uint8)}, overwrite=True)
    assert new.manifest.version_id != old.manifest.version_id
    reopened = shardstore.open(path)
    assert list(reopened.features) == ["z"]
    old_dir = f"v-{old.manifest.version_id}"
    assert sorted(p.name for p in path.iterdir()) == sorted(
        [".shardstore", "manifest.json", old_dir, f"v-{new.manifest.version_id}"]
    )
    assert (path / ".shardstore" / "retired" / old_dir).is_file()
    old.verify()  # a reader of the old version still has its files
    report = shardstore.gc(path)  # within the grace period: kept
    assert report.removed == [] and [p for p, _ in report.kept_retired] == [old_dir]
    report = shardstore.gc(path, grace=0)
    assert old_dir in report.removed and report.bytes_freed >= old.nbytes
    assert sorted(p.name for p in path.iterdir()) == [
        "manifest.json",
        f"v-{new.manifest.version_id}",
    ]
    reopened.verify()


def test_exception_in_writer_block_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "d"
    with (
        pytest.raises(RuntimeError, match="boom"),
        shardstore.Writer(path, records_per_shard=5) as w,
    ):
        w.write(arrays(23))
        raise RuntimeError("boom")
    assert not path.exists()


def test_exception_during_overwrite_keeps_the_old_dataset(tmp_path: Path) -> None:
    path = tmp_path / "d"
    shardstore.write(path, arrays(10))
    before = dataset_files(path)
    with pytest.raises(RuntimeError), shardstore.Writer(path, overwrite=True,
                                                        records_per_shard=3) as w:  # fmt: skip
        w.write(arrays(12))
        raise RuntimeError("interrupted")
    assert dataset_files(path) == before
    shardstore.open(path).verify()


def test_mismatched_batch_aborts_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "d"
    w = shardstore.Writer(path, records_per_shard=2)
    w.write(arrays(5))
    with pytest.raises(InvalidInputError, match="dtype"):
        w.write({"image": np.zeros((2, 4, 4, 3), np.float64), "label": np.zeros(2, np.int64)})
    assert not path.exists()
    with pytest.raises(ShardStoreError, match="aborted"):
        w.write(arrays(5))


def test_writer_with_no_data_is_an_error_and_leaves_nothing(tmp_path: Path) -> None:
    with (
        pytest.raises(InvalidInputError, match="nothing was written"),
        shardstore.Writer(tmp_path / "d"),
    ):
        pass
    assert not (tmp_path / "d").exists()


def test_zero_records_is_a_valid_empty_dataset(tmp_path: Path) -> None:
    ds = shardstore.write(tmp_path / "d", {"a": np.zeros((0, 3), np.float32)})
    assert (ds.num_records, ds.num_shards) == (0, 0)
    assert shardstore.open(tmp_path / "d").features["a"].shape == (3,)


def test_concurrent_first_commits_exactly_one_wins(tmp_path: Path) -> None:
    path = tmp_path / "d"
    first = shardstore.Writer(path, records_per_shard=4)
    second = shardstore.Writer(path, records_per_shard=4)
    first.write(arrays(10))
    second.write({"other": np.ones((6, 1), np.int8)})
    first.close()
    with pytest.raises(DatasetExistsError, match="another writer"):
        second.close()
    ds = shardstore.open(path)
    assert list(ds.features) == ["image", "label"]
    assert sorted(p.name for p in path.iterdir()) == [
        "manifest.json",
        f"v-{ds.manifest.version_id}",
    ]
    ds.verify()


def test_manifest_records_checksums_sizes_and_headers(tmp_path: Path) -> None:
    ds = shardstore.write(tmp_path / "d", arrays(10), records_per_shard=4)
    raw = json.loads((tmp_path / "d" / "manifest.json").read_text())
    f = raw["shards"][0]["files"][0]
    assert f["checksum"].startswith("xxh3_64:")
    assert f["size"] == (tmp_path / "d" / f["path"]).stat().st_size
    assert f["info"]["header_bytes"] % 64 == 0
    assert raw["num_records"] == 10 == ds.num_records
