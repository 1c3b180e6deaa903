"""The zarr source: conformance for each compression, layout, options, partial reads."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import tensorflow as tf

import shardstore
from shardstore.errors import (
    CapabilityError,
    ChecksumError,
    InvalidInputError,
    ManifestError,
    UnsupportedDTypeError,
)
from shardstore.format.ragged import RaggedArray
from shardstore.sources.base import ReadContext
from shardstore.sources.zarr import ZarrSource, default_chunk_records
from shardstore.testing import (
    SourceConformance,
    assert_bitwise_equal,
    assert_damage_reported,
    assert_same_dataset,
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
    listed = {f.path for s in ds.shards for f in s.stored_files}  # block indexes too
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
    # the control: reading the damaged feature does fail, before zarr parses it (checksums)...
    with pytest.raises(tf.errors.OpError, match=r"zarr/image/.*has checksum"):
        collect(ds.to_tf(batch_size=8, features="image"))
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
    err = assert_damage_reported(  # the chunk's block is verified before it is decoded
        lambda: collect(shardstore.open(tmp_path / "d").to_tf(batch_size=8, features="image")),
        ds.path,
        0,
        victim.path,
    )
    assert "do not match their checksum" in str(err)
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
    err = assert_damage_reported(  # the index's block is verified before it is parsed
        lambda: collect(shardstore.open(tmp_path / "d").to_tf(batch_size=8, features="image")),
        ds.path,
        0,
        victim.path,
    )
    assert "do not match their checksum" in str(err)
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


# -- ragged features ------------------------------------------------------------------------------
def ragged_records(
    n: int, inner: tuple[int, ...] = (), dtype: str = "float32", *, seed: int = 0
) -> list[np.ndarray]:
    """``n`` records of lengths 0-6 (every bit pattern of ``dtype``); records 2 and 3 empty."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 7, n)
    lengths[2:4] = 0
    values = random_records(np.dtype(dtype), inner, int(lengths.sum()), seed=seed)
    return np.split(values, np.cumsum(lengths)[:-1])


def assert_records_equal(got: Any, expected: list[np.ndarray]) -> None:
    """A RaggedArray (or a list of arrays) holds exactly ``expected``, bit for bit."""
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert_bitwise_equal(a, b)


def ragged_dataset(path: Path, n: int = 23, **kwargs: Any) -> tuple[shardstore.Dataset, Any]:
    data = {"r": ragged_records(n, (2, 3)), "id": np.arange(n)}
    return write(path, data, **kwargs), data


def test_ragged_features_are_supported() -> None:
    assert ZarrSource.capabilities()["supports_ragged"] is True


@pytest.mark.parametrize("compression", ["zstd", None])
@pytest.mark.parametrize(("inner", "dtype"), [((), "float32"), ((2, 3), "int16")])
def test_ragged_round_trip(
    tmp_path: Path, compression: str | None, inner: tuple[int, ...], dtype: str
) -> None:
    """Bit for bit, one-record shards and shards of empty records included, through
    the fast path and through zarr itself."""
    import shardstore.sources.zarr as zsrc

    recs = ragged_records(41, inner, dtype, seed=5)
    for i in range(5, 10):  # shard 1 (records 5-9): every record empty, no values chunk
        recs[i] = recs[i][:0]
    ds = write(tmp_path / "d", {"r": recs}, records_per_shard=5, compression=compression,
               chunk_records=2)  # fmt: skip
    assert ds.features["r"].shape == (None, *inner)
    assert ds.shards[-1].num_records == 1  # a one-record shard
    values, offsets = ds.shards[1].ragged_files("r")
    assert values.path.endswith("/r/values/zarr.json") and values.info["rows"] == 0
    assert offsets.path.endswith("/r/offsets/c/0")
    fast = ds[:]["r"]
    assert isinstance(fast, RaggedArray)
    assert_records_equal(fast, recs)
    ctx = ReadContext(ds.path, ds.shards, ds.features, 8)
    got = ds.source.read_records(ctx, 8, np.array([0]))["r"]
    assert_records_equal(got, recs[40:])
    assert_records_equal(ds.source.read_ragged(ctx, 1, "r", np.arange(5)), recs[5:10])
    ds.verify(progress=False)

    with pytest.MonkeyPatch.context() as mp:  # every array read by zarr itself
        mp.setattr(zsrc, "_fast_path", lambda meta, ref: None)
        slow = ZarrSource()
        assert slow._chunk_file(slow._ragged_refs(ctx, ds.shards[0], "r")[0]) is None
        for pos, shard in enumerate(ds.shards):
            lo = 5 * pos
            rows = np.arange(shard.num_records)
            assert_records_equal(slow.read_ragged(ctx, pos, "r", rows), recs[lo : lo + len(rows)])
            picks = rows[::2]  # scattered records: zarr's orthogonal selection
            assert_records_equal(
                slow.read_ragged(ctx, pos, "r", picks), [recs[lo + i] for i in picks]
            )


def test_ragged_values_are_chunked_by_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shardstore.sources.zarr as zsrc

    recs = ragged_records(40, (4,), "float64", seed=2)  # 32-byte rows
    monkeypatch.setattr(zsrc, "CHUNK_BYTES", 8 * 32)  # about 8 rows per chunk
    ds = write(tmp_path / "d", {"r": recs}, records_per_shard=40)
    values, offsets = ds.shards[0].ragged_files("r")
    meta = json.loads((ds.path / values.path.replace("c/0/0", "zarr.json")).read_text())
    rows = sum(len(r) for r in recs)
    assert values.info == {"ragged": "values", "rows": rows, "chunk_records": 8,
                           "compression": "zstd"}  # fmt: skip
    assert meta["shape"] == [rows, 4]
    assert meta["codecs"][0]["configuration"]["chunk_shape"] == [8, 4]
    assert [c["name"] for c in meta["codecs"][0]["configuration"]["codecs"]] == ["bytes", "blosc"]
    # offsets: about CHUNK_BYTES of int64 (32 of the 41)
    assert offsets.info == {"ragged": "offsets", "chunk_records": 32, "compression": "zstd"}
    # chunk_records: chunks of about that many records' rows
    ds = write(tmp_path / "e", {"r": recs}, records_per_shard=40, chunk_records=4)
    assert ds.shards[0].ragged_files("r")[0].info["chunk_records"] == -(-4 * rows // 40)
    assert ds.shards[0].ragged_files("r")[1].info["chunk_records"] == 4
    source = ZarrSource()
    ctx = ReadContext(ds.path, ds.shards, ds.features, 8)
    for rows_asked in ([0, 1, 2, 3, 4, 5], [1, 7, 8, 30, 39], [39], [2, 3], [0, 13, 14, 15]):
        got = source.read_ragged(ctx, 0, "r", np.array(rows_asked))
        assert_records_equal(got, [recs[i] for i in rows_asked])


def test_ragged_layout_is_read_by_plain_zarr(tmp_path: Path) -> None:
    import zarr

    ds, data = ragged_dataset(tmp_path / "d", records_per_shard=10)
    for shard in ds.shards:
        stem = f"{shard.index:06d}.zarr"
        paths = {f.path.split("/", 1)[1]: (f.feature, f.info.get("ragged")) for f in shard.files}
        assert {p: v for p, v in paths.items() if v[0] == "r"} == {
            f"{stem}/r/zarr.json": ("r", None),
            f"{stem}/r/values/zarr.json": ("r", None),
            f"{stem}/r/values/c/0/0/0": ("r", "values"),
            f"{stem}/r/offsets/zarr.json": ("r", None),
            f"{stem}/r/offsets/c/0": ("r", "offsets"),
        }
        prefix = shard.files[0].path.split("/")[0]
        group = zarr.open_group(ds.path / prefix / stem, mode="r")  # no shardstore
        values, offsets = group["r"]["values"][:], group["r"]["offsets"][:]
        assert offsets.dtype == np.int64 and offsets.shape == (shard.num_records + 1,)
        lo = 10 * shard.index
        expected = data["r"][lo : lo + shard.num_records]
        assert offsets[0] == 0 and offsets[-1] == len(values)
        assert_records_equal([values[a:b] for a, b in itertools.pairwise(offsets)], expected)
        assert_bitwise_equal(group["id"][:], data["id"][lo : lo + shard.num_records])


def test_ragged_random_access_in_any_order(tmp_path: Path) -> None:
    ds, data = ragged_dataset(tmp_path / "d", records_per_shard=6, chunk_records=2)
    recs = data["r"]
    picks = [22, 0, 3, 3, 17, 2, 9, 21, 1]
    got = ds[picks]
    assert_records_equal(got["r"], [recs[i] for i in picks])
    assert_bitwise_equal(got["id"], np.array(picks))
    assert_bitwise_equal(ds[7]["r"], recs[7])
    assert_bitwise_equal(ds[-1]["r"], recs[-1])
    assert ds[2]["r"].shape == (0, 2, 3)  # an empty record
    assert_records_equal(ds[4:19]["r"], recs[4:19])
    assert len(ds[[]]["r"]) == 0
    mask = np.arange(23) % 3 == 0
    assert_records_equal(ds[mask]["r"], [r for r, m in zip(recs, mask, strict=True) if m])


def test_ragged_to_tf(tmp_path: Path) -> None:
    import tensorflow as tf

    ds, data = ragged_dataset(tmp_path / "d", records_per_shard=7, chunk_records=3)
    recs = data["r"]
    batches = list(ds.to_tf(batch_size=5))
    assert [len(b["id"]) for b in batches] == [5, 5, 5, 5, 3]
    assert all(isinstance(b["r"], tf.RaggedTensor) for b in batches)
    got = [r for b in batches for r in b["r"].numpy()]  # each record an array
    assert_records_equal(got, recs)
    assert np.concatenate([b["id"].numpy() for b in batches]).tolist() == list(range(23))

    for batch in ds.to_tf(batch_size=4, pad=True):  # dense, padded with zeros
        padded = batch["r"].numpy()
        longest = max(len(recs[i]) for i in batch["id"].numpy())
        assert padded.shape == (len(batch["id"]), longest, 2, 3)
        for row, i in zip(padded, batch["id"].numpy(), strict=True):
            assert_bitwise_equal(row[: len(recs[i])], recs[i])
            assert not row[len(recs[i]) :].any()

    def shuffled(seed: int) -> tuple[list[int], list[np.ndarray]]:
        out = list(ds.to_tf(batch_size=6, shuffle="global", seed=seed))
        ids = [int(i) for b in out for i in b["id"].numpy()]
        return ids, [r for b in out for r in b["r"].numpy()]

    ids, rows = shuffled(3)
    assert sorted(ids) == list(range(23)) and ids != list(range(23))
    assert_records_equal(rows, [recs[i] for i in ids])  # each record with its id
    assert shuffled(3)[0] == ids  # seeded: the same order again


def test_fixed_features_of_a_ragged_dataset_still_read_in_blocks(tmp_path: Path) -> None:
    ds, data = ragged_dataset(tmp_path / "d", records_per_shard=10)
    assert_bitwise_equal(collect(ds.to_tf(batch_size=4, features="id")), data["id"])
    ctx = ReadContext(ds.path, ds.shards, ds.features, 4)
    with pytest.raises(CapabilityError, match="ragged features"):
        ds.source.tf_reader(ctx)


def test_ragged_write_through_threads_is_byte_identical(tmp_path: Path) -> None:
    data = {"r": ragged_records(60, (3,), "float32", seed=7), "id": np.arange(60)}
    serial = write(tmp_path / "s", data, records_per_shard=7, executor="serial")
    threads = write(tmp_path / "t", data, records_per_shard=7, executor="threads")
    assert serial.num_shards == 9
    assert_same_dataset(threads, serial)


def _rewrite_offsets(path: Path, shard: int, offsets: np.ndarray) -> None:
    """Store ``offsets`` in shard ``shard``'s offsets array with zarr, then fix the
    manifest's sizes and checksums (as an attacker would): only the reader's checks stand."""
    import zarr

    (array,) = path.glob(f"v-*/{shard:06d}.zarr/r/offsets")
    zarr.open_array(array, mode="r+")[:] = offsets
    _fix_manifest(path)


def _fix_manifest(path: Path) -> None:
    from shardstore.storage.checksum import hash_file

    manifest = json.loads((path / "manifest.json").read_text())
    for shard in manifest["shards"]:
        for f in shard["files"]:
            f["size"], f["checksum"] = hash_file(path / f["path"])
    (path / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("lie", ["decreasing", "end too far", "end too short", "start"])
def test_lying_offsets_raise_checksum_error(tmp_path: Path, lie: str) -> None:
    ds, data = ragged_dataset(tmp_path / "d", records_per_shard=10)
    offsets = np.cumsum([0, *(len(r) for r in data["r"][10:20])]).astype(np.int64)
    if lie == "decreasing":
        offsets[5], offsets[6] = offsets[6], offsets[5] - 1
    elif lie == "end too far":
        offsets[-1] += 1
    elif lie == "end too short":
        offsets[-1] -= 1
    else:
        offsets[0] = 1
    _rewrite_offsets(ds.path, 1, offsets)
    ds = shardstore.open(tmp_path / "d")
    assert_records_equal(ds[:10]["r"], data["r"][:10])  # other shards still read
    (victim,) = [f.path for f in ds.shards[1].files if f.info.get("ragged") == "offsets"]
    with pytest.raises(
        ChecksumError, match=rf"shard 1: file '{re.escape(victim)}'.*offsets"
    ) as exc:
        ds[12]
    assert exc.value.shard == 1 and exc.value.file == victim
    with pytest.raises(Exception, match="do not run from 0"):
        collect(ds.to_tf(batch_size=4))


def test_damaged_offsets_are_caught_by_their_checksum(tmp_path: Path) -> None:
    ds, _ = ragged_dataset(tmp_path / "d", records_per_shard=10, compression=None)
    (victim,) = [f.path for f in ds.shards[0].files if f.info.get("ragged") == "offsets"]
    flip_bit(ds.path / victim, 8 * 3 + 7)  # the top byte of offset 3: raw chunks, index at end
    with pytest.raises(ChecksumError, match=re.escape(victim)):
        shardstore.open(tmp_path / "d")[0]
    unchecked = shardstore.open(tmp_path / "d", verify="size")  # the reader's own check
    with pytest.raises(ChecksumError, match="do not run from 0") as exc:
        unchecked[0]
    assert exc.value.shard == 0


@pytest.mark.parametrize(
    ("part", "edit", "match"),
    [
        ("offsets", {"shape": [12]}, "shape"),  # wrong length: 12 offsets for 10 records
        ("offsets", {"data_type": "int32"}, "data_type"),
        ("values", {"data_type": "float64"}, "data_type"),  # not the manifest's float32
        ("values", {"inner": [2, 4]}, "shape"),  # not the manifest's inner shape (2, 3)
    ],
)
def test_lying_ragged_metadata_raises_manifest_error(
    tmp_path: Path, part: str, edit: dict[str, Any], match: str
) -> None:
    ds, _ = ragged_dataset(tmp_path / "d", records_per_shard=10)
    (meta,) = ds.path.glob(f"v-*/000001.zarr/r/{part}/zarr.json")
    spec = json.loads(meta.read_text())
    if "inner" in edit:
        edit = {"shape": [spec["shape"][0], *edit["inner"]]}
    meta.write_text(json.dumps({**spec, **edit}))
    _fix_manifest(ds.path)
    ds = shardstore.open(tmp_path / "d")
    relpath = meta.relative_to(ds.path).as_posix()
    with pytest.raises(ManifestError, match=rf"shard 1, '{re.escape(relpath)}': {match}"):
        ds[15]


@pytest.mark.parametrize("rows", [-1, "7", 2**40])
def test_lying_manifest_rows_raise_manifest_error(tmp_path: Path, rows: Any) -> None:
    ds, _ = ragged_dataset(tmp_path / "d", records_per_shard=10)
    manifest = json.loads((ds.path / "manifest.json").read_text())
    for f in manifest["shards"][1]["files"]:
        if f.get("info", {}).get("ragged") == "values":
            f["info"]["rows"] = rows
    (ds.path / "manifest.json").write_text(json.dumps(manifest))
    ds = shardstore.open(tmp_path / "d")
    with pytest.raises(ManifestError, match=r"shard 1, file .*info\.rows"):
        ds[15]
    with pytest.raises(ManifestError, match=r"shard 1, file .*info\.rows"):
        ds.to_tf(batch_size=4)  # refused before the pipeline runs


def test_values_rows_that_contradict_their_array_raise_manifest_error(tmp_path: Path) -> None:
    ds, _ = ragged_dataset(tmp_path / "d", records_per_shard=10)
    manifest = json.loads((ds.path / "manifest.json").read_text())
    for f in manifest["shards"][1]["files"]:
        if f.get("info", {}).get("ragged") == "values":
            f["info"]["rows"] += 1
    (ds.path / "manifest.json").write_text(json.dumps(manifest))
    ds = shardstore.open(tmp_path / "d")
    with pytest.raises((ManifestError, ChecksumError), match="shard 1"):
        ds[15]


def test_ragged_reads_are_thread_safe(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    ds, data = ragged_dataset(tmp_path / "d", n=120, records_per_shard=30, chunk_records=4)
    source = shardstore.get_source("zarr")
    ctx = ReadContext(ds.path, ds.shards, ds.features, 16)
    rng = np.random.default_rng(0)
    jobs = [(int(p), np.unique(rng.integers(0, 30, 7))) for p in rng.integers(0, 4, 48)]

    def fetch(job: tuple[int, np.ndarray]) -> bool:
        pos, rows = job
        got = source.read_records(ctx, pos, rows)
        expected = [data["r"][30 * pos + i] for i in rows]
        return len(got["r"]) == len(rows) and all(
            a.tobytes() == b.tobytes() for a, b in zip(got["r"], expected, strict=True)
        )

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(fetch, jobs))
