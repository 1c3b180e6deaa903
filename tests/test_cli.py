"""Tests of the ``shardstore`` command line (``shardstore.cli``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import shardstore
from shardstore import cli
from shardstore.errors import PluginLoadError
from shardstore.reader import Dataset
from shardstore.registry import SourceInfo
from shardstore.sources.base import Source

RECORDS = 50
SHARDS = 4  # ceil(50 / 16)


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


@pytest.fixture
def dataset(tmp_path: Path) -> Dataset:
    return shardstore.write(
        tmp_path / "ds",
        {"x": np.arange(100, dtype=np.float32).reshape(50, 2), "y": np.arange(50)},
        records_per_shard=16,
        fsync=False,
    )


def _damage(ds: Dataset, shard: int = 1, file: int = 0) -> str:
    """Flip one byte near the end (in the data) of a shard file; return its relative path."""
    rel = ds.shards[shard].files[file].path
    target = ds.path / rel
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    return rel


# -- info -------------------------------------------------------------------------------------
def test_info_human(dataset: Dataset, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["info", str(dataset.path)]) == 0
    out = capsys.readouterr().out
    assert str(dataset.path) in out
    assert dataset.manifest.version_id in out
    assert f"records:  {RECORDS}" in out
    assert f"shards:   {SHARDS}" in out
    assert "sources:  npy" in out
    assert f"({dataset.nbytes} bytes)" in out
    assert "KiB" in out
    lines = out.splitlines()
    x_line = next(line for line in lines if line.split()[:1] == ["x"])
    y_line = next(line for line in lines if line.split()[:1] == ["y"])
    assert x_line.split() == ["x", "float32", "(2,)"]
    assert y_line.split() == ["y", "int64", "()"]


def test_info_json(dataset: Dataset, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["info", str(dataset.path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_records"] == RECORDS
    assert info["num_shards"] == SHARDS
    assert info["nbytes"] == dataset.nbytes
    assert info["sources"] == ["npy"]
    assert info["features"] == {
        "x": {"dtype": "<f4", "shape": [2]},
        "y": {"dtype": "<i8", "shape": []},
    }


@pytest.mark.parametrize(
    ("n", "expected"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"), (12_900_000, "12.3 MiB")],
)
def test_human_bytes(n: int, expected: str) -> None:
    assert cli._human_bytes(n) == expected


def test_human_bytes_rounds_up_to_next_unit() -> None:
    assert cli._human_bytes(1024 * 1024 - 1) == "1.0 MiB"


# -- verify -----------------------------------------------------------------------------------
def test_verify_ok(dataset: Dataset, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["verify", "--no-progress", str(dataset.path)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == (
        f"OK: {RECORDS} records, {SHARDS} shards, {cli._human_bytes(dataset.nbytes)} verified"
    )
    assert captured.err == ""


def test_verify_flipped_byte_exits_1_naming_the_file(
    dataset: Dataset, capsys: pytest.CaptureFixture[str]
) -> None:
    rel = _damage(dataset, shard=1)
    assert cli.main(["verify", "--no-progress", str(dataset.path)]) == 1
    captured = capsys.readouterr()
    assert "OK" not in captured.out
    assert rel in captured.err
    assert "shard 1" in captured.err
    assert "checksum" in captured.err
    assert "Traceback" not in captured.err


def test_verify_truncated_file_exits_1(
    dataset: Dataset, capsys: pytest.CaptureFixture[str]
) -> None:
    rel = dataset.shards[2].files[0].path
    target = dataset.path / rel
    target.write_bytes(target.read_bytes()[:-4])
    assert cli.main(["verify", "--no-progress", str(dataset.path)]) == 1
    err = capsys.readouterr().err
    assert rel in err
    assert "bytes" in err


def test_verify_debug_reraises_checksum_error(dataset: Dataset) -> None:
    _damage(dataset)
    with pytest.raises(shardstore.ChecksumError):
        cli.main(["verify", "--no-progress", "--debug", str(dataset.path)])


# -- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["info", "verify"])
def test_no_dataset_exits_2_with_one_line(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main([command, str(empty)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "Traceback" not in captured.err
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("shardstore: error: ")
    assert str(empty) in lines[0]


def test_missing_directory_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope"
    assert cli.main(["info", str(missing), "--json"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("shardstore: error: ")
    assert str(missing) in err


def test_bad_manifest_exits_2(dataset: Dataset, capsys: pytest.CaptureFixture[str]) -> None:
    (dataset.path / "manifest.json").write_text("{not json")
    assert cli.main(["info", str(dataset.path)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert err.startswith("shardstore: error: ")
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [["--debug", "info", "{path}"], ["info", "{path}", "--debug"]],
    ids=["before", "after"],
)
def test_debug_reraises(argv: list[str], tmp_path: Path) -> None:
    path = str(tmp_path / "nope")
    with pytest.raises(shardstore.DatasetNotFoundError):
        cli.main([a.format(path=path) for a in argv])


def test_usage_error_returns_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["verify"]) == 2
    assert "PATH" in capsys.readouterr().err
    assert cli.main([]) == 2


# -- plugins ----------------------------------------------------------------------------------
def test_plugins_lists_npy(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "npy" in out.splitlines()
    assert f"distribution: shardstore {shardstore.__version__}" in out
    assert "target:       shardstore.sources.npy:NpySource" in out
    assert "tf_native=yes" in out


def test_plugins_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plugins", "--json"]) == 0
    plugins = json.loads(capsys.readouterr().out)
    npy = plugins["npy"]
    assert npy["distribution"] == "shardstore"
    assert npy["target"] == "shardstore.sources.npy:NpySource"
    assert npy["capabilities"]["tf_native"] is True
    assert set(npy["capabilities"]) == {"tf_native", "random_access", "supports_ragged"}
    assert npy["error"] is None


def test_plugins_broken_plugin_is_listed_with_its_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = SourceInfo("broken", "brokenpkg:BrokenSource", "brokenpkg", "9.9")
    real_sources = dict(shardstore.available_sources())
    real_get_source = shardstore.get_source

    def fake_get_source(name: str) -> Source:
        if name == "broken":
            raise PluginLoadError("source plugin 'broken' failed to import: boom")
        return real_get_source(name)

    monkeypatch.setattr(cli, "available_sources", lambda: {**real_sources, "broken": broken})
    monkeypatch.setattr(cli, "get_source", fake_get_source)

    assert cli.main(["plugins"]) == 0
    captured = capsys.readouterr()
    assert "broken" in captured.out
    assert "error:        source plugin 'broken' failed to import: boom" in captured.out
    assert "distribution: brokenpkg 9.9" in captured.out
    assert "tf_native=yes" in captured.out  # npy still listed with its capabilities
    assert "1 source failed to load" in captured.err

    assert cli.main(["plugins", "--json"]) == 0
    plugins = json.loads(capsys.readouterr().out)
    assert plugins["broken"]["capabilities"] is None
    assert "boom" in plugins["broken"]["error"]
    assert plugins["npy"]["capabilities"]["tf_native"] is True


# -- version and entry points -----------------------------------------------------------------
def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"shardstore {shardstore.__version__}"


def test_python_dash_m(dataset: Dataset) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "shardstore", "info", str(dataset.path)],
        capture_output=True,
        text=True,
        env=_subprocess_env(),
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"records:  {RECORDS}" in result.stdout
    assert "float32" in result.stdout


def test_python_dash_m_error_exit_code(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "shardstore", "verify", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        env=_subprocess_env(),
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("shardstore: error: ")
    assert "Traceback" not in result.stderr


def test_cli_does_not_import_tensorflow(dataset: Dataset) -> None:
    code = (
        "import sys\n"
        "from shardstore.cli import main\n"
        f"path = {str(dataset.path)!r}\n"
        "rcs = [main(['info', path]), main(['verify', '--no-progress', path]),"
        " main(['plugins'])]\n"
        "assert rcs == [0, 0, 0], rcs\n"
        "print('TF_IMPORTED' if 'tensorflow' in sys.modules else 'TF_NOT_IMPORTED')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=_subprocess_env(),
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "TF_NOT_IMPORTED"
