"""The scaling suite: many shards and huge manifests.

* time to first batch on a dataset of 10,000 tiny shards (tabular records),
  in a fresh process per shuffle mode (and in order with ``tf_native=True``,
  the pure-TensorFlow block pipeline): ``open`` + ``to_tf`` + first batch;
* ``open()`` of a simulated 100,000-shard manifest (a real, valid manifest
  built with :mod:`shardstore.format.manifest`, but no data files: ``open`` reads
  nothing else), best of 3 in a fresh process.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

import shardstore
from benchmarks.probe import run_probe
from benchmarks.results import Row
from benchmarks.workloads import TABULAR
from shardstore.format.manifest import MANIFEST_NAME, FeatureSpec, FileEntry, Manifest, ShardEntry

__all__ = ["many_shards", "run_scaling_suite", "simulated_manifest"]

Log = Callable[[str], None]
RECORDS_PER_SHARD = 16
CHECKSUM = "xxh3_64:0000000000000000"


def many_shards(path: Path, shards: int) -> shardstore.Dataset:
    """A tabular dataset of ``shards`` shards of 16 records (written with fsync off)."""
    n = shards * RECORDS_PER_SHARD
    rng = np.random.default_rng(0)
    arrays = {
        "x": rng.random((n, *TABULAR.shape), dtype=np.float32),
        "label": np.arange(n, dtype=np.int64),
    }
    return shardstore.write(path, arrays, records_per_shard=RECORDS_PER_SHARD, fsync=False)


def simulated_manifest(path: Path, shards: int) -> None:
    """Write a valid ``manifest.json`` of ``shards`` npy shards (tabular), without data files.

    Each shard lists what the writer lists: two ``.npy`` files and a block index.
    """
    features = {
        "x": FeatureSpec(np.dtype("<f4"), TABULAR.shape),
        "label": FeatureSpec(np.dtype("<i8"), ()),
    }
    version = "0123456789abcdef"

    def entry(i: int) -> ShardEntry:
        files = tuple(
            FileEntry(
                f"v-{version}/{i:06d}.{name}.npy",
                128 + RECORDS_PER_SHARD * spec.record_nbytes,
                CHECKSUM,
                name,
                {"header_bytes": 128},
            )
            for name, spec in features.items()
        )
        blocks = FileEntry(f"v-{version}/{i:06d}.blocks", 112, CHECKSUM)  # as the writer lists
        return ShardEntry(i, "npy", RECORDS_PER_SHARD, files, blocks)

    manifest = Manifest(
        features,
        tuple(entry(i) for i in range(shards)),
        version,
        created_by="shardstore benchmark (simulated)",
    )
    path.mkdir(parents=True, exist_ok=True)
    (path / MANIFEST_NAME).write_text(manifest.to_json())


def first_batch_rows(path: Path, modes: Sequence[str], log: Log) -> list[Row]:
    """Time to first batch in a fresh process, per mode; and in order with ``tf_native=True``."""
    rows = []
    for mode, native in [(m, False) for m in modes] + [("sequential", True)]:
        args = ["--mode", mode, "--batch-size", str(TABULAR.batch_size)]
        r = run_probe("ttfb", str(path), *args, *(["--tf-native"] if native else []))
        detail = {k.removesuffix("_s"): r[k] for k in ("open_s", "to_tf_s", "first_batch_s")}
        mode = f"{mode}, tf_native=True" if native else mode
        rows.append(
            {
                "what": "first batch",
                "mode": mode,
                "shards": r["shards"],
                "seconds": r["seconds"],
                "detail": detail,
            }
        )
        log(f"  first batch, {r['shards']:,} shards, {mode}: {r['seconds']:.3f} s {detail}")
    return rows


def run_scaling_suite(
    workdir: Path, *, shards: int, manifest_shards: int, modes: Sequence[str], log: Log
) -> list[Row]:
    """Time-to-first-batch rows per mode, and the ``open()`` row."""
    many, simulated = workdir / "many-shards", workdir / "simulated"
    try:
        many_shards(many, shards)
        rows = first_batch_rows(many, modes, log)
        shutil.rmtree(many)
        simulated_manifest(simulated, manifest_shards)
        r = run_probe("open", str(simulated), "--repeats", "3")
        rows.append(
            {
                "what": "open",
                "mode": "manifest only",
                "shards": r["shards"],
                "seconds": r["seconds"],
                "detail": {},
            }
        )
        log(f"  open() of a {r['shards']:,}-shard manifest: {r['seconds']:.3f} s (best of 3)")
    finally:
        shutil.rmtree(many, ignore_errors=True)
        shutil.rmtree(simulated, ignore_errors=True)
    return rows
