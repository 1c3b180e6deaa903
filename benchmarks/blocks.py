"""How big a checksum block should be: ``python -m benchmarks.blocks``.

For each candidate block size, on this machine:

* hashing speed from Python (xxh3-64 of one block per call, as the reader
  verifies blocks), warm in memory and right after the block was copied
  (still in the CPU cache, as ``FileCheck.pread_into`` hashes);
* the index size per TB of data (8 bytes per block);
* read amplification of random reads (bytes a reader must read to verify,
  over the bytes it wanted): one 48 KiB record (images) with blocks of fixed
  size and with blocks aligned to records, one 72-byte record (tabular
  rows), one 300 KB compressed Zarr chunk at a random offset. Expected values
  over random positions, computed exactly from the layout.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import xxhash

__all__ = ["amplification", "main"]

SIZES = (16 << 10, 32 << 10, 64 << 10, 128 << 10, 256 << 10, 1 << 20)


def _hash_speed(block: int, data: memoryview, hot: bool) -> float:
    """GB/s of xxh3 over ``data`` one block per call (``hot``: one block, in the CPU cache)."""
    blocks = len(data) // block
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for i in range(blocks):
            xxhash.xxh3_64_intdigest(data[:block] if hot else data[i * block : (i + 1) * block])
        best = min(best, time.perf_counter() - t0)
    return blocks * block / best / 1e9


def amplification(read: int, block: int, *, first: int = 0, aligned_to: int = 0) -> float:
    """Expected (bytes of the blocks touched) / ``read`` for a read of ``read`` bytes.

    ``aligned_to``: reads start on multiples of it after ``first`` (records);
    else at any byte.
    """
    if aligned_to:
        starts = np.arange(0, 64 * block + aligned_to, aligned_to, dtype=np.int64)
    else:
        starts = np.arange(0, 4 * block, max(1, block // 256), dtype=np.int64)
    lo, hi = starts // block, (starts + read - 1) // block
    return float(np.mean((hi - lo + 1) * block) / read)


def main(argv: list[str] | None = None) -> int:
    """Print one line per block size."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.blocks")
    parser.add_argument("--mib", type=int, default=256, help="MiB of data hashed per size")
    args = parser.parse_args(argv)
    data = memoryview(np.random.default_rng(0).bytes(args.mib << 20))
    print(
        "block KiB | xxh3 GB/s (memory) | xxh3 GB/s (cache) | index MB per TB | "
        "48 KiB record, fixed | 48 KiB record, aligned | 72 B row | 300 KB chunk"
    )
    image = 64 * 64 * 3 * 4
    for block in SIZES:
        aligned = max(image, image * (block // image))  # what choose_layout does
        print(
            f"{block >> 10:>9} | {_hash_speed(block, data, False):>18.1f} | "
            f"{_hash_speed(block, data, True):>17.1f} | {1e12 / block * 8 / 1e6:>15.0f} | "
            f"{amplification(image, block):>20.2f} | "
            f"{amplification(image, aligned, aligned_to=image):>22.2f} | "
            f"{amplification(72, block):>8.0f} | {amplification(300_000, block):>12.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
