"""The object-storage suite: a dataset in S3, read and written, against raw obstore floors.

One run starts its own S3-compatible server (SeaweedFS ``weed mini``,
:class:`~shardstore.testing.s3server.S3Server`) on 127.0.0.1 and stops it at the
end. The server shares the machine's CPUs with the client: on a small machine
the figures measure both at once, and every row says so. Everything is measured
side by side on the same image-like dataset (uint8 records of a few KB plus an
int64 label, npy shards of about 16 MiB):

* **floors**, with the concurrency shardstore uses: every object of the dataset
  fetched with ``store.iter_chunks`` by as many threads as the shard cache
  downloads at once (``DEFAULT_DEPTH``), and the same bytes uploaded through
  ``store.open_write`` multipart sinks by as many threads as the writer uploads
  with (``UPLOAD_CONCURRENCY``);
* **write**: ``shardstore.write(url, ...)`` against the upload floor;
* **cache fill**: every shard brought into an empty cache by its prefetcher, no
  reader (downloads verified and written to the cache's disk), against the
  download floor: what the downloads of a cold epoch cost by themselves;
* **cold epoch**: ``open`` + ``to_tf(shuffle=True)`` + one whole epoch from an empty
  cache, timed from ``open`` (shards download while the epoch runs), against the
  download floor;
* **warm epoch**: a later epoch of the same pipeline, every shard in the cache,
  against the same dataset written locally and read the same way (a later epoch
  of its pipeline, warm page cache);
* **random access**: ``ds[i]`` for random single indices on a fresh cache: the
  latency of each call (a call that first touches a shard downloads it whole);
* **requests** by kind (GET, HEAD, LIST, PUT, DELETE) of every row, from
  ``store.requests``.

Before each download floor and each cold epoch, the pages of the server's own
data files are evicted (``posix_fadvise(POSIX_FADV_DONTNEED)``, never the
machine's whole cache), so both read what the server reads from its disk.
Throughput counts the bytes of the dataset's objects (every file of every shard,
block indexes included; what the floors move), in MB/s (10^6 bytes).
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

import shardstore
from benchmarks.results import Row
from shardstore.storage.cache import ShardCache
from shardstore.storage.location import parse_location
from shardstore.storage.objects import ObjectStore

__all__ = [
    "RECORD_NBYTES",
    "RECORD_SHAPE",
    "SHARD_BYTES",
    "cache_fill",
    "evict_tree",
    "get_floor",
    "make_images",
    "put_floor",
    "records_per_shard",
    "run_objstore_suite",
    "server_line",
]

Log = Callable[[str], None]
#: One record: a small uint8 image (4,800 bytes) and an int64 label.
RECORD_SHAPE = (40, 40, 3)
RECORD_NBYTES = math.prod(RECORD_SHAPE) + 8
#: Target bytes per shard.
SHARD_BYTES = 16 << 20
BATCH_SIZE = 256


def server_line() -> str:
    """What every row says about where the server runs."""
    return (
        f"SeaweedFS S3 server on 127.0.0.1 (loopback), sharing this machine's "
        f"{os.cpu_count()} CPUs with the client"
    )


def make_images(num_records: int, *, seed: int = 0) -> dict[str, np.ndarray]:
    """``{"x": uint8 (n, 40, 40, 3), "label": int64 (n,)}``, random (incompressible)."""
    rng = np.random.default_rng(seed)
    return {
        "x": rng.integers(0, 256, (num_records, *RECORD_SHAPE), dtype=np.uint8),
        "label": np.arange(num_records, dtype=np.int64),
    }


def records_per_shard(num_records: int) -> int:
    """Shards of about :data:`SHARD_BYTES`, and at least 4 of them on a small dataset."""
    return max(1, min(SHARD_BYTES // RECORD_NBYTES, -(-num_records // 4)))


def evict_tree(directory: Path) -> None:
    """Drop the page-cache pages of every regular file under ``directory`` (after a flush)."""
    for root, _, names in os.walk(directory):
        for name in names:
            try:
                fd = os.open(os.path.join(root, name), os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:
                continue  # removed meanwhile, or a socket
            try:
                os.fdatasync(fd)  # dirty pages cannot be dropped
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            except OSError:
                pass
            finally:
                os.close(fd)


def _store(url: str, options: Mapping[str, Any]) -> ObjectStore:
    store = ObjectStore(parse_location(url), options)
    store.client  # noqa: B018 - build the client before any timing
    return store


def _remote(ds: shardstore.Dataset) -> tuple[ObjectStore, ShardCache]:
    """The object store (with its request counter) and the shard cache of a remote dataset."""
    assert ds.remote is not None and isinstance(ds.remote.store, ObjectStore)
    return ds.remote.store, ds.remote.cache


def get_floor(store: ObjectStore, keys: list[str], threads: int) -> tuple[float, int]:
    """Seconds and bytes to fetch every object of ``keys`` with ``threads`` concurrent GETs."""
    from shardstore.storage.cache import CHUNK_BYTES

    def fetch(key: str) -> int:
        return sum(memoryview(c).nbytes for c in store.iter_chunks(key, CHUNK_BYTES))

    with ThreadPoolExecutor(threads, thread_name_prefix="floor-get") as pool:
        t0 = time.perf_counter()
        nbytes = sum(pool.map(fetch, keys))
        return time.perf_counter() - t0, nbytes


def put_floor(store: ObjectStore, files: list[tuple[Path, str]], threads: int) -> tuple[float, int]:
    """Seconds and bytes to upload each local file to its key through a multipart sink."""
    from shardstore.writing.remote import UPLOAD_CHUNK

    def upload(item: tuple[Path, str]) -> int:
        path, key = item
        sink, size = store.open_write(key), 0
        with open(path, "rb") as fh:
            while chunk := fh.read(UPLOAD_CHUNK):
                sink.write(chunk)
                size += len(chunk)
        sink.close()
        return size

    with ThreadPoolExecutor(threads, thread_name_prefix="floor-put") as pool:
        t0 = time.perf_counter()
        nbytes = sum(pool.map(upload, files))
        return time.perf_counter() - t0, nbytes


def cache_fill(
    url: str, options: Mapping[str, Any], cache_dir: Path, server_dir: Path
) -> tuple[float, dict[str, int], int]:
    """Every shard into an empty cache through its prefetcher, no reader: seconds, requests, bytes.

    What a cold epoch's downloads cost by themselves (verified, written to the cache's disk).
    """
    from shardstore.reading.reader import open_remote

    store = _store(url, options)
    shards = open_remote(store, cache_dir=cache_dir).shards
    before = Counter(store.requests)
    evict_tree(server_dir)
    with ShardCache(cache_dir) as cache:
        t0 = time.perf_counter()
        cache.plan(store, shards)
        for shard in shards:
            cache.acquire(store, shard)
            cache.release(store, shard)
        seconds = time.perf_counter() - t0
    shutil.rmtree(cache_dir, ignore_errors=True)
    return seconds, _delta(store.requests, before), cache.bytes_downloaded


def _epoch(tfds: Any) -> tuple[float, int]:
    """Seconds and records of one whole epoch, consumed in graph."""
    import tensorflow as tf

    from benchmarks.read import _count

    t0 = time.perf_counter()
    records = int(tfds.reduce(tf.constant(0, tf.int64), _count).numpy())
    return time.perf_counter() - t0, records


def _delta(after: Counter[str], before: Counter[str]) -> dict[str, int]:
    return dict(sorted((after - before).items()))


def _row(
    what: str,
    mode: str,
    *,
    seconds: float,
    nbytes: int,
    requests: Mapping[str, int],
    **extra: Any,
) -> Row:
    return {
        "what": what,
        "mode": mode,
        "seconds": float(seconds),
        "nbytes": int(nbytes),
        "mb_per_s": nbytes / 1e6 / seconds,
        "requests": dict(requests),
        "requests_total": int(sum(requests.values())),
        "server": server_line(),
        **extra,
    }


@contextmanager
def _server(log: Log) -> Iterator[Any]:
    from shardstore.testing.s3server import S3Server

    t0 = time.perf_counter()
    with S3Server() as server:
        log(f"  {server_line()}: {server.endpoint}, up in {time.perf_counter() - t0:.1f} s")
        yield server


def run_objstore_suite(
    workdir: Path,
    *,
    num_records: int,
    repeats: int,
    random_reads: int,
    log: Log,
    batch_size: int = BATCH_SIZE,
) -> list[Row]:
    """Floors, write, cold and warm epochs, local epoch, ``ds[i]``; see the module docstring.

    Each throughput row is the best of ``repeats`` (a fresh cache or prefix for each
    cold epoch and write); ``random_reads`` random single indices are read with ``ds[i]``.
    """
    from shardstore.storage.cache import DEFAULT_DEPTH
    from shardstore.writing.remote import UPLOAD_CONCURRENCY

    repeats = max(1, repeats)
    root = workdir / f"objstore-{uuid.uuid4().hex[:8]}"
    root.mkdir(parents=True)
    rows: list[Row] = []
    try:
        arrays = make_images(num_records)
        per_shard = records_per_shard(num_records)
        local = shardstore.write(
            root / "local", arrays, records_per_shard=per_shard, fsync=False, progress=False
        )
        files = [(local.path / f.path, f.path) for s in local.shards for f in s.stored_files]
        nbytes = sum(f.size for s in local.shards for f in s.stored_files)
        log(
            f"objstore: {num_records:,} records of {RECORD_NBYTES:,} B, {local.num_shards} "
            f"shards of {per_shard:,} records, {nbytes / 1e6:.0f} MB of objects"
        )
        with _server(log) as server:
            opts = server.storage_options
            base = f"s3://{server.bucket}"
            detail = {
                "records": num_records,
                "record_nbytes": RECORD_NBYTES,
                "shards": local.num_shards,
            }

            # -- write: the multipart floor, then shardstore.write, alternately -------------
            # untimed: a fresh server allocates its volumes on the first writes
            put_floor(_store(f"{base}/warm-up", opts), files, UPLOAD_CONCURRENCY)
            puts: list[tuple[float, dict[str, int]]] = []
            writes: list[tuple[float, dict[str, int]]] = []
            url = ""
            for i in range(repeats):
                store = _store(f"{base}/put-floor-{i}", opts)
                seconds, moved = put_floor(store, files, UPLOAD_CONCURRENCY)
                assert moved == nbytes, (moved, nbytes)
                puts.append((seconds, _delta(store.requests, Counter())))
                url = f"{base}/data-{i}"
                t0 = time.perf_counter()
                written = shardstore.write(
                    url,
                    arrays,
                    records_per_shard=per_shard,
                    cache_dir=root / f"cache-write-{i}",
                    storage_options=opts,
                    progress=False,
                )
                seconds = time.perf_counter() - t0
                store, cache = _remote(written)
                cache.close()
                writes.append((seconds, _delta(store.requests, Counter())))
                shutil.rmtree(root / f"cache-write-{i}", ignore_errors=True)
            seconds, requests = min(puts, key=lambda p: p[0])
            put = _row(
                "floor",
                f"PUT, {UPLOAD_CONCURRENCY} multipart sinks at once",
                seconds=seconds,
                nbytes=nbytes,
                requests=requests,
                **detail,
            )
            seconds, requests = min(writes, key=lambda p: p[0])
            write = _row(
                "write",
                "shardstore.write",
                seconds=seconds,
                nbytes=nbytes,
                requests=requests,
                vs=put["seconds"] / seconds,
                vs_what="PUT floor",
                requests_note="includes the manifest GET of the dataset write() returns opened",
                **detail,
            )
            log(f"  PUT floor {put['mb_per_s']:.0f} MB/s, {put['requests_total']} requests")
            log(
                f"  shardstore.write {write['mb_per_s']:.0f} MB/s ({write['vs']:.2f} of the "
                f"floor), {write['requests_total']} requests {write['requests']}"
            )

            # -- read: the download floor around the cold epochs --------------------------
            ds = shardstore.open(url, storage_options=opts, cache_dir=root / "probe-cache")
            keys = [f.path for s in ds.shards for f in s.stored_files]
            assert sum(f.size for s in ds.shards for f in s.stored_files) == nbytes
            _remote(ds)[1].close()
            gets: list[tuple[float, dict[str, int]]] = []

            def floor_once() -> None:
                store = _store(url, opts)
                evict_tree(server.directory)
                seconds, moved = get_floor(store, keys, DEFAULT_DEPTH)
                assert moved == nbytes, (moved, nbytes)
                gets.append((seconds, _delta(store.requests, Counter())))

            floor_once()
            colds: list[tuple[float, int, dict[str, int], int, dict[str, float]]] = []
            fills: list[tuple[float, dict[str, int], int]] = []
            warms: list[tuple[float, int, dict[str, int]]] = []
            for i in range(repeats):
                cache_dir = root / f"cache-read-{i}"
                evict_tree(server.directory)
                t0 = time.perf_counter()
                ds = shardstore.open(url, storage_options=opts, cache_dir=cache_dir)
                t1 = time.perf_counter()
                tfds = ds.to_tf(batch_size, shuffle=True, seed=0)
                t2 = time.perf_counter()
                _, records = _epoch(tfds)
                seconds = time.perf_counter() - t0
                split = {"open_s": t1 - t0, "to_tf_s": t2 - t1, "reduce_s": t0 + seconds - t2}
                store, cache = _remote(ds)
                colds.append((seconds, records, _delta(store.requests, Counter()),
                              cache.bytes_downloaded, split))  # fmt: skip
                for _ in range(repeats):  # later epochs of the same pipeline: all cached
                    before = Counter(store.requests)
                    seconds, records = _epoch(tfds)
                    warms.append((seconds, records, _delta(store.requests, before)))
                cache.close()
                del tfds, ds
                shutil.rmtree(cache_dir, ignore_errors=True)
                fills.append(cache_fill(url, opts, root / f"cache-fill-{i}", server.directory))
            floor_once()
            seconds, requests = min(gets, key=lambda g: g[0])
            get = _row(
                "floor",
                f"GET, {DEFAULT_DEPTH} requests at once",
                seconds=seconds,
                nbytes=nbytes,
                requests=requests,
                **detail,
            )
            seconds, requests, downloaded = min(fills, key=lambda f: f[0])
            fill = _row(
                "cache fill",
                f"every shard into an empty cache, {DEFAULT_DEPTH} ahead, no TensorFlow",
                seconds=seconds,
                nbytes=nbytes,
                requests=requests,
                downloaded_bytes=downloaded,
                vs=get["seconds"] / seconds,
                vs_what="GET floor",
                **detail,
            )
            seconds, records, requests, downloaded, split = min(colds, key=lambda c: c[0])
            cold = _row(
                "epoch",
                "cold cache (empty), shuffle=True",
                seconds=seconds,
                nbytes=nbytes,
                requests=requests,
                epoch_records=records,
                records_per_s=records / seconds,
                downloaded_bytes=downloaded,
                vs=get["seconds"] / seconds,
                vs_what="GET floor",
                **split,
                **detail,
            )
            seconds, records, requests = min(warms, key=lambda w: w[0])
            warm = _row(
                "epoch",
                "warm cache, shuffle=True",
                seconds=seconds,
                nbytes=nbytes,
                requests=requests,
                epoch_records=records,
                records_per_s=records / seconds,
                **detail,
            )
            log(f"  GET floor {get['mb_per_s']:.0f} MB/s, {get['requests_total']} requests")
            log(
                f"  cold epoch {cold['mb_per_s']:.0f} MB/s ({cold['vs']:.2f} of the floor), "
                f"{cold['requests_total']} requests (open {split['open_s']:.2f} s, to_tf "
                f"{split['to_tf_s']:.2f} s, epoch {split['reduce_s']:.2f} s); cache fill alone "
                f"{fill['mb_per_s']:.0f} MB/s ({fill['vs']:.2f} of the floor); warm epoch "
                f"{warm['mb_per_s']:.0f} MB/s, {warm['requests_total']} requests"
            )

            # -- the same dataset, local, read the same way -------------------------------
            tfds = local.to_tf(batch_size, shuffle=True, seed=0)
            _epoch(tfds)  # warm-up, as the warm row is a later epoch of its pipeline
            seconds, records = min(_epoch(tfds) for _ in range(repeats))
            local_row = _row(
                "epoch",
                "local dataset, shuffle=True",
                seconds=seconds,
                nbytes=nbytes,
                requests={},
                epoch_records=records,
                records_per_s=records / seconds,
                **detail,
            )
            warm["vs"] = local_row["seconds"] / warm["seconds"]
            warm["vs_what"] = "local dataset"
            log(
                f"  local epoch {local_row['mb_per_s']:.0f} MB/s; warm cache "
                f"{warm['vs']:.2f} of local"
            )

            # -- ds[i] on a fresh cache ---------------------------------------------------
            ds = shardstore.open(url, storage_options=opts, cache_dir=root / "cache-random")
            store, cache = _remote(ds)
            assert ds.remote is not None
            partial = ds.remote.partial  # ds[i] fetches the blocks it reads (ranged GETs)
            before = Counter(store.requests)
            indices = np.random.default_rng(1).integers(0, num_records, random_reads)
            latencies = []
            for i in indices.tolist():
                t0 = time.perf_counter()
                record = ds[i]
                latencies.append(time.perf_counter() - t0)
                assert int(record["label"]) == i
            cache.close()
            total = sum(latencies)
            ms = sorted(1e3 * t for t in latencies)
            random = _row(
                "random access",
                "ds[i], fresh cache",
                seconds=total,
                nbytes=cache.bytes_downloaded + partial.bytes_fetched,
                requests=_delta(store.requests, before),
                mb_per_s=None,
                epoch_records=len(latencies),
                records_per_s=len(latencies) / total,
                median_ms=statistics.median(ms),
                p99_ms=float(np.percentile(ms, 99)),
                max_ms=ms[-1],
                files_downloaded=cache.downloads,
                ranged_bytes=partial.bytes_fetched,
                **detail,
            )
            log(
                f"  ds[i]: median {random['median_ms']:.2f} ms, p99 {random['p99_ms']:.1f} ms, "
                f"{random['records_per_s']:,.0f} records/s, {cache.downloads} files downloaded, "
                f"{random['ranged_bytes']:,} bytes by ranged reads, {random['requests_total']} "
                "requests"
            )
            rows += [get, fill, cold, warm, local_row, random, put, write]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return rows
