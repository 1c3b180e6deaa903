"""Measurement helpers shared by the demo, ``shardstore bench`` and ``benchmarks/``.

They return numbers and print nothing. Every pipeline is consumed in graph
(``Dataset.reduce``, or a ``tf.function`` loop over the iterator, as Keras
consumes it), so the reader is measured rather than a Python loop: a Python
``for`` over a ``tf.data`` iterator costs tens of microseconds per element by
itself. :func:`best_of` figures are the best of several runs after a warm-up
run, i.e. with a warm page cache.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from shardstore.storage.progress import progress_bar

if TYPE_CHECKING:
    import tensorflow as tf

    from shardstore.reading.reader import Dataset

__all__ = [
    "IMAGE_SHAPE",
    "EpochStats",
    "best_of",
    "epoch_seconds",
    "np_load_floor",
    "stream_epochs",
    "synthetic_images",
]

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


@dataclass(frozen=True)
class EpochStats:
    """One epoch streamed by :func:`stream_epochs`.

    ``seconds`` runs from creating the iterator to the last batch (tracing of
    the consuming ``tf.function`` excluded); ``first_batch_s`` from creating
    the iterator to holding the first batch.
    """

    epoch: int
    records: int
    batches: int
    nbytes: int
    seconds: float
    first_batch_s: float

    @property
    def records_per_s(self) -> float:
        """Records delivered per second."""
        return self.records / self.seconds if self.seconds > 0 else float("inf")

    @property
    def gb_per_s(self) -> float:
        """Decoded gigabytes (10^9 bytes) delivered per second."""
        return self.nbytes / 1e9 / self.seconds if self.seconds > 0 else float("inf")


def _batch_records(element: Any) -> Any:
    import tensorflow as tf

    first = tf.nest.flatten(element)[0]
    return tf.cast(tf.shape(first)[0], tf.int64)


def _consumer(steps: int) -> Any:
    """A ``tf.function`` taking up to ``steps`` batches from an iterator: (records, batches)."""
    import tensorflow as tf

    def consume(iterator: Any) -> tuple[tf.Tensor, tf.Tensor]:
        records = tf.constant(0, tf.int64)
        batches = tf.constant(0, tf.int64)
        for _ in tf.range(steps):
            optional = iterator.get_next_as_optional()
            if not optional.has_value():
                break
            records += _batch_records(optional.get_value())
            batches += 1
        return records, batches

    return tf.function(consume)


def stream_epochs(
    tfds: tf.data.Dataset,
    *,
    record_nbytes: int,
    epochs: int = 1,
    total_records: int | None = None,
    progress: bool | None = None,
    steps_per_call: int = 64,
) -> list[EpochStats]:
    """Stream ``epochs`` epochs of ``tfds`` in graph, with a progress bar; time each one.

    The first batch of each epoch is fetched eagerly (that is the time to first
    batch); the rest is consumed ``steps_per_call`` batches per call of a
    ``tf.function``, like Keras' ``steps_per_execution``, so the bar moves
    while the reader, not Python, sets the pace. ``record_nbytes`` (decoded
    bytes per record) turns records into bytes; ``total_records`` sizes the bar.
    """
    consume = _consumer(max(1, int(steps_per_call)))
    traced = False
    stats = []
    for epoch in range(1, epochs + 1):
        with progress_bar(
            total=total_records, desc=f"epoch {epoch}/{epochs}", unit="rec", enabled=progress
        ) as bar:
            t0 = time.perf_counter()
            iterator = iter(tfds)
            try:
                first = next(iterator)
            except StopIteration:
                first = None
            first_s = time.perf_counter() - t0
            records = int(_batch_records(first)) if first is not None else 0
            batches = 1 if first is not None else 0
            bar.update(records)
            tracing = 0.0
            if first is not None and not traced:
                t1 = time.perf_counter()
                consume.get_concrete_function(iterator)
                tracing, traced = time.perf_counter() - t1, True
            while first is not None:
                got, steps = (int(v) for v in consume(iterator))
                records, batches = records + got, batches + steps
                bar.update(got)
                if steps < steps_per_call:
                    break
            seconds = time.perf_counter() - t0 - tracing
        stats.append(EpochStats(epoch, records, batches, records * record_nbytes, seconds, first_s))
    return stats
