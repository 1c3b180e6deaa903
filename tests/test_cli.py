"""Tests of the ``shardstore`` command line (``shardstore.cli``)."""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import shardstore
from shardstore import cli
from shardstore.cli import app as cli_app
from shardstore.cli import inspection as cli_inspection
from shardstore.cli import output as cli_output
from shardstore.cli.output import _human_bytes as human_bytes
from shardstore.errors import PluginLoadError
from shardstore.reading.reader import Dataset
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
def _info_rows(out: str) -> dict[str, str]:
    """``label -> value`` of the ``label:  value`` lines of ``info``."""
    rows = {}
    for line in out.splitlines():
        label, sep, value = line.partition(":")
        if sep and not line.startswith(" "):
            rows[label] = value.strip()
    return rows


def test_info_human(dataset: Dataset, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["info", str(dataset.path)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    rows = _info_rows(captured.out)
    assert rows["path"] == str(dataset.path)
    assert rows["version"] == f"{dataset.manifest.version_id} (format v1)"
    assert rows["records"] == str(RECORDS)
    sizes = [s.nbytes for s in dataset.shards]
    assert rows["shards"] == (
        f"{SHARDS} (2 to 16 records each; {human_bytes(min(sizes))} to "
        f"{human_bytes(max(sizes))}, mean {human_bytes(round(sum(sizes) / SHARDS))})"
    )
    assert rows["on disk"] == (
        f"{human_bytes(dataset.nbytes)} ({dataset.nbytes} bytes) in {2 * SHARDS} files"
    )
    decoded = RECORDS * (8 + 8)  # x: 2 float32, y: 1 int64
    ratio = decoded / dataset.nbytes
    assert rows["decoded"] == (
        f"{human_bytes(decoded)}; compression ratio {ratio:.2f} (decoded/on disk)"
    )
    assert rows["sources"] == "npy"
    assert rows["checksums"].startswith("xxh3_64 per file and per block; sizes OK")
    assert rows["features"] == "2"
    lines = captured.out.splitlines()
    x_line = next(line for line in lines if line.split()[:1] == ["x"])
    y_line = next(line for line in lines if line.split()[:1] == ["y"])
    assert x_line.split() == ["x", "float32", "(2,)", "8", "B", "per", "record"]
    assert y_line.split() == ["y", "int64", "()", "8", "B", "per", "record"]
    assert "metadata" not in rows


def test_info_shows_metadata_and_equal_shards(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ds = shardstore.write(
        tmp_path / "d", {"v": np.zeros((32, 3), np.uint8)}, records_per_shard=8,
        metadata={"split": "train", "origin": "test"}, fsync=False,
    )  # fmt: skip
    assert cli.main(["info", str(ds.path)]) == 0
    rows = _info_rows(capsys.readouterr().out)
    assert rows["metadata"] == "origin, split"
    assert rows["shards"].startswith("4 (8 records each; ")


def test_info_shows_ragged_length_statistics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tokens = [np.arange(n, dtype=np.int32) for n in (2, 0, 7, 3)]
    ds = shardstore.write(tmp_path / "d", {"tok": tokens}, fsync=False)
    assert cli.main(["info", str(ds.path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"tok\s+int32\s+\(None,\)\s+ragged: lengths 0 to 7, mean 3\.0", out)
    assert _info_rows(out)["decoded"].startswith("48 B")  # 12 int32 values


def test_info_compression_ratio_of_a_compressed_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    zeros = np.zeros((64, 32, 32), np.float32)  # 256 KiB decoded, compresses to almost nothing
    ds = shardstore.write(tmp_path / "z", {"img": zeros}, format="zarr", fsync=False)
    assert cli.main(["info", str(ds.path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["decoded_nbytes"] == zeros.nbytes
    assert info["compression_ratio"] == pytest.approx(zeros.nbytes / ds.nbytes)
    assert info["compression_ratio"] > 10
    assert cli.main(["info", str(ds.path)]) == 0
    ratio = _info_rows(capsys.readouterr().out)["decoded"].split("compression ratio ")[1]
    assert float(ratio.split()[0]) == round(zeros.nbytes / ds.nbytes, 2)


def test_info_json(dataset: Dataset, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["info", str(dataset.path), "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    info = json.loads(captured.out)  # stdout is JSON and nothing else
    assert info["num_records"] == RECORDS
    assert info["num_shards"] == SHARDS
    assert info["nbytes"] == dataset.nbytes
    assert info["sources"] == ["npy"]
    assert info["features"] == {
        "x": {"dtype": "<f4", "shape": [2], "record_nbytes": 8},
        "y": {"dtype": "<i8", "shape": [], "record_nbytes": 8},
    }
    assert info["num_files"] == 2 * SHARDS
    assert info["decoded_nbytes"] == RECORDS * 16
    assert info["compression_ratio"] == pytest.approx(RECORDS * 16 / dataset.nbytes)
    assert info["shard_records"] == {"min": 2, "max": 16, "mean": RECORDS / SHARDS}
    sizes = [s.nbytes for s in dataset.shards]
    assert info["shard_nbytes"] == {"min": min(sizes), "max": max(sizes), "mean": sum(sizes) / 4}
    assert info["checksums"] == {
        "algorithm": "xxh3_64",
        "files": 2 * SHARDS,
        "block_indexes": SHARDS,
        "state": "sizes-ok",
        "error": None,
        "damaged": [],
    }
    assert "plot" not in info


def test_info_of_an_empty_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ds = shardstore.write(tmp_path / "e", {"x": np.zeros((0, 3), np.float32)}, fsync=False)
    png = tmp_path / "e.png"
    assert cli.main(["info", str(ds.path), "--plot", str(png)]) == 0
    rows = _info_rows(capsys.readouterr().out)
    assert (rows["records"], rows["shards"], rows["sources"]) == ("0", "0", "-")
    assert rows["on disk"] == "0 B (0 bytes) in 0 files"
    assert "decoded" not in rows  # no ratio of nothing to nothing
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert cli.main(["info", str(ds.path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["shard_records"] == {"min": None, "max": None, "mean": None}
    assert info["compression_ratio"] is None


@pytest.mark.parametrize("damage", ["truncate", "delete"])
@pytest.mark.parametrize("as_json", [False, True], ids=["human", "json"])
def test_info_reports_a_damaged_dataset_and_exits_1(
    dataset: Dataset, damage: str, as_json: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    rel = dataset.shards[2].files[1].path
    target = dataset.path / rel
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:-3])
    else:
        target.unlink()
    assert cli.main(["info", str(dataset.path), *(["--json"] if as_json else [])]) == 1
    captured = capsys.readouterr()
    err_lines = captured.err.splitlines()
    assert len(err_lines) == 1
    assert err_lines[0].startswith("shardstore: info: dataset is DAMAGED: ")
    assert rel in err_lines[0]
    assert "shard 2" in err_lines[0]
    if as_json:
        checks = json.loads(captured.out)["checksums"]
        assert checks["state"] == "damaged"
        assert rel in checks["error"]
    else:
        rows = _info_rows(captured.out)
        assert rows["records"] == str(RECORDS)  # the summary is still printed
        assert "DAMAGED" in rows["checksums"]
        assert rel in rows["checksums"]


def test_info_plot_writes_a_png(
    dataset: Dataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "shards.png"
    assert cli.main(["info", str(dataset.path), "--plot", str(png)]) == 0
    assert _info_rows(capsys.readouterr().out)["plot"] == str(png)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (880, 550)  # 8x5 inches at 110 dpi
    png.unlink()
    assert cli.main(["info", str(dataset.path), "--json", "--plot", str(png)]) == 0
    assert json.loads(capsys.readouterr().out)["plot"] == str(png)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_info_plot_without_matplotlib_is_one_clear_line(
    dataset: Dataset,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # None in sys.modules makes `import matplotlib...` raise ImportError, as if not installed.
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    png = tmp_path / "shards.png"
    assert cli.main(["info", str(dataset.path), "--plot", str(png)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("shardstore: error: plotting needs matplotlib")
    assert "pip install 'shardstore[plot]'" in lines[0]
    assert not png.exists()
    with pytest.raises(shardstore.MissingDependencyError):
        cli.main(["info", str(dataset.path), "--plot", str(png), "--debug"])


@pytest.mark.parametrize(
    ("n", "expected"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"), (12_900_000, "12.3 MiB")],
)
def test_human_bytes(n: int, expected: str) -> None:
    assert human_bytes(n) == expected


def test_human_bytes_rounds_up_to_next_unit() -> None:
    assert human_bytes(1024 * 1024 - 1) == "1.0 MiB"


# -- verify -----------------------------------------------------------------------------------
def test_verify_ok(dataset: Dataset, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["verify", "--no-progress", str(dataset.path)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == (
        f"OK: {RECORDS} records, {SHARDS} shards, {human_bytes(dataset.nbytes)} verified"
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


def test_unexpected_error_is_one_line_with_a_hint(
    dataset: Dataset, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(args: object) -> int:
        raise RuntimeError("something\nunexpected")

    monkeypatch.setattr(cli_app, "_cmd_info", broken)  # bound when the parser is built
    assert cli.main(["info", str(dataset.path)]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "shardstore: error: RuntimeError: something unexpected (run with --debug for the traceback)"
    ]
    with pytest.raises(RuntimeError, match="unexpected"):
        cli.main(["info", str(dataset.path), "--debug"])


# -- help -------------------------------------------------------------------------------------
def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli_app._build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in _subcommands():
        assert re.search(rf"^    {name}\s+\S", out, re.M), f"{name} missing from --help"
    assert "global options:" in out
    assert "Exit status: 0 on success, 1 when a file of the dataset is damaged" in " ".join(
        out.split()
    )


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_every_command_help_reads_well(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "88")
    assert cli.main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: shardstore {command} ")
    assert all(len(line) <= 88 for line in out.splitlines()), out
    sub = _subcommands()[command]
    assert sub.description, f"{command} has no description"
    assert "global options:" in out  # -v/--debug grouped apart from the command's own options
    assert "\nexamples:\n  shardstore " + command in out
    for action in sub._actions:
        if action.option_strings and action.help is not argparse.SUPPRESS:
            assert action.help, f"{command} {action.option_strings} has no help"
        if not action.option_strings and action.dest != "help":
            assert action.help, f"{command} {action.dest} has no help"
            assert action.metavar, f"{command} {action.dest} has no METAVAR"


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
    # what an npy dataset gets: ds[i] and shuffle="global" through memmap
    assert npy["capabilities"]["random_access"] is True
    assert npy["via"] == {"random_access": "memmap"}
    assert plugins["tfrecord"]["capabilities"]["random_access"] is False
    assert plugins["tfrecord"]["via"] == {}


def test_plugins_says_what_a_dataset_of_each_format_gets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["plugins"]) == 0
    lines = capsys.readouterr().out.splitlines()

    def capabilities(name: str) -> str:
        return lines[lines.index(name) + 3]

    assert capabilities("npy") == (
        "  capabilities: tf_native=yes, random_access=yes (via memmap), supports_ragged=yes"
    )
    assert capabilities("tfrecord") == (
        "  capabilities: tf_native=yes, random_access=no, supports_ragged=no"
    )
    assert capabilities("memmap") == (
        "  capabilities: tf_native=no, random_access=yes, supports_ragged=yes"
    )
    # and it is true: an npy dataset answers ds[i] and reads with shuffle="global"
    ds = shardstore.write(tmp_path / "d", {"x": np.arange(6)}, fsync=False)
    assert ds.source.name == "npy"
    assert int(ds[4]["x"]) == 4
    assert ds.source_for("random_access").name == "memmap"


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

    monkeypatch.setattr(
        cli_inspection, "available_sources", lambda: {**real_sources, "broken": broken}
    )
    monkeypatch.setattr(cli_inspection, "get_source", fake_get_source)

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
    assert _info_rows(result.stdout)["records"] == str(RECORDS)
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


# -- messages in the command line's words ---------------------------------------------------
def _err(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().err.strip()


def test_existing_destination_names_the_overwrite_option(
    dataset: Dataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dst = tmp_path / "copy"
    src = str(dataset.path)
    assert cli.main(["convert", src, str(dst), "--format", "npy"]) == 0
    capsys.readouterr()
    expected = (
        f"shardstore: error: a dataset already exists at {dst}; pass --overwrite to replace it"
    )
    assert cli.main(["convert", src, str(dst), "--format", "npy"]) == 2
    assert _err(capsys) == expected
    assert cli.main(["merge", src, str(dst)]) == 2
    assert _err(capsys) == expected
    np.save(tmp_path / "a.npy", np.zeros((3, 2)))
    assert cli.main(["ingest", str(tmp_path / "a.npy"), str(dst)]) == 2
    assert _err(capsys) == expected
    # the library keeps its own spelling
    with pytest.raises(shardstore.DatasetExistsError, match="pass overwrite=True to replace it"):
        shardstore.convert(src, dst, format="npy")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["gc", "{ds}", "--grace", "-1"], "--grace must be a number of seconds >= 0, got -1.0"),
        (
            ["convert", "{ds}", "{tmp}/o", "--format", "npy", "--shard-size", "12XB"],
            "--shard-size '12XB' is not a size; use bytes or a string like '64MiB'",
        ),
        (
            ["convert", "{ds}", "{tmp}/o", "--format", "npy", "--shard-size", "0"],
            "--shard-size must be > 0 bytes, got '0'",
        ),
        (
            ["convert", "{ds}", "{tmp}/o", "--format", "npy", "--records-per-shard", "0"],
            "--records-per-shard must be a positive integer, got 0",
        ),
        (
            ["convert", "{ds}", "{tmp}/o", "--format", "zarr", "-o", "chunk_records=0"],
            "-o chunk_records must be a positive integer, got 0",
        ),
        (
            ["ingest", "{tmp}/a.npy", "{tmp}/o", "--member", "q"],
            "--member applies to an .npz or a Zarr group, not to one .npy",
        ),
        (
            ["ingest", "{tmp}/a.npy", "{tmp}/o", "--labels", "l.csv"],
            "--labels and --label-from apply to --kind files, not --kind npy",
        ),
        (
            ["ingest", "{tmp}/a.npy", "{tmp}/a.npy", "{tmp}/o", "--kind", "npy"],
            "--kind npy reads one path, got 2",
        ),
        (
            ["ingest", "{tmp}/a.bin", "{tmp}/o"],
            "cannot tell what '{tmp}/a.bin' is; give --kind (one of files, npy, npz, zarr)",
        ),
        (
            ["ingest", "{tmp}/files", "{tmp}/o"],
            "'b.npy' holds Python objects (dtype object); decoding them would run code stored in "
            "the file, which shardstore never does (--on-error skip ingests the other files)",
        ),
    ],
    ids=lambda v: v[0] if isinstance(v, list) else None,
)
def test_errors_name_the_command_line_options(
    argv: list[str],
    expected: str,
    dataset: Dataset,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    np.save(tmp_path / "a.npy", np.zeros((3, 2)))
    (tmp_path / "a.bin").write_bytes(b"x")
    (tmp_path / "files").mkdir()
    np.save(tmp_path / "files" / "a.npy", np.zeros(2))
    np.save(tmp_path / "files" / "b.npy", np.zeros(2, dtype=object), allow_pickle=True)
    args = [a.format(ds=dataset.path, tmp=tmp_path) for a in argv]
    assert cli.main(args) == 2
    assert _err(capsys) == "shardstore: error: " + expected.format(tmp=tmp_path)


def test_shuffle_global_on_tfrecord_says_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "t"
    shardstore.write(path, {"x": np.arange(10)}, format="tfrecord", fsync=False)
    assert cli.main(["bench", str(path), "--shuffle", "global"]) == 2
    assert _err(capsys) == (
        "shardstore: error: --shuffle global reads records by index (random_access), which the "
        f"'tfrecord' source of dataset '{path}' does not support. Use --shuffle true (blocks "
        "of records in a random order, mixed in a window), or convert the dataset once to a "
        f"format that does: `shardstore convert {path} DEST --format npy` "
        "(`shardstore.convert(src, dest, format='npy')` in Python)"
    )


def test_cli_words_respells_settings_and_bare_names() -> None:
    parser = cli_app._build_parser()
    ingest = cli_app._subcommand(parser, "ingest")
    merge = cli_app._subcommand(parser, "merge")
    assert cli_app._cli_words(
        "discarding the interrupted ingest in /x (resume=False)", ("resume",), ingest
    ) == ("discarding the interrupted ingest in /x (--no-resume)")
    assert (
        cli_app._cli_words("use link='copy' or link='auto'", ("link",), merge)
        == "use --link copy or --link auto"
    )
    assert cli_app._cli_words("give labels or label_from", ("labels", "label_from"), ingest) == (
        "give --labels or --label-from"
    )
    # a name that is no option of the command stays as it is
    assert cli_app._cli_words("pass grace=0", ("grace",), merge) == "pass grace=0"


def _params_of(call: ast.Call, module: ast.Module) -> set[str]:
    """The names in ``params=`` of an error constructor call (literal or module constant)."""
    for kw in call.keywords:
        if kw.arg != "params":
            continue
        value = kw.value
        if isinstance(value, ast.Name):  # a module-level tuple
            name = value.id
            for node in module.body:
                if isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == name for t in node.targets
                ):
                    value = node.value
        if isinstance(value, ast.Tuple | ast.List):
            return {e.value for e in value.elts if isinstance(e, ast.Constant)}
        return {"*"}  # computed: trust it
    return set()


def test_every_library_message_naming_an_option_carries_its_params() -> None:
    """A raise whose message spells ``name=...`` (or a bare ``snake_case`` name) of a command
    line option must list it in ``params=``, so that the command line can respell it."""
    parser = cli_app._build_parser()
    names: set[str] = set(cli_app._OPTION_ALIASES)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                names |= {a.dest for a in command._actions if a.option_strings}
    names -= {"help", "verbose", "debug", "json", "func"}
    names |= {"chunk_records", "compression", "compression_level"}  # -o source options
    missing = []
    package = Path(shardstore.__file__).parent
    for path in sorted(package.rglob("*.py")):
        if "testing" in path.parts or (
            "cli" in path.parts and path.stem not in {"bench", "demo", "plot", "summary"}
        ):
            continue
        module = ast.parse(path.read_text())
        for node in ast.walk(module):
            if not (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)):
                continue
            call = node.exc
            text = "".join(
                n.value
                for n in ast.walk(call)
                if isinstance(n, ast.Constant) and isinstance(n.value, str)
            )
            named = {n for n in names if re.search(rf"(?<![\w.-]){n}=", text)}
            named |= {n for n in names if "_" in n and re.search(rf"(?<![\w.-]){n}\b", text)}
            params = _params_of(call, module)
            if named - params and "*" not in params:
                missing.append(f"{path.name}:{node.lineno}: {sorted(named - params)}: {text!r}")
    assert not missing, "\n".join(missing)


def test_manifest_errors_name_the_file(
    dataset: Dataset, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = dataset.path / "manifest.json"
    manifest.write_text("{not json")
    assert cli.main(["info", str(dataset.path)]) == 2
    assert _err(capsys).startswith(
        f"shardstore: error: {manifest}: manifest is not valid JSON: Expecting property name"
    )
    manifest.write_text(json.dumps({"format": "other"}))
    with pytest.raises(shardstore.ManifestError) as info:
        shardstore.open(dataset.path)
    assert str(info.value) == f"{manifest}: manifest.format: expected 'shardstore', got 'other'"


# -- a closed stdout ----------------------------------------------------------------------
def test_closed_stdout_exits_quietly(dataset: Dataset) -> None:
    """``shardstore info x | head -1``: the reader goes away; exit like a Unix tool, silently."""
    for command in (["info", str(dataset.path)], ["plugins"]):
        proc = subprocess.Popen(
            [sys.executable, "-m", "shardstore", *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_subprocess_env(),
        )
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # before the child writes anything: its first write fails
        try:
            err = proc.stderr.read().decode()
            rc = proc.wait(timeout=120)
        finally:
            proc.kill()
        assert rc == cli_output.EXIT_PIPE_CLOSED, err
        assert err == ""


def test_another_broken_pipe_is_still_an_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(args: argparse.Namespace) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli_app, "_cmd_plugins", broken)
    assert cli.main(["plugins"]) == 2
    assert _err(capsys) == "shardstore: error: [Errno 32] Broken pipe"


# -- TensorFlow's own logging ---------------------------------------------------------------
def test_commands_that_import_tensorflow_keep_its_logging_quiet(tmp_path: Path) -> None:
    """oneDNN notices, 'could not find cuda drivers', a failed cuInit: not on a user's terminal.

    Fresh processes with nothing set in the environment, as a user runs them.
    """
    src = shardstore.write(
        tmp_path / "t", {"x": np.arange(40)}, format="tfrecord", records_per_shard=16, fsync=False
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    for argv in (
        ["bench", str(src.path), "--no-progress"],
        ["convert", str(src.path), str(tmp_path / "n"), "--format", "npy", "--no-progress"],
    ):
        result = subprocess.run(
            [sys.executable, "-m", "shardstore", *argv],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stderr == "", result.stderr
    assert shardstore.open(tmp_path / "n").num_records == 40


def test_quiet_tensorflow_is_undone_after_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")
    finders = list(sys.meta_path)
    with cli_app._quiet_tensorflow(True):
        assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "1" and sys.meta_path == finders
    with cli_app._quiet_tensorflow(False):  # --debug: TensorFlow speaks as it likes
        assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "1"
