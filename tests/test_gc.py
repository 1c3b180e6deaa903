"""Garbage collection: ``shardstore.gc`` and ``shardstore gc PATH``.

What crashed writes leave is removed at once; superseded versions after the
grace period; the current version, running writers' files and anything gc
does not recognise, never.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import shardstore
from shardstore import cli
from shardstore.errors import DamagedNotADirectoryError, InvalidInputError, UnsafeLinkError
from shardstore.storage.commit import Transaction, manifest_state
from shardstore.testing import assert_bitwise_equal


def arrays(seed: int) -> dict[str, np.ndarray]:
    return {"x": np.full((6, 2), seed, np.int16)}


def crashed_write(path: Path) -> str:
    """What a writer killed mid-write leaves: a staging dir, a stale lock, a temp manifest."""
    base = manifest_state(path)
    txn = Transaction(path, "dead0000beef0000", overwrite=True, fsync=False, base=base)
    txn.begin(collect_garbage=False)
    (txn.staged / "000000.x.npy").write_bytes(b"half a shard")
    (path / ".shardstore" / f"manifest-{txn.version_id}.tmp").write_text("{")
    txn._writer_lock.release()  # the process died: the kernel drops its lock, the file stays
    return txn.version_id


def test_crash_leftovers_go_at_once_superseded_versions_after_grace(tmp_path: Path) -> None:
    path = tmp_path / "d"
    v1 = shardstore.write(path, arrays(1))
    shardstore.write(path, arrays(2), overwrite=True)
    dead = crashed_write(path)
    (path / "unrelated.txt").write_text("not ours")
    (path / "v-notahexid").mkdir()
    report = shardstore.gc(path)
    assert report.removed == sorted([
        f".shardstore/manifest-{dead}.tmp",
        f".shardstore/staging/v-{dead}",
    ])  # fmt: skip
    assert [name for name, _ in report.kept_retired] == [f"v-{v1.manifest.version_id}"]
    assert not (path / ".shardstore" / "writers" / f"{dead}.lock").exists()
    report = shardstore.gc(path, grace=0)
    assert report.removed == [
        f".shardstore/retired/v-{v1.manifest.version_id}",
        f"v-{v1.manifest.version_id}",
    ]
    current = shardstore.open(path)
    assert sorted(os.listdir(path)) == sorted(
        ["manifest.json", f"v-{current.manifest.version_id}", "unrelated.txt", "v-notahexid"]
    )
    assert_bitwise_equal(current[:]["x"], arrays(2)["x"])


def test_a_dir_of_unknown_origin_gets_the_grace_period(tmp_path: Path) -> None:
    path = tmp_path / "d"
    shardstore.write(path, arrays(1))
    (path / "v-0123456789abcdef").mkdir()  # e.g. left by an older shardstore
    report = shardstore.gc(path)
    assert report.removed == [] and report.kept_retired[0][0] == "v-0123456789abcdef"
    assert (path / ".shardstore" / "retired" / "v-0123456789abcdef").exists()
    assert shardstore.gc(path, grace=0).removed[-1] == "v-0123456789abcdef"


def test_nothing_is_removed_when_the_manifest_cannot_be_read(tmp_path: Path) -> None:
    path = tmp_path / "d"
    ds = shardstore.write(path, arrays(1))
    (path / "manifest.json").write_text("{ not json")
    report = shardstore.gc(path, grace=0)
    assert report.removed == []
    assert (path / f"v-{ds.manifest.version_id}").is_dir()


def test_dry_run_removes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "d"
    shardstore.write(path, arrays(1))
    dead = crashed_write(path)
    before = sorted(p.relative_to(path) for p in path.rglob("*"))
    report = shardstore.gc(path, dry_run=True)
    assert f".shardstore/staging/v-{dead}" in report.removed and report.bytes_freed == 0
    assert sorted(p.relative_to(path) for p in path.rglob("*")) == before


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="not a directory"):
        shardstore.gc(tmp_path / "missing")
    with pytest.raises(InvalidInputError, match="grace"):
        shardstore.gc(tmp_path, grace=-1)
    assert shardstore.gc(tmp_path).removed == []  # an empty directory: nothing to do


def test_the_next_write_cleans_up_a_crashed_one(tmp_path: Path) -> None:
    path = tmp_path / "d"
    shardstore.write(path, arrays(1))
    crashed_write(path)
    shardstore.write(path, arrays(2), overwrite=True)
    assert set(os.listdir(path / ".shardstore")) <= {"lock", "retired"}


def test_cli_gc(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "d"
    v1 = shardstore.write(path, arrays(1))
    shardstore.write(path, arrays(2), overwrite=True)
    dead = crashed_write(path)
    assert cli.main(["gc", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would remove 2 items" in out and f"v-{dead}" in out
    assert "kept 1 superseded version" in out
    assert cli.main(["gc", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["removed"]) == 2 and report["bytes_freed"] > 0
    assert cli.main(["gc", str(path), "--grace", "0"]) == 0
    out = capsys.readouterr().out
    assert f"v-{v1.manifest.version_id}" in out and "removed 2 items" in out
    assert cli.main(["gc", str(tmp_path / "nope")]) == 2
    assert "not a directory" in capsys.readouterr().err


# -- damage: reported, never followed ----------------------------------------------------------
def test_damage_in_the_control_area_is_reported_and_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "d"
    v1 = shardstore.write(path, arrays(1))
    shardstore.write(path, arrays(2), overwrite=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    (path / "v-00000000deadbeef").symlink_to(outside, target_is_directory=True)
    (path / ".shardstore" / "trash").symlink_to(outside, target_is_directory=True)
    (path / ".shardstore" / "retired" / "v-feedfeedfeedfeed").mkdir()  # a dir, not a marker
    report = shardstore.gc(path, grace=0)
    assert sorted(report.damaged) == [
        ".shardstore/retired/v-feedfeedfeedfeed: is a directory, not a regular file",
        ".shardstore/trash: is a symbolic link (never followed)",
        "v-00000000deadbeef: is a symbolic link (never followed)",
    ]
    # the superseded version could not be moved to the (damaged) trash: kept, not followed
    assert (path / f"v-{v1.manifest.version_id}").is_dir()
    assert sorted(os.listdir(outside)) == ["keep.txt"]
    assert cli.main(["gc", str(path), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["damaged"]) == 3
    assert cli.main(["gc", str(path)]) == 0
    assert "left alone, never followed: 3 damaged items" in capsys.readouterr().out
    (path / ".shardstore" / "trash").unlink()  # the user removes the link: gc carries on
    assert f"v-{v1.manifest.version_id}" in shardstore.gc(path, grace=0).removed
    assert sorted(os.listdir(outside)) == ["keep.txt"]


@pytest.mark.parametrize("kind", ["file", "symlink"])
def test_a_control_area_that_is_not_a_directory_stops_gc(
    tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "d"
    shardstore.write(path, arrays(1))
    shutil.rmtree(path / ".shardstore", ignore_errors=True)
    if kind == "file":
        (path / ".shardstore").write_text("x")
    else:
        (path / ".shardstore").symlink_to(tmp_path, target_is_directory=True)
    (path / "v-0123456789abcdef").mkdir()  # something gc would otherwise look at
    expected = DamagedNotADirectoryError if kind == "file" else UnsafeLinkError
    with pytest.raises(expected, match=r"\.shardstore"):
        shardstore.gc(path, grace=0)
    assert cli.main(["gc", str(path)]) == 1  # damage: exit status 1
    assert ".shardstore" in capsys.readouterr().err
    assert (path / "v-0123456789abcdef").is_dir()
    with pytest.raises(expected):
        shardstore.write(path, arrays(2), overwrite=True)
    assert_bitwise_equal(shardstore.open(path)[:]["x"], arrays(1)["x"])


def test_gc_of_a_dataset_named_through_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    v1 = shardstore.write(real, arrays(1))
    shardstore.write(real, arrays(2), overwrite=True)
    (tmp_path / "alias").symlink_to(real, target_is_directory=True)
    assert shardstore.gc(tmp_path / "alias", grace=0).removed[-1] == f"v-{v1.manifest.version_id}"
