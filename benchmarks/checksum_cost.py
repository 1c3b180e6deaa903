"""What checksums on the read path cost: ``python -m benchmarks.checksum_cost``.

The DESIGN.md images workload (64x64x3 float32 + int64 label), npy source,
batch 256, consumed in graph, warm page cache (the dataset was just written):
this measures the CPU cost of hashing, the worst case for its relative cost,
since on cold storage reading dominates. For each shuffle mode, one epoch
with ``verify="size"``, the first epoch with ``verify="once"`` (every block
read is hashed: the process's memory of verified blocks is emptied first,
``integrity.forget()``), and a later epoch with ``verify="once"`` (blocks
only looked up); best of ``--repeats``, variants interleaved. ``make bench``
measures the same first-epoch rows in its read suite. Usage::

    python -m benchmarks.checksum_cost [--records 16384] [--out /tmp/sscheck]
"""

from __future__ import annotations

import argparse
import functools
import os
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf

import shardstore
from shardstore.cli.bench import synthetic_images
from shardstore.storage import integrity

__all__ = ["main"]

MODES: dict[str, bool | str] = {"in order": False, "shuffle=True": True, "global": "global"}


def _epoch(tfds: tf.data.Dataset) -> float:
    t0 = time.perf_counter()
    tfds.reduce(tf.constant(0, tf.int64), lambda acc, e: acc + tf.shape(e[0], tf.int64)[0])
    return time.perf_counter() - t0


def _first_epoch(tfds: tf.data.Dataset) -> float:
    integrity.forget()  # nothing verified yet in this process
    return _epoch(tfds)


def main(argv: list[str] | None = None) -> int:
    """Write the dataset once, then time the variants of every mode."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.checksum_cost")
    parser.add_argument("--records", type=int, default=16384)
    parser.add_argument("--out", default="/tmp/sscheck")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    path = Path(args.out)
    with shardstore.Writer(path, overwrite=True, fsync=False) as w:
        for batch in synthetic_images(args.records, 1024):
            w.write(batch)
    gb = shardstore.open(path).nbytes / 1e9
    print(f"{args.records} records, {gb:.2f} GB, {os.cpu_count()} CPUs")
    for label, shuffle in MODES.items():
        pipes = {
            v: shardstore.open(path, verify=v).to_tf(
                256, features=("image", "label"), shuffle=shuffle, seed=0
            )
            for v in ("size", "once")
        }

        variants: dict[str, Callable[[], float]] = {
            'verify="size"': functools.partial(_epoch, pipes["size"]),
            'verify="once", first epoch': functools.partial(_first_epoch, pipes["once"]),
            'verify="once", later epochs': functools.partial(_epoch, pipes["once"]),
        }
        _epoch(pipes["size"])  # warm-up: tracing, threads
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.repeats):
            for name, run in variants.items():
                times[name].append(run())
        base = min(times['verify="size"'])
        for name, runs in times.items():
            secs = min(runs)
            print(f"{label:<13} {name:<28} {secs:6.3f} s {gb / secs:6.2f} GB/s {secs / base:5.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
