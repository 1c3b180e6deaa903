"""Measurement helpers shared by the demo and the benchmarks (they return numbers, print nothing).

Every pipeline is consumed in graph (``Dataset.reduce``), as Keras consumes it,
so the reader is measured rather than a Python loop; every figure is the best
of several runs after a warm-up run, i.e. with a warm page cache.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import tensorflow as tf

    from shardstore.reader import Dataset

__all__ = ["IMAGE_SHAPE", "best_of", "epoch_seconds", "np_load_floor", "synthetic_images"]

IMAGE_SHAPE = (64, 64, 3)


def synthetic_images(
    n: int, batch: int, *, classes: int = 4, seed: int = 0
) -> Iterator[dict[str, np.ndarray]]:
    """Batches of noisy float32 images whose mean colour depends on the int64 label.

    Learnable, and generated batch by batch: never all in memory.
    """
    rng = np.random.default_rng(seed)
    colours = rng.random((classes, 3), dtype=np.float32)
    for start in range(0, n, batch):
        m = min(batch, n - start)
        labels = rng.integers(0, classes, m).astype(np.int64)
        images = rng.random((m, *IMAGE_SHAPE), dtype=np.float32) * np.float32(0.5)
        images += colours[labels][:, None, None, :] * np.float32(0.5)
        yield {"image": images, "label": labels}


def best_of(fn: Callable[[], Any], repeats: int = 3) -> float:
    """Best wall time in seconds of ``repeats`` runs of ``fn``, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def np_load_floor(ds: Dataset) -> float:
    """Seconds to ``np.load`` every shard file of ``ds``: the floor readers are compared with."""
    paths = [ds.path / f.path for s in ds.shards for f in s.files]
    return best_of(lambda: [np.load(p, allow_pickle=False) for p in paths])


def epoch_seconds(tfds: tf.data.Dataset, repeats: int = 2) -> float:
    """Seconds for one epoch of ``tfds`` (elements: tuples or tensors), consumed in graph."""
    import tensorflow as tf

    def count(acc: tf.Tensor, element: Any) -> tf.Tensor:
        first = element[0] if isinstance(element, tuple) else element
        return acc + tf.cast(tf.shape(first)[0], tf.int64)

    return best_of(lambda: tfds.reduce(tf.constant(0, tf.int64), count).numpy(), repeats)
