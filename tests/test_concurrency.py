"""Concurrent writers and readers of one dataset path.

* Two writers committing one path: exactly one wins, the other gets a
  ``CommitConflictError`` and publishes nothing, for first writes and for
  overwrites (compare-and-swap on the manifest read when the write started).
* Many processes overwriting in a loop: the committed versions form one
  chain (each replaces the previous one), so no commit was lost silently.
* Readers opening while a writer overwrites in a loop see the old or the new
  version, whole: never a mix, never an error. A reader holding the old
  version keeps reading it across overwrites (superseded versions are kept
  for the grace period), and shard files are never rewritten in place.
* Garbage collection never touches a running writer's files.

``SHARDSTORE_STRESS=1`` (``make stress``) raises the counts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import shardstore
from shardstore.errors import CommitConflictError, DatasetExistsError
from shardstore.storage.fsutil import HashingFile
from shardstore.testing import assert_bitwise_equal

sys.path.insert(0, str(Path(__file__).parent))
from concurrency_worker import RPS, N
from crash_server import make_data

STRESS = os.environ.get("SHARDSTORE_STRESS", "") not in ("", "0")
WORKER = Path(__file__).parent / "concurrency_worker.py"
WRITERS, OVERWRITES = (4, 60) if STRESS else (3, 8)
READER_OVERWRITES = 1000 if STRESS else 100


def write(path: Path, seed: int, **kw: Any) -> shardstore.Dataset:
    return shardstore.write(path, make_data(seed, N), records_per_shard=RPS,
                            metadata={"seed": seed}, **kw)  # fmt: skip


def start(*args: str | Path) -> subprocess.Popen[str]:
    """A worker process, once it is ready (imported) and waiting for the go file."""
    proc = subprocess.Popen([sys.executable, str(WORKER), *map(str, args)],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    assert json.loads(proc.stdout.readline()) == {"ready": True}
    return proc


def listing(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def test_racing_overwriters_exactly_one_wins(tmp_path: Path) -> None:
    path = tmp_path / "d"
    base = write(path, 0)
    first = shardstore.Writer(path, overwrite=True, records_per_shard=RPS, metadata={"seed": 1})
    second = shardstore.Writer(path, overwrite=True, records_per_shard=RPS, metadata={"seed": 2})
    assert first.replaces == second.replaces == base.manifest.version_id
    first.write(make_data(1, N))
    second.write(make_data(2, N))
    won = first.close()
    with pytest.raises(CommitConflictError, match=f"replaced version {base.manifest.version_id}"):
        second.close()
    ds = shardstore.open(path)
    assert ds.manifest.version_id == won.manifest.version_id == first.version_id
    assert_bitwise_equal(ds[:]["x"], make_data(1, N)["x"])
    # the loser left nothing: its staging directory and lock are gone
    assert f"v-{second.version_id}" not in listing(path)
    assert set(listing(path / ".shardstore")) <= {"lock", "retired"}
    ds.verify(progress=False)


def test_racing_first_writes_with_overwrite_exactly_one_wins(tmp_path: Path) -> None:
    """``overwrite=True`` on an empty path is a first write: it must not replace a racer."""
    path = tmp_path / "d"
    first = shardstore.Writer(path, overwrite=True, records_per_shard=RPS, metadata={"seed": 1})
    second = shardstore.Writer(path, overwrite=True, records_per_shard=RPS, metadata={"seed": 2})
    first.write(make_data(1, N))
    second.write(make_data(2, N))
    second.close()
    with pytest.raises(CommitConflictError, match="committed a dataset here") as exc:
        first.close()
    assert isinstance(exc.value, DatasetExistsError)
    assert shardstore.open(path).metadata["seed"] == 2
    assert listing(path) == ["manifest.json", f"v-{second.version_id}"]


def test_overwrite_of_a_deleted_dataset_is_a_conflict(tmp_path: Path) -> None:
    path = tmp_path / "d"
    write(path, 0)
    w = shardstore.Writer(path, overwrite=True, records_per_shard=RPS)
    w.write(make_data(1, N))
    (path / "manifest.json").unlink()
    with pytest.raises(CommitConflictError, match="deleted"):
        w.close()


def test_overwriting_processes_never_lose_a_commit(tmp_path: Path) -> None:
    path = tmp_path / "d"
    initial = write(path, 0)
    go = tmp_path / "go"
    procs = [start("overwrite", path, go, 1000 * (i + 1), OVERWRITES) for i in range(WRITERS)]
    go.touch()  # all at once
    results: list[dict[str, Any]] = []
    for p in procs:
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0
        results += [json.loads(line) for line in out.splitlines()]
    assert len(results) == WRITERS * OVERWRITES
    wins = [r for r in results if r["ok"]]
    conflicts = [r for r in results if not r["ok"]]
    assert wins and all(r["conflict"] for r in conflicts)
    # one chain: every win replaced a distinct version, starting from the initial one
    successor = {r["replaces"]: r["version"] for r in wins}
    assert len(successor) == len(wins), "two commits replaced the same version: one was lost"
    version, chain = initial.manifest.version_id, 0
    while version in successor:
        version, chain = successor[version], chain + 1
    assert chain == len(wins)
    final = shardstore.open(path)
    assert final.manifest.version_id == version
    assert_bitwise_equal(final[:]["y"], make_data(int(final.metadata["seed"]), N)["y"])
    print(f"\n{WRITERS} processes x {OVERWRITES} overwrites: {len(wins)} committed in one "
          f"chain, {len(conflicts)} refused with CommitConflictError")  # fmt: skip


def test_readers_see_old_or_new_never_a_mix(tmp_path: Path) -> None:
    path = tmp_path / "d"
    held = write(path, 0)  # a reader that opened the first version and keeps it
    stop = tmp_path / "stop"
    go = tmp_path / "go"
    readers = [start("read", path, go, stop) for _ in range(2)]
    go.touch()
    try:
        for i in range(READER_OVERWRITES):
            write(path, i + 1, overwrite=True, fsync=False)
            if i % 5 == 0:  # the held version is still whole, bit for bit
                assert_bitwise_equal(held[:]["x"], make_data(0, N)["x"])
    finally:
        stop.touch()
    reports = []
    for p in readers:
        out, _ = p.communicate(timeout=300)
        reports.append(json.loads(out))
    for report in reports:
        assert report["errors"] == {}, report
        assert report["mismatches"] == 0, report
        assert report["reads"] > 0
    assert max(r["versions"] for r in reports) >= 2, reports  # they did overlap the writes
    held.verify(progress=False)
    print(f"\n{READER_OVERWRITES} overwrites under 2 reader processes: "
          f"{[r['reads'] for r in reports]} reads, {[r['versions'] for r in reports]} versions "
          "seen, 0 mixed, 0 errors")  # fmt: skip


def test_shards_are_never_rewritten_in_place(tmp_path: Path) -> None:
    path = tmp_path / "d"
    old = write(path, 0)
    mapped = old[:]  # maps the files (a rewrite in place would SIGBUS or change this)
    before = {f.path: os.stat(path / f.path) for s in old.shards for f in s.files}
    for seed in range(1, 4):
        write(path, seed, overwrite=True)
    shardstore.gc(path)  # within the grace period: the old version stays
    for rel, st in before.items():
        now = os.stat(path / rel)
        assert (now.st_ino, now.st_size, now.st_mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns)
    assert_bitwise_equal(old[:]["x"], mapped["x"])
    old.verify(progress=False)
    with pytest.raises(FileExistsError), HashingFile(path / next(iter(before))):
        pass  # shard files are created with O_EXCL: an existing one is never opened to write


def test_gc_never_touches_a_running_writer(tmp_path: Path) -> None:
    path = tmp_path / "d"
    write(path, 0)
    w = shardstore.Writer(path, overwrite=True, records_per_shard=RPS, metadata={"seed": 5})
    w.write(make_data(5, N))  # shards written, not committed
    staged = path / ".shardstore" / "staging" / f"v-{w.version_id}"
    assert len(list(staged.iterdir())) > 0
    report = shardstore.gc(path, grace=0)
    assert report.in_progress == [w.version_id] and staged.is_dir()
    w.close()
    ds = shardstore.open(path)
    assert ds.metadata["seed"] == 5
    assert_bitwise_equal(ds[:]["x"], make_data(5, N)["x"])


def test_superseded_versions_expire_after_the_grace_period(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "d"
    v0 = write(path, 0)
    write(path, 1, overwrite=True)
    marker = path / ".shardstore" / "retired" / f"v-{v0.manifest.version_id}"
    assert marker.is_file()
    assert shardstore.gc(path).removed == []  # default grace: 24 hours
    old = marker.stat().st_mtime - 25 * 3600
    os.utime(marker, (old, old))  # superseded 25 hours ago
    write(path, 2, overwrite=True)  # the next write collects it
    assert not (path / f"v-{v0.manifest.version_id}").exists()
    monkeypatch.setenv("SHARDSTORE_GC_GRACE_SECONDS", "0")
    write(path, 3, overwrite=True)  # with no grace, the version it replaces goes next time
    write(path, 4, overwrite=True)
    ds = shardstore.open(path)
    # the current version and the one it just replaced (collected by the next write)
    assert len(list(path.glob("v-*"))) == 2
    assert (path / f"v-{ds.manifest.version_id}").is_dir()
    report = shardstore.gc(path, dry_run=True)
    assert len([r for r in report.removed if r.startswith("v-")]) == 1
    assert len(list(path.glob("v-*"))) == 2  # dry run: nothing removed
    assert_bitwise_equal(ds[:]["x"], make_data(4, N)["x"])
