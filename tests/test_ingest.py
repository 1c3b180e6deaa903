"""shardstore.ingest: one-array-per-file .npy, big .npy/.npz, Zarr; labels; bad files; resuming."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import tracemalloc
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import shardstore
from shardstore.cli import main
from shardstore.errors import (
    DatasetExistsError,
    InvalidInputError,
    UnsupportedDTypeError,
)
from shardstore.sources.npy import NpySource
from shardstore.testing import assert_bitwise_equal, assert_same_dataset
from shardstore.writing.resumable import JOURNAL_NAME

SHAPE = (4, 3)


def make_files(root: Path, n: int = 12, classes: tuple[str, ...] = ("cat", "dog")) -> np.ndarray:
    """``root/<class>/<i>.npy``: one float32 (4, 3) array per file; returns them in sorted order."""
    rng = np.random.default_rng(1)
    paths = []
    for i in range(n):
        cls = classes[i % len(classes)]
        (root / cls).mkdir(parents=True, exist_ok=True)
        path = root / cls / f"{i:03d}.npy"
        np.save(path, rng.random(SHAPE, dtype=np.float32))
        paths.append(path)
    return np.stack([np.load(p) for p in sorted(paths)])


class Evil:
    """Unpickling this creates a marker file: proof that nothing was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (open, (str(self.marker), "w"))


def pickled_npy(path: Path, marker: Path) -> None:
    np.save(path, np.array([Evil(marker), Evil(marker)], dtype=object), allow_pickle=True)


# -- one array per file ------------------------------------------------------------------------
def test_glob_with_labels_from_directory_names(tmp_path: Path) -> None:
    expected = make_files(tmp_path / "raw")
    ds = shardstore.ingest(str(tmp_path / "raw/**/*.npy"), tmp_path / "ds",
                           label_from="parent", records_per_shard=5)  # fmt: skip
    assert ds.num_records == 12 and [s.num_records for s in ds.shards] == [5, 5, 2]
    got = ds[0:12]
    assert_bitwise_equal(got["x"], expected)  # cat/000, cat/002, ..., dog/001, ...
    assert got["label"].tolist() == [0] * 6 + [1] * 6
    assert ds.metadata["ingest"]["classes"] == {"label": ["cat", "dog"]}
    assert ds.metadata["ingest"]["kind"] == "files"
    ds.verify(progress=False)


def test_same_records_as_writing_the_stacked_arrays(tmp_path: Path) -> None:
    expected = make_files(tmp_path / "raw")
    ds = shardstore.ingest(tmp_path / "raw", tmp_path / "ds", records_per_shard=5)  # a directory
    ref = shardstore.write(tmp_path / "ref", {"x": expected}, records_per_shard=5)
    for got, want in zip(ds.shards, ref.shards, strict=True):
        assert [(f.size, f.checksum) for f in got.files] == [
            (f.size, f.checksum) for f in want.files
        ]


def test_explicit_files_keep_their_order(tmp_path: Path) -> None:
    expected = make_files(tmp_path / "raw", n=4)
    files = sorted((tmp_path / "raw").rglob("*.npy"), reverse=True)
    ds = shardstore.ingest([str(f) for f in files], tmp_path / "ds", feature="image")
    assert_bitwise_equal(ds[0:4]["image"], expected[::-1])


def test_fortran_order_and_big_endian_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    a = rng.random(SHAPE)
    (tmp_path / "raw").mkdir()
    np.save(tmp_path / "raw/0.npy", np.asfortranarray(a))
    np.save(tmp_path / "raw/1.npy", a.astype(">f8"))
    ds = shardstore.ingest(str(tmp_path / "raw/*.npy"), tmp_path / "ds")
    assert_bitwise_equal(ds[0:2]["x"], np.stack([a, a]))


def write_csv(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def test_labels_from_a_csv(tmp_path: Path) -> None:
    make_files(tmp_path / "raw", n=4)
    csv = write_csv(
        tmp_path / "labels.csv",
        """
        path,class,weight,species
        cat/000.npy,3,0.5,felis
        dog/001.npy,1,1.0,canis
        002.npy,2,2.5,felis
        ./dog/003.npy,0,1e-3,canis
        """,
    )  # by relative path, by base name, with ./
    ds = shardstore.ingest(str(tmp_path / "raw/**/*.npy"), tmp_path / "ds", labels=csv)
    got = ds[0:4]  # cat/000, cat/002, dog/001, dog/003
    assert got["class"].tolist() == [3, 2, 1, 0] and got["class"].dtype == np.int64
    assert got["weight"].tolist() == [0.5, 2.5, 1.0, 1e-3] and got["weight"].dtype == np.float64
    assert got["species"].tolist() == [1, 1, 0, 0]
    assert ds.metadata["ingest"]["classes"] == {"species": ["canis", "felis"]}
    one = shardstore.ingest(str(tmp_path / "raw/**/*.npy"), tmp_path / "one", labels=csv,
                            label_columns=["class"], label_feature="y")  # fmt: skip
    assert list(one.features) == ["x", "y"]


def test_a_file_without_a_label(tmp_path: Path) -> None:
    make_files(tmp_path / "raw", n=3)
    csv = write_csv(
        tmp_path / "labels.csv",
        """
        filename,label
        000.npy,1
        001.npy,
        """,
    )
    src = str(tmp_path / "raw/**/*.npy")
    with pytest.raises(InvalidInputError, match=r"'cat/002.npy' has no row in .*labels.csv"):
        shardstore.ingest(src, tmp_path / "ds", labels=csv)
    assert not (tmp_path / "ds").exists()
    ds = shardstore.ingest(src, tmp_path / "ds", labels=csv, on_error="skip")
    assert ds.num_records == 1
    assert [s["file"] for s in ds.metadata["ingest"]["skipped"]] == ["cat/002.npy", "dog/001.npy"]
    assert "empty label" in ds.metadata["ingest"]["skipped"][1]["reason"]


def test_labels_from_a_regex(tmp_path: Path) -> None:
    make_files(tmp_path / "raw", n=4)
    ds = shardstore.ingest(str(tmp_path / "raw/*/*.npy"), tmp_path / "ds",
                           label_from=r"/0*(?P<label>\d+)\.npy$")  # fmt: skip
    assert ds[0:4]["label"].tolist() == [0, 2, 1, 3]
    assert "classes" not in ds.metadata["ingest"]


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    """Six good files and five bad ones, each bad in its own way."""
    raw = tmp_path / "raw"
    make_files(raw, n=6, classes=("a",))
    pickled_npy(raw / "a" / "b1_pickled.npy", tmp_path / "UNPICKLED")
    (raw / "a" / "b2_text.npy").write_text("not an array")
    np.save(raw / "a" / "b3_shape.npy", np.zeros((4, 5), np.float32))  # other row shape
    np.save(raw / "a" / "b4_dtype.npy", np.zeros(SHAPE, np.float64))
    np.save(raw / "a" / "b5_trunc.npy", np.zeros(SHAPE, np.float32))
    with open(raw / "a" / "b5_trunc.npy", "r+b") as f:
        f.truncate(150)  # header intact, data cut
    return raw


def test_bad_files_fail_by_name_and_nothing_is_written(tmp_path: Path, messy: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"'a/b1_pickled.npy' holds Python objects"):
        shardstore.ingest(str(messy / "**/*.npy"), tmp_path / "ds")
    assert not (tmp_path / "ds").exists()
    assert not (tmp_path / "UNPICKLED").exists()


def test_bad_files_skipped_and_listed(tmp_path: Path, messy: Path) -> None:
    ds = shardstore.ingest(str(messy / "**/*.npy"), tmp_path / "ds", on_error="skip")
    assert ds.num_records == 6
    skipped = {s["file"]: s["reason"] for s in ds.metadata["ingest"]["skipped"]}
    kinds = ["pickled", "text", "shape", "dtype", "trunc"]
    assert list(skipped) == [f"a/b{i}_{k}.npy" for i, k in enumerate(kinds, 1)]
    assert "Python objects" in skipped["a/b1_pickled.npy"]
    assert "not a .npy file" in skipped["a/b2_text.npy"]
    assert "shape float32 (4, 5), unlike the 6 other files (float32 (4, 3))" in (
        skipped["a/b3_shape.npy"])  # fmt: skip
    assert "dtype float64" in skipped["a/b4_dtype.npy"]
    assert "truncated" in skipped["a/b5_trunc.npy"]
    assert ds.metadata["ingest"]["skipped_count"] == 5
    assert not (tmp_path / "UNPICKLED").exists()


def test_varying_row_shapes_name_the_first_mismatching_file(tmp_path: Path) -> None:
    make_files(tmp_path / "raw", n=3, classes=("a",))
    np.save(tmp_path / "raw/a/001.npy", np.zeros((4, 2), np.float32))
    with pytest.raises(InvalidInputError, match=r"'a/001.npy' has shape float32 \(4, 2\)"):
        shardstore.ingest(str(tmp_path / "raw/**/*.npy"), tmp_path / "ds")


def test_files_of_varying_length_become_a_ragged_feature(tmp_path: Path) -> None:
    """One array per file, first dimension varying (clips, token lists): ragged, bit for bit."""
    rng = np.random.default_rng(5)
    lengths = [3, 0, 7, 1, 4, 4, 9]
    arrays = [rng.random((n, 2), dtype=np.float32) for n in lengths]
    (tmp_path / "raw").mkdir()
    for i, a in enumerate(arrays):
        np.save(tmp_path / "raw" / f"{i:02d}.npy", a)
    np.save(tmp_path / "raw" / "zz_bad.npy", np.zeros((3, 5), np.float32))  # other row shape
    ds = shardstore.ingest(str(tmp_path / "raw/*.npy"), tmp_path / "ds", records_per_shard=3,
                           on_error="skip")  # fmt: skip
    spec = ds.features["x"]
    assert spec.shape == (None, 2) and spec.dtype == np.float32
    assert spec.lengths is not None
    assert (spec.lengths["min"], spec.lengths["max"], spec.lengths["total"]) == (0, 9, 28)
    assert [s["file"] for s in ds.metadata["ingest"]["skipped"]] == ["zz_bad.npy"]
    got = ds[:]["x"]
    assert got.lengths.tolist() == lengths
    for record, expected in zip(got, arrays, strict=True):
        assert_bitwise_equal(record, expected)


def test_no_usable_input(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw/x.npy").write_text("no")
    with pytest.raises(InvalidInputError, match="none of the 1 input files"):
        shardstore.ingest(str(tmp_path / "raw/*.npy"), tmp_path / "ds", on_error="skip")
    with pytest.raises(InvalidInputError, match="matches no file"):
        shardstore.ingest(str(tmp_path / "raw/*.npz"), tmp_path / "ds")
    with pytest.raises(InvalidInputError, match=r"labels .* or label_from, not both"):
        shardstore.ingest(str(tmp_path / "raw/*.npy"), tmp_path / "ds", labels="l.csv",
                          label_from="parent")  # fmt: skip
    assert not (tmp_path / "ds").exists()


# -- one big array -------------------------------------------------------------------------------
def test_big_npy_is_memory_mapped(tmp_path: Path) -> None:
    big = np.random.default_rng(3).random((4096, 256), dtype=np.float32)  # 4 MiB
    np.save(tmp_path / "big.npy", big)
    del big
    tracemalloc.start()
    try:
        ds = shardstore.ingest(tmp_path / "big.npy", tmp_path / "ds", shard_size="256KiB")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ds.num_shards == 16
    assert peak < (4 << 20) / 2  # a few shards in flight, never the whole array
    assert_bitwise_equal(ds[0:4096]["x"], np.load(tmp_path / "big.npy"))


def test_big_fortran_npy(tmp_path: Path) -> None:
    a = np.asfortranarray(np.arange(60, dtype=np.int16).reshape(10, 6))
    np.save(tmp_path / "f.npy", a)
    ds = shardstore.ingest(tmp_path / "f.npy", tmp_path / "ds", records_per_shard=3)
    assert_bitwise_equal(ds[0:10]["x"], np.ascontiguousarray(a))


def test_pickled_npy_is_refused_without_unpickling(tmp_path: Path) -> None:
    pickled_npy(tmp_path / "objects.npy", tmp_path / "UNPICKLED")
    with pytest.raises(UnsupportedDTypeError, match="Python objects"):
        shardstore.ingest(tmp_path / "objects.npy", tmp_path / "ds")
    assert not (tmp_path / "UNPICKLED").exists()
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize("compressed", [False, True])
def test_npz(tmp_path: Path, compressed: bool) -> None:
    rng = np.random.default_rng(4)
    n = 4000
    arrays = {"image": rng.random((n, 16, 16), dtype=np.float32), "label": np.arange(n)}
    save = np.savez_compressed if compressed else np.savez
    save(tmp_path / "a.npz", **arrays)
    tracemalloc.start()
    try:
        ds = shardstore.ingest(tmp_path / "a.npz", tmp_path / "ds", shard_size="128KiB")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    how = "stream" if compressed else "memmap"
    assert ds.metadata["ingest"]["read"] == {"image": how, "label": how}
    assert peak < arrays["image"].nbytes / 3
    got = ds[0:n]
    assert_bitwise_equal(got["image"], arrays["image"])
    assert_bitwise_equal(got["label"], arrays["label"])
    only = shardstore.ingest(tmp_path / "a.npz", tmp_path / "only", members=["label"])
    assert list(only.features) == ["label"]


def test_npz_problems(tmp_path: Path) -> None:
    np.savez(tmp_path / "uneven.npz", a=np.zeros(5), b=np.zeros(6))
    with pytest.raises(InvalidInputError, match=r"different numbers of records \(a: 5, b: 6\)"):
        shardstore.ingest(tmp_path / "uneven.npz", tmp_path / "ds")
    with pytest.raises(InvalidInputError, match="no array 'c'"):
        shardstore.ingest(tmp_path / "uneven.npz", tmp_path / "ds", members=["c"])
    np.savez_compressed(tmp_path / "f.npz", a=np.asfortranarray(np.zeros((4, 3))))
    with pytest.raises(InvalidInputError, match="Fortran order"):
        shardstore.ingest(tmp_path / "f.npz", tmp_path / "ds")
    objects = np.array([Evil(tmp_path / "UNPICKLED")], dtype=object)
    np.savez(tmp_path / "o.npz", a=np.zeros(1), o=objects)
    with pytest.raises(UnsupportedDTypeError, match=r"array 'o' holds Python objects"):
        shardstore.ingest(tmp_path / "o.npz", tmp_path / "ds")
    assert not (tmp_path / "UNPICKLED").exists()
    with zipfile.ZipFile(tmp_path / "empty.npz", "w"):
        pass
    with pytest.raises(InvalidInputError, match=r"holds no \.npy arrays"):
        shardstore.ingest(tmp_path / "empty.npz", tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_zarr_group_and_array(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    image = rng.random((50, 4, 4), dtype=np.float32)
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("image", data=image, chunks=(7, 4, 4))
    group.create_array("label", data=np.arange(50), chunks=(20,))
    ds = shardstore.ingest(tmp_path / "g.zarr", tmp_path / "ds", records_per_shard=16)
    assert_bitwise_equal(ds[0:50]["image"], image)
    assert_bitwise_equal(ds[0:50]["label"], np.arange(50))
    one = shardstore.ingest(tmp_path / "g.zarr/image", tmp_path / "one", feature="img")
    assert list(one.features) == ["img"]
    v2 = zarr.create_array(str(tmp_path / "v2.zarr"), data=image, chunks=(9, 4, 4), zarr_format=2)
    assert v2.shape == image.shape
    old = shardstore.ingest(tmp_path / "v2.zarr", tmp_path / "old", kind="zarr")
    assert_bitwise_equal(old[0:50]["x"], image)


@pytest.mark.filterwarnings("ignore:The data type .* does not have a Zarr V3 specification")
def test_zarr_problems(tmp_path: Path) -> None:
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("a", data=np.zeros(5))
    group.create_array("b", data=np.zeros(6))
    with pytest.raises(InvalidInputError, match="different numbers of records"):
        shardstore.ingest(tmp_path / "g.zarr", tmp_path / "ds")
    with pytest.raises(InvalidInputError, match="no array 'c'"):
        shardstore.ingest(tmp_path / "g.zarr", tmp_path / "ds", members=["a", "c"])
    zarr.create_array(str(tmp_path / "s.zarr"), data=np.array(["a", "bc"]))
    with pytest.raises(UnsupportedDTypeError, match="dtype"):
        shardstore.ingest(tmp_path / "s.zarr", tmp_path / "ds")
    with pytest.raises(InvalidInputError, match="not a readable Zarr"):
        shardstore.ingest(tmp_path, tmp_path / "ds", kind="zarr")
    # a numeric dtype whose chunks decode through a Python-object codec: zarr refuses to
    # open it, and the error reaches the user as a ShardStoreError
    import numcodecs

    evil = zarr.create_array(str(tmp_path / "p.zarr"), shape=(4, 2), dtype="f4",
                             zarr_format=2, filters=[numcodecs.Pickle()])  # fmt: skip
    evil[:] = np.ones((4, 2), np.float32)
    with pytest.raises(InvalidInputError, match=r"not a readable Zarr.*object_codec_id"):
        shardstore.ingest(tmp_path / "p.zarr", tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_kind_detection_and_arguments(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.zeros((3, 2)))
    with pytest.raises(InvalidInputError, match="kind must be one of"):
        shardstore.ingest(tmp_path / "a.npy", tmp_path / "ds", kind="csv")
    with pytest.raises(InvalidInputError, match="index_tfrecords"):
        shardstore.ingest(tmp_path / "a.tfrecord", tmp_path / "ds")
    with pytest.raises(InvalidInputError, match="apply to kind='files', not kind='npy'"):
        shardstore.ingest(tmp_path / "a.npy", tmp_path / "ds", label_from="parent")
    with pytest.raises(InvalidInputError, match="on_error"):
        shardstore.ingest(tmp_path / "a.npy", tmp_path / "ds", on_error="ignore")
    one = shardstore.ingest(tmp_path / "a.npy", tmp_path / "one", kind="files")  # 1 record
    assert one.num_records == 1 and one.features["x"].shape == (3, 2)
    shardstore.ingest(tmp_path / "a.npy", tmp_path / "ds")
    with pytest.raises(DatasetExistsError):
        shardstore.ingest(tmp_path / "a.npy", tmp_path / "ds")
    assert shardstore.ingest(tmp_path / "a.npy", tmp_path / "ds", overwrite=True).num_records == 3


# -- resuming ---------------------------------------------------------------------------------
KILL_SCRIPT = """
import os, signal, sys
from shardstore.sources.npy import NpySource
from shardstore.cli import main

real = NpySource.write_shard
calls = []

def write_shard(self, shard, arrays):
    calls.append(shard.index)
    if len(calls) == 5:  # mid-shard: a partial file exists, then the process dies
        with shard.create(".npy", feature="x") as f:
            f.write(b"partial")
            os.kill(os.getpid(), signal.SIGKILL)
    return real(self, shard, arrays)

NpySource.write_shard = write_shard
sys.exit(main(sys.argv[1:]))
"""


def journal_of(dest: Path) -> Path:
    (journal,) = dest.glob(f".shardstore/staging/v-*/{JOURNAL_NAME}")
    return journal


def test_killed_ingest_resumes_to_the_same_dataset(tmp_path: Path) -> None:
    make_files(tmp_path / "raw", n=20)
    csv = tmp_path / "labels.csv"
    csv.write_text("file,label\n" + "".join(f"{i:03d}.npy,{i % 3}\n" for i in range(20)))
    args = [str(tmp_path / "raw/*/*.npy"), "--labels", str(csv), "--records-per-shard", "2",
            "--no-progress"]  # fmt: skip
    dest = tmp_path / "ds"
    killed = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, "ingest", *args[:1], str(dest), *args[1:],
         "--workers", "0"],
        capture_output=True, text=True, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    assert not (dest / "manifest.json").exists()
    journal = journal_of(dest)
    assert len(journal.read_text().splitlines()) == 1 + 4  # header + shards 0-3
    prefix = journal.parent
    assert (prefix / "000004.x.npy").read_bytes() == b"partial"
    kept = {p.name: p.stat().st_ino for p in prefix.glob("00000[0-3].*")}
    assert len(kept) == 12  # 2 files and the block index per shard

    assert main(["ingest", *args[:1], str(dest), *args[1:]]) == 0  # resumes
    resumed = shardstore.open(dest)
    assert resumed.manifest.version_id == prefix.name[2:]
    published = dest / prefix.name  # the staging directory, renamed into place at the commit
    assert {
        p.name: p.stat().st_ino for p in published.glob("00000[0-3].*")
    } == kept  # not rewritten
    assert not journal.exists() and not (published / JOURNAL_NAME).exists()

    assert main(["ingest", *args[:1], str(tmp_path / "fresh"), *args[1:]]) == 0
    assert_same_dataset(resumed, shardstore.open(tmp_path / "fresh"))
    resumed.verify(progress=False)


def interrupt_at(monkeypatch: pytest.MonkeyPatch, index: int, error: BaseException) -> None:
    real = NpySource.write_shard

    def write_shard(self: NpySource, shard: Any, arrays: Any) -> None:
        if shard.index == index:
            raise error
        real(self, shard, arrays)

    monkeypatch.setattr(NpySource, "write_shard", write_shard)


def test_ctrl_c_keeps_the_finished_shards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    big = np.arange(200, dtype=np.int32).reshape(50, 4)
    np.save(tmp_path / "big.npy", big)
    with monkeypatch.context() as m:
        interrupt_at(m, 3, KeyboardInterrupt())
        with pytest.raises(KeyboardInterrupt):
            shardstore.ingest(tmp_path / "big.npy", tmp_path / "ds", records_per_shard=5,
                              executor="serial")  # fmt: skip
    assert "run the same ingest again to resume" in caplog.text
    assert len(journal_of(tmp_path / "ds").read_text().splitlines()) == 4
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="shardstore.writing.resumable"):
        ds = shardstore.ingest(tmp_path / "big.npy", tmp_path / "ds", records_per_shard=5)
    assert "3 of 10 shards already written" in caplog.text
    fresh = shardstore.ingest(tmp_path / "big.npy", tmp_path / "fresh", records_per_shard=5)
    assert_same_dataset(ds, fresh)


def test_changed_inputs_start_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    np.save(tmp_path / "big.npy", np.arange(50))
    with monkeypatch.context() as m:
        interrupt_at(m, 3, KeyboardInterrupt())
        with pytest.raises(KeyboardInterrupt):
            shardstore.ingest(tmp_path / "big.npy", tmp_path / "ds", records_per_shard=5)
    stale = journal_of(tmp_path / "ds").parent
    np.save(tmp_path / "big.npy", np.arange(50) * 2)  # the input changed
    os.utime(tmp_path / "big.npy", ns=(1, 1))
    ds = shardstore.ingest(tmp_path / "big.npy", tmp_path / "ds", records_per_shard=5)
    assert "discarding the interrupted ingest" in caplog.text
    assert not stale.exists()
    assert_bitwise_equal(ds[0:50]["x"], np.arange(50) * 2)
    assert [p.name for p in (tmp_path / "ds").iterdir() if p.name.startswith("v-")] == [
        f"v-{ds.manifest.version_id}"
    ]


def test_resume_false_starts_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    np.save(tmp_path / "big.npy", np.arange(50))
    with monkeypatch.context() as m:
        interrupt_at(m, 3, KeyboardInterrupt())
        with pytest.raises(KeyboardInterrupt):
            shardstore.ingest(tmp_path / "big.npy", tmp_path / "ds", records_per_shard=5)
    stale = journal_of(tmp_path / "ds").parent
    ds = shardstore.ingest(tmp_path / "big.npy", tmp_path / "ds", records_per_shard=5,
                           resume=False)  # fmt: skip
    assert not stale.exists() and ds.manifest.version_id != stale.name[2:]


def test_an_error_removes_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    np.save(tmp_path / "big.npy", np.arange(50))
    interrupt_at(monkeypatch, 3, OSError(28, "No space left on device (injected)"))
    with pytest.raises(OSError, match="injected"):
        shardstore.ingest(tmp_path / "big.npy", tmp_path / "ds", records_per_shard=5)
    assert not (tmp_path / "ds").exists()


# -- command line ------------------------------------------------------------------------------
def test_cli_files_with_skips(
    tmp_path: Path, messy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "ds"
    assert main(["ingest", str(messy / "**/*.npy"), str(dest), "--no-progress"]) == 2
    assert "b1_pickled.npy' holds Python objects" in capsys.readouterr().err
    argv = ["ingest", str(messy / "**/*.npy"), str(dest), "--on-error", "skip",
            "--label-from", "parent", "--feature", "image", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"ingested 11 files into {dest}: 6 records, 1 shard, ")
    assert captured.out.rstrip().endswith("2 features; skipped 5 bad files")
    assert captured.err.count("  skipped a/b") == 5
    assert list(shardstore.open(dest).features) == ["image", "label"]


def test_cli_npz_and_zarr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.savez_compressed(tmp_path / "a.npz", a=np.arange(10), b=np.ones((10, 2)))
    assert main(["ingest", str(tmp_path / "a.npz"), str(tmp_path / "n"), "--member", "b",
                 "--workers", "2", "--format", "zarr", "-o", "compression=lz4"]) == 0  # fmt: skip
    assert capsys.readouterr().out.startswith(f"ingested {tmp_path / 'a.npz'} into ")
    ds = shardstore.open(tmp_path / "n")
    assert list(ds.features) == ["b"] and ds.manifest.sources == ("zarr",)
    zarr.create_array(str(tmp_path / "z.zarr"), data=np.arange(12).reshape(6, 2))
    assert main(["ingest", str(tmp_path / "z.zarr"), str(tmp_path / "z"), "--kind", "zarr"]) == 0
    assert_bitwise_equal(shardstore.open(tmp_path / "z")[0:6]["x"], np.arange(12).reshape(6, 2))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"records_per_shard": 0}, "records_per_shard must be a positive integer"),
        ({"records_per_shard": True}, "records_per_shard must be a positive integer"),
        ({"shard_size": "lots"}, "is not a size"),
        ({"shard_size": "1MiB", "records_per_shard": 3}, "not both"),
    ],
)
def test_bad_shard_layout_is_refused_before_reading(
    tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    """The same rules as write(); checked before any input file is opened."""
    make_files(tmp_path / "raw", n=2)
    with pytest.raises(InvalidInputError, match=message):
        shardstore.ingest(str(tmp_path / "raw/**/*.npy"), tmp_path / "ds", **kwargs)
    assert not (tmp_path / "ds").exists()
