"""Each source on the DESIGN.md images workload, as a ratio to the np.load floor.

One process, warm page cache, one epoch per measurement (best of 2 after a
warm-up epoch), batch 256, every pipeline consumed in graph with
``Dataset.reduce``. The floor is ``np.load`` of the npy dataset's shard files,
measured in the same run. Usage::

    python benchmarks/sources_images.py [--records 16384] [--out /tmp/ssbench]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import shardstore
from shardstore.bench import epoch_seconds, np_load_floor, synthetic_images

VARIANTS = [  # (label, format, write options, read source, to_tf options)
    ("npy, in order", "npy", {}, None, {}),
    ("npy, shuffle=True", "npy", {}, None, {"shuffle": True, "seed": 0}),
    ("memmap, in order", "npy", {}, "memmap", {}),
    ("memmap, shuffle='global'", "npy", {}, None, {"shuffle": "global", "seed": 0}),
    ("zarr (no compression), in order", "zarr", {"compression": None}, None, {}),
    ("zarr zstd, in order", "zarr", {"compression": "zstd"}, None, {}),
    ("zarr lz4, in order", "zarr", {"compression": "lz4"}, None, {}),
    ("zarr zstd, shuffle=True", "zarr", {"compression": "zstd"}, None,
     {"shuffle": True, "seed": 0}),
    ("tfrecord, in order", "tfrecord", {}, None, {}),
    ("tfrecord, shuffle=True", "tfrecord", {}, None, {"shuffle": True, "seed": 0}),
    ("hdf5 (plugin), in order", "hdf5", {}, None, {}),
]  # fmt: skip


def main() -> None:
    """Write each format once, then measure every variant next to the floor."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=16384)
    parser.add_argument("--out", default="/tmp/ssbench")
    args = parser.parse_args()
    root = Path(args.out)
    written: dict[tuple[str, str], Path] = {}
    for _, fmt, opts, _, _ in VARIANTS:
        key = (fmt, repr(sorted(opts.items())))
        if key in written or fmt not in shardstore.available_sources():
            continue
        path = root / f"{fmt}-{len(written)}"
        with shardstore.Writer(path, format=fmt, overwrite=True, fsync=False, **opts) as w:
            for batch in synthetic_images(args.records, 1024):
                w.write(batch)
        written[key] = path
    npy = shardstore.open(written[("npy", "[]")])
    gb = npy.num_records * (64 * 64 * 3 * 4 + 8) / 1e9  # decoded bytes per epoch
    floor = np_load_floor(npy)
    print(f"images: {npy.num_records} records, {gb:.2f} GB decoded, {os.cpu_count()} CPUs")
    print(f"{'np.load floor':<34} {npy.num_records / floor:>9,.0f} rec/s {gb / floor:5.2f} GB/s")
    for label, fmt, opts, source, read in VARIANTS:
        key = (fmt, repr(sorted(opts.items())))
        if key not in written:
            print(f"{label:<34} (source not installed)")
            continue
        ds = shardstore.open(written[key], source=source)
        secs = epoch_seconds(ds.to_tf(batch_size=256, features=("image", "label"), **read))
        print(f"{label:<34} {ds.num_records / secs:>9,.0f} rec/s {gb / secs:5.2f} GB/s "
              f"{floor / secs:5.2f}x floor")  # fmt: skip


if __name__ == "__main__":
    main()
