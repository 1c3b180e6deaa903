"""What checksums on the read path cost: first epoch vs later epochs, verify="once" vs "size".

The DESIGN.md images workload (64x64x3 float32 + int64 label), npy source,
ordered read, batch 256, consumed in graph. Warm page cache (the dataset was
just written): this measures the CPU cost of hashing, the worst case for its
relative cost, since on cold storage reading dominates. Each figure is the
best of ``--repeats`` runs; "first epoch" with ``verify="once"`` starts from an
empty memory of verified files (``integrity.forget()``), so it includes
hashing every file before the first batch. Usage::

    python benchmarks/checksum_cost.py [--records 32768] [--out /tmp/sscheck]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf

import shardstore
from shardstore import integrity
from shardstore.bench import synthetic_images


def epoch(ds: shardstore.Dataset) -> float:
    """Seconds to build the pipeline and consume one epoch of it."""
    t0 = time.perf_counter()
    tfds = ds.to_tf(batch_size=256, features=("image", "label"))
    tfds.reduce(tf.constant(0, tf.int64), lambda acc, e: acc + tf.shape(e[0], tf.int64)[0])
    return time.perf_counter() - t0


def main() -> None:
    """Write the dataset once, then time the variants."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=32768)
    parser.add_argument("--out", default="/tmp/sscheck")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    path = Path(args.out)
    with shardstore.Writer(path, overwrite=True, fsync=False) as w:
        for batch in synthetic_images(args.records, 1024):
            w.write(batch)
    ds = shardstore.open(path)
    gb = ds.nbytes / 1e9
    print(f"{ds.num_records} records, {ds.num_shards} shards, {gb:.2f} GB, {os.cpu_count()} CPUs")

    def hash_only() -> float:
        t0 = time.perf_counter()
        ds.check_files()
        return time.perf_counter() - t0

    def first_epoch(verify: str) -> float:
        integrity.forget()  # nothing verified yet in this process
        return epoch(shardstore.open(path, verify=verify))

    def hash_fresh() -> float:
        integrity.forget()
        return hash_only()

    variants: dict[
        str, Callable[[], float]
    ] = {  # label -> measurement; interleaved run by run, best of --repeats
        "hash every file (check_files)": hash_fresh,
        'verify="size", first epoch': lambda: first_epoch("size"),
        'verify="once", first epoch': lambda: first_epoch("once"),
        'verify="once", later epochs': lambda: epoch(shardstore.open(path)),
    }
    epoch(shardstore.open(path, verify="size"))  # warm-up: page cache, TF, graph tracing
    times: dict[str, list[float]] = {label: [] for label in variants}
    for _ in range(args.repeats):
        for label, run in variants.items():
            times[label].append(run())
    base = min(times['verify="size", first epoch'])
    for label, runs in times.items():
        secs = min(runs)
        print(f"{label:<32} {secs:6.2f} s  {gb / secs:6.2f} GB/s  {secs / base:5.2f}x size-only")


if __name__ == "__main__":
    main()
