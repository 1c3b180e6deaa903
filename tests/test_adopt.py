"""index_tfrecords: adopting TFRecord files written the usual TensorFlow way."""

from __future__ import annotations

import errno
import gzip
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from tmpfs import other_file_system

import shardstore
from shardstore.errors import (
    ChecksumError,
    DatasetExistsError,
    InvalidInputError,
    UnsupportedDTypeError,
)
from shardstore.testing import assert_bitwise_equal, assert_damage_reported, collect, flip_bit
from shardstore.writing.adopt import index_tfrecords, parse_feature_arg

N = 23
SPLITS = ((0, 10), (10, 18), (18, 23))


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    """Every feature a TF user commonly writes, including awkward values."""
    rng = np.random.default_rng(0)
    big = rng.integers(0, 2**64, N, dtype=np.uint64)
    big[0] = 2**64 - 1
    return {
        "image": rng.random((N, 4, 3), dtype=np.float32),
        "pixels": rng.integers(0, 256, (N, 2, 2), dtype=np.uint8),
        "label": rng.integers(-(2**62), 2**62, N).astype(np.int64),
        "small": rng.integers(-128, 128, (N, 3)).astype(np.int8),
        "flag": rng.integers(0, 2, (N,)).astype(bool),
        "big": big,
        "score": rng.standard_normal((N, 2)).astype(np.float32),
    }


def _example(data: dict[str, np.ndarray], i: int) -> tf.train.Example:
    """One record, the way tutorials write it: raw bytes, int64_list and float_list."""

    def raw(a: np.ndarray) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[a.tobytes()]))

    def ints(a: np.ndarray) -> tf.train.Feature:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=a.reshape(-1).tolist()))

    def floats(a: np.ndarray) -> tf.train.Feature:
        return tf.train.Feature(float_list=tf.train.FloatList(value=a.reshape(-1).tolist()))

    return tf.train.Example(
        features=tf.train.Features(
            feature={
                "image/raw": raw(data["image"][i]),
                "pixels": raw(data["pixels"][i]),
                "label": ints(data["label"][i]),
                "small": ints(data["small"][i]),
                "flag": ints(data["flag"][i].astype(np.int64)),
                # Int64List holds int64: uint64 values >= 2**63 go in as two's complement.
                "big": ints(data["big"][i].view(np.int64)),
                "score": floats(data["score"][i]),
                "unused": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"note"])),
            }
        )
    )


def _write_tfrecords(path: Path, data: dict[str, np.ndarray], lo: int, hi: int) -> Path:
    with tf.io.TFRecordWriter(str(path)) as w:
        for i in range(lo, hi):
            w.write(_example(data, i).SerializeToString())
    return path


@pytest.fixture(scope="module")
def tfrecords(tmp_path_factory: pytest.TempPathFactory, data: dict[str, np.ndarray]) -> list[Path]:
    """Three files written with tf.io.TFRecordWriter (read-only: tests must not modify them)."""
    root = tmp_path_factory.mktemp("tfrecords")
    return [_write_tfrecords(root / f"train-{j}.tfrecord", data, *s) for j, s in enumerate(SPLITS)]


FEATURES: dict[str, Any] = {
    "image": {"dtype": "float32", "shape": (4, 3), "key": "image/raw"},
    "pixels": ("uint8", (2, 2)),
    "label": ("int64", (), "int64_list"),
    "small": {"dtype": np.int8, "shape": [3], "encoding": "int64_list"},
    "flag": ("bool", (), "int64_list"),
    "big": ("uint64", (), "int64_list"),
    "score": ("float32", (2,), "float_list"),
}


@pytest.fixture
def sources(tmp_path: Path, tfrecords: list[Path]) -> list[Path]:
    """Private hard links of the module's files (on the same filesystem as tmp_path)."""
    out = []
    for p in tfrecords:
        os.link(p, tmp_path / p.name)
        out.append(tmp_path / p.name)
    return out


def _copies(tmp_path: Path, tfrecords: list[Path]) -> list[Path]:
    """Independent copies, for tests that damage or modify the originals."""
    (tmp_path / "src").mkdir()
    out = []
    for p in tfrecords:
        (tmp_path / "src" / p.name).write_bytes(p.read_bytes())
        out.append(tmp_path / "src" / p.name)
    return out


# -- round trips -------------------------------------------------------------------------------
def test_round_trip_bit_for_bit(
    tmp_path: Path, sources: list[Path], data: dict[str, np.ndarray]
) -> None:
    ds = index_tfrecords(tmp_path / "ds", sources, FEATURES, progress=False)
    assert ds.num_records == N
    assert [s.num_records for s in ds.shards] == [hi - lo for lo, hi in SPLITS]
    assert set(ds.manifest.sources) == {"tfrecord"}
    assert {n: (s.dtype.name, s.shape) for n, s in ds.features.items()} == {
        "image": ("float32", (4, 3)),
        "pixels": ("uint8", (2, 2)),
        "label": ("int64", ()),
        "small": ("int8", (3,)),
        "flag": ("bool", ()),
        "big": ("uint64", ()),
        "score": ("float32", (2,)),
    }
    ds.verify(progress=False)
    reopened = shardstore.open(tmp_path / "ds")
    out = collect(reopened.to_tf(batch_size=4))
    for name, expected in data.items():
        assert_bitwise_equal(out[name], expected)
    shuffled = collect(
        reopened.to_tf(batch_size=5, features=("big", "label"), shuffle=True, seed=1)
    )
    order = np.argsort(shuffled[1])
    assert_bitwise_equal(shuffled[0][order], data["big"][np.argsort(data["label"])])


def test_files_stay_inside_the_dataset(tmp_path: Path, sources: list[Path]) -> None:
    ds = index_tfrecords(tmp_path / "ds", sources, FEATURES, progress=False)
    root = (tmp_path / "ds").resolve()
    for shard in ds.shards:
        (entry,) = shard.files
        assert not entry.path.startswith(("/", ".."))
        assert (root / entry.path).resolve().is_relative_to(root)
        assert not (root / entry.path).is_symlink()
        assert entry.info["origin"] == sources[shard.index].name
        assert entry.info["features"]["image"] == {"key": "image/raw", "encoding": "raw"}


def test_list_encodings_cast_to_the_declared_dtype(
    tmp_path: Path, sources: list[Path], data: dict[str, np.ndarray]
) -> None:
    features = {
        "score": ("float64", (2,), "float_list"),
        "label": ("int64", (1,), "int64_list"),  # a one-value list read as shape (1,)
        "small": ("int16", (3,), "int64_list"),
    }
    ds = index_tfrecords(tmp_path / "ds", sources, features, progress=False)
    out = collect(ds.to_tf(batch_size=7))
    assert_bitwise_equal(out["score"], data["score"].astype(np.float64))
    assert_bitwise_equal(out["label"], data["label"][:, None])
    assert_bitwise_equal(out["small"], data["small"].astype(np.int16))
    half = {"half": {"dtype": "float16", "shape": (2,), "encoding": "float_list", "key": "score"}}
    ds = index_tfrecords(tmp_path / "ds16", sources, half, progress=False)
    assert_bitwise_equal(collect(ds.to_tf(5, features="half")), data["score"].astype(np.float16))


def test_only_declared_features_are_read(
    tmp_path: Path, sources: list[Path], data: dict[str, np.ndarray]
) -> None:
    ds = index_tfrecords(tmp_path / "ds", sources, {"label": FEATURES["label"]}, progress=False)
    assert_bitwise_equal(collect(ds.to_tf(batch_size=8, features="label")), data["label"])


def test_tfrecord_source_files_can_be_adopted(tmp_path: Path) -> None:
    """Files shardstore wrote with format='tfrecord' are adoptable TFRecords too."""
    arrays = {"x": np.arange(30, dtype=np.float64).reshape(10, 3), "y": np.arange(10)}
    ds = shardstore.write(tmp_path / "a", arrays, format="tfrecord", records_per_shard=4)
    files = [ds.path / s.files[0].path for s in ds.shards]
    again = index_tfrecords(
        tmp_path / "b", files, {"x": ("float64", (3,)), "y": ("int64", ())}, progress=False
    )
    out = collect(again.to_tf(batch_size=3))
    assert_bitwise_equal(out["x"], arrays["x"])
    assert_bitwise_equal(out["y"], arrays["y"])


def test_an_empty_file_is_an_empty_shard(
    tmp_path: Path, sources: list[Path], data: dict[str, np.ndarray]
) -> None:
    empty = tmp_path / "empty.tfrecord"
    empty.write_bytes(b"")
    ds = index_tfrecords(tmp_path / "ds", [sources[0], empty], FEATURES, progress=False)
    assert [s.num_records for s in ds.shards] == [10, 0]
    assert_bitwise_equal(collect(ds.to_tf(4, features="label")), data["label"][:10])


def test_adopting_does_not_import_tensorflow(tmp_path: Path, sources: list[Path]) -> None:
    code = (
        "import sys\n"
        "from shardstore.writing.adopt import index_tfrecords\n"
        f"index_tfrecords({str(tmp_path / 'ds')!r}, {[str(s) for s in sources]!r},"
        " {'label': ('int64', (), 'int64_list')})\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- hard links and copies ---------------------------------------------------------------------
def _inode(p: Path) -> tuple[int, int]:
    st = p.stat()
    return st.st_dev, st.st_ino


@pytest.mark.parametrize("link", ["auto", "hardlink"])
def test_hard_links_share_the_data(tmp_path: Path, sources: list[Path], link: str) -> None:
    before = [s.stat().st_nlink for s in sources]
    ds = index_tfrecords(tmp_path / "ds", sources, FEATURES, link=link, progress=False)
    for src, shard, nlink in zip(sources, ds.shards, before, strict=True):
        adopted = ds.path / shard.files[0].path
        assert _inode(adopted) == _inode(src)
        assert src.stat().st_nlink == nlink + 1
    # The dataset holds its own link: the originals can go.
    for src in sources:
        src.unlink()
    ds.verify(progress=False)
    assert collect(ds.to_tf(batch_size=N, features="label")).shape == (N,)


def test_copy_is_independent(tmp_path: Path, sources: list[Path]) -> None:
    ds = index_tfrecords(tmp_path / "ds", sources, FEATURES, link="copy", progress=False)
    for src, shard in zip(sources, ds.shards, strict=True):
        adopted = ds.path / shard.files[0].path
        assert _inode(adopted) != _inode(src)
        assert adopted.read_bytes() == src.read_bytes()
    ds.verify(progress=False)


def _refuse_links(monkeypatch: pytest.MonkeyPatch, code: int = errno.EXDEV) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "link", refuse)


def test_auto_copies_when_the_filesystem_refuses_a_link(
    tmp_path: Path, sources: list[Path], monkeypatch: pytest.MonkeyPatch, data: dict[str, Any]
) -> None:
    _refuse_links(monkeypatch)
    ds = index_tfrecords(tmp_path / "ds", sources, FEATURES, link="auto", progress=False)
    for src, shard in zip(sources, ds.shards, strict=True):
        assert _inode(ds.path / shard.files[0].path) != _inode(src)
    assert_bitwise_equal(collect(ds.to_tf(batch_size=6, features="image")), data["image"])


def test_hardlink_mode_refuses_to_copy(
    tmp_path: Path, sources: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _refuse_links(monkeypatch)
    with pytest.raises(InvalidInputError, match=r"cannot hard-link.*same filesystem"):
        index_tfrecords(tmp_path / "ds", sources, FEATURES, link="hardlink", progress=False)
    assert not (tmp_path / "ds").exists()  # nothing left behind


def test_other_link_errors_are_not_hidden(
    tmp_path: Path, sources: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _refuse_links(monkeypatch, errno.ENOSPC)
    with pytest.raises(OSError, match="space"):
        index_tfrecords(tmp_path / "ds", sources, FEATURES, progress=False)
    assert not (tmp_path / "ds").exists()


def test_auto_across_filesystems(tmp_path: Path, tfrecords: list[Path]) -> None:
    """A real cross-device adoption (another file system -> the test directory)."""
    with other_file_system(tmp_path) as other:
        src = other / "0.tfrecord"
        src.write_bytes(tfrecords[0].read_bytes())
        ds = index_tfrecords(tmp_path / "ds", [src], FEATURES, progress=False)
        assert _inode(ds.path / ds.shards[0].files[0].path) != _inode(src)
        with pytest.raises(InvalidInputError, match="hard-link"):
            index_tfrecords(tmp_path / "ds2", [src], FEATURES, link="hardlink", progress=False)


# -- integrity -----------------------------------------------------------------------------------
@pytest.mark.parametrize("link", ["copy", "hardlink"])
def test_corruption_of_an_adopted_file_is_detected(
    tmp_path: Path, tfrecords: list[Path], link: str
) -> None:
    files = _copies(tmp_path, tfrecords)
    ds = index_tfrecords(tmp_path / "ds", files, FEATURES, link=link, progress=False)
    victim = ds.shards[1].files[0]
    # A hard link shares its data: damage to the original *in place* is damage to the
    # dataset, and verify reports it (a copy is damaged directly here).
    flip_bit(files[1] if link == "hardlink" else ds.path / victim.path, victim.size // 2)
    with pytest.raises(ChecksumError) as exc:
        ds.verify(progress=False)
    assert exc.value.file == victim.path
    assert exc.value.shard == 1
    # Reading fails too: the shard is hashed when the reader first reaches it...
    assert_damage_reported(lambda: collect(ds.to_tf(batch_size=4)), ds.path, 1, victim.path)
    # ...and without that, TFRecordDataset checks each record's CRC.
    unchecked = shardstore.open(ds.path, verify="size")
    with pytest.raises(tf.errors.DataLossError):
        collect(unchecked.to_tf(batch_size=4))


def test_a_resized_original_is_refused_before_reading(
    tmp_path: Path, tfrecords: list[Path]
) -> None:
    files = _copies(tmp_path, tfrecords)
    ds = index_tfrecords(tmp_path / "ds", files, FEATURES, link="hardlink", progress=False)
    with open(files[0], "ab") as f:
        f.write(b"appended")
    victim = ds.shards[0].files[0].path
    err = assert_damage_reported(lambda: collect(ds.to_tf(batch_size=4)), ds.path, 0, victim)
    assert "bytes" in str(err)
    with pytest.raises(ChecksumError, match="bytes"):  # pipelines of TF ops: checked up front
        ds.to_tf(batch_size=4, tf_native=True)


# -- bad inputs ----------------------------------------------------------------------------------
BAD_FEATURES = [
    ({}, InvalidInputError, "non-empty mapping"),
    ({"x": ("object", ())}, UnsupportedDTypeError, "cannot be stored"),
    ({"x": ("float128", ())}, UnsupportedDTypeError, "."),
    ({"x": ("not-a-dtype", ())}, UnsupportedDTypeError, "not a dtype"),
    ({"x": (None, ())}, UnsupportedDTypeError, "no dtype"),
    ({"x": (">f4", ())}, UnsupportedDTypeError, "big-endian"),
    ({"x": ("float32", (-1,))}, InvalidInputError, "non-negative"),
    ({"x": ("float32", (3, 0))}, InvalidInputError, "empty records"),
    ({"x": ("float32", "3x3")}, InvalidInputError, "shape"),
    ({"x": ("float32", (None,))}, InvalidInputError, "shape"),
    ({"x": ("float32", (), "int64_list")}, InvalidInputError, "int64_list.*not float32"),
    ({"x": ("int32", (), "float_list")}, InvalidInputError, "float_list.*not int32"),
    ({"x": ("complex64", (), "float_list")}, InvalidInputError, "float_list"),
    ({"x": ("int32", (), "json")}, InvalidInputError, "unknown encoding"),
    ({"x": {"dtype": "int32"}}, InvalidInputError, "both 'dtype' and 'shape'"),
    ({"x": {"dtype": "int32", "shape": (), "codec": 1}}, InvalidInputError, "unknown key"),
    ({"x": {"dtype": "int32", "shape": (), "key": ""}}, InvalidInputError, "key"),
    ({"x": "int32"}, InvalidInputError, "expected"),
    ({"bad/name": ("int32", ())}, InvalidInputError, "invalid feature name"),
    (
        {"a": ("int64", (), "int64_list"), "b": {"dtype": "int64", "shape": (), "key": "a"}},
        InvalidInputError,
        "same Example key",
    ),
]


@pytest.mark.parametrize(("features", "error", "match"), BAD_FEATURES)
def test_bad_feature_declarations(
    tmp_path: Path,
    sources: list[Path],
    features: dict[str, Any],
    error: type[Exception],
    match: str,
) -> None:
    with pytest.raises(error, match=match):
        index_tfrecords(tmp_path / "ds", sources, features, progress=False)
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize(
    ("features", "match"),
    [
        ({"nope": ("int64", (), "int64_list")}, r"'nope'.*has no such key.*'label'"),
        (
            {"label": ("int64", ())},
            r"'label'.*stores it as int64_list.*declare encoding 'int64_list'",
        ),
        ({"pixels": ("uint8", (), "int64_list")}, r"'pixels'.*stores it as bytes_list"),
        ({"pixels": ("uint8", (3, 2))}, r"'pixels'.*holds 4 bytes.*has 6"),
        ({"pixels": ("uint16", (2, 2))}, r"holds 4 bytes.*has 8"),
        ({"small": ("int8", (4,), "int64_list")}, r"holds 3 values.*needs 4"),
        ({"label": ("int32", (), "int64_list")}, r"outside the range of int32"),
        ({"small": ("uint8", (3,), "int64_list")}, r"outside the range of uint8"),
        ({"score": ("float32", (3,), "float_list")}, r"holds 2 values"),
        ({"image": {"dtype": "float32", "shape": (12,)}}, r"'image'.*no such key"),
    ],
)
def test_first_record_must_match_the_declaration(
    tmp_path: Path, sources: list[Path], features: dict[str, Any], match: str
) -> None:
    with pytest.raises(InvalidInputError, match=match) as exc:
        index_tfrecords(tmp_path / "ds", sources, features, progress=False)
    assert "train-0.tfrecord" in str(exc.value)  # names the file
    assert not (tmp_path / "ds").exists()


def test_bad_file_lists(tmp_path: Path, sources: list[Path]) -> None:
    cases: list[tuple[Any, str]] = [
        ([], "non-empty"),
        ([tmp_path / "missing.tfrecord"], "no such file"),
        ([sources[0], tmp_path], "not a regular file"),
        ([sources[0], sources[1], sources[0]], "listed twice"),
        ([sources[0], 3], "must be paths"),
    ]
    for files, match in cases:
        with pytest.raises(InvalidInputError, match=match):
            index_tfrecords(tmp_path / "ds", files, FEATURES, progress=False)
        assert not (tmp_path / "ds").exists()
    with pytest.raises(InvalidInputError, match="link must be"):
        index_tfrecords(tmp_path / "ds", sources, FEATURES, link="symlink")


def test_a_single_path_or_an_iterator_is_accepted(tmp_path: Path, sources: list[Path]) -> None:
    ds = index_tfrecords(tmp_path / "ds", str(sources[0]), FEATURES, progress=False)
    assert ds.num_records == 10
    ds = index_tfrecords(tmp_path / "ds2", sorted(tmp_path.glob("train-*")), FEATURES)
    assert ds.num_records == N
    ds = index_tfrecords(tmp_path / "ds3", (s for s in sources[1:]), FEATURES)
    assert ds.num_records == N - 10


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda raw: os.urandom(64), "not a TFRecord file"),
        (lambda raw: gzip.compress(raw), "GZIP"),
        (lambda raw: raw[:-3], "truncated"),
        (lambda raw: raw + b"\0" * 5, "truncated record header"),
        (lambda raw: raw[:200] + bytes([raw[200] ^ 1]) + raw[201:], "CRC mismatch|checksum"),
    ],
    ids=["garbage", "gzip", "truncated", "trailing-bytes", "bit-flip"],
)
def test_damaged_input_files_are_refused(
    tmp_path: Path, tfrecords: list[Path], damage: Callable[[bytes], bytes], match: str
) -> None:
    bad = tmp_path / "bad.tfrecord"
    bad.write_bytes(damage(tfrecords[0].read_bytes()))
    with pytest.raises(InvalidInputError, match=match) as exc:
        index_tfrecords(tmp_path / "ds", [tfrecords[1], bad], FEATURES, progress=False)
    assert "bad.tfrecord" in str(exc.value)
    assert not (tmp_path / "ds").exists()


def test_a_damaged_record_after_the_first_is_refused(tmp_path: Path, tfrecords: list[Path]) -> None:
    """Records past the first are only framed and CRC-checked, but every one of them is."""
    raw = bytearray(tfrecords[0].read_bytes())
    raw[-10] ^= 0x01  # inside the last record's data
    bad = tmp_path / "bad.tfrecord"
    bad.write_bytes(bytes(raw))
    with pytest.raises(InvalidInputError, match="corrupted record at byte"):
        index_tfrecords(tmp_path / "ds", [bad], FEATURES, link="hardlink", progress=False)
    assert not (tmp_path / "ds").exists()
    assert bad.stat().st_nlink == 1  # the link made before the failure is gone
    assert bad.exists()


# -- commit ------------------------------------------------------------------------------------
def test_an_existing_dataset_is_kept_unless_overwrite(
    tmp_path: Path, sources: list[Path], data: dict[str, np.ndarray]
) -> None:
    first = index_tfrecords(tmp_path / "ds", sources[:1], FEATURES, progress=False)
    with pytest.raises(DatasetExistsError):
        index_tfrecords(tmp_path / "ds", sources, FEATURES, progress=False)
    old_dir = (tmp_path / "ds" / first.shards[0].files[0].path).parent
    ds = index_tfrecords(tmp_path / "ds", sources, FEATURES, overwrite=True, progress=False)
    assert ds.num_records == N
    assert old_dir.exists()  # kept for readers of the old version until gc...
    shardstore.gc(tmp_path / "ds", grace=0)
    assert not old_dir.exists()  # ...then its links are cleaned up...
    assert all(s.exists() for s in sources)  # ...never the originals
    assert_bitwise_equal(collect(shardstore.open(tmp_path / "ds").to_tf(5, features="flag")),
                         data["flag"])  # fmt: skip
    leftovers = [p.name for p in (tmp_path / "ds").iterdir()]
    assert sorted(leftovers) == sorted(["manifest.json", ds.shards[0].files[0].path.split("/")[0]])


def test_dest_must_be_a_directory(tmp_path: Path, sources: list[Path]) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidInputError, match="not a directory"):
        index_tfrecords(tmp_path / "file", sources, FEATURES)


def test_manifest_and_metadata(tmp_path: Path, sources: list[Path]) -> None:
    ds = index_tfrecords(
        tmp_path / "ds", sources, FEATURES, metadata={"from": "tf"}, fsync=False, progress=False
    )
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert manifest["metadata"] == {"from": "tf"}
    assert manifest["created_by"].startswith("shardstore ")
    assert [f["path"] for s in manifest["shards"] for f in s["files"]] == [
        f"v-{ds.manifest.version_id}/{i:06d}.tfrecord" for i in range(3)
    ]
    with pytest.raises(InvalidInputError, match="metadata"):
        index_tfrecords(tmp_path / "x", sources, FEATURES, metadata={"bad": object()})


# -- the command-line syntax ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("image:uint8:64x64x3", ("image", {"dtype": "uint8", "shape": (64, 64, 3)})),
        ("label:int64:scalar", ("label", {"dtype": "int64", "shape": ()})),
        ("v:float32:()", ("v", {"dtype": "float32", "shape": ()})),
        (
            "v:float32:7:float_list",
            ("v", {"dtype": "float32", "shape": (7,), "encoding": "float_list"}),
        ),
        ("v:<f8:2X3", ("v", {"dtype": "<f8", "shape": (2, 3)})),
    ],
)
def test_parse_feature_arg(text: str, expected: tuple[str, dict[str, Any]]) -> None:
    assert parse_feature_arg(text) == expected


@pytest.mark.parametrize(
    "text", ["image", "image:uint8", "a:b:c:d:e", "x:uint8:64x", "x:uint8:-1", "x::3"]
)
def test_parse_feature_arg_rejects(text: str) -> None:
    with pytest.raises(InvalidInputError):
        parse_feature_arg(text)
