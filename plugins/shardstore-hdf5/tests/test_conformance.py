"""shardstore-hdf5: the shardstore conformance suite plus HDF5-specific checks.

Run against the *installed* distribution (``pip install ./plugins/shardstore-hdf5``):
the source is found through its ``shardstore.sources`` entry point, as a user's
would be.
"""

from __future__ import annotations

import io
import json
import os
import threading
import tracemalloc
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import h5py
import numpy as np
import pytest
import shardstore
from shardstore.errors import InvalidInputError, ManifestError
from shardstore.sources import ReadContext
from shardstore.testing import (
    ALL_DTYPES,
    SourceConformance,
    assert_bitwise_equal,
    random_records,
)

from shardstore_hdf5 import INFO_OFFSETS, Hdf5Source
from shardstore_hdf5._image import PAGE, SparseImage


class TestHdf5Conformance(SourceConformance):
    source = "hdf5"


# -- helpers ----------------------------------------------------------------------------------
def _write(path: Path, arrays: Any, **kwargs: Any) -> shardstore.Dataset:
    return shardstore.write(path, arrays, format="hdf5", fsync=False, **kwargs)


def _collect(tfds: Any) -> dict[str, np.ndarray]:
    batches = list(tfds.as_numpy_iterator())
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def _every_dtype(n: int, shape: tuple[int, ...] = (3,)) -> dict[str, np.ndarray]:
    return {
        f"f_{name}": random_records(np.dtype(name), shape, n, seed=i)
        for i, name in enumerate(ALL_DTYPES)
    }


def _context(ds: shardstore.Dataset, features: Any = None) -> ReadContext:
    names = list(ds.features) if features is None else list(features)
    return ReadContext(ds.path, ds.shards, {n: ds.features[n] for n in names}, 64)


def _edit_manifest(ds: shardstore.Dataset, edit: Any) -> shardstore.Dataset:
    manifest = json.loads((ds.path / "manifest.json").read_text())
    edit(manifest)
    (ds.path / "manifest.json").write_text(json.dumps(manifest))
    return shardstore.open(ds.path)


@pytest.fixture
def source() -> Iterator[Hdf5Source]:
    """A private instance (not the registry's), closed after the test."""
    src = Hdf5Source()
    yield src
    src.close()


# -- the files are plain HDF5 ------------------------------------------------------------------
def test_capabilities_and_registration() -> None:
    info = shardstore.available_sources()["hdf5"]
    assert info.distribution == "shardstore-hdf5"
    assert info.target == "shardstore_hdf5:Hdf5Source"
    assert isinstance(shardstore.get_source("hdf5"), Hdf5Source)
    assert Hdf5Source.capabilities() == {
        "tf_native": True,
        "random_access": True,
        "supports_ragged": False,
    }


def test_files_are_plain_contiguous_little_endian_hdf5(tmp_path: Path) -> None:
    arrays = _every_dtype(25, (2, 3))
    ds = _write(tmp_path / "d", arrays, records_per_shard=10)
    for shard in ds.shards:
        (entry,) = shard.files
        assert entry.path.endswith(f"{shard.index:06d}.h5")
        assert entry.feature is None
        lo = shard.index * 10
        with h5py.File(ds.path / entry.path, "r") as f:
            assert sorted(f) == sorted(arrays)
            for name, expected in arrays.items():
                dset = f[name]
                assert dset.chunks is None and dset.compression is None
                assert dset.id.get_create_plist().get_layout() == h5py.h5d.CONTIGUOUS
                assert dset.id.get_offset() == entry.info[INFO_OFFSETS][name]
                assert dset.dtype == dset.dtype.newbyteorder("<"), name  # little-endian
                assert_bitwise_equal(dset[...], expected[lo : lo + shard.num_records])


def test_file_is_byte_identical_to_h5py_writing_the_data_itself(tmp_path: Path) -> None:
    """The streamed file equals the one h5py writes with ``dset[...] = data``."""
    arrays = _every_dtype(13, ())
    ds = _write(tmp_path / "d", arrays)
    (entry,) = ds.shards[0].files
    reference = io.BytesIO()
    with h5py.File(reference, "w") as f:
        for name, data in arrays.items():
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_layout(h5py.h5d.CONTIGUOUS)
            dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
            dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
            dset = f.create_dataset(name, shape=data.shape, dtype=data.dtype, dcpl=dcpl)
            dset[...] = data
    assert (ds.path / entry.path).read_bytes() == reference.getvalue()


def test_feature_names_are_dataset_names(tmp_path: Path) -> None:
    arrays = {name: np.arange(6) * i for i, name in enumerate(["a.b", "c-d", "_e", "9f", "G"])}
    ds = _write(tmp_path / "d", arrays)
    with h5py.File(ds.path / ds.shards[0].files[0].path, "r") as f:
        assert sorted(f) == sorted(arrays)
    out = _collect(ds.to_tf(batch_size=4))
    for name, expected in arrays.items():
        assert_bitwise_equal(out[name], expected)


def test_round_trip_many_blocks_per_shard(tmp_path: Path) -> None:
    """Shards longer than a block: full blocks, then a partial one, per feature."""
    data = {
        "v": np.arange(3 * 70_000, dtype=np.int64).reshape(-1, 3),
        "w": np.arange(70_000, dtype=np.float16),
    }
    ds = _write(tmp_path / "d", data, records_per_shard=50_000)
    out = _collect(ds.to_tf(batch_size=4096))
    for name, expected in data.items():
        assert_bitwise_equal(out[name], expected)


def test_write_streams_records(tmp_path: Path) -> None:
    """Writing a 64 MiB shard never holds the shard (or the file image) in memory."""
    data = np.lib.format.open_memmap(tmp_path / "in.npy", "w+", np.float32, (4096, 64, 64))
    data[:] = 1.5
    tracemalloc.start()
    try:
        ds = _write(tmp_path / "d", {"x": data}, records_per_shard=4096)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ds.num_shards == 1 and ds.nbytes > data.nbytes
    assert peak < data.nbytes // 4, peak


def test_refuses_write_options(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="does not take option"):
        _write(tmp_path / "d", {"x": np.zeros(3)}, compression="gzip")


# -- the manifest is checked before reading ---------------------------------------------------
@pytest.mark.parametrize(
    "bad",
    [None, -1, 0, "1024", 1.5, 10**9],
    ids=["missing", "negative", "zero", "string", "float", "past-the-end"],
)
def test_invalid_offsets_are_refused(tmp_path: Path, bad: Any) -> None:
    ds = _write(tmp_path / "d", {"x": np.arange(20.0), "y": np.arange(20)}, records_per_shard=8)

    def edit(manifest: dict[str, Any]) -> None:
        offsets = manifest["shards"][1]["files"][0]["info"][INFO_OFFSETS]
        if bad is None:
            del offsets["x"]
        else:
            offsets["x"] = bad

    broken = _edit_manifest(ds, edit)
    with pytest.raises(ManifestError, match=r"shard 1.*offsets\.x"):
        broken.to_tf(batch_size=4)
    ys = np.concatenate(list(broken.to_tf(batch_size=4, features="y").as_numpy_iterator()))
    assert ys.tolist() == list(range(20))  # the features left intact still read


def test_overlapping_regions_are_refused(tmp_path: Path) -> None:
    ds = _write(tmp_path / "d", {"x": np.arange(20.0), "y": np.arange(20)})

    def edit(manifest: dict[str, Any]) -> None:
        offsets = manifest["shards"][0]["files"][0]["info"][INFO_OFFSETS]
        offsets["y"] = offsets["x"] + 8

    with pytest.raises(ManifestError, match="overlap"):
        _edit_manifest(ds, edit).to_tf(batch_size=4)


def test_missing_info_is_refused(tmp_path: Path) -> None:
    ds = _write(tmp_path / "d", {"x": np.arange(5)})
    broken = _edit_manifest(ds, lambda m: m["shards"][0]["files"][0].pop("info"))
    with pytest.raises(ManifestError, match=r"info\.offsets is missing"):
        broken.to_tf(batch_size=4)


def test_random_access_checks_the_file_against_the_manifest(
    tmp_path: Path, source: Hdf5Source
) -> None:
    """An offset that fits the file but is not where HDF5 put the data is caught."""
    ds = _write(tmp_path / "d", {"x": np.arange(16.0), "y": np.arange(16)})

    def edit(manifest: dict[str, Any]) -> None:
        offsets = manifest["shards"][0]["files"][0]["info"][INFO_OFFSETS]
        offsets["x"] -= 8

    broken = _edit_manifest(ds, edit)
    with pytest.raises(ManifestError, match="data at byte"):
        source.read_records(_context(broken), 0, np.array([0, 1]))


# -- random access ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "rows",
    [[], [0], [4], [0, 1, 2, 3], [2, 3, 4], [0, 5, 9], [1, 2, 7, 8, 9]],
    ids=lambda r: f"rows{r}",
)
@pytest.mark.parametrize("shape", [(2,), (16, 32)], ids=["small", "large"])
def test_read_records(
    tmp_path: Path, source: Hdf5Source, rows: list[int], shape: tuple[int, ...]
) -> None:
    """Point selections (small records) and run-by-run reads (records >= 1 KiB)."""
    arrays = _every_dtype(30, shape)
    ds = _write(tmp_path / "d", arrays, records_per_shard=10)
    picks = np.asarray(rows, dtype=np.int64)
    for position in range(ds.num_shards):
        got = source.read_records(_context(ds), position, picks)
        assert list(got) == list(arrays)
        for name, expected in arrays.items():
            assert_bitwise_equal(got[name], expected[position * 10 + picks])


def test_read_records_feature_subset_and_bad_rows(tmp_path: Path, source: Hdf5Source) -> None:
    ds = _write(tmp_path / "d", {"a": np.arange(12), "b": np.arange(12.0)}, records_per_shard=6)
    got = source.read_records(_context(ds, ["b"]), 1, np.array([0, 5]))
    assert list(got) == ["b"]
    assert_bitwise_equal(got["b"], np.array([6.0, 11.0]))
    with pytest.raises(IndexError):
        source.read_records(_context(ds), 1, np.array([6]))


def test_read_records_from_many_threads(tmp_path: Path, source: Hdf5Source) -> None:
    data = np.arange(4000 * 8, dtype=np.int32).reshape(4000, 8)
    ds = _write(tmp_path / "d", {"x": data}, records_per_shard=500)
    ctx = _context(ds)
    rng = np.random.default_rng(0)
    jobs = [
        (int(p), np.unique(rng.integers(0, 500, int(rng.integers(1, 40)))))
        for p in rng.integers(0, ds.num_shards, 400)
    ]

    def run(job: tuple[int, np.ndarray]) -> bool:
        position, rows = job
        got = source.read_records(ctx, position, rows)["x"]
        return bool(np.array_equal(got, data[position * 500 + rows]))

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(run, jobs))


def test_handle_cache_is_bounded(
    tmp_path: Path, source: Hdf5Source, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Hdf5Source, "max_open_files", 2)
    ds = _write(tmp_path / "d", {"x": np.arange(50)}, records_per_shard=10)
    ctx = _context(ds)
    for position in [0, 1, 2, 3, 4, 0, 2]:
        got = source.read_records(ctx, position, np.array([3]))["x"]
        assert got.tolist() == [position * 10 + 3]
        assert len(source._handles) <= 2
    source.close()
    assert not source._handles
    assert source.read_records(ctx, 4, np.array([9]))["x"].tolist() == [49]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_opens_its_own_handles(tmp_path: Path, source: Hdf5Source) -> None:
    ds = _write(tmp_path / "d", {"x": np.arange(20)}, records_per_shard=10)
    ctx = _context(ds)
    assert source.read_records(ctx, 1, np.array([2]))["x"].tolist() == [12]
    parent_handles = dict(source._handles)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        status = 1
        try:
            got = source.read_records(ctx, 1, np.array([3]))["x"].tolist()
            fresh = all(h is not parent_handles.get(k) for k, h in source._handles.items())
            status = 0 if got == [13] and fresh else 1
        finally:
            os.write(write_fd, bytes([status]))
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        result = pipe.read()
    os.waitpid(pid, 0)
    assert result == b"\0"
    assert source.read_records(ctx, 1, np.array([4]))["x"].tolist() == [14]  # parent unaffected


# -- the sparse image ---------------------------------------------------------------------------
def test_sparse_image_reads_writes_seeks_and_truncates() -> None:
    img = SparseImage()
    assert img.write(b"abc") == 3
    img.seek(10 * PAGE + 5)
    img.write(b"xyz")
    assert img.size == 10 * PAGE + 8
    assert len(img._pages) == 2  # the gap costs nothing
    assert img.getrange(0, 5) == b"abc\0\0"
    img.seek(-3, os.SEEK_END)
    assert img.read(10) == b"xyz"
    img.seek(1)
    buf = bytearray(4)
    assert img.readinto(buf) == 4 and bytes(buf) == b"bc\0\0"
    assert img.overlaps_written(2, 4) and not img.overlaps_written(3, 10 * PAGE + 5)
    img.truncate(10 * PAGE + 6)
    img.truncate(10 * PAGE + 8)
    assert img.getrange(10 * PAGE + 5, 10 * PAGE + 8) == b"x\0\0"
    with pytest.raises(ValueError, match="negative"):
        img.seek(-1)


def test_registry_instance_is_shared_between_threads(tmp_path: Path) -> None:
    """``get_source`` hands every thread the same instance; its lock guards the handles."""
    ds = _write(tmp_path / "d", {"x": np.arange(40)}, records_per_shard=10)
    src = shardstore.get_source("hdf5")
    assert isinstance(src, Hdf5Source)
    errors: list[BaseException] = []

    def worker(position: int) -> None:
        try:
            for _ in range(50):
                got = src.read_records(_context(ds), position, np.array([0, 9]))["x"]
                assert got.tolist() == [position * 10, position * 10 + 9]
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(p,)) for p in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


# -- indirection: only the shard file's own bytes are ever read ----------------------------------
def _rehash(ds: shardstore.Dataset) -> shardstore.Dataset:
    """Record the edited file's size and checksum in the manifest, as an attacker would
    (dropping the shard's block index, which is optional: the file is then hashed whole)."""
    from shardstore.checksum import hash_file

    manifest = json.loads((ds.path / "manifest.json").read_text())
    for shard in manifest["shards"]:
        shard.pop("blocks", None)
        for f in shard["files"]:
            f["size"], f["checksum"] = hash_file(ds.path / f["path"])
    (ds.path / "manifest.json").write_text(json.dumps(manifest))
    return shardstore.open(ds.path)


def _indirect(path: Path, kind: str, outside: Path) -> None:
    """Make dataset ``x`` of the shard ``path`` read other bytes, keeping its own data in place.

    The original dataset is renamed (its bytes stay where the manifest's offset
    points, so the TF-native reader still finds them) and ``x`` becomes the
    indirection.
    """
    secret = np.full(8, 666.0)
    other = outside / "secret.h5"
    with h5py.File(other, "w") as f:
        f["x"] = secret
    raw = outside / "secret.raw"
    raw.write_bytes(secret.astype("<f8").tobytes())
    with h5py.File(path, "r+") as f:
        f.move("x", "kept")
        if kind == "external link":
            f["x"] = h5py.ExternalLink(str(other), "/x")
        elif kind == "soft link":
            f["decoy"] = secret
            f["x"] = h5py.SoftLink("/decoy")
        elif kind == "virtual dataset":
            layout = h5py.VirtualLayout(shape=(8,), dtype="<f8")
            layout[:] = h5py.VirtualSource(str(other), "x", shape=(8,))
            f.create_virtual_dataset("x", layout)
        elif kind == "external storage":
            f.create_dataset("x", shape=(8,), dtype="<f8", external=[(str(raw), 0, 64)])
        elif kind == "chunked and compressed":
            f.create_dataset("x", data=secret, chunks=(4,), compression="gzip")
        elif kind == "group":
            f.create_group("x")


INDIRECTIONS = ["external link", "soft link", "virtual dataset", "external storage",
                "chunked and compressed", "group"]  # fmt: skip


@pytest.mark.parametrize("kind", INDIRECTIONS)
def test_indirection_is_refused_before_reading(tmp_path: Path, kind: str) -> None:
    """Every read path and verify refuse it; none returns the other file's bytes."""
    from shardstore.errors import ShardStoreError

    outside = tmp_path / "outside"
    outside.mkdir()
    ds = _write(tmp_path / "d", {"x": np.arange(8.0), "y": np.arange(8)})
    _indirect(ds.path / ds.shards[0].files[0].path, kind, outside)
    hostile = _rehash(ds)
    reads = {
        "ds[:]": lambda: hostile[:],
        "ds[0]": lambda: hostile[0],
        "to_tf": lambda: _collect(hostile.to_tf(batch_size=4)),
        "to_tf global": lambda: _collect(hostile.to_tf(batch_size=4, shuffle="global")),
        "iter_numpy": lambda: list(hostile.iter_numpy(4)),
        "verify": lambda: hostile.verify(progress=False),
    }
    for name, read in reads.items():
        with pytest.raises(ShardStoreError) as exc:
            read()
        assert "dataset 'x'" in str(exc.value) or "claims" in str(exc.value), (name, exc.value)
    from shardstore import cli

    assert cli.main(["verify", str(ds.path)]) in (1, 2)  # never "OK"


def test_a_named_datatype_is_fine(tmp_path: Path) -> None:
    """Indirection of the type only (a committed datatype in the same file) reads as before."""
    ds = _write(tmp_path / "d", {"x": np.arange(8.0)})
    path = ds.path / ds.shards[0].files[0].path
    with h5py.File(path, "r+") as f:
        f["float_type"] = np.dtype("<f8")  # a named (committed) datatype, unused by "x"
    hostile = _rehash(ds)
    assert_bitwise_equal(hostile[:]["x"], np.arange(8.0))
    hostile.verify(progress=False)


def test_a_shard_file_that_is_a_fifo_is_never_handed_to_h5py(tmp_path: Path) -> None:
    ds = _write(tmp_path / "d", {"x": np.arange(8.0)})
    path = ds.path / ds.shards[0].files[0].path
    path.unlink()
    os.mkfifo(path)  # h5py would block opening it
    from shardstore.errors import NotRegularFileError

    src = Hdf5Source()
    try:
        with pytest.raises(NotRegularFileError):
            src.read_records(_context(ds), 0, np.array([0]))
        with pytest.raises(NotRegularFileError):
            src.check_shards(_context(ds))
    finally:
        src.close()
