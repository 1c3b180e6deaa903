"""The read suite: the np.load floor, every shardstore source and mode, every peer.

Per workload, in one process with a warm page cache: write the shardstore
datasets once (npy, zarr without and with zstd compression, tfrecord), measure
the floor (``np.load`` of the npy dataset's shard files, best of 3, before
and after the other rows: the better of the two), then one epoch (best of
``repeats`` after a warm-up epoch) of every shardstore variant and every
peer, each consumed in graph with ``Dataset.reduce``.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

import shardstore
from benchmarks.peers import PEERS, Peer, subset_size
from benchmarks.results import Row, read_row
from benchmarks.workloads import Workload
from shardstore.cli.bench import np_load_floor

__all__ = [
    "DATASETS",
    "SLOW_VARIANTS",
    "VARIANTS",
    "epoch_time",
    "run_read_suite",
    "verify_rows",
]

Arrays = Mapping[str, np.ndarray]
Log = Callable[[str], None]

#: dataset key -> (format, write options)
DATASETS: dict[str, tuple[str, dict[str, Any]]] = {
    "npy": ("npy", {}),
    "zarr": ("zarr", {"compression": None}),
    "zarr-zstd": ("zarr", {"compression": "zstd"}),
    "tfrecord": ("tfrecord", {}),
}

_MODES: dict[str, tuple[str, dict[str, Any]]] = {
    "sequential": ("in order", {}),
    "shuffle": ("`shuffle=True`", {"shuffle": True}),
    "global": ('`shuffle="global"`', {"shuffle": "global"}),
}
_ALL = ("sequential", "shuffle", "global")
#: (id, label, dataset key, read source, modes); global shuffle where there is random access
_SOURCES: tuple[tuple[str, str, str, str | None, tuple[str, ...]], ...] = (
    ("npy", "npy", "npy", None, _ALL),  # global: through memmap, npy's random-access companion
    ("memmap", "memmap", "npy", "memmap", ("sequential",)),
    ("zarr", "zarr (uncompressed)", "zarr", None, _ALL),
    ("zarr-zstd", "zarr (blosc-zstd)", "zarr-zstd", None, _ALL),
    ("tfrecord", "tfrecord", "tfrecord", None, ("sequential", "shuffle")),
)
#: (row id, label, dataset key, read source, to_tf options)
VARIANTS: tuple[tuple[str, str, str, str | None, dict[str, Any]], ...] = tuple(
    (f"{sid}:{mode}", f"shardstore {label}, {_MODES[mode][0]}", key, source, _MODES[mode][1])
    for sid, label, key, source, modes in _SOURCES
    for mode in modes
)


#: Variants too slow for a full epoch in a benchmark run: records measured (a prefix of
#: the epoch's batches), per workload. Chunked formats decode a whole chunk per record
#: gathered, so an exact global shuffle over them is slow by design.
SLOW_VARIANTS: dict[str, dict[str, int]] = {
    "zarr:global": {"images": 2048, "tabular": 1 << 18},
    "zarr-zstd:global": {"images": 2048, "tabular": 1 << 18},
}


def _count(acc: tf.Tensor, element: Any) -> tf.Tensor:
    return acc + tf.cast(tf.shape(tf.nest.flatten(element)[0])[0], tf.int64)


def epoch_time(tfds: tf.data.Dataset, repeats: int, *, budget_s: float = 5.0) -> float:
    """Best time of one epoch, consumed in graph, after a warm-up epoch.

    Runs ``repeats`` timed epochs, or fewer once they have taken ``budget_s``
    (one epoch always).
    """
    tfds.reduce(tf.constant(0, tf.int64), _count)  # warm-up: page cache, tracing, threads
    times: list[float] = []
    while len(times) < max(1, repeats) and (not times or sum(times) < budget_s):
        t0 = time.perf_counter()
        tfds.reduce(tf.constant(0, tf.int64), _count).numpy()
        times.append(time.perf_counter() - t0)
    return min(times)


def write_datasets(arrays: Arrays, root: Path) -> dict[str, shardstore.Dataset]:
    """Every dataset the variants read, written once (fsync off: reading is measured)."""
    return {
        key: shardstore.write(root / key, dict(arrays), format=fmt, fsync=False, **options)
        for key, (fmt, options) in DATASETS.items()
    }


def floor_row(workload: Workload, ds: shardstore.Dataset) -> Row:
    """``np.load`` of every shard file of the npy dataset, best of 3 after a warm-up."""
    seconds = np_load_floor(ds)
    return read_row(
        workload.name,
        "floor",
        "`np.load` of the npy shard files (floor)",
        "floor",
        records=ds.num_records,
        measured_records=ds.num_records,
        seconds=seconds,
        record_nbytes=workload.record_nbytes,
    )


def shardstore_rows(
    workload: Workload, datasets: Mapping[str, shardstore.Dataset], repeats: int, log: Log
) -> list[Row]:
    """One row per variant in :data:`VARIANTS`."""
    rows = []
    for row_id, label, key, source, options in VARIANTS:
        ds = shardstore.open(datasets[key].path, source=source)
        tfds = ds.to_tf(workload.batch_size, features=("x", "label"), seed=0, **options)
        measured = ds.num_records
        limit = SLOW_VARIANTS.get(row_id, {}).get(workload.name, measured)
        if limit < measured:  # a prefix of the epoch, whole batches, scaled to the whole
            batches = max(1, limit // workload.batch_size)
            measured = batches * workload.batch_size
            tfds = tfds.take(batches)
        rows.append(
            read_row(
                workload.name,
                row_id,
                label,
                "shardstore",
                records=ds.num_records,
                measured_records=measured,
                seconds=epoch_time(tfds, repeats),
                record_nbytes=workload.record_nbytes,
            )
        )
        log(_describe(rows[-1]))
    return rows


def verify_rows(workload: Workload, ds: shardstore.Dataset, repeats: int, log: Log) -> list[Row]:
    """What checksums cost: a first epoch that verifies every block it reads, vs sizes only.

    Per shuffle mode, on the npy dataset: the pipeline is built, then the
    process forgets what it verified (``integrity.forget()``), then one epoch
    is timed, with ``verify="once"`` and with ``verify="size"``, alternately,
    best of ``max(4, repeats)`` each. Later epochs only look blocks up.

    Best of four, not two: the first epoch of a freshly built pipeline is now
    and then about twice as slow on this path with TensorFlow's autotuning on
    (seen with both settings, never in a later epoch, never with autotuning
    off), and the minimum over two runs could still catch it.
    """
    from shardstore.storage import integrity

    rows = []
    for mode in _ALL:
        label, options = _MODES[mode]
        times: dict[str, list[float]] = {"size": [], "once": []}
        for i in range(max(4, repeats) + 1):
            for verify in ("size", "once"):
                tfds = shardstore.open(ds.path, verify=verify).to_tf(
                    workload.batch_size, features=("x", "label"), seed=0, **options
                )
                integrity.forget()
                t0 = time.perf_counter()
                tfds.reduce(tf.constant(0, tf.int64), _count).numpy()
                if i:  # the first round warms TensorFlow up
                    times[verify].append(time.perf_counter() - t0)
        for verify in ("once", "size"):
            rows.append(
                read_row(
                    workload.name,
                    f"verify:{mode}:{verify}",
                    f'shardstore npy, {label}, first epoch, `verify="{verify}"`',
                    "shardstore",
                    records=ds.num_records,
                    measured_records=ds.num_records,
                    seconds=min(times[verify]),
                    record_nbytes=workload.record_nbytes,
                )
            )
            log(_describe(rows[-1]))
    return rows


def peer_row(workload: Workload, peer: Peer, arrays: Arrays, workdir: Path, repeats: int) -> Row:
    """One peer on its subset of the records (its files in ``workdir``, removed after)."""
    n = subset_size(peer, workload.name, len(arrays["label"]))
    directory = workdir / peer.name
    directory.mkdir(parents=True)
    try:
        tfds = peer.build({k: v[:n] for k, v in arrays.items()}, directory, workload.batch_size)
        seconds = epoch_time(tfds, repeats)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return read_row(
        workload.name,
        f"peer:{peer.name}",
        peer.label,
        "peer",
        records=len(arrays["label"]),
        measured_records=n,
        seconds=seconds,
        record_nbytes=workload.record_nbytes,
    )


def run_read_suite(
    workload: Workload, arrays: Arrays, workdir: Path, *, repeats: int, log: Log
) -> list[Row]:
    """Every read row of ``workload``: floor, shardstore variants, peers."""
    root = workdir / f"read-{workload.name}"
    try:
        log(f"{workload.name}: writing the shardstore datasets ...")
        datasets = write_datasets(arrays, root)
        floor = floor_row(workload, datasets["npy"])
        log(_describe(floor))
        rows = shardstore_rows(workload, datasets, repeats, log)
        rows += verify_rows(workload, datasets["npy"], repeats, log)
        for peer in PEERS:
            rows.append(peer_row(workload, peer, arrays, root / "peers", repeats))
            log(_describe(rows[-1]))
        again = floor_row(workload, datasets["npy"])  # a busy moment must not lower the floor
        floor = floor if floor["seconds"] <= again["seconds"] else again
        log(_describe(floor))
        rows.insert(0, floor)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return rows


def _describe(row: Row) -> str:
    subset = (
        ""
        if row["measured_records"] == row["records"]
        else (f" (on {row['measured_records']:,} records)")
    )
    return (
        f"  {row['workload']}: {row['approach']}{subset}: {row['records_per_s']:,.0f} rec/s, "
        f"{row['gb_per_s']:.2f} GB/s"
    )
