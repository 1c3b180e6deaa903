# mypy: disable-error-code="no-untyped-call,attr-defined,misc"
# (dask and distributed ship without complete type hints)
"""Write throughput on the DESIGN.md images workload: serial, thread pool, Dask 1 vs 2 workers.

Two inputs of the same data (16,384 records of 64x64x3 float32 + an int64
label, 0.81 GB, 64 MiB shards, ``fsync=True`` as by default):

* **numpy**: the arrays already in the driver's memory. Serial and the
  default thread pool write them from views; a Dask client gets each shard
  scattered to a worker (so its numbers include the transfer).
* **dask**: a ``dask.array`` whose blocks (one per shard) are *generated*
  where they are computed (:func:`shardstore.cli.bench.synthetic_images`,
  seeded per block), the way a preprocessing job produces data on its
  workers. Without a client, the default thread pool computes each shard's
  block in its task.

Each figure is the best of ``--repeats`` runs after a warm-up run. Usage::

    python benchmarks/parallel_write.py [--records 16384] [--out /tmp/ssbench-par]
"""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import shardstore
from shardstore.cli.bench import IMAGE_SHAPE, best_of, synthetic_images
from shardstore.testing import comparable_manifest

SHARD_RECORDS = (64 << 20) // (int(np.prod(IMAGE_SHAPE)) * 4 + 8)  # 64 MiB shards


def _block(block_id: int, n: int) -> dict[str, np.ndarray]:
    return next(synthetic_images(n, n, seed=block_id))


def dask_inputs(records: int) -> dict[str, Any]:
    """The images as a Dask array, one block per shard, generated where computed."""
    import dask
    import dask.array as da

    images, labels = [], []
    for i, lo in enumerate(range(0, records, SHARD_RECORDS)):
        n = min(SHARD_RECORDS, records - lo)
        batch = dask.delayed(_block)(i, n)  # one task makes both features of the block
        images.append(da.from_delayed(batch["image"], (n, *IMAGE_SHAPE), np.float32))
        labels.append(da.from_delayed(batch["label"], (n,), np.int64))
    return {"image": da.concatenate(images), "label": da.concatenate(labels)}


def numpy_inputs(records: int) -> dict[str, np.ndarray]:
    """The same records as ``dask_inputs``, computed into the driver's memory."""
    parts = [
        next(synthetic_images(min(SHARD_RECORDS, records - lo), SHARD_RECORDS, seed=i))
        for i, lo in enumerate(range(0, records, SHARD_RECORDS))
    ]
    return {k: np.concatenate([p[k] for p in parts]) for k in ("image", "label")}


def main() -> None:
    """Measure every variant; check that each wrote the same dataset."""
    from distributed import Client, LocalCluster

    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=16384)
    parser.add_argument("--out", default="/tmp/ssbench-par")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    root = Path(args.out)
    shutil.rmtree(root, ignore_errors=True)
    gb = args.records * (int(np.prod(IMAGE_SHAPE)) * 4 + 8) / 1e9
    print(
        f"images: {args.records} records, {gb:.2f} GB, {SHARD_RECORDS} records per shard, "
        f"{os.cpu_count()} CPUs"
    )
    arrays = numpy_inputs(args.records)
    reference = None
    results: list[tuple[str, float]] = []

    def run(label: str, data: Any, executor: Any) -> None:
        nonlocal reference
        path = root / label.replace(" ", "_").replace(",", "")

        def once() -> None:
            shardstore.write(
                path, data, executor=executor, overwrite=True, records_per_shard=SHARD_RECORDS
            )

        seconds = best_of(once, args.repeats)
        manifest = comparable_manifest(shardstore.open(path).manifest)
        reference = reference or manifest
        assert manifest == reference, f"{label}: a different dataset"
        results.append((label, seconds))
        print(
            f"{label:<40} {args.records / seconds:>8,.0f} rec/s {gb / seconds:5.2f} GB/s",
            flush=True,
        )

    def generate_only(label: str, compute: Callable[[], Any]) -> None:
        """The Dask input computed and dropped: the ceiling for writing it."""
        seconds = best_of(compute, args.repeats)
        print(
            f"{label:<40} {args.records / seconds:>8,.0f} rec/s {gb / seconds:5.2f} GB/s",
            flush=True,
        )

    run("numpy, serial", arrays, "serial")
    run("numpy, threads (default pool)", arrays, "threads")
    lazy = dask_inputs(args.records)
    generate_only(
        "  (dask array, computed by threads only)",
        lambda: [v.sum().compute(scheduler="threads") for v in lazy.values()],
    )
    run("dask array, threads (no client)", lazy, "threads")
    for workers in (1, 2):
        with (
            LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0"
            ) as cluster,
            Client(cluster) as client,
        ):
            run(f"numpy, Dask {workers} worker(s)", arrays, client)
            generate_only(
                f"  (dask array, computed by {workers} worker(s) only)",
                lambda c=client: c.gather(c.compute([v.sum() for v in lazy.values()])),
            )
            run(f"dask array, Dask {workers} worker(s)", lazy, client)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
