"""The zarr source: conformance for each compression, layout, options, partial reads."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

import shardstore
from shardstore.errors import ChecksumError, InvalidInputError, UnsupportedDTypeError
from shardstore.sources.base import ReadContext
from shardstore.sources.zarr import ZarrSource, default_chunk_records
from shardstore.testing import (
    SourceConformance,
    assert_bitwise_equal,
    collect,
    flip_bit,
    random_records,
)

ALL_DTYPES = (
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "complex64", "complex128",
)  # fmt: skip


# -- conformance: the full suite for the default (zstd) and uncompressed layouts ----------
class TestZarrConformance(SourceConformance):
    source = "zarr"


class TestZarrUncompressedConformance(SourceConformance):
    source = "zarr"
    write_options: ClassVar[Mapping[str, Any]] = {"compression": None}


# -- helpers --------------------------------------------------------------------------------
def write(path: Path, arrays: Any, **kwargs: Any) -> shardstore.Dataset:
    return shardstore.write(path, arrays, format="zarr", fsync=False, **kwargs)


def data_file(ds: shardstore.Dataset, shard: int, feature: str) -> Any:
    (entry,) = [
        f for f in ds.shards[shard].files if f.feature == feature and "chunk_records" in f.info
    ]
    return entry


def array_metadata(ds: shardstore.Dataset, shard: int, feature: str) -> dict[str, Any]:
    (entry,) = [f for f in ds.shards[shard].files if f.path.endswith(f".zarr/{feature}/zarr.json")]
    return json.loads((ds.path / entry.path).read_text())


def compressible(n: int = 300) -> dict[str, np.ndarray]:
    """Smooth float images and small ints: compressible, unlike random bits."""
    rng = np.random.default_rng(1)
    ramp = np.linspace(0, 1, 16 * 16, dtype=np.float32).reshape(16, 16)
    image = (ramp[None] + rng.integers(0, 4, (n, 1, 1)).astype(np.float32)) / 4
    return {"image": image, "label": rng.integers(0, 10, n).astype(np.int64)}


# -- focused round trips for the other compressions -----------------------------------------
@pytest.mark.parametrize("compression", ["lz4", "blosc"])
def test_round_trip_other_compressions(tmp_path: Path, compression: str) -> None:
    arrays = {
        f"f_{name}": random_records(np.dtype(name), (3, 2), 41, seed=i)
        for i, name in enumerate(ALL_DTYPES)
    }
    ds = write(
        tmp_path / "d", arrays, records_per_shard=16, compression=compression, chunk_records=5
    )
    out = collect(shardstore.open(tmp_path / "d", source="zarr").to_tf(batch_size=7))
    for name, expected in arrays.items():
        assert_bitwise_equal(out[name], expected)
    inner = array_metadata(ds, 0, "f_float32")["codecs"][0]["configuration"]["codecs"]
    assert inner[1]["name"] == "blosc"
    assert inner[1]["configuration"]["cname"] == {"lz4": "lz4", "blosc": "blosclz"}[compression]
    ctx = ReadContext(ds.path, ds.shards, ds.features, 8)
    rows = np.array([0, 4, 5, 15])
    got = ds.source.read_records(ctx, 1, rows)
    for name, expected in arrays.items():
        assert_bitwise_equal(got[name], expected[16 + rows])
    ds.verify(progress=False)


def test_importing_the_source_imports_neither_zarr_nor_tensorflow() -> None:
    import subprocess
    import sys

    code = (
        "import sys, shardstore, shardstore.sources.zarr\n"
        "shardstore.get_source('zarr').check_options({'compression': 'lz4'})\n"
        "print([m for m in ('zarr', 'numcodecs', 'tensorflow') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- layout -----------------------------------------------------------------------------------
def test_layout_is_a_plain_zarr_v3_group_per_shard(tmp_path: Path) -> None:
    import zarr

    data = compressible(50)
    ds = write(tmp_path / "d", data, records_per_shard=20)
    assert ds.num_shards == 3
    for i, shard in enumerate(ds.shards):
        stem = f"{i:06d}.zarr"
        features = {f.path.split("/", 1)[1]: f.feature for f in shard.files}
        assert features == {  # every key of the store is a file, tagged with its feature
            f"{stem}/zarr.json": None,
            f"{stem}/image/zarr.json": "image",
            f"{stem}/image/c/0/0/0": "image",
            f"{stem}/label/zarr.json": "label",
            f"{stem}/label/c/0": "label",
        }
        prefix = shard.files[0].path.split("/")[0]
        group = zarr.open_group(ds.path / prefix / stem, mode="r")  # plain zarr, no shardstore
        lo = 20 * i
        assert_bitwise_equal(group["image"][:], data["image"][lo : lo + shard.num_records])
        assert_bitwise_equal(group["label"][:], data["label"][lo : lo + shard.num_records])
    meta = array_metadata(ds, 0, "image")
    (codec,) = meta["codecs"]
    assert codec["name"] == "sharding_indexed"  # one file per feature per shard
    inner = codec["configuration"]["codecs"]
    assert [c["name"] for c in inner] == ["bytes", "blosc"]  # Zarr v3 core codecs only
    assert inner[1]["configuration"]["cname"] == "zstd"
    assert inner[1]["configuration"]["shuffle"] == "shuffle"
    assert inner[1]["configuration"]["typesize"] == 4
    assert data_file(ds, 0, "image").info == {"chunk_records": 20, "compression": "zstd"}


def test_every_file_is_in_the_manifest_and_checksummed(tmp_path: Path) -> None:
    ds = write(tmp_path / "d", compressible(40), records_per_shard=15)
    on_disk = {str(p.relative_to(ds.path)) for p in ds.path.rglob("*") if p.is_file()} - {
        "manifest.json"
    }
    listed = {f.path for s in ds.shards for f in s.files}
    assert on_disk == listed
    ds.verify(progress=False)


def test_all_zero_feature_still_writes_every_chunk(tmp_path: Path) -> None:
    data = {"z": np.full((30, 4), -0.0, np.float32)}  # equal to the fill value (0.0)
    ds = write(tmp_path / "d", data, records_per_shard=30, chunk_records=7)
    out = collect(ds.to_tf(batch_size=8, features="z"))
    assert_bitwise_equal(out, data["z"])  # -0.0 keeps its sign: nothing came from the fill
    assert np.signbit(out).all()


# -- options ----------------------------------------------------------------------------------
def test_compression_shrinks_compressible_data(tmp_path: Path) -> None:
    data = compressible(400)
    raw = sum(a.nbytes for a in data.values())
    sizes = {}
    for compression in ("zstd", "lz4", "blosc", None):
        ds = write(tmp_path / str(compression), data, compression=compression)
        sizes[compression] = sum(data_file(ds, s.index, f).size for s in ds.shards for f in data)
        assert_bitwise_equal(collect(ds.to_tf(64, features="image")), data["image"])
    assert sizes[None] >= raw  # uncompressed chunks are the raw bytes (plus the index)
    for compression in ("zstd", "lz4", "blosc"):
        assert sizes[compression] < raw / 4, (compression, sizes[compression], raw)


def test_compression_level_and_shuffle_are_stored(tmp_path: Path) -> None:
    data = {**compressible(20), "flag": np.ones(20, bool)}
    ds = write(tmp_path / "d", data, compression="zstd", compression_level=9)
    inner = array_metadata(ds, 0, "image")["codecs"][0]["configuration"]["codecs"]
    assert inner[1]["configuration"]["clevel"] == 9
    flag = array_metadata(ds, 0, "flag")["codecs"][0]["configuration"]["codecs"]
    assert flag[1]["configuration"]["shuffle"] == "bitshuffle"  # 1-byte types: bits


def test_fast_path_reads_the_bare_zstd_codec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Arrays compressed with Zarr's plain ``zstd`` codec take the fast path too."""
    import zarr.codecs

    import shardstore.sources.zarr as zsrc

    monkeypatch.setattr(zsrc, "_compressors", lambda *a: [zarr.codecs.ZstdCodec(level=3)])
    data = compressible(70)
    ds = write(tmp_path / "d", data, records_per_shard=30, chunk_records=8)
    inner = array_metadata(ds, 0, "image")["codecs"][0]["configuration"]["codecs"]
    assert inner[1]["name"] == "zstd"
    source = shardstore.get_source("zarr")
    ctx = ReadContext(ds.path, ds.shards, ds.features, 8)
    assert source._chunk_file(source._array_ref(ctx, ds.shards[0], "image")) is not None
    out = collect(ds.to_tf(batch_size=9))
    for name, expected in data.items():
        assert_bitwise_equal(out[name], expected)


def test_chunk_records_is_honoured(tmp_path: Path) -> None:
    ds = write(tmp_path / "d", compressible(50), records_per_shard=20, chunk_records=6)
    for shard in ds.shards:
        for feature in ("image", "label"):
            meta = array_metadata(ds, shard.index, feature)
            inner = meta["codecs"][0]["configuration"]["chunk_shape"]
            assert inner[0] == min(6, shard.num_records)
            assert data_file(ds, shard.index, feature).info["chunk_records"] == inner[0]
            assert meta["shape"][0] == shard.num_records


def test_default_chunk_records_is_about_one_mib(tmp_path: Path) -> None:
    image = np.zeros((300, 64, 64), np.float32)  # 16 KiB records: 64 per MiB
    label = np.zeros(300, np.int64)  # 8 B records: capped at the shard's 150
    ds = write(tmp_path / "d", {"image": image, "label": label}, records_per_shard=150)
    assert default_chunk_records(ds.features["image"]) == 64
    assert data_file(ds, 0, "image").info["chunk_records"] == 64
    assert data_file(ds, 0, "label").info["chunk_records"] == 150
    big = shardstore.FeatureSpec(np.dtype("<f8"), (1024, 1024))
    assert default_chunk_records(big) == 1  # records above 1 MiB: one per chunk


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"compression": "gzip"}, "use one of 'zstd', 'lz4', 'blosc', None"),
        ({"compression": "ZSTD"}, "unknown compression"),
        ({"compression": 3}, "unknown compression"),
        ({"chunk_records": 0}, "chunk_records must be a positive integer"),
        ({"chunk_records": -5}, "chunk_records must be a positive integer"),
        ({"chunk_records": 2.5}, "chunk_records must be a positive integer"),
        ({"chunk_records": True}, "chunk_records must be a positive integer"),
        ({"compression_level": 0}, "from 1 to 9"),
        ({"compression_level": 3.0}, "from 1 to 9"),
        ({"compression": "lz4", "compression_level": 10}, "from 1 to 9"),
        ({"compression": None, "compression_level": 3}, "needs a compression"),
        ({"level": 3}, "does not take option"),
    ],
)
def test_bad_options_fail_before_anything_is_written(
    tmp_path: Path, options: dict[str, Any], match: str
) -> None:
    with pytest.raises(InvalidInputError, match=match):
        write(tmp_path / "d", compressible(10), **options)
    assert not (tmp_path / "d").exists()


def test_options_are_normalised() -> None:
    source = ZarrSource()
    assert source.check_options({}) == {
        "compression": "zstd",
        "compression_level": 3,
        "chunk_records": None,
    }
    assert source.check_options({"compression": "blosc", "chunk_records": np.int64(4)}) == {
        "compression": "blosc",
        "compression_level": 5,
        "chunk_records": 4,
    }


def test_refuses_object_dtypes_and_reserved_names(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedDTypeError):
        write(tmp_path / "a", {"x": np.array([object(), object()])})
    for name in ("zarr.json", "__x"):
        with pytest.raises(InvalidInputError, match="Zarr array"):
            write(tmp_path / "b", {name: np.zeros(3)})
        assert not (tmp_path / "b").exists()


# -- reading ----------------------------------------------------------------------------------
def _garble(path: Path) -> None:
    """Overwrite a file with different bytes of the same size."""
    size = path.stat().st_size
    path.write_bytes(bytes((b + 1) % 256 for b in path.read_bytes()[:size]))


def test_reading_one_feature_never_touches_the_others(tmp_path: Path) -> None:
    data = compressible(60)
    ds = write(tmp_path / "d", data, records_per_shard=25, chunk_records=10)
    for shard in ds.shards:  # damage every file of "image", keeping sizes (to_tf checks them)
        for f in shard.files:
            if f.feature == "image":
                _garble(ds.path / f.path)
    ds = shardstore.open(tmp_path / "d")
    assert_bitwise_equal(collect(ds.to_tf(batch_size=8, features="label")), data["label"])
    ctx = ReadContext(ds.path, ds.shards, {"label": ds.features["label"]}, 8)
    assert_bitwise_equal(ds.source.read_records(ctx, 1, np.array([2, 3]))["label"],
                         data["label"][[27, 28]])  # fmt: skip
    # the control: reading the damaged feature does fail, before reading (checksums)...
    with pytest.raises(ChecksumError, match=r"zarr/image/.*has checksum"):
        ds.to_tf(batch_size=8, features="image")
    # ...and without checksums, when zarr is handed the damaged metadata
    unchecked = shardstore.open(tmp_path / "d", verify="size")
    with pytest.raises(Exception, match=r"image/zarr\.json' .*"):
        collect(unchecked.to_tf(batch_size=8, features="image"))


def test_damaged_chunk_is_reported_with_its_file(tmp_path: Path) -> None:
    data = compressible(30)
    ds = write(tmp_path / "d", data, records_per_shard=30, chunk_records=10)
    victim = data_file(ds, 0, "image")
    with open(ds.path / victim.path, "r+b") as f:
        f.seek(5)
        f.write(b"\xff\xff\xff\xff")  # the first chunk's Blosc header (its decoded size)
    with pytest.raises(ChecksumError, match=re.escape(victim.path) + ".*has checksum"):
        shardstore.open(tmp_path / "d").to_tf(batch_size=8, features="image")
    ds = shardstore.open(tmp_path / "d", verify="size")  # the decoder's own check
    with pytest.raises(Exception, match=re.escape(victim.path) + ".*damaged"):
        collect(ds.to_tf(batch_size=8, features="image"))
    ctx = ReadContext(ds.path, ds.shards, {"image": ds.features["image"]}, 10)
    with pytest.raises(ChecksumError, match="does not decode") as exc:
        ZarrSource()._read_rows(ZarrSource()._array_ref(ctx, ds.shards[0], "image"), 0, 10)
    assert exc.value.file == victim.path


def test_a_chunk_missing_from_the_index_reads_as_the_fill_value(tmp_path: Path) -> None:
    """Zarr marks chunks it did not write (other writers) with an all-ones index entry."""
    import shardstore.sources.zarr as zsrc

    data = {"v": np.arange(1, 31, dtype=np.int32)}
    ds = write(tmp_path / "d", data, records_per_shard=30, chunk_records=10)
    source = ZarrSource()
    ctx = ReadContext(ds.path, ds.shards, ds.features, 10)
    reader = source._chunk_file(source._array_ref(ctx, ds.shards[0], "v"))
    assert reader is not None
    reader._offsets[1] = reader._lengths[1] = zsrc._EMPTY
    assert reader.chunk(0).tolist() == list(range(1, 11))
    assert reader.chunk(1).tolist() == [0] * 10


def test_damaged_shard_index_is_detected(tmp_path: Path) -> None:
    ds = write(tmp_path / "d", compressible(30), records_per_shard=30, chunk_records=10)
    victim = data_file(ds, 0, "image")
    flip_bit(ds.path / victim.path, -20)  # inside the (offset, length) table
    with pytest.raises(ChecksumError, match="has checksum"):
        shardstore.open(tmp_path / "d").to_tf(batch_size=8, features="image")
    with pytest.raises(Exception, match="CRC32C"):  # the reader's own check
        unchecked = shardstore.open(tmp_path / "d", verify="size")
        collect(unchecked.to_tf(batch_size=8, features="image"))


@pytest.mark.parametrize(("chunk", "batch"), [(7, 5), (3, 64), (50, 4), (1, 3)])
def test_blocks_and_chunks_of_any_sizes(tmp_path: Path, chunk: int, batch: int) -> None:
    """Chunks larger, smaller and misaligned with blocks; shuffled and ordered reads."""
    data = {**compressible(130), "id": np.arange(130)}
    ds = write(tmp_path / "d", data, records_per_shard=45, chunk_records=chunk)
    out = collect(ds.to_tf(batch_size=batch))
    for name, expected in data.items():
        assert_bitwise_equal(out[name], expected)
    image, ids = collect(ds.to_tf(batch, features=("image", "id"), shuffle=True, seed=2))
    assert sorted(ids.tolist()) == list(range(130))
    assert_bitwise_equal(image, data["image"][ids])


def test_fast_path_matches_zarr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The direct chunk decoder and zarr itself produce the same bytes."""
    import shardstore.sources.zarr as zsrc

    arrays = {f"f_{n}": random_records(np.dtype(n), (2,), 33, seed=3) for n in ALL_DTYPES}
    ds = write(tmp_path / "d", arrays, records_per_shard=20, chunk_records=6)
    fast = collect(ds.to_tf(batch_size=5))
    monkeypatch.setattr(zsrc, "_fast_path", lambda meta, ref: None)
    shardstore.registry.refresh()
    slow = collect(shardstore.open(tmp_path / "d").to_tf(batch_size=5))
    for name, expected in arrays.items():
        assert_bitwise_equal(fast[name], expected)
        assert_bitwise_equal(slow[name], expected)


def test_one_numpy_function_per_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tensorflow as tf

    ds = write(tmp_path / "d", compressible(100), records_per_shard=50)
    source = shardstore.get_source("zarr")
    calls: list[tuple[str, int, int]] = []
    read_rows = source._read_rows

    def spy(ref: Any, lo: int, hi: int, **kwargs: Any) -> np.ndarray:
        calls.append((ref.feature, lo, hi))
        return read_rows(ref, lo, hi, **kwargs)

    monkeypatch.setattr(source, "_read_rows", spy)
    tfds = ds.to_tf(batch_size=10, features="image")
    assert tfds.element_spec.shape.as_list() == [None, 16, 16]
    assert len(list(tfds)) == 10
    # 100 records in 2 shards of one 50-record block: 2 calls, only for "image"
    assert sorted(calls) == [("image", 0, 50), ("image", 0, 50)]
    graph = ds.to_tf(batch_size=10)._as_serialized_graph().numpy()
    assert graph.count(b"zarr_read_block") >= 1
    assert ds.to_tf(batch_size=10).element_spec["label"].dtype == tf.int64


# -- random access ------------------------------------------------------------------------------
def test_read_records_is_thread_safe(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    data = compressible(200)
    ds = write(tmp_path / "d", data, records_per_shard=50, chunk_records=8)
    source = shardstore.get_source("zarr")
    ctx = ReadContext(ds.path, ds.shards, ds.features, 16)
    rng = np.random.default_rng(0)
    jobs = [(int(p), np.unique(rng.integers(0, 50, 9))) for p in rng.integers(0, 4, 64)]

    def fetch(job: tuple[int, np.ndarray]) -> bool:
        pos, rows = job
        got = source.read_records(ctx, pos, rows)
        return all(np.array_equal(got[n], data[n][pos * 50 + rows]) for n in data)

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(fetch, jobs))
    empty = source.read_records(ctx, 0, np.array([], np.int64))
    assert empty["image"].shape == (0, 16, 16)
    assert empty["label"].dtype == np.int64


def test_dataset_getitem(tmp_path: Path) -> None:
    data = compressible(90)
    write(tmp_path / "d", data, records_per_shard=40, chunk_records=7, compression="lz4")
    ds = shardstore.open(tmp_path / "d", source="zarr")
    rec = ds[41]
    assert_bitwise_equal(rec["image"], data["image"][41])
    assert_bitwise_equal(ds[-1]["label"], data["label"][-1])
    span = ds[35:83]
    for name in data:
        assert_bitwise_equal(span[name], data[name][35:83])
    picks = [89, 0, 40, 40, 39, 13]
    fancy = ds[picks]
    for name in data:
        assert_bitwise_equal(fancy[name], data[name][picks])
