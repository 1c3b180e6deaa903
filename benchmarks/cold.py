"""The cold suite: reading datasets whose pages are not in memory.

Only this dataset's pages are evicted (``posix_fadvise(POSIX_FADV_DONTNEED)``
on each of its files, after flushing them), never the machine's whole cache.
Each measurement runs in a fresh process (:mod:`benchmarks.probe`) and reports
the bytes it read from storage (``read_bytes`` of ``/proc/self/io``). The
floors are measured in the same run, on the same files:

* ``cat``: the ``cat`` program reading every shard file in dataset order (what
  a sequential reader cannot beat);
* 16-thread ``pread``: the records of one seeded global permutation, each read
  with one ``pread`` per feature by 16 threads (what a random reader with 16
  reads in flight gets from this storage).

Rows, per dataset size (images of 64x64x3 float32, 48 KiB records, npy,
64 MiB shards): the floors; time to first batch and one epoch in order and
with ``shuffle="global"`` (bytes read against the dataset and against the
records' own bytes). Then time to first batch on a simulated 1 TB dataset:
a complete, valid dataset whose shard files are sparse (zeros, no blocks on
disk), so that the manifest, the block indexes and the reader's work per
shard are those of 1 TB while the disk holds almost nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

import shardstore
from benchmarks.probe import run_probe
from benchmarks.results import Row
from shardstore.cli.bench import IMAGE_SHAPE
from shardstore.format.blocks import BlockHasher, FileBlocks, choose_layout, encode_index
from shardstore.format.manifest import MANIFEST_NAME, FeatureSpec, FileEntry, Manifest, ShardEntry
from shardstore.sources.npy import npy_header
from shardstore.storage.checksum import format_digest, new_hasher

__all__ = ["evict", "run_cold_suite", "sparse_dataset", "write_images"]

Log = Callable[[str], None]
RECORD = (*IMAGE_SHAPE,)
RECORD_NBYTES = 4 * int(np.prod(IMAGE_SHAPE))
SHARD_BYTES = 64 << 20


def write_images(path: Path, gb: float) -> shardstore.Dataset:
    """An images dataset of about ``gb`` GB (npy, default 64 MiB shards), written in pieces.

    One 64 MiB piece of random images is generated and written again and again
    (labels differ): the disk sees ``gb`` GB, the generator costs nothing.
    """
    n = max(1, int(gb * 1e9) // (RECORD_NBYTES + 8))
    piece = max(1, SHARD_BYTES // RECORD_NBYTES)
    rng = np.random.default_rng(0)
    images = rng.random((piece, *RECORD), dtype=np.float32)
    with shardstore.Writer(path, overwrite=True, fsync=False) as w:
        for start in range(0, n, piece):
            m = min(piece, n - start)
            w.write({"x": images[:m], "label": np.arange(start, start + m, dtype=np.int64)})
    return shardstore.open(path)


def _files(path: Path) -> list[Path]:
    ds = shardstore.open(path, verify="size")
    return [path / MANIFEST_NAME] + [path / f.path for s in ds.shards for f in s.stored_files]


def evict(path: Path) -> None:
    """Drop the page-cache pages of the dataset at ``path`` (its files only), after a flush."""
    for file in _files(path):
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fdatasync(fd)  # dirty pages cannot be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def cat_floor(path: Path) -> dict[str, float]:
    """``cat`` of every shard file, in dataset order, after eviction."""
    ds = shardstore.open(path, verify="size")
    files = [str(path / f.path) for s in ds.shards for f in s.files]
    evict(path)
    t0 = time.perf_counter()
    subprocess.run(["cat", *files], stdout=subprocess.DEVNULL, check=True)
    return {"seconds": time.perf_counter() - t0, "nbytes": float(ds.nbytes)}


def sparse_dataset(path: Path, tb: float) -> shardstore.Dataset:
    """A valid images dataset of ``tb`` TB whose shard files are sparse zeros.

    Every shard is the same (64 MiB of all-zero images, zero labels): its
    checksums and block index are computed once and every shard lists them.
    """
    per = SHARD_BYTES // RECORD_NBYTES
    shards = max(1, int(tb * 1e12) // (per * (RECORD_NBYTES + 8)))
    version = "5ba45e" + "0" * 10
    directory = path / f"v-{version}"
    directory.mkdir(parents=True)
    specs = {
        "x": FeatureSpec(np.dtype("<f4"), RECORD),
        "label": FeatureSpec(np.dtype("<i8"), ()),
    }

    def describe(name: str, spec: FeatureSpec) -> tuple[bytes, int, str, FileBlocks]:
        header = npy_header(spec.dtype, (per, *(int(d) for d in spec.shape if d is not None)))
        size = len(header) + per * spec.record_nbytes
        hasher, blocks = new_hasher(), BlockHasher(*choose_layout(len(header), spec.record_nbytes))
        zeros = bytes(1 << 20)
        for data in [header] + [zeros] * ((size - len(header)) // len(zeros)):
            hasher.update(data)
            blocks.update(data)
        rest = bytes((size - len(header)) % len(zeros))
        hasher.update(rest)
        blocks.update(rest)
        checksum = format_digest(hasher)
        return header, size, checksum, blocks.finish(size, checksum)

    described = {name: describe(name, spec) for name, spec in specs.items()}
    index = encode_index([d[3] for d in described.values()])
    index_hasher = new_hasher()
    index_hasher.update(index)
    index_checksum = format_digest(index_hasher)
    entries = []
    for i in range(shards):
        files = []
        for name, (header, size, checksum, _) in described.items():
            rel = f"v-{version}/{i:06d}.{name}.npy"
            with open(path / rel, "wb") as f:
                f.write(header)
                f.truncate(size)  # a hole: no data blocks on disk
            files.append(FileEntry(rel, size, checksum, name, {"header_bytes": len(header)}))
        rel = f"v-{version}/{i:06d}.blocks"
        (path / rel).write_bytes(index)
        blocks = FileEntry(rel, len(index), index_checksum)
        entries.append(ShardEntry(i, "npy", per, tuple(files), blocks))
    manifest = Manifest(specs, tuple(entries), version, created_by="shardstore benchmark (sparse)")
    (path / MANIFEST_NAME).write_text(manifest.to_json())
    return shardstore.open(path)


def _row(what: str, mode: str, gb: float, r: dict[str, float], **extra: float | None) -> Row:
    return {
        "what": what,
        "mode": mode,
        "dataset_gb": round(gb, 3),
        "seconds": float(r["seconds"]),
        "gb_per_s": float(r.get("nbytes", 0)) / 1e9 / float(r["seconds"]),
        "read_bytes": int(r.get("read_bytes", -1)),
        **{k: v for k, v in extra.items()},
    }


def run_cold_suite(
    workdir: Path,
    *,
    sizes_gb: Sequence[float],
    sparse_tb: float,
    batch_size: int,
    log: Log,
) -> list[Row]:
    """Floors, first batch, epoch and bytes read, per size; first batch at ``sparse_tb`` TB."""
    rows: list[Row] = []
    for gb in sizes_gb:
        path = workdir / f"cold-{gb:g}gb"
        try:
            log(f"cold: writing {gb:g} GB of images ...")
            ds = write_images(path, gb)
            size = ds.nbytes / 1e9
            cat = cat_floor(path)
            rows.append(_row("floor", "cat", size, cat))
            log(f"  cat floor: {rows[-1]['gb_per_s']:.2f} GB/s")
            evict(path)
            r = run_probe("pread", str(path), "--threads", "16")
            rows.append(_row("floor", "pread x16", size, r))
            log(f"  16-thread pread floor: {rows[-1]['gb_per_s']:.2f} GB/s")
            for mode in ("sequential", "global"):
                evict(path)
                r = run_probe("epoch", str(path), "--mode", mode, "--batch-size", str(batch_size))
                kind = "cat" if mode == "sequential" else "pread x16"
                floor = next(x for x in rows if x["what"] == "floor" and x["mode"] == kind
                             and x["dataset_gb"] == round(size, 3))  # fmt: skip
                row = _row(
                    "epoch",
                    mode,
                    size,
                    {**r, "nbytes": r["record_bytes"]},
                    first_batch_s=float(r["first_batch_s"]),
                    vs_floor=(r["record_bytes"] / r["seconds"]) / (floor["gb_per_s"] * 1e9),
                    read_vs_dataset=r["read_bytes"] / r["nbytes"],
                    read_vs_records=r["read_bytes"] / r["record_bytes"],
                )
                rows.append(row)
                log(
                    f"  {mode}: first batch {row['first_batch_s']:.2f} s, epoch "
                    f"{row['gb_per_s']:.2f} GB/s ({row['vs_floor']:.2f} of the floor), read "
                    f"{row['read_vs_dataset']:.3f}x the dataset, "
                    f"{row['read_vs_records']:.3f}x the records"
                )
        finally:
            shutil.rmtree(path, ignore_errors=True)
    if sparse_tb > 0:
        path = workdir / "cold-sparse"
        try:
            log(f"cold: a simulated {sparse_tb:g} TB dataset (sparse files) ...")
            ds = sparse_dataset(path, sparse_tb)
            for mode in ("sequential", "global"):
                evict(path)
                r = run_probe("ttfb", str(path), "--mode", mode, "--batch-size", str(batch_size))
                rows.append(
                    {
                        "what": "first batch",
                        "mode": f"{mode}, simulated",
                        "dataset_gb": round(ds.nbytes / 1e9, 1),
                        "seconds": float(r["seconds"]),
                        "gb_per_s": 0.0,
                        "read_bytes": -1,
                        "first_batch_s": float(r["seconds"]),
                        "shards": ds.num_shards,
                        "detail": {k: float(r[k]) for k in ("open_s", "to_tf_s", "first_batch_s")},
                    }
                )
                log(f"  first batch, {ds.num_shards:,} shards, {mode}: {r['seconds']:.2f} s")
        finally:
            shutil.rmtree(path, ignore_errors=True)
    return rows
