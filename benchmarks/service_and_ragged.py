"""Records/s through the tf.data service, and of a ragged (token) dataset, in one process.

* **service**: the images workload (npy, in order and ``shuffle=True``) read
  through an in-process tf.data service (one dispatcher, ``--workers`` worker
  servers, ``ShardingPolicy.DYNAMIC``), next to the same pipeline read
  locally with ``tf_native=True`` and with the default gathering reader. All
  share this process's cores: the service's figure measures its overhead
  (serialising every batch over loopback gRPC), not a cluster's scaling.
* **ragged**: token sequences of 1 to 512 ``int32`` (mean ~256), read as
  ``tf.RaggedTensor`` batches, padded batches and length-bucketed batches,
  in order and with ``shuffle="global"``.

Every pipeline is consumed in graph (``Dataset.reduce``), best of
``--repeats`` epochs after a warm-up epoch (warm page cache). Usage::

    python -m benchmarks.service_and_ragged [--scale 1] [--workers 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

import shardstore
from benchmarks.workloads import IMAGES, make_arrays

__all__ = ["main"]

log = logging.getLogger("benchmarks.service_and_ragged")


def _count(tfds: tf.data.Dataset, key: str) -> int:
    def add(n: tf.Tensor, batch: Any) -> tf.Tensor:
        value = batch[key]
        rows = value.nrows() if isinstance(value, tf.RaggedTensor) else tf.shape(value)[0]
        return n + tf.cast(rows, tf.int64)

    return int(tfds.reduce(tf.constant(0, tf.int64), add))


def _rate(make: Callable[[], tf.data.Dataset], key: str, repeats: int) -> tuple[float, int]:
    """Best records/s over ``repeats`` epochs (after one warm-up), and the records per epoch."""
    tfds = make()
    records = _count(tfds, key)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        got = _count(tfds, key)
        best = min(best, time.perf_counter() - t0)
        if got != records:
            raise RuntimeError(f"an epoch delivered {got} records, the first {records}")
    return records / best, records


def service_rows(root: Path, scale: float, workers: int, repeats: int) -> list[dict[str, Any]]:
    """Images read locally and through an in-process tf.data service."""
    workload = IMAGES.scaled(scale)
    ds = shardstore.write(root / "images", make_arrays(workload), fsync=False)
    dispatcher = tf.data.experimental.service.DispatchServer()
    address = dispatcher.target.split("://")[1]
    servers = [  # kept alive while the pipelines run
        tf.data.experimental.service.WorkerServer(
            tf.data.experimental.service.WorkerConfig(dispatcher_address=address)
        )
        for _ in range(workers)
    ]
    rows = []
    batch = workload.batch_size
    for shuffle in (False, True):
        modes: dict[str, dict[str, Any]] = {
            "local, gathering reader": {},
            "local, tf_native": {"tf_native": True},
            f"tf.data service, {workers} workers": {"service": dispatcher.target},
        }
        for name, kw in modes.items():
            make = functools.partial(ds.to_tf, batch, shuffle=shuffle, seed=0, **kw)
            rate, records = _rate(make, "label", repeats)
            row = {
                "what": name,
                "shuffle": shuffle,
                "records_per_s": rate,
                "gb_per_s": rate * workload.record_nbytes / 1e9,
                "records": records,
            }
            log.info("  %-32s shuffle=%-5s %9.0f records/s  %.2f GB/s", name, shuffle, rate,
                     row["gb_per_s"])  # fmt: skip
            rows.append(row)
    del servers
    return rows


def ragged_rows(root: Path, scale: float, repeats: int) -> list[dict[str, Any]]:
    """Token sequences read as ragged, padded and bucketed batches."""
    n = max(64, int(65_536 * scale))
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 513, n)
    values = rng.integers(0, 32_000, int(lengths.sum()), dtype=np.int32)
    tokens = shardstore.RaggedArray.from_lengths(values, lengths)
    ds = shardstore.write(root / "tokens", {"tokens": tokens, "label": np.arange(n)}, fsync=False)
    mean_bytes = values.nbytes / n
    rows = []
    variants: dict[str, dict[str, Any]] = {
        "tf.RaggedTensor": {},
        "pad=True": {"pad": True},
        "bucket_boundaries='auto', pad=True": {"bucket_boundaries": "auto", "pad": True},
    }
    for shuffle in (False, "global"):
        for name, kw in variants.items():
            make = functools.partial(ds.to_tf, 256, shuffle=shuffle, seed=0, **kw)
            rate, records = _rate(make, "label", repeats)
            rows.append(
                {
                    "what": f"ragged tokens, {name}",
                    "shuffle": shuffle,
                    "records_per_s": rate,
                    "gb_per_s": rate * mean_bytes / 1e9,
                    "records": records,
                }
            )
            log.info("  ragged %-36s shuffle=%-6s %9.0f records/s  %.2f GB/s", name, shuffle,
                     rate, rate * mean_bytes / 1e9)  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run both measurements; print them and write JSON to ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/service_ragged.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = Path(tempfile.mkdtemp(prefix="ssbench-svc-"))
    try:
        rows = service_rows(root, args.scale, args.workers, args.repeats)
        rows += ragged_rows(root, args.scale, args.repeats)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"scale": args.scale, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
