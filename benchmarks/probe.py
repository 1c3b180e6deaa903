"""Measurements that need a fresh process: ``python -m benchmarks.probe KIND ...``.

Each prints one JSON object on its last line of stdout:

* ``stream PATH --mode M --batch-size B [--tf-native]``: anonymous RSS (``RssAnon`` of
  ``/proc/self/status``) after building the pipeline and its peak, sampled
  every 5 ms, while one epoch is consumed in graph;
* ``write SRC DEST``: the same around ``shardstore.write`` of the ``.npy``
  file ``SRC`` opened as a memmap (feature ``x``) plus an in-memory ``label``;
* ``ttfb PATH --mode M --batch-size B [--tf-native]``: seconds for ``open`` + ``to_tf`` +
  the first batch, in a process that has only imported TensorFlow;
* ``open PATH --repeats R``: best seconds of ``shardstore.open``;
* ``epoch PATH --mode M --batch-size B [--verify V]``: time to first batch and one whole
  epoch (consumed in graph), with the bytes this process read from storage
  (``read_bytes`` of ``/proc/self/io``): for cold-cache runs, after the caller
  evicted the dataset's pages;
* ``pread PATH --threads T``: the random-read floor: every record of one seeded
  global permutation read with ``pread`` by ``T`` threads, each feature's bytes
  of each record, with the bytes read from storage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__all__ = ["SHUFFLE", "main", "peak_anon_mb", "read_bytes", "rss_anon_mb"]

#: ``--mode`` -> the ``shuffle`` argument of ``to_tf``
SHUFFLE: dict[str, bool | str] = {"sequential": False, "shuffle": True, "global": "global"}


def rss_anon_mb() -> float:
    """This process's anonymous resident memory in MiB (Linux ``/proc/self/status``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    raise OSError("no RssAnon in /proc/self/status (Linux only)")


@contextmanager
def peak_anon_mb(interval: float = 0.005) -> Iterator[Callable[[], float]]:
    """Sample ``rss_anon_mb`` in a thread while the block runs; yields a getter of the peak."""
    peak = [rss_anon_mb()]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(interval):
            peak[0] = max(peak[0], rss_anon_mb())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield lambda: peak[0]
    finally:
        done.set()
        thread.join()
        peak[0] = max(peak[0], rss_anon_mb())


def _stream(args: argparse.Namespace) -> dict[str, Any]:
    import tensorflow as tf

    import shardstore

    ds = shardstore.open(args.path)
    tfds = ds.to_tf(
        args.batch_size,
        features=tuple(ds.features),
        shuffle=SHUFFLE[args.mode],
        seed=0,
        tf_native=args.tf_native,
    )
    baseline = rss_anon_mb()

    def count(acc: tf.Tensor, element: Any) -> tf.Tensor:
        return acc + tf.cast(tf.shape(element[0])[0], tf.int64)

    with peak_anon_mb() as peak:
        t0 = time.perf_counter()
        records = int(tfds.reduce(tf.constant(0, tf.int64), count))
        seconds = time.perf_counter() - t0
    return {
        "baseline_anon_mb": baseline,
        "peak_anon_mb": peak(),
        "records": records,
        "seconds": seconds,
        "nbytes": ds.nbytes,
    }


def _write(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    import shardstore

    x = np.load(args.src, mmap_mode="r")
    label = np.arange(len(x), dtype=np.int64)
    baseline = rss_anon_mb()
    with peak_anon_mb() as peak:
        t0 = time.perf_counter()
        ds = shardstore.write(args.dest, {"x": x, "label": label}, fsync=args.fsync)
        seconds = time.perf_counter() - t0
    return {
        "baseline_anon_mb": baseline,
        "peak_anon_mb": peak(),
        "records": ds.num_records,
        "seconds": seconds,
        "nbytes": ds.nbytes,
    }


def _ttfb(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    import tensorflow  # noqa: F401  (a training job has it loaded already)

    import shardstore

    t1 = time.perf_counter()
    ds = shardstore.open(args.path)
    t2 = time.perf_counter()
    tfds = ds.to_tf(
        args.batch_size,
        features=tuple(ds.features),
        shuffle=SHUFFLE[args.mode],
        seed=0,
        tf_native=args.tf_native,
    )
    t3 = time.perf_counter()
    iterator = iter(tfds)
    next(iterator)
    t4 = time.perf_counter()  # before the iterator goes: its end waits for reads in flight
    del iterator
    return {
        "import_s": t1 - t0,
        "open_s": t2 - t1,
        "to_tf_s": t3 - t2,
        "first_batch_s": t4 - t3,
        "seconds": t4 - t1,
        "shards": ds.num_shards,
    }


def _open(args: argparse.Namespace) -> dict[str, Any]:
    import shardstore

    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        ds = shardstore.open(args.path)
        times.append(time.perf_counter() - t0)
    return {"seconds": min(times), "all_s": times, "shards": ds.num_shards}


def read_bytes() -> int:
    """Bytes this process has read from storage (``/proc/self/io``; page-cache hits excluded)."""
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    raise OSError("no read_bytes in /proc/self/io (Linux only)")


def _epoch(args: argparse.Namespace) -> dict[str, Any]:
    import tensorflow as tf

    import shardstore

    before = read_bytes()
    t0 = time.perf_counter()
    ds = shardstore.open(args.path, verify=args.verify)
    tfds = ds.to_tf(
        args.batch_size, features=tuple(ds.features), shuffle=SHUFFLE[args.mode], seed=0
    )
    it = iter(tfds)
    first = next(it)
    t1 = time.perf_counter()
    records = int(tf.shape(tf.nest.flatten(first)[0])[0])
    for batch in it:
        records += int(tf.shape(tf.nest.flatten(batch)[0])[0])
    t2 = time.perf_counter()
    record_bytes = sum(s.record_nbytes for s in ds.features.values())
    return {
        "first_batch_s": t1 - t0,
        "seconds": t2 - t0,
        "records": records,
        "read_bytes": read_bytes() - before,
        "nbytes": ds.nbytes,
        "record_bytes": records * record_bytes,
        "shards": ds.num_shards,
    }


def _pread(args: argparse.Namespace) -> dict[str, Any]:
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    import shardstore

    ds = shardstore.open(args.path, verify="size")
    starts = np.zeros(ds.num_shards + 1, np.int64)
    np.cumsum([s.num_records for s in ds.shards], out=starts[1:])
    order = np.random.default_rng(args.seed).permutation(ds.num_records)
    names = list(ds.features)
    fds = [
        {n: os.open(ds.path / s.file_for(n).path, os.O_RDONLY) for n in names} for s in ds.shards
    ]
    for per in fds:
        for fd in per.values():
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
    layout = [
        (n, ds.features[n].record_nbytes, [s.file_for(n).info["header_bytes"] for s in ds.shards])
        for n in names
    ]
    biggest = max(size for _, size, _ in layout)
    parts = np.array_split(order, args.threads * 8)

    def work(part: np.ndarray) -> int:
        buf = bytearray(biggest)
        view = memoryview(buf)
        done = 0
        shard_of = np.searchsorted(starts, part, side="right") - 1
        for record, shard in zip(part.tolist(), shard_of.tolist(), strict=True):
            row = record - int(starts[shard])
            for name, size, headers in layout:
                done += os.preadv(fds[shard][name], [view[:size]], headers[shard] + row * size)
        return done

    before = read_bytes()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.threads) as pool:
        total = sum(pool.map(work, parts))
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "records": ds.num_records,
        "nbytes": total,
        "read_bytes": read_bytes() - before,
    }


def main(argv: list[str] | None = None) -> int:
    """Run one probe and print its JSON result."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.probe")
    sub = parser.add_subparsers(dest="kind", required=True)
    for name, fn in (("stream", _stream), ("ttfb", _ttfb)):
        p = sub.add_parser(name)
        p.add_argument("path")
        p.add_argument("--mode", choices=sorted(SHUFFLE), default="sequential")
        p.add_argument("--batch-size", type=int, default=256)
        p.add_argument("--tf-native", action="store_true", help="to_tf(tf_native=True)")
        p.set_defaults(fn=fn)
    p = sub.add_parser("write")
    p.add_argument("src")
    p.add_argument("dest")
    p.add_argument("--fsync", action=argparse.BooleanOptionalAction, default=True)
    p.set_defaults(fn=_write)
    p = sub.add_parser("open")
    p.add_argument("path")
    p.add_argument("--repeats", type=int, default=3)
    p.set_defaults(fn=_open)
    p = sub.add_parser("epoch")
    p.add_argument("path")
    p.add_argument("--mode", choices=sorted(SHUFFLE), default="sequential")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--verify", choices=("once", "size"), default="once")
    p.set_defaults(fn=_epoch)
    p = sub.add_parser("pread")
    p.add_argument("path")
    p.add_argument("--threads", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=_pread)
    args = parser.parse_args(argv)
    print(json.dumps(args.fn(args)))
    return 0


def run_probe(*args: str) -> dict[str, Any]:
    """Run a probe in a fresh Python process and return its JSON result."""
    import subprocess

    cmd = [sys.executable, "-m", "benchmarks.probe", *args]
    done = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    if done.returncode != 0:
        raise RuntimeError(f"probe {' '.join(args)} failed:\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


if __name__ == "__main__":
    raise SystemExit(main())
