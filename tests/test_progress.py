"""Progress bars: shown on a terminal, silent in logs and CI, forced on or off on request."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import shardstore
from shardstore.cli import main
from shardstore.reading.reader import Dataset
from shardstore.storage.progress import progress_bar


@pytest.fixture
def dataset(tmp_path: Path) -> Dataset:
    return shardstore.write(
        tmp_path / "ds",
        {"x": np.arange(200, dtype=np.float32).reshape(100, 2), "y": np.arange(100)},
        records_per_shard=30,
        fsync=False,
    )


def _bar_lines(err: str, desc: str) -> list[str]:
    return [part for part in err.replace("\r", "\n").splitlines() if part.startswith(f"{desc}:")]


@pytest.mark.parametrize(("enabled", "shown"), [(None, False), (False, False), (True, True)])
def test_progress_bar(
    enabled: bool | None, shown: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    # Under pytest, stderr is not a terminal: the default (None) stays silent.
    with progress_bar(total=2_500_000, desc="work", unit="B", enabled=enabled) as bar:
        bar.update(2_500_000)
    err = capsys.readouterr().err
    if shown:
        assert "100%" in _bar_lines(err, "work")[-1]
        assert "2.50M/2.50M" in err  # decimal units, as labelled: MB = 10^6 bytes
    else:
        assert err == ""


def test_every_long_operation_reports_through_the_same_bar(
    dataset: Dataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset.verify(progress=True)
    assert "100%" in _bar_lines(capsys.readouterr().err, "verify")[-1]
    shardstore.write(tmp_path / "w", {"x": np.zeros((10, 2))}, progress=True, fsync=False)
    assert "10.0/10.0" in _bar_lines(capsys.readouterr().err, "write")[-1]
    tfr = shardstore.convert(dataset.path, tmp_path / "t", format="tfrecord", progress=True)
    assert "100/100" in _bar_lines(capsys.readouterr().err, "write")[-1]
    files = [str(tfr.path / s.files[0].path) for s in tfr.shards]
    shardstore.index_tfrecords(
        tmp_path / "i",
        files,
        {"x": ("float32", (2,)), "y": ("int64", ())},
        progress=True,
        fsync=False,
    )
    assert "100%" in _bar_lines(capsys.readouterr().err, "ingest")[-1]
    # and the defaults are silent where nobody watches
    dataset.verify()
    shardstore.convert(dataset.path, tmp_path / "n", format="npy")
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("command", ["verify", "convert"])
def test_cli_progress_flags(
    command: str, dataset: Dataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = [str(tmp_path / "out"), "--format", "npy"] if command == "convert" else []
    desc = "write" if command == "convert" else "verify"
    assert main([command, str(dataset.path), *extra, "--progress"]) == 0
    assert "100%" in _bar_lines(capsys.readouterr().err, desc)[-1]
    extra = [str(tmp_path / "out2"), "--format", "npy"] if command == "convert" else []
    assert main([command, str(dataset.path), *extra]) == 0  # not a terminal: silent
    assert capsys.readouterr().err == ""


def _run_on_a_terminal(args: list[str]) -> tuple[int, str, str]:
    """Run ``python -m shardstore ARGS`` with stderr on a pseudo-terminal (size 0x0)."""
    master, slave = os.openpty()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "shardstore", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave,
        env=env,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    return proc.wait(timeout=120), out, b"".join(chunks).decode("utf-8", "replace")


def test_bars_show_on_a_terminal_by_default(dataset: Dataset) -> None:
    status, out, err = _run_on_a_terminal(["verify", str(dataset.path)])
    assert status == 0
    assert out.startswith("OK: 100 records")
    lines = _bar_lines(err, "verify")
    assert lines and "100%" in lines[-1]
    status, out, err = _run_on_a_terminal(["verify", "--no-progress", str(dataset.path)])
    assert status == 0
    assert _bar_lines(err, "verify") == []
