"""``shardstore.cli.bench`` (measurement helpers) and the ``shardstore bench`` command."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import shardstore
from shardstore import cli
from shardstore.cli.bench import stream_epochs


@pytest.fixture(scope="module")
def ds(tmp_path_factory: pytest.TempPathFactory) -> shardstore.Dataset:
    x = np.arange(101 * 6, dtype=np.float32).reshape(101, 2, 3)
    return shardstore.write(
        tmp_path_factory.mktemp("b") / "d",
        {"x": x, "y": np.arange(101)},
        records_per_shard=17,
        fsync=False,
    )


@pytest.mark.parametrize("steps", [1, 3, 64])
def test_stream_epochs_counts_every_record_of_every_epoch(
    ds: shardstore.Dataset, steps: int
) -> None:
    tfds = ds.to_tf(10, features=("x", "y"), shuffle=True, seed=1)
    stats = stream_epochs(tfds, record_nbytes=32, epochs=2, steps_per_call=steps, progress=False)
    assert [(s.epoch, s.records, s.batches, s.nbytes) for s in stats] == [
        (1, 101, 11, 101 * 32),
        (2, 101, 11, 101 * 32),
    ]
    for s in stats:
        assert s.seconds >= s.first_batch_s > 0
        assert s.records_per_s == pytest.approx(101 / s.seconds)
        assert s.gb_per_s == pytest.approx(101 * 32 / 1e9 / s.seconds)


def test_stream_epochs_of_dicts_single_records_and_nothing() -> None:
    seven = tf.data.Dataset.range(7).map(lambda i: {"a": tf.fill([3], i)})
    (stats,) = stream_epochs(seven, record_nbytes=8, progress=False)
    assert (stats.records, stats.batches) == (21, 7)  # a bare element counts its first axis
    (empty,) = stream_epochs(seven.take(0), record_nbytes=8, progress=False)
    assert (empty.records, empty.batches, empty.nbytes) == (0, 0, 0)


def test_cli_bench_prints_throughput_and_first_batch(
    ds: shardstore.Dataset, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", str(ds.path), "--batch-size", "16", "--epochs", "2", "--no-progress"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "101 records in 6 shards" in out and "source npy" in out
    assert out.count("records/s") == 3 and out.count("GB/s") == 3  # 2 epochs + best
    assert out.count("time to first batch") == 3
    assert "epoch 2:" in out and "open " in out and "to_tf " in out
    # each figure names the epoch it belongs to: the best epoch's rate, the first one's wait
    summary = out.strip().splitlines()[-1]
    assert re.fullmatch(
        r"best epoch \(epoch [12]\): [\d,]+ records/s, [\d.]+ GB/s; epoch 1's time to first "
        r"batch [\d.]+ s, [\d.]+ s with open and to_tf",
        summary,
    ), summary


@pytest.mark.parametrize(("shuffle", "source"), [("global", "memmap"), ("true", "npy")])
def test_cli_bench_json(
    ds: shardstore.Dataset, capsys: pytest.CaptureFixture[str], shuffle: str, source: str
) -> None:
    argv = [
        "bench",
        str(ds.path),
        "--shuffle",
        shuffle,
        "--features",
        "y",
        "--json",
        "--no-progress",
        "--batch-size",
        "32",
    ]
    assert cli.main(argv) == 0
    got = json.loads(capsys.readouterr().out)
    assert (got["source"], got["features"], got["batch_size"]) == (source, ["y"], 32)
    (epoch,) = got["epochs"]
    assert epoch["records"] == 101 and epoch["gb_per_s"] > 0 and epoch["first_batch_s"] > 0


def test_cli_bench_with_another_source(
    ds: shardstore.Dataset, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["bench", str(ds.path), "--source", "memmap", "--no-progress"]) == 0
    assert "source memmap" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args",
    [
        ["--epochs", "0"],
        ["--batch-size", "0"],
        ["--shuffle", "yes"],
        ["--features", "nope"],
        ["--source", "nope"],
    ],
)
def test_cli_bench_bad_arguments_exit_2(
    ds: shardstore.Dataset, args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["bench", str(ds.path), *args]) == 2
    assert "error" in capsys.readouterr().err


def test_cli_bench_missing_dataset_exit_2(tmp_path: Path) -> None:
    assert cli.main(["bench", str(tmp_path / "nothing")]) == 2
