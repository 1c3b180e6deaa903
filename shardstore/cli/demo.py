"""The end-to-end demo behind ``make demo`` / ``shardstore demo``.

Writes a real image dataset (a few hundred MB, streamed through
:class:`shardstore.Writer`), verifies it, reads it back with ``to_tf`` next to
the plain ``np.load`` floor measured in the same run, and trains a small Keras
model for one epoch on the shardstore pipeline. It reports through the
``report`` callable it is given (the CLI passes ``print``; the default logs).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import shardstore
from shardstore.cli.bench import IMAGE_SHAPE, epoch_seconds, np_load_floor, synthetic_images

__all__ = ["run_demo"]

log = logging.getLogger(__name__)

NUM_CLASSES = 4


def run_demo(
    out: str | os.PathLike[str] = ".demo-data/images",
    *,
    records: int = 8192,
    batch_size: int = 256,
    train: bool = True,
    report: Callable[[str], None] = log.info,
) -> dict[str, float]:
    """Run the demo; return its measurements (seconds, records/s, accuracy)."""
    results: dict[str, float] = {}
    record_bytes = int(np.prod(IMAGE_SHAPE)) * 4 + 8
    report(f"shardstore {shardstore.__version__} demo: {os.cpu_count()} CPUs")
    report(f"writing {records} images of {IMAGE_SHAPE} float32 "
           f"({records * record_bytes / 1e6:.0f} MB) to {out} ...")  # fmt: skip
    t0 = time.perf_counter()
    with shardstore.Writer(out, shard_size="64MiB", overwrite=True,
                           metadata={"classes": NUM_CLASSES}) as w:  # fmt: skip
        for batch in synthetic_images(records, 1024, classes=NUM_CLASSES):
            w.write(batch)
    results["write_s"] = time.perf_counter() - t0
    ds = shardstore.open(out)
    gb = ds.nbytes / 1e9
    report(f"  wrote {ds.num_records} records in {ds.num_shards} shards, {gb:.2f} GB "
           f"in {results['write_s']:.2f} s ({gb / results['write_s']:.2f} GB/s including "
           "generating the images, fsync on)")  # fmt: skip
    ds.verify(progress=False)
    report("  verify: every checksum matches")

    floor_s = np_load_floor(ds)
    rows = [("np.load of the shard files (floor)", "floor_s", floor_s)]
    for label, key, shuffle in (("to_tf, in order", "ordered_s", False),
                                ("to_tf, shuffle=True", "shuffled_s", True)):  # fmt: skip
        tfds = ds.to_tf(batch_size=batch_size, features=("image", "label"),
                        shuffle=shuffle, seed=0)  # fmt: skip
        rows.append((f"shardstore {label}", key, epoch_seconds(tfds)))
    report(f"\nread throughput (warm cache, batch {batch_size}, best of runs):")
    for label, key, secs in rows:
        results[key] = secs
        report(f"  {label:<36} {ds.num_records / secs:>10,.0f} records/s  "
               f"{gb / secs:5.2f} GB/s  {floor_s / secs:4.2f}x floor")  # fmt: skip

    if train:
        results.update(_train_one_epoch(ds, report))
    report(f"\ndone. Inspect it with: shardstore info {Path(out)}")
    return results


def _train_one_epoch(ds: shardstore.Dataset, report: Callable[[str], None]) -> dict[str, float]:
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
    report("\ntraining a small CNN for one epoch on ds.to_tf(batch_size=64, shuffle=True) ...")
    t0 = time.perf_counter()
    history = model.fit(train, epochs=1, verbose=0, shuffle=False)  # the pipeline shuffles
    fit_s = time.perf_counter() - t0
    accuracy = float(history.history["accuracy"][-1])
    report(f"  1 epoch: {ds.num_records / fit_s:,.0f} records/s, "
           f"loss {history.history['loss'][-1]:.3f}, accuracy {accuracy:.3f}")  # fmt: skip
    return {"fit_s": fit_s, "accuracy": accuracy}
