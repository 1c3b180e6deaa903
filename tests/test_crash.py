"""Crash safety: writers killed with SIGKILL at every storage operation, and at random times.

Each trial is a real child process (forked by ``tests/crash_server.py``)
that dies by a real ``SIGKILL`` (no ``finally``, no ``atexit``) right after
its k-th storage operation (:mod:`shardstore.storage.faults`), for every k of a
write, or at a random moment. After every kill:

* ``shardstore.open`` raises ``DatasetNotFoundError`` (first write) or gives
  the previous version, manifest byte for byte and every file matching its
  checksum, records bit for bit; or, when the kill came after the
  publication, the complete new version. Never anything in between;
* whatever the dead writer left is inside ``.shardstore/`` (or is the one
  ``v-<id>/`` between the rename and the publication, recorded as never
  published by its stale writer lock);
* running the writer again succeeds, and cleans all of it up.

``SHARDSTORE_STRESS=1`` (``make stress``) raises the trial counts.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import shardstore
from shardstore.errors import DatasetNotFoundError, DiskFullError, ShardStoreError
from shardstore.sources.tfrecord import iter_frames, parse_example
from shardstore.testing import assert_bitwise_equal

sys.path.insert(0, str(Path(__file__).parent))
from crash_server import make_data
from tmpfs import mounted_tmpfs

STRESS = os.environ.get("SHARDSTORE_STRESS", "") not in ("", "0")
SERVER = Path(__file__).parent / "crash_server.py"
#: Formats swept at every k. A zarr write performs ~3x more operations than the
#: others (a group, metadata and chunk files per shard): its overwrite sweep runs
#: in the stress run only (the commit it exercises is the same for every format).
FORMATS = ["npy", "zarr", "tfrecord"]
OVERWRITE_FORMATS = FORMATS if STRESS else ["npy", "tfrecord"]
SMALL = {"n": 10, "rps": 4}  # 3 shards (4, 4, 2 records), 2 features
#: A zarr write performs ~3x more operations per shard (a group, metadata and chunk
#: files): the regular run sweeps a one-shard zarr write.
SIZES = {"zarr": SMALL if STRESS else {"n": 4, "rps": 4}}
#: fsync is irrelevant to SIGKILL (the page cache survives the process) and makes each
#: write ~10x slower on a real disk: the regular run syncs in the npy sweeps only.
FSYNC_EVERYWHERE = STRESS
RANDOM_KILLS = 400 if STRESS else 24
#: The outcome of every trial, summed over the module (printed at the end with -s).
OUTCOMES: Counter[str] = Counter()


class CrashServer:
    """Talks to ``crash_server.py``: one request, one forked child, its fate."""

    def __init__(self) -> None:
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        env.pop("SHARDSTORE_FAULT_AFTER_OPS", None)
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def start(self, **request: Any) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return int(json.loads(self.proc.stdout.readline())["pid"])

    def release(self) -> None:
        """Let the server reap a child started with ``hold=True``."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("reap\n")
        self.proc.stdin.flush()

    def finish(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, "the crash server died"
        reply: dict[str, Any] = json.loads(line)
        return reply

    def run(self, **request: Any) -> dict[str, Any]:
        self.start(**request)
        return self.finish()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def server() -> Iterator[CrashServer]:
    srv = CrashServer()
    yield srv
    srv.close()
    if OUTCOMES:
        print("\ncrash trial outcomes:", dict(sorted(OUTCOMES.items())))


def write_req(path: Path, seed: int, fmt: str, *, overwrite: bool, **kw: Any) -> dict[str, Any]:
    """A write request; ``kw`` may set ``n`` and ``rps`` (default: the format's small size)."""
    fsync = FSYNC_EVERYWHERE or (fmt == "npy" and "n" not in kw)
    return {"op": "write", "path": str(path), "seed": seed, "format": fmt,
            "overwrite": overwrite, "fsync": fsync, **SIZES.get(fmt, SMALL), **kw}  # fmt: skip


def manifest_bytes(path: Path) -> bytes | None:
    try:
        return (path / "manifest.json").read_bytes()
    except FileNotFoundError:
        return None


def check_records(ds: shardstore.Dataset, n: int) -> None:
    """Every record of ``ds`` equals what its write (``metadata.seed``) stored, bit for bit."""
    expected = make_data(int(ds.metadata["seed"]), n)
    got = read_tfrecords(ds) if ds.manifest.sources == ("tfrecord",) else ds[:]
    for name, arr in expected.items():
        assert_bitwise_equal(got[name], arr)


def read_tfrecords(ds: shardstore.Dataset) -> dict[str, np.ndarray]:
    """Every record of a tfrecord dataset, decoded without TensorFlow (fast, per trial)."""
    rows: dict[str, list[np.ndarray]] = {name: [] for name in ds.features}
    for shard in ds.shards:
        entry = shard.files[0]
        with open(ds.path / entry.path, "rb") as f:
            for _, data, _ in iter_frames(f, size=entry.size, name=entry.path):
                example = parse_example(data)
                for name, spec in ds.features.items():
                    kind, values = example[name]
                    assert kind == "bytes_list"
                    rows[name].append(np.frombuffer(values[0], spec.dtype).reshape(spec.shape))
    return {name: np.stack(r) for name, r in rows.items()}


def stray_entries(path: Path) -> list[str]:
    """Entries of the dataset directory that are neither the dataset nor control files."""
    ctl = path / ".shardstore"
    referenced: set[str] = set()
    try:
        ds = shardstore.open(path)
        referenced = {f.path.split("/")[0] for s in ds.shards for f in s.files}
    except DatasetNotFoundError:
        pass
    retired = set(os.listdir(ctl / "retired")) if (ctl / "retired").is_dir() else set()
    keep = {"manifest.json", ".shardstore"} | referenced | retired
    return sorted(n for n in os.listdir(path) if n not in keep) if path.is_dir() else []


def check_after_kill(
    path: Path, before: bytes | None, new_seed: int, n: int, read: bool = True
) -> str:
    """Classify the state a killed writer left: 'none', 'previous' or 'new'; fail otherwise."""
    try:
        ds = shardstore.open(path)
    except DatasetNotFoundError:
        assert before is None, "a committed dataset disappeared"
        outcome = "none"
    else:
        ds.verify()  # every file exactly as the manifest records it
        if manifest_bytes(path) == before:
            outcome = "previous"
        else:
            assert ds.metadata["seed"] == new_seed, "a manifest from nowhere"
            outcome = "new"
        if read:
            check_records(ds, n)
    strays = stray_entries(path)
    for name in strays:  # only the rename -> publish window leaves one, and says so
        assert name.startswith("v-"), f"unexpected leftover {name!r}"
        assert (path / ".shardstore" / "writers" / f"{name[2:]}.lock").exists(), name
        outcome += "+unpublished-dir"
    return outcome


def check_clean(path: Path) -> None:
    """After a successful write, nothing of a crashed write is left anywhere."""
    assert stray_entries(path) == []
    ctl = path / ".shardstore"
    if ctl.exists():
        assert set(os.listdir(ctl)) <= {"lock", "retired"}, sorted(os.listdir(ctl))
        retired = ctl / "retired"
        for name in os.listdir(retired) if retired.exists() else []:
            assert (path / name).is_dir()


def count_ops(server: CrashServer, request: dict[str, Any]) -> tuple[int, list[str]]:
    reply = server.run(**request, after_ops=None)
    assert reply.get("code") == 0, reply
    return int(reply["ops"]), list(reply["trace"])


@pytest.mark.parametrize("fmt", FORMATS)
def test_first_write_killed_at_every_operation(
    server: CrashServer, tmp_path: Path, fmt: str
) -> None:
    n = SIZES.get(fmt, SMALL)["n"]
    total, trace = count_ops(server, write_req(tmp_path / "count", 1, fmt, overwrite=False))
    assert {"create", "write", "rename", "link manifest"} <= set(trace)
    assert ("fsync" in trace) == (FSYNC_EVERYWHERE or fmt == "npy")
    outcomes: Counter[str] = Counter()
    for k in range(1, total + 1):
        path = tmp_path / f"k{k}"
        reply = server.run(**write_req(path, 100 + k, fmt, overwrite=False), after_ops=k)
        assert reply == {"signal": 9}, (k, reply)
        outcome = check_after_kill(path, None, 100 + k, n)
        outcomes[outcome] += 1
        if outcome.startswith("new"):
            assert k >= trace.index("link manifest") + 1, (k, trace[k - 1])
        else:
            assert k <= trace.index("link manifest"), (k, trace[k - 1])
        again = server.run(**write_req(path, 200 + k, fmt, overwrite=outcome != "none"))
        assert again["code"] == 0, (k, again)
        check_records(shardstore.open(path), n)
        check_clean(path)
    # the kill after the last operation ends a complete write
    assert server.run(**write_req(tmp_path / "all", 9, fmt, overwrite=False),
                      after_ops=total + 1)["code"] == 0  # fmt: skip
    assert sum(outcomes.values()) == total
    assert set(outcomes) <= {"none", "new", "none+unpublished-dir"}
    OUTCOMES.update({f"first/{fmt}/{o}": c for o, c in outcomes.items()})


@pytest.mark.parametrize("fmt", OVERWRITE_FORMATS)
def test_overwrite_killed_at_every_operation(server: CrashServer, tmp_path: Path, fmt: str) -> None:
    path = tmp_path / "d"
    n = SIZES.get(fmt, SMALL)["n"]
    assert server.run(**write_req(path, 1, fmt, overwrite=False))["code"] == 0
    assert server.run(**write_req(path, 2, fmt, overwrite=True))["code"] == 0
    # count the operations of an overwrite made in the state every trial starts from
    total, trace = count_ops(server, write_req(path, 3, fmt, overwrite=True))
    assert "replace manifest" in trace
    outcomes: Counter[str] = Counter()
    for k in range(1, total + 1):
        before = manifest_bytes(path)
        reply = server.run(**write_req(path, 1000 + k, fmt, overwrite=True), after_ops=k)
        assert reply == {"signal": 9}, (k, reply)
        outcome = check_after_kill(path, before, 1000 + k, n)
        outcomes[outcome] += 1
        assert outcome.startswith("new") == (k > trace.index("replace manifest")), (k, trace)
        again = server.run(**write_req(path, 2000 + k, fmt, overwrite=True))
        assert again["code"] == 0, (k, again)
        check_records(shardstore.open(path), n)
        check_clean(path)
    assert sum(outcomes.values()) == total
    assert set(outcomes) <= {"previous", "new", "previous+unpublished-dir"}
    OUTCOMES.update({f"overwrite/{fmt}/{o}": c for o, c in outcomes.items()})


def test_gc_killed_at_every_operation(server: CrashServer, tmp_path: Path) -> None:
    """Garbage collection itself is crash-safe: the dataset is never affected."""
    path = tmp_path / "d"

    def make_garbage() -> None:
        # a superseded version, a write killed before publishing, one killed mid-shard
        garbage = {"fsync": False}  # what is collected, not how it was written, matters here
        assert server.run(**write_req(path, 1, "npy", overwrite=True, **garbage))["code"] == 0
        _, trace = count_ops(server, write_req(path, 2, "npy", overwrite=True, **garbage))
        for k in (trace.index("replace manifest") - 1, 5):
            reply = server.run(**write_req(path, 3, "npy", overwrite=True, **garbage), after_ops=k)
            assert reply == {"signal": 9}

    assert server.run(**write_req(path, 0, "npy", overwrite=False))["code"] == 0
    make_garbage()
    total, _ = count_ops(server, {"op": "gc", "path": str(path), "grace": 0})
    assert total > 5
    for k in range(1, total + 1):
        make_garbage()
        before = manifest_bytes(path)
        assert server.run(op="gc", path=str(path), grace=0, after_ops=k) == {"signal": 9}
        assert check_after_kill(path, before, -1, SMALL["n"]).startswith("previous")
        assert server.run(op="gc", path=str(path), grace=0)["code"] == 0
        check_clean(path)
        assert not (path / ".shardstore").exists()
    OUTCOMES[f"gc/npy/previous (of {total} points)"] += total


@pytest.mark.parametrize("overwrite", [False, True])
def test_writer_killed_at_random_times(
    server: CrashServer, tmp_path: Path, overwrite: bool
) -> None:
    big = {"n": 3000, "rps": 250}  # 12 shards: kills land in every phase of the write
    path = tmp_path / "d"
    if overwrite:
        assert server.run(**write_req(path, 1, "npy", overwrite=False, **big))["code"] == 0
    durations = []
    for i in range(4):  # the first child of a fresh server is slower: take the median
        t0 = time.perf_counter()
        reply = server.run(**write_req(tmp_path / f"t{i}", 2, "npy", overwrite=False, **big))
        durations.append(time.perf_counter() - t0)
        assert reply["code"] == 0
    duration = sorted(durations)[len(durations) // 2]
    rng = random.Random(1234)
    outcomes: Counter[str] = Counter()
    for trial in range(RANDOM_KILLS):
        if not overwrite:
            path = tmp_path / f"d{trial}"
        before = manifest_bytes(path)
        seed = 10_000 + trial
        pid = server.start(**write_req(path, seed, "npy", overwrite=overwrite, **big), hold=True)
        time.sleep(rng.uniform(0, duration * 1.2))
        os.kill(pid, 9)  # not reaped yet: this pid is still the child (maybe a zombie)
        server.release()
        reply = server.finish()
        outcome = check_after_kill(path, before, seed, big["n"])
        outcomes[outcome + ("" if reply.get("signal") == 9 else " (finished)")] += 1
        again = server.run(**write_req(path, 20_000 + trial, "npy",
                                       overwrite=outcome != "none", **big))  # fmt: skip
        assert again["code"] == 0, again
        check_records(shardstore.open(path), big["n"])
        check_clean(path)
    killed = sum(c for o, c in outcomes.items() if "finished" not in o)
    assert killed >= RANDOM_KILLS // 3, outcomes  # most trials really were killed mid-write
    OUTCOMES.update({f"random/{'overwrite' if overwrite else 'first'}/{o}": c
                     for o, c in outcomes.items()})  # fmt: skip


def test_environment_variable_arms_a_real_subprocess(tmp_path: Path) -> None:
    """``SHARDSTORE_FAULT_AFTER_OPS=k`` kills a plain ``python`` process after operation k."""
    code = (
        "import numpy as np, shardstore\n"
        f"shardstore.write({str(tmp_path / 'd')!r}, {{'x': np.arange(10)}}, records_per_shard=3)\n"
    )
    env = {**os.environ, "SHARDSTORE_FAULT_AFTER_OPS": "7"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()
    with pytest.raises(DatasetNotFoundError):
        shardstore.open(tmp_path / "d")
    assert stray_entries(tmp_path / "d") == []  # everything it left is in .shardstore/
    assert (tmp_path / "d" / ".shardstore" / "staging").is_dir()
    env["SHARDSTORE_FAULT_AFTER_OPS"] = "0"  # counts, never kills
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    assert_bitwise_equal(shardstore.open(tmp_path / "d")[:]["x"], np.arange(10))
    check_clean(tmp_path / "d")


# -- a full disk at any point ------------------------------------------------------------------
DISK_FULL_TRIALS = 60 if STRESS else 6


def test_a_disk_filling_up_at_any_point_leaves_the_previous_version_or_none(
    tmp_path: Path,
) -> None:
    """A real 8 MiB tmpfs, filled by a ballast file to a random free space before each write.

    Every write either completes or raises ``DiskFullError`` naming a file of
    the dataset; then the dataset is the previous version byte for byte (or no
    dataset), nothing half-written is left in its directory, and once space is
    freed the next write succeeds.
    """
    rng = random.Random(None if STRESS else 1234)
    outcomes: Counter[str] = Counter()
    with mounted_tmpfs(tmp_path / "mnt", "8m") as mnt:
        for trial in range(DISK_FULL_TRIALS):
            fmt = rng.choice(FORMATS)
            path = mnt / f"d{trial}"
            overwrite = rng.random() < 0.6
            if overwrite:
                shardstore.write(path, make_data(trial, 10), format=fmt, records_per_shard=4,
                                 fsync=False, metadata={"seed": trial})  # fmt: skip
            before = manifest_bytes(path)
            stat = os.statvfs(mnt)
            free = stat.f_bavail * stat.f_frsize
            ballast = mnt / "ballast"
            with open(ballast, "wb") as f:
                f.truncate(0)
                f.write(b"\0" * max(0, free - rng.randint(0, 600_000)))
            n = rng.choice([200, 2000, 8000])
            try:
                shardstore.write(
                    path,
                    make_data(trial + 1, n),
                    format=fmt,
                    overwrite=overwrite,
                    records_per_shard=rng.choice([50, 1000]),
                    fsync=rng.random() < 0.5,
                    metadata={"seed": trial + 1},
                )
                outcomes["completed"] += 1
                check_records(shardstore.open(path), n)
            except DiskFullError as exc:
                outcomes["disk full"] += 1
                assert exc.errno == errno.ENOSPC and str(mnt) in str(exc), exc
                assert manifest_bytes(path) == before
                if before is None:
                    with pytest.raises(ShardStoreError):
                        shardstore.open(path)
                else:
                    check_records(shardstore.open(path), 10)
                staging = path / ".shardstore" / "staging"
                assert not staging.exists() or not os.listdir(staging), os.listdir(staging)
                if before is None:  # a failed first write leaves no version directory
                    assert not path.exists() or not list(path.glob("v-*"))
            ballast.unlink()
            shardstore.write(path, make_data(7, 10), format=fmt, overwrite=True, fsync=False,
                             metadata={"seed": 7})  # fmt: skip
            check_records(shardstore.open(path), 10)
            shardstore.gc(path, grace=0)
            shutil.rmtree(path)
    print(f"\ndisk full trials: {dict(outcomes)}")
    assert outcomes["disk full"] >= 1, outcomes  # the trials did reach the limit
