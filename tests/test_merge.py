"""shardstore.merge and `shardstore merge`: parts written independently, merged by hard links."""

from __future__ import annotations

import concurrent.futures as cf
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from tmpfs import other_file_system

import shardstore
from shardstore.cli import main
from shardstore.errors import (
    ChecksumError,
    DatasetExistsError,
    DatasetNotFoundError,
    InvalidInputError,
)
from shardstore.testing import assert_bitwise_equal, assert_same_dataset, flip_bit

N = 100
BOUNDS = [(0, 32), (32, 64), (64, 100)]  # parts of 4, 4 and 5 shards of 8 records
RPS = 8


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    return {
        "image": rng.random((N, 3, 4), dtype=np.float32),
        "label": np.arange(N, dtype=np.int64),
    }


def write_part(path: str, lo: int, hi: int, fmt: str = "npy") -> str:
    """What each independent job runs (in its own process)."""
    rng = np.random.default_rng(5)
    full = {"image": rng.random((N, 3, 4), dtype=np.float32), "label": np.arange(N)}
    part = {k: v[lo:hi] for k, v in full.items()}
    shardstore.write(path, part, records_per_shard=RPS, format=fmt, metadata={"job": lo})
    return path


@pytest.fixture
def parts(tmp_path: Path) -> list[str]:
    """Three parts, each written by a different process."""
    paths = [str(tmp_path / "parts" / f"part-{i}") for i in range(len(BOUNDS))]
    with cf.ProcessPoolExecutor(2) as pool:
        list(pool.map(write_part, paths, *zip(*BOUNDS, strict=True)))
    return paths


def test_merge_equals_one_write_of_everything(
    tmp_path: Path, parts: list[str], data: dict[str, np.ndarray]
) -> None:
    merged = shardstore.merge(parts, tmp_path / "all")
    single = shardstore.write(tmp_path / "single", data, records_per_shard=RPS)
    assert merged.num_shards == 13
    assert merged.metadata == {}  # "job" differs between the parts
    assert_same_dataset(merged, single)
    merged.verify(progress=False)


def test_files_are_hard_linked_and_parts_stay_valid(tmp_path: Path, parts: list[str]) -> None:
    merged = shardstore.merge(parts, tmp_path / "all", progress=False)
    sources = [shardstore.open(p) for p in parts]
    part_files = [ds.path / f.path for ds in sources for s in ds.shards for f in s.files]
    merged_files = [merged.path / f.path for s in merged.shards for f in s.files]
    assert all(os.path.samefile(a, b) for a, b in zip(part_files, merged_files, strict=True))
    for ds in sources:
        ds.verify(progress=False)
    expected = merged[0:N]
    for p in parts:
        shutil.rmtree(p)
    assert_bitwise_equal(shardstore.open(tmp_path / "all")[0:N]["image"], expected["image"])


def test_copy_mode(tmp_path: Path, parts: list[str]) -> None:
    merged = shardstore.merge(parts, tmp_path / "all", link="copy")
    part0 = shardstore.open(parts[0])
    a = part0.path / part0.shards[0].files[0].path
    b = merged.path / merged.shards[0].files[0].path
    assert not os.path.samefile(a, b)
    assert a.read_bytes() == b.read_bytes()
    merged.verify(progress=False)


@pytest.fixture
def other_device(tmp_path: Path) -> Iterator[Path]:
    """A directory on another file system than tmp_path (/dev/shm, else a tmpfs)."""
    with other_file_system(tmp_path) as d:
        yield d


def test_cross_device_parts_are_copied(
    tmp_path: Path, other_device: Path, data: dict[str, np.ndarray]
) -> None:
    far = write_part(str(other_device / "far"), 0, 32)
    near = write_part(str(tmp_path / "near"), 32, 64)
    with pytest.raises(InvalidInputError, match="cannot hard-link"):
        shardstore.merge([far, near], tmp_path / "all", link="hardlink")
    assert not (tmp_path / "all").exists()
    merged = shardstore.merge([far, near], tmp_path / "all")  # auto: copies what it must
    merged.verify(progress=False)
    assert_bitwise_equal(merged[0:64]["label"], data["label"][:64])


@pytest.mark.parametrize(
    ("other", "message"),
    [
        ({"image": np.zeros((4, 3, 4), np.float64), "label": np.arange(4)}, "'image' is float64"),
        ({"image": np.zeros((4, 3, 5), np.float32), "label": np.arange(4)}, r"\(3, 5\)"),
        ({"image": np.zeros((4, 3, 4), np.float32)}, "no feature 'label'"),
        (
            {"image": np.zeros((4, 3, 4), np.float32), "label": np.arange(4), "w": np.ones(4)},
            "has feature 'w'",
        ),
    ],
)
def test_feature_mismatch_names_the_part_and_the_feature(
    tmp_path: Path, parts: list[str], other: dict[str, np.ndarray], message: str
) -> None:
    odd = shardstore.write(tmp_path / "odd", other).path
    with pytest.raises(InvalidInputError, match=message) as info:
        shardstore.merge([parts[0], parts[1], odd], tmp_path / "all")
    assert "part 3" in str(info.value) and str(odd) in str(info.value)
    assert not (tmp_path / "all").exists()


def test_sources_must_be_readable_together(tmp_path: Path, parts: list[str]) -> None:
    mm = write_part(str(tmp_path / "mm"), 64, 100, fmt="memmap")  # npy reads memmap shards
    merged = shardstore.merge([parts[0], mm], tmp_path / "ok")
    assert merged.manifest.sources == ("npy", "memmap")
    z = write_part(str(tmp_path / "z"), 64, 100, fmt="zarr")
    with pytest.raises(InvalidInputError, match=r"part 2 .* 'zarr' source.*convert"):
        shardstore.merge([parts[0], z], tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_zarr_parts(tmp_path: Path, data: dict[str, np.ndarray]) -> None:
    """Shards that are directory trees are renamed as a whole."""
    zparts = [write_part(str(tmp_path / f"z{i}"), lo, hi, "zarr") for i, (lo, hi) in
              enumerate(BOUNDS)]  # fmt: skip
    merged = shardstore.merge(zparts, tmp_path / "all")
    single = shardstore.write(tmp_path / "single", data, records_per_shard=RPS, format="zarr")
    assert_same_dataset(merged, single)
    assert_bitwise_equal(merged[0:N]["image"], data["image"])


def test_damaged_part_with_copy(tmp_path: Path, parts: list[str]) -> None:
    ds = shardstore.open(parts[1])
    victim = ds.shards[2].files[0]
    flip_bit(ds.path / victim.path, -1)
    with pytest.raises(ChecksumError, match=f"shard 2: file '{victim.path}'") as info:
        shardstore.merge(parts, tmp_path / "all", link="copy")
    assert info.value.dataset == str(ds.path)
    assert not (tmp_path / "all").exists()
    # hard links too: the parts' files are checked (hashed once per process) before merging
    with pytest.raises(ChecksumError, match=f"shard 2: file '{victim.path}'"):
        shardstore.merge(parts, tmp_path / "linked")
    assert not (tmp_path / "linked").exists()
    with pytest.raises(ChecksumError):
        shardstore.merge(parts, tmp_path / "verified", verify=True)
    assert not (tmp_path / "verified").exists()


def test_truncated_part_is_refused_before_writing(tmp_path: Path, parts: list[str]) -> None:
    ds = shardstore.open(parts[2])
    with open(ds.path / ds.shards[0].files[1].path, "r+b") as f:
        f.truncate(10)
    with pytest.raises(ChecksumError, match="has 10 bytes"):
        shardstore.merge(parts, tmp_path / "all")
    assert not (tmp_path / "all").exists()


def test_bad_arguments(tmp_path: Path, parts: list[str]) -> None:
    with pytest.raises(InvalidInputError, match="list of dataset paths"):
        shardstore.merge(parts[0], tmp_path / "all")
    with pytest.raises(InvalidInputError, match="empty"):
        shardstore.merge([], tmp_path / "all")
    with pytest.raises(InvalidInputError, match="listed twice"):
        shardstore.merge([parts[0], parts[0]], tmp_path / "all")
    with pytest.raises(InvalidInputError, match="is also a part"):
        shardstore.merge(parts, parts[1])
    with pytest.raises(InvalidInputError, match="link must be"):
        shardstore.merge(parts, tmp_path / "all", link="soft")
    with pytest.raises(DatasetNotFoundError):
        shardstore.merge([parts[0], str(tmp_path / "nothing")], tmp_path / "all")
    assert not (tmp_path / "all").exists()


def test_existing_destination(tmp_path: Path, parts: list[str]) -> None:
    dest = tmp_path / "all"
    shardstore.write(dest, {"v": np.arange(3)})
    with pytest.raises(DatasetExistsError):
        shardstore.merge(parts, dest)
    merged = shardstore.merge(parts, dest, overwrite=True, metadata={"name": "all"})
    assert merged.num_records == N
    assert shardstore.open(dest).metadata == {"name": "all"}
    current = merged.shards[0].files[0].path.split("/")[0]
    versions = {p.name for p in dest.iterdir() if p.name.startswith("v-")}
    assert current in versions and len(versions) == 2  # the replaced version waits for gc
    shardstore.gc(dest, grace=0)
    assert [p.name for p in dest.iterdir() if p.name.startswith("v-")] == [current]


def test_common_metadata_is_kept(tmp_path: Path) -> None:
    a = shardstore.write(tmp_path / "a", np.arange(4), metadata={"src": "x", "job": 1}).path
    b = shardstore.write(tmp_path / "b", np.arange(4), metadata={"src": "x", "job": 2}).path
    assert shardstore.merge([a, b], tmp_path / "m").metadata == {"src": "x"}


def test_cli_merge(tmp_path: Path, parts: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    dest = str(tmp_path / "all")
    assert main(["merge", *parts, dest, "--no-progress"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"merged 3 parts into {dest}: 100 records, 13 shards, ")
    assert main(["verify", dest, "--no-progress"]) == 0
    assert main(["merge", *parts, dest]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["merge", dest]) == 2
    assert "the following arguments are required: DEST" in capsys.readouterr().err
    assert main(["merge", parts[0], str(tmp_path / "copy"), "--link", "copy", "--verify"]) == 0
