"""``shardstore ingest --tfrecord FILES... DEST``: adopt TFRecord files from the command line."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import shardstore
from shardstore.cli import main
from shardstore.testing import assert_bitwise_equal, collect

N = 12


@pytest.fixture
def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        "image": rng.integers(0, 256, (N, 4, 4, 3), dtype=np.uint8),
        "label": rng.integers(0, 10, N).astype(np.int64),
    }


@pytest.fixture
def files(tmp_path: Path, data: dict[str, np.ndarray]) -> list[str]:
    """Two TFRecord files: raw image bytes and an int64_list label, as tutorials write them."""
    out = []
    for j, (lo, hi) in enumerate([(0, 5), (5, N)]):
        path = tmp_path / f"part-{j}.tfrecord"
        with tf.io.TFRecordWriter(str(path)) as w:
            for i in range(lo, hi):
                feature = {
                    "image": tf.train.Feature(
                        bytes_list=tf.train.BytesList(value=[data["image"][i].tobytes()])
                    ),
                    "label": tf.train.Feature(
                        int64_list=tf.train.Int64List(value=[int(data["label"][i])])
                    ),
                }
                example = tf.train.Example(features=tf.train.Features(feature=feature))
                w.write(example.SerializeToString())
        out.append(str(path))
    return out


FEATURES = ["--feature", "image:uint8:4x4x3", "--feature", "label:int64:scalar:int64_list"]


def test_ingest_builds_a_readable_dataset(
    tmp_path: Path,
    files: list[str],
    data: dict[str, np.ndarray],
    capsys: pytest.CaptureFixture[str],
) -> None:
    dest = tmp_path / "ds"
    assert main(["ingest", "--tfrecord", *files, str(dest), *FEATURES, "--no-progress"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.count("\n") == 0  # one line
    assert out.startswith(f"ingested 2 TFRecord files into {dest}: 12 records, ")
    assert out.endswith("2 features (2 hard-linked, 0 copied)")
    ds = shardstore.open(dest)
    assert [s.num_records for s in ds.shards] == [5, 7]
    got = collect(ds.to_tf(batch_size=5))
    assert_bitwise_equal(got["image"], data["image"])
    assert_bitwise_equal(got["label"], data["label"])
    assert main(["verify", str(dest), "--no-progress"]) == 0


def test_ingest_copy(tmp_path: Path, files: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "ds"
    assert main(["ingest", "--tfrecord", *files, str(dest), *FEATURES, "--link", "copy"]) == 0
    assert "(0 hard-linked, 2 copied)" in capsys.readouterr().out
    ds = shardstore.open(dest)
    for src, shard in zip(files, ds.shards, strict=True):
        assert not os.path.samefile(src, dest / shard.files[0].path)


def test_ingest_refuses_an_existing_dataset_unless_overwrite(
    tmp_path: Path, files: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    dest = str(tmp_path / "ds")
    assert main(["ingest", "--tfrecord", files[0], dest, *FEATURES]) == 0
    assert main(["ingest", "--tfrecord", *files, dest, *FEATURES]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["ingest", "--tfrecord", *files, dest, *FEATURES, "--overwrite"]) == 0
    assert shardstore.open(dest).num_records == N


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--feature", "image:uint8"], "NAME:DTYPE:SHAPE"),
        (["--feature", "image:uint8:4by4"], "bad shape"),
        (["--feature", "image:uint8:4x4x3", "--feature", "image:uint8:48"], "declared twice"),
        (["--feature", "image:text:4x4x3"], "not a dtype"),
        (["--feature", "label:float32:scalar:int64_list"], "int64_list"),
        (["--feature", "label:int64:scalar"], "stores it as int64_list"),
        (["--feature", "image:uint8:4x4x4"], "holds 48 bytes"),
    ],
)
def test_ingest_reports_bad_features(
    tmp_path: Path,
    files: list[str],
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    dest = tmp_path / "ds"
    assert main(["ingest", "--tfrecord", *files, str(dest), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("shardstore: error: ")
    assert message in err
    assert err.count("\n") == 1
    assert not dest.exists()


def test_ingest_reports_a_missing_file(
    tmp_path: Path, files: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "nope.tfrecord")
    assert main(["ingest", "--tfrecord", files[0], missing, str(tmp_path / "ds"), *FEATURES]) == 2
    assert "nope.tfrecord" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["ingest", "--tfrecord", "--feature", "x:int64:scalar"],  # no paths
        ["ingest", "--tfrecord", "DEST"],  # no input
        ["ingest", "a.tfrecord", "D", "--feature", "x:int64:scalar", "--link", "soft"],
        ["ingest", "a.npy", "D", "--kind", "csv"],
        ["ingest", "a.npy", "D", "--on-error", "ignore"],
    ],
)
def test_ingest_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "usage:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ingest", "--tfrecord", "f.tfrecord", "DEST"], "need --feature"),
        (["ingest", "a.tfrecord", "DEST"], "need --feature"),  # detected from the suffix
        (["ingest", "x.npy", "DEST", "--link", "copy"], "TFRecord files only"),
        (["ingest", "x.npy", "DEST", "--feature", "image:uint8:4"], "are for --tfrecord"),
    ],
)
def test_ingest_argument_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("shardstore: error: ")
    assert message in err


def test_ingest_old_argument_order_still_works(
    tmp_path: Path, files: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """``ingest --tfrecord DEST FILES...`` (before SRC... DEST) keeps working, with a note."""
    dest = tmp_path / "ds"
    assert main(["ingest", "--tfrecord", str(dest), *files, *FEATURES]) == 0
    captured = capsys.readouterr()
    assert "old argument order" in captured.err
    assert captured.out.startswith(f"ingested 2 TFRecord files into {dest}")
    assert shardstore.open(dest).num_records == N


def test_ingest_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ingest", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--tfrecord" in out
    assert "NAME:DTYPE:SHAPE[:ENCODING]" in out
    # the real usage: inputs, then one destination
    assert re.search(r"^\s+SRC \[SRC \.\.\.\] DEST$", out, re.MULTILINE), out
    assert "SRC... DEST" not in out and "[SRC... DEST ...]" not in out
    assert "--on-error" in out
