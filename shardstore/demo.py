"""End-to-end demo (``make demo`` / ``python -m shardstore.demo``).

Writes a real image dataset (a few hundred MB, streamed through
:class:`shardstore.Writer`), reads it back with ``to_tf``, measures
throughput next to the plain ``np.load`` floor in the same run, and trains a
small Keras model for one epoch on the shardstore pipeline.

This is a program, not library code: it prints its report.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

import shardstore

__all__ = ["main"]

IMAGE_SHAPE = (64, 64, 3)
NUM_CLASSES = 4


def synthetic_batches(n: int, batch: int, seed: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Noisy images whose mean colour depends on the label: learnable, never all in memory."""
    rng = np.random.default_rng(seed)
    colours = rng.random((NUM_CLASSES, 3), dtype=np.float32)
    for start in range(0, n, batch):
        m = min(batch, n - start)
        labels = rng.integers(0, NUM_CLASSES, m).astype(np.int64)
        images = rng.random((m, *IMAGE_SHAPE), dtype=np.float32) * np.float32(0.5)
        images += colours[labels][:, None, None, :] * np.float32(0.5)
        yield {"image": images, "label": labels}


def best_of(fn: Callable[[], object], repeats: int = 3) -> float:
    """Best wall time of ``repeats`` runs of ``fn`` (after one warm-up run)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def np_load_floor(ds: shardstore.Dataset) -> float:
    """Seconds to ``np.load`` every shard file: the floor any reader is compared with."""
    paths = [ds.path / f.path for s in ds.shards for f in s.files]

    def load_all() -> int:
        return sum(np.load(p, allow_pickle=False).shape[0] for p in paths)

    return best_of(load_all)


def consume_seconds(tfds: object) -> float:
    """Seconds for one epoch consumed in graph (``Dataset.reduce``), as Keras would."""
    import tensorflow as tf

    def epoch() -> int:
        total = tfds.reduce(  # type: ignore[attr-defined]
            tf.constant(0, tf.int64),
            lambda acc, batch: acc + tf.cast(tf.shape(batch[0])[0], tf.int64),
        )
        return int(total.numpy())

    return best_of(epoch, repeats=2)


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns an exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", default=".demo-data/images", help="dataset directory")
    parser.add_argument("--records", type=int, default=8192, help="images to write")
    parser.add_argument("--batch-size", type=int, default=256, help="batch size for reading")
    parser.add_argument("--no-train", action="store_true", help="skip the Keras epoch")
    args = parser.parse_args(argv)

    record_bytes = int(np.prod(IMAGE_SHAPE)) * 4 + 8
    print(f"shardstore {shardstore.__version__} demo: {os.cpu_count()} CPUs")
    print(f"writing {args.records} images of {IMAGE_SHAPE} float32 "
          f"({args.records * record_bytes / 1e6:.0f} MB) to {args.out} ...")  # fmt: skip
    t0 = time.perf_counter()
    with shardstore.Writer(args.out, shard_size="64MiB", overwrite=True,
                           metadata={"classes": NUM_CLASSES}) as w:  # fmt: skip
        for batch in synthetic_batches(args.records, 1024):
            w.write(batch)
    write_s = time.perf_counter() - t0
    ds = shardstore.open(args.out)
    gb = ds.nbytes / 1e9
    print(f"  wrote {ds.num_records} records in {ds.num_shards} shards, {gb:.2f} GB "
          f"in {write_s:.2f} s ({gb / write_s:.2f} GB/s including generating the images, "
          "fsync on)")  # fmt: skip
    ds.verify(progress=False)
    print("  verify: every checksum matches")

    floor_s = np_load_floor(ds)
    rows = [("np.load of the shard files (floor)", floor_s)]
    for label, shuffle in (("to_tf, in order", False), ("to_tf, shuffle=True", True)):
        tfds = ds.to_tf(batch_size=args.batch_size, features=("image", "label"),
                        shuffle=shuffle, seed=0)  # fmt: skip
        rows.append((f"shardstore {label}", consume_seconds(tfds)))
    print(f"\nread throughput (warm cache, batch {args.batch_size}, best of runs):")
    for label, secs in rows:
        print(f"  {label:<36} {ds.num_records / secs:>10,.0f} records/s  "
              f"{gb / secs:5.2f} GB/s  {floor_s / secs:4.2f}x floor")  # fmt: skip

    if not args.no_train:
        import keras

        keras.utils.set_random_seed(0)
        model = keras.Sequential([
            keras.Input(IMAGE_SHAPE),
            keras.layers.Conv2D(16, 3, strides=2, activation="relu"),
            keras.layers.Conv2D(32, 3, strides=2, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(NUM_CLASSES),
        ])  # fmt: skip
        model.compile(
            optimizer=keras.optimizers.Adam(1e-2),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        train = ds.to_tf(batch_size=64, features=("image", "label"), shuffle=True, seed=0)
        print("\ntraining a small CNN for one epoch on ds.to_tf(batch_size=64, shuffle=True) ...")
        t0 = time.perf_counter()
        history = model.fit(train, epochs=1, verbose=0, shuffle=False)  # the pipeline shuffles
        fit_s = time.perf_counter() - t0
        print(f"  1 epoch: {ds.num_records / fit_s:,.0f} records/s, "
              f"loss {history.history['loss'][-1]:.3f}, "
              f"accuracy {history.history['accuracy'][-1]:.3f}")  # fmt: skip
    print(f"\ndone. Inspect it with: shardstore info {Path(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
