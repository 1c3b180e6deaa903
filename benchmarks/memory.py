"""The memory suite: anonymous RSS while writing from a memmap and while streaming.

For each size (default 1 and 4 GB of images): build a ``.npy`` input of that
size on disk, ``shardstore.write`` it from ``np.load(mmap_mode="r")`` in a
fresh process (peak ``RssAnon`` must stay well under the input size), then
stream one epoch of the dataset just written in a fresh process per shuffle
mode. Peak anonymous RSS must not grow with the dataset: compare the sizes.
Page-cache and memory-mapped file pages are not anonymous memory, so they do
not count. Everything lives in ``workdir`` and is removed as soon as possible.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from benchmarks.probe import run_probe
from benchmarks.results import Row
from benchmarks.workloads import IMAGES

__all__ = ["make_input", "run_memory_suite"]

Log = Callable[[str], None]


def make_input(path: Path, gigabytes: float) -> int:
    """An images-shaped float32 ``.npy`` of about ``gigabytes`` GB on disk; return its records."""
    record = 4 * int(np.prod(IMAGES.shape))
    n = max(1, int(gigabytes * 1e9 // record))
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, *IMAGES.shape))
    step = max(1, (64 << 20) // record)
    for lo in range(0, n, step):  # cheap, non-zero content: no sparse file
        hi = min(n, lo + step)
        array[lo:hi] = (np.arange(lo, hi, dtype=np.float32) % 251)[:, None, None, None]
    array.flush()
    del array
    return n


def _row(what: str, mode: str, result: dict[str, float]) -> Row:
    return {
        "what": what,
        "mode": mode,
        "dataset_gb": result["nbytes"] / 1e9,
        "baseline_anon_mb": result["baseline_anon_mb"],
        "peak_anon_mb": result["peak_anon_mb"],
        "seconds": result["seconds"],
    }


def run_memory_suite(
    sizes_gb: Sequence[float], modes: Sequence[str], workdir: Path, *, log: Log
) -> list[Row]:
    """Write and stream rows for every size (and every mode)."""
    rows = []
    for gb in sizes_gb:
        src, dest = workdir / f"memmap-{gb}.npy", workdir / f"memory-{gb}"
        try:
            make_input(src, gb)
            rows.append(
                _row("write", "npy from memmap, fsync on", run_probe("write", str(src), str(dest)))
            )
            src.unlink()
            log(
                f"  memory: write() from a {gb} GB memmap: peak anon RSS "
                f"{rows[-1]['peak_anon_mb']:.0f} MB"
            )
            for mode in modes:
                result = run_probe(
                    "stream", str(dest), "--mode", mode, "--batch-size", str(IMAGES.batch_size)
                )
                rows.append(_row("stream", mode, result))
                log(
                    f"  memory: streaming {gb} GB, {mode}: peak anon RSS "
                    f"{rows[-1]['peak_anon_mb']:.0f} MB"
                )
        finally:
            src.unlink(missing_ok=True)
            shutil.rmtree(dest, ignore_errors=True)
    return rows
