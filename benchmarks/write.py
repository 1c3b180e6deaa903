"""The write suite: ``shardstore.write`` against the ``np.save`` floor and TFRecordWriter.

Same records (the images workload, in memory), same number of files: the
floor saves each shard's features with ``np.save`` into files of the shard
size shardstore uses; ``fsync`` on and off are measured separately and each
compared with the floor that has the same setting. The usual TFRecord writer
(one ``tf.train.Example`` per record) has no fsync; compare it with
shardstore's tfrecord write with fsync off. Each figure is the best of
``repeats`` rounds (every case once per round, each round starting at
another case), each run into an empty directory after ``os.sync()``, after
one untimed warm-up write.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

import numpy as np

import shardstore
from benchmarks.peers import records_per_file, write_tfrecords
from benchmarks.results import Row, write_row
from shardstore.storage.fsutil import fsync_dir

__all__ = ["np_save_files", "run_write_suite", "time_write"]

Arrays = Mapping[str, np.ndarray]
Log = Callable[[str], None]


def np_save_files(arrays: Arrays, out: Path, *, fsync: bool) -> int:
    """The floor: ``np.save`` every feature of every shard into its own file; return the count."""
    out.mkdir(parents=True)
    n, step, files = len(arrays["label"]), records_per_file(arrays), 0
    for k, lo in enumerate(range(0, n, step)):
        for name, array in arrays.items():
            with open(out / f"{k:06d}.{name}.npy", "xb") as f:
                np.save(f, array[lo : lo + step])
                if fsync:
                    f.flush()
                    os.fsync(f.fileno())
            files += 1
    if fsync:
        fsync_dir(out)
    return files


def shardstore_files(arrays: Arrays, out: Path, *, fmt: str, fsync: bool) -> int:
    """``shardstore.write`` (manifest included); return the number of shard files."""
    ds = shardstore.write(out, dict(arrays), format=fmt, fsync=fsync)
    return sum(len(s.files) for s in ds.shards)


def tfrecord_writer_files(arrays: Arrays, out: Path) -> int:
    """The usual TFRecordWriter loop, shardstore's shard size per file."""
    out.mkdir(parents=True)
    return len(write_tfrecords(arrays, out, records_per_file(arrays)))


def time_write(write: Callable[[Path], int], out: Path) -> tuple[float, int]:
    """Seconds of ``write(out)`` into a fresh ``out`` (removed after), and its file count."""
    shutil.rmtree(out, ignore_errors=True)
    os.sync()  # flush earlier runs' dirty pages so that they do not slow this one
    t0 = time.perf_counter()
    files = write(out)
    seconds = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    return seconds, files


def run_write_suite(arrays: Arrays, workdir: Path, *, repeats: int, log: Log) -> list[Row]:
    """Every write row: floor, npy and tfrecord with fsync on and off, TFRecordWriter."""
    nbytes = sum(a.nbytes for a in arrays.values())
    out = workdir / "write"
    cases: list[tuple[str, str, str, bool, Callable[[Path], int]]] = []
    for fsync in (False, True):
        cases += [
            (
                "floor",
                "`np.save`, same files (floor)",
                "floor",
                fsync,
                partial(np_save_files, arrays, fsync=fsync),
            ),
            (
                "npy",
                "shardstore.write, npy",
                "shardstore",
                fsync,
                partial(shardstore_files, arrays, fmt="npy", fsync=fsync),
            ),
            (
                "tfrecord",
                "shardstore.write, tfrecord",
                "shardstore",
                fsync,
                partial(shardstore_files, arrays, fmt="tfrecord", fsync=fsync),
            ),
        ]
    cases.append(
        (
            "peer:TFRecordWriter",
            "`tf.io.TFRecordWriter` + `tf.train.Example` loop",
            "peer",
            False,
            partial(tfrecord_writer_files, arrays),
        )
    )
    # Untimed warm-up: the first write of a run may wait for the kernel to reclaim
    # page cache (measured: 10x slower on a busy machine), whoever goes first.
    time_write(partial(np_save_files, arrays, fsync=False), out)
    best = [float("inf")] * len(cases)
    files = [0] * len(cases)
    for r in range(max(1, repeats)):  # rounds, each starting at another case
        for i in [(r + k) % len(cases) for k in range(len(cases))]:
            seconds, files[i] = time_write(cases[i][-1], out)
            best[i] = min(best[i], seconds)
    rows = []
    for (row_id, label, kind, fsync, _), seconds, count in zip(cases, best, files, strict=True):
        rows.append(
            write_row(row_id, label, kind, fsync=fsync, files=count, nbytes=nbytes, seconds=seconds)
        )
        log(
            f"  write: {label}, fsync {'on' if fsync else 'off'}: "
            f"{rows[-1]['gb_per_s']:.2f} GB/s ({count} files)"
        )
    return rows
