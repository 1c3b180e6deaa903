"""The end-to-end demo (`make demo` runs `shardstore demo`), in a small size."""

from __future__ import annotations

from pathlib import Path

import pytest

import shardstore
from shardstore.cli import main
from shardstore.cli.demo import run_demo


def test_demo_cli_reports_every_stage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "images"
    assert main(["demo", "--out", str(out), "--records", "160", "--batch-size", "32"]) == 0
    text = capsys.readouterr().out
    assert "wrote 160 records" in text
    assert "verify: every checksum matches" in text
    assert text.count("x floor") == 3  # the floor and both to_tf rows, same run
    assert "1 epoch:" in text and "accuracy" in text
    ds = shardstore.open(out)
    assert (ds.num_records, dict(ds.metadata)) == (160, {"classes": 4})


def test_run_demo_returns_measurements_and_reports_through_the_callable(tmp_path: Path) -> None:
    lines: list[str] = []
    results = run_demo(tmp_path / "d", records=64, batch_size=16, train=False,
                       report=lines.append)  # fmt: skip
    assert set(results) == {"write_s", "floor_s", "ordered_s", "shuffled_s"}
    assert all(v > 0 for v in results.values())
    assert any("to_tf, shuffle=True" in line for line in lines)
