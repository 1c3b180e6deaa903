"""The tfrecord source: conformance, files plain TensorFlow reads, and the hand-made encoder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import shardstore
from shardstore.errors import CapabilityError, ManifestError
from shardstore.format.manifest import FeatureSpec
from shardstore.sources import tfrecord as tfr
from shardstore.sources.tfrecord import (
    TFRecordFormatError,
    TFRecordSource,
    encode_records,
    masked_crc32c,
    parse_example,
    record_layout,
)
from shardstore.testing import (
    ALL_DTYPES,
    SourceConformance,
    assert_bitwise_equal,
    assert_damage_reported,
    collect,
    random_records,
)


class TestTFRecordConformance(SourceConformance):
    source = "tfrecord"


def test_capabilities() -> None:
    assert TFRecordSource.capabilities() == {
        "tf_native": True,
        "random_access": False,
        "supports_ragged": False,
    }


def test_random_access_refusals_say_what_was_asked_and_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "t"
    ds = shardstore.write(path, {"x": np.arange(10)}, format="tfrecord", fsync=False)
    tail = (
        f"which the 'tfrecord' source of dataset '{path}' does not support. {{}}, or convert "
        f"the dataset once to a format that does: `shardstore convert {path} DEST --format "
        "npy` (`shardstore.convert(src, dest, format='npy')` in Python)"
    )
    with pytest.raises(CapabilityError) as info:
        ds[3]
    assert str(info.value) == "ds[...] reads records by index (random_access), " + tail.format(
        "Read the records in order with ds.iter_numpy() or ds.to_tf()"
    )
    with pytest.raises(CapabilityError) as info:
        ds.to_tf(4, shuffle="global")
    assert str(info.value) == "shuffle='global' reads records by index (random_access), " + (
        tail.format("Use shuffle=True (blocks of records in a random order, mixed in a window)")
    )
    # what it advises works: shuffle=True, and the converted dataset answers ds[i]
    batches = ds.to_tf(4, shuffle=True, seed=0).as_numpy_iterator()
    assert sorted(np.concatenate([b["x"] for b in batches]).tolist()) == list(range(10))
    converted = shardstore.convert(path, tmp_path / "n", format="npy")
    assert int(converted[3]["x"]) == 3


def _tf_decode(raw: bytes, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """What a plain TF user does with a raw feature: decode_raw (+ bitcast for u4/u8)."""
    decode_as = {"<u4": tf.int32, "<u8": tf.int64}.get(dtype.str, tf.as_dtype(dtype))
    flat = tf.io.decode_raw(raw, decode_as, little_endian=True)
    if dtype.str in ("<u4", "<u8"):
        flat = tf.bitcast(flat, tf.as_dtype(dtype))
    return tf.reshape(flat, shape).numpy()


def test_files_are_read_by_plain_tensorflow(tmp_path: Path) -> None:
    """Every dtype, read back with TFRecordDataset + parse_single_example, without shardstore."""
    shape = (3, 2)
    arrays = {
        f"f_{name}": random_records(np.dtype(name), shape, 13, seed=i)
        for i, name in enumerate(ALL_DTYPES)
    }
    ds = shardstore.write(
        tmp_path / "d", arrays, format="tfrecord", records_per_shard=5, fsync=False
    )
    spec = {name: tf.io.FixedLenFeature([], tf.string) for name in arrays}
    got: dict[str, list[np.ndarray]] = {name: [] for name in arrays}
    for shard in ds.shards:
        (entry,) = shard.files
        assert entry.path.endswith(".tfrecord")
        for record in tf.data.TFRecordDataset(str(ds.path / entry.path)):
            example = tf.io.parse_single_example(record, spec)
            for name, arr in arrays.items():
                got[name].append(_tf_decode(example[name].numpy(), arr.dtype, shape))
    for name, arr in arrays.items():
        assert_bitwise_equal(np.stack(got[name]), arr)


def test_records_are_the_examples_tf_would_build(tmp_path: Path) -> None:
    """Each record parses (protobuf) to exactly the Example a TF user builds by hand."""
    rng = np.random.default_rng(1)
    arrays = {"image": rng.random((6, 8, 8, 3), dtype=np.float32), "label": np.arange(6)}
    ds = shardstore.write(tmp_path / "d", arrays, format="tfrecord", fsync=False)
    path = ds.path / ds.shards[0].files[0].path
    for i, record in enumerate(tf.data.TFRecordDataset(str(path)).as_numpy_iterator()):
        expected = tf.train.Example(
            features=tf.train.Features(
                feature={
                    name: tf.train.Feature(bytes_list=tf.train.BytesList(value=[arr[i].tobytes()]))
                    for name, arr in arrays.items()
                }
            )
        )
        assert tf.train.Example.FromString(record) == expected
    assert i == 5


@pytest.mark.parametrize("size", [1, 127, 128, 16_383, 16_384, 2_097_152])
def test_varint_length_boundaries(tmp_path: Path, size: int) -> None:
    """Record sizes where a protobuf length needs one more varint byte."""
    data = {"v": random_records(np.dtype("uint8"), (size,), 3, seed=size), "k": np.arange(3)}
    ds = shardstore.write(tmp_path / "d", data, format="tfrecord", fsync=False)
    path = str(ds.path / ds.shards[0].files[0].path)
    spec = {"v": tf.io.FixedLenFeature([], tf.string)}
    raw = [tf.io.parse_single_example(r, spec)["v"].numpy() for r in tf.data.TFRecordDataset(path)]
    assert raw == [row.tobytes() for row in data["v"]]
    assert_bitwise_equal(collect(ds.to_tf(2, features="v")), data["v"])


def test_layout_is_the_serialized_example() -> None:
    layout = record_layout([("image", 300), ("y", 8)])
    frame = np.zeros(layout.frame_bytes, np.uint8)
    frame[: len(layout.header)] = np.frombuffer(layout.header, np.uint8)
    for offset, const in layout.segments:
        frame[offset : offset + len(const)] = np.frombuffer(const, np.uint8)
    (o1, n1), (o2, n2) = layout.fields
    frame[o1 : o1 + n1] = 7
    frame[o2 : o2 + n2] = 9
    example = tf.train.Example.FromString(frame[12:-4].tobytes())
    assert example.features.feature["image"].bytes_list.value == [bytes([7]) * 300]
    assert example.features.feature["y"].bytes_list.value == [bytes([9]) * 8]
    assert layout.data_bytes == len(example.SerializeToString())


def test_bytes_match_tfrecordwriter(tmp_path: Path) -> None:
    """Byte-identical to tf.io.TFRecordWriter + deterministic Example serialization."""
    arrays = {"zeta": np.arange(40, dtype=np.float32).reshape(10, 4), "alpha": np.arange(10)}
    specs = {name: FeatureSpec(a.dtype, a.shape[1:]) for name, a in arrays.items()}
    mine = b"".join(c.tobytes() for c in encode_records(specs, arrays, 10))
    ref = tmp_path / "ref.tfrecord"
    with tf.io.TFRecordWriter(str(ref)) as w:
        for i in range(10):
            feature = {
                name: tf.train.Feature(bytes_list=tf.train.BytesList(value=[a[i].tobytes()]))
                for name, a in arrays.items()
            }
            ex = tf.train.Example(features=tf.train.Features(feature=feature))
            w.write(ex.SerializeToString(deterministic=True))
    assert mine == ref.read_bytes()


def test_masked_crc32c_reference() -> None:
    crc = 0xE3069283  # CRC-32C("123456789"), the standard check value
    assert masked_crc32c(b"123456789") == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) % 2**32


@pytest.mark.parametrize("length", [5, 4095, 4096, 9000])
def test_both_crc_paths(length: int) -> None:
    import google_crc32c

    rows = np.random.default_rng(length).integers(0, 256, (9, length + 16), dtype=np.uint8)
    got = tfr._crc32c_rows(rows, 12, length + 12)
    assert got.tolist() == [google_crc32c.value(r[12 : length + 12].tobytes()) for r in rows]


def test_big_endian_and_memmap_input(tmp_path: Path) -> None:
    values = np.arange(30, dtype=">f8").reshape(10, 3)
    mm = np.lib.format.open_memmap(tmp_path / "in.npy", "w+", np.int16, (10, 4))
    mm[:] = np.arange(40).reshape(10, 4)
    mm.flush()
    ds = shardstore.write(
        tmp_path / "d", {"v": values, "m": mm}, format="tfrecord", records_per_shard=4, fsync=False
    )
    out = collect(ds.to_tf(3))
    assert_bitwise_equal(out["v"], values.astype("<f8"))
    assert_bitwise_equal(out["m"], np.asarray(mm))


def test_chunking_inside_a_shard(tmp_path: Path) -> None:
    """Shards longer than one encoding chunk (the constant bytes must survive reuse)."""
    data = np.arange(300 * 16, dtype=np.int64).reshape(300, 16)
    specs = {"v": FeatureSpec(np.dtype("<i8"), (16,))}
    chunks = [c.copy() for c in encode_records(specs, {"v": data}, 300, chunk_bytes=4096)]
    assert len(chunks) > 10
    path = tmp_path / "x.tfrecord"
    path.write_bytes(b"".join(c.tobytes() for c in chunks))
    spec = {"v": tf.io.FixedLenFeature([], tf.string)}
    got = [
        tf.io.parse_single_example(r, spec)["v"].numpy() for r in tf.data.TFRecordDataset(str(path))
    ]
    assert got == [row.tobytes() for row in data]


def test_writing_does_not_import_tensorflow(tmp_path: Path) -> None:
    code = (
        "import sys, numpy as np, shardstore\n"
        f"shardstore.write({str(tmp_path / 'd')!r}, {{'x': np.zeros((5, 3))}}, format='tfrecord')\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_damaged_record_fails_the_read(tmp_path: Path) -> None:
    """TFRecordDataset checks every record's CRC: damage is caught even without verify()."""
    data = {"v": np.arange(200, dtype=np.float64).reshape(20, 10)}
    ds = shardstore.write(tmp_path / "d", data, format="tfrecord", fsync=False)
    path = ds.path / ds.shards[0].files[0].path
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 20 * 10 + 20] ^= 0x10  # inside the data of record 10 (not a header)
    os.chmod(path, 0o644)
    path.write_bytes(bytes(raw))
    err = assert_damage_reported(  # the shard is hashed when the reader first reaches it
        lambda: collect(shardstore.open(ds.path).to_tf(4)), ds.path, 0, ds.shards[0].files[0].path
    )
    assert "has checksum" in str(err)
    with pytest.raises(tf.errors.DataLossError):  # and TFRecordDataset's own CRC check
        collect(shardstore.open(ds.path, verify="size").to_tf(4))


def _edit_info(path: Path, edit: object) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    for shard in manifest["shards"]:
        for f in shard["files"]:
            edit(f["info"])  # type: ignore[operator]
    (path / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda info: info.pop("features"), "info.features"),
        (lambda info: info["features"].pop("v"), "no entry for 'v'"),
        (lambda info: info["features"]["v"].update(encoding="float_list"), "float_list"),
        (lambda info: info["features"]["v"].update(encoding="zip"), "unknown encoding"),
        (lambda info: info["features"]["v"].update(key=3), "key"),
    ],
)
def test_invalid_file_info_is_refused(tmp_path: Path, edit: object, match: str) -> None:
    shardstore.write(tmp_path / "d", {"v": np.arange(4)}, format="tfrecord", fsync=False)
    _edit_info(tmp_path / "d", edit)
    with pytest.raises(ManifestError, match=match):
        shardstore.open(tmp_path / "d").to_tf(2)


def test_shards_with_different_layouts_are_refused(tmp_path: Path) -> None:
    shardstore.write(
        tmp_path / "d", {"v": np.arange(4)}, format="tfrecord", records_per_shard=2, fsync=False
    )
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    manifest["shards"][1]["files"][0]["info"]["features"]["v"]["key"] = "other"
    (tmp_path / "d" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="read those shards separately"):
        shardstore.open(tmp_path / "d").to_tf(2)


def test_a_wrong_size_raw_record_fails_loudly(tmp_path: Path) -> None:
    """A manifest declaring the wrong record size cannot silently shift data."""
    shardstore.write(tmp_path / "d", {"v": np.arange(8, dtype=np.int64)}, format="tfrecord")
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    manifest["features"]["v"]["dtype"] = "<i4"  # 8 bytes per record stored, 4 declared
    (tmp_path / "d" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(tf.errors.InvalidArgumentError):
        collect(shardstore.open(tmp_path / "d").to_tf(4))


# -- the pure-Python Example parser --------------------------------------------------------------
def test_parse_example_matches_protobuf() -> None:
    example = tf.train.Example(
        features=tf.train.Features(
            feature={
                "b": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"", b"xyz"])),
                "i": tf.train.Feature(int64_list=tf.train.Int64List(value=[-1, 0, 2**63 - 1])),
                "f": tf.train.Feature(float_list=tf.train.FloatList(value=[1.5, -0.0, 3e38])),
                "image/encoded": tf.train.Feature(),
            }
        )
    )
    parsed = parse_example(example.SerializeToString())
    assert parsed["b"] == ("bytes_list", [b"", b"xyz"])
    assert parsed["i"] == ("int64_list", [-1, 0, 2**63 - 1])
    assert parsed["f"][0] == "float_list"
    assert (
        np.array(parsed["f"][1], np.float32).tobytes()
        == np.array([1.5, -0.0, 3e38], np.float32).tobytes()
    )
    assert parsed["image/encoded"] == ("none", [])


def test_parse_example_reads_unpacked_lists() -> None:
    """Repeated scalars written unpacked are valid protobuf; TF and the parser agree."""

    def field(number: int, wire: int, payload: bytes) -> bytes:
        return tfr._varint(number << 3 | wire) + payload

    def message(number: int, payload: bytes) -> bytes:
        return field(number, 2, tfr._varint(len(payload)) + payload)

    ints = field(1, 0, tfr._varint(5)) + field(1, 0, tfr._varint(2**64 - 3))
    floats = field(1, 5, np.float32(2.5).tobytes()) + field(1, 5, np.float32(-1).tobytes())
    entries = message(1, message(1, b"i") + message(2, message(3, ints)))
    entries += message(1, message(1, b"f") + message(2, message(2, floats)))
    data = message(1, entries)
    assert parse_example(data) == {"i": ("int64_list", [5, -3]), "f": ("float_list", [2.5, -1.0])}
    ex = tf.train.Example.FromString(data)
    assert list(ex.features.feature["i"].int64_list.value) == [5, -3]
    assert list(ex.features.feature["f"].float_list.value) == [2.5, -1.0]


@pytest.mark.parametrize("data", [b"\x0a\x05ab", b"\x0a\xff", b"\x0b"])
def test_parse_example_rejects_garbage(data: bytes) -> None:
    with pytest.raises(TFRecordFormatError):
        parse_example(data)
