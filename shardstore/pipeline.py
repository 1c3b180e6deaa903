"""Build the ``tf.data`` pipeline behind :meth:`shardstore.Dataset.to_tf`.

The reader owns parallelism, shuffling and batching; a source only turns one
shard into a dataset of *blocks* (many records per element). The stages::

    shard positions ─► [worker split] ─► [seeded shard-order shuffle]
      ─► interleave(source reader, parallel)      # blocks of records
      ─► [block shuffle buffer ─► windows ─► seeded permutation in each window]
      ─► rebatch(batch_size) ─► assert_cardinality ─► output structure ─► prefetch

Ordered reading (``shuffle=False``) uses ``interleave`` with a block length
as long as the longest shard: several shards are read concurrently, but
records come out in dataset order. Working on blocks keeps tf.data's
per-element cost (microseconds) away from every record.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import tensorflow as tf

from shardstore.errors import InvalidInputError
from shardstore.manifest import FeatureSpec
from shardstore.sources.base import ReadContext, Source

if TYPE_CHECKING:
    from shardstore.reader import Dataset

__all__ = ["BLOCK_BYTES", "WINDOW_BYTES", "ReadConfig", "build_pipeline"]

#: Target bytes per block a source yields (measured: ~1 MiB is the sweet spot
#: between per-element overhead and cache-friendly copies).
BLOCK_BYTES = 1 << 20
#: Default bytes of records mixed together by the record shuffle.
WINDOW_BYTES = 32 << 20
#: Blocks held in the block shuffle buffer.
BLOCK_SHUFFLE_BLOCKS = 16


def _positive_int(value: object, what: str, *, allow_none: bool = False, minimum: int = 1) -> Any:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise InvalidInputError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class ReadConfig:
    """The validated options of one ``to_tf`` call (see its docstring)."""

    batch_size: int | None
    read_features: tuple[str, ...]
    output: str | tuple[str, ...] | None
    shuffle: bool | str
    seed: int | None
    drop_remainder: bool
    shard: tuple[int, int] | None
    num_parallel_reads: int | None
    deterministic: bool
    prefetch: bool | int
    shuffle_buffer: int | None

    @classmethod
    def create(
        cls,
        specs: Mapping[str, FeatureSpec],
        *,
        batch_size: int | None,
        features: str | Sequence[str] | None,
        shuffle: bool | str,
        seed: int | None,
        drop_remainder: bool,
        shard: tuple[int, int] | None,
        num_parallel_reads: int | None,
        deterministic: bool | None,
        prefetch: bool | int,
        shuffle_buffer: int | None,
    ) -> ReadConfig:
        """Validate ``to_tf`` arguments; raise ``InvalidInputError`` naming the bad one."""
        batch_size = _positive_int(batch_size, "batch_size", allow_none=True)
        output: str | tuple[str, ...] | None
        if features is None:
            output, wanted = None, tuple(specs)
        elif isinstance(features, str):
            output, wanted = features, (features,)
        elif isinstance(features, Sequence) and features:
            output = wanted = tuple(features)
        else:
            raise InvalidInputError(
                f"features must be None, a name or a non-empty sequence of names, got {features!r}"
            )
        unknown = [f for f in wanted if f not in specs]
        if unknown:
            raise InvalidInputError(
                f"unknown feature(s) {unknown}; this dataset has {sorted(specs)}"
            )
        if shuffle not in (True, False, "global"):
            raise InvalidInputError(f"shuffle must be True, False or 'global', got {shuffle!r}")
        seed = _positive_int(seed, "seed", allow_none=True, minimum=0)
        if shard is not None:
            if not (isinstance(shard, tuple | list) and len(shard) == 2):
                raise InvalidInputError(f"shard must be (worker_index, num_workers), got {shard!r}")
            count = _positive_int(shard[1], "shard num_workers")
            index = _positive_int(shard[0], "shard worker_index", minimum=0)
            if index >= count:
                raise InvalidInputError(f"shard worker_index {index} is not < num_workers {count}")
            shard = (index, count)
        if deterministic is None:
            deterministic = not shuffle or seed is not None
        if not isinstance(prefetch, bool):
            prefetch = _positive_int(prefetch, "prefetch", minimum=0)
        return cls(
            batch_size=batch_size,
            read_features=tuple(dict.fromkeys(wanted)),
            output=output,
            shuffle=shuffle,
            seed=seed,
            drop_remainder=bool(drop_remainder),
            shard=shard,
            num_parallel_reads=_positive_int(
                num_parallel_reads, "num_parallel_reads", allow_none=True
            ),
            deterministic=bool(deterministic),
            prefetch=prefetch,
            shuffle_buffer=_positive_int(shuffle_buffer, "shuffle_buffer", allow_none=True),
        )


def _block_records(record_bytes: int, batch_size: int | None, longest_shard: int) -> int:
    block = max(1, BLOCK_BYTES // max(1, record_bytes))
    if batch_size and batch_size <= block:
        block -= block % batch_size  # blocks made of whole batches rebatch by slicing only
    return max(1, min(block, longest_shard))


def _seeds(seed: int | None, n: int) -> list[int | None]:
    if seed is None:
        return [None] * n
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(n, dtype=np.uint32)]


def build_pipeline(dataset: Dataset, config: ReadConfig) -> tf.data.Dataset:
    """The ``tf.data.Dataset`` for ``dataset`` read with ``config``."""
    global_shuffle = config.shuffle == "global"
    source = dataset.source_for("random_access") if global_shuffle else dataset.source
    specs = {name: dataset.features[name] for name in config.read_features}
    shards = tuple(s for s in dataset.shards if s.num_records > 0)
    if config.shard is not None:
        index, count = config.shard
        if len(shards) < count:
            raise InvalidInputError(
                f"{len(shards)} shard(s) cannot be split among {count} workers; "
                "write the dataset with smaller shards"
            )
        shards = shards[index::count]
    dataset.check_files(shards, features=config.read_features)  # issue 5: only files read
    num_records = sum(s.num_records for s in shards)
    record_bytes = sum(s.record_nbytes for s in specs.values())
    longest = max((s.num_records for s in shards), default=1)
    block = _block_records(record_bytes, config.batch_size, longest)
    ctx = ReadContext(dataset.path, shards, specs, block)
    shard_seed, block_seed, window_seed = _seeds(config.seed, 3)

    if not shards:
        empty = {
            n: np.zeros((0, *(int(d or 0) for d in s.shape)), s.dtype) for n, s in specs.items()
        }
        blocks = tf.data.Dataset.from_tensors(empty).take(0)
    elif global_shuffle:
        blocks = _global_batches(source, ctx, config, num_records, window_seed)
    else:
        read_shard = source.tf_reader(ctx)
        positions = tf.data.Dataset.range(len(shards))
        if config.shuffle:
            positions = positions.shuffle(
                len(shards), seed=shard_seed, reshuffle_each_iteration=True
            )
        parallel = min(len(shards), config.num_parallel_reads or os.cpu_count() or 2)
        blocks = positions.interleave(
            read_shard,
            cycle_length=parallel,
            # ordered: drain a shard before moving on (others are read ahead meanwhile);
            # sources yield ceil(n / block) blocks per shard (the contract in base.py)
            block_length=1 if config.shuffle else math.ceil(longest / block),
            num_parallel_calls=parallel,
            deterministic=config.deterministic,
        )
        if config.shuffle:
            blocks = _shuffle_records(blocks, config, block, record_bytes, block_seed, window_seed)

    if config.batch_size is None:
        out = blocks.unbatch()
        cardinality = num_records
    else:
        if not global_shuffle:  # global batches are already cut to size
            blocks = blocks.rebatch(config.batch_size, drop_remainder=config.drop_remainder)
        out = blocks
        full, rest = divmod(num_records, config.batch_size)
        cardinality = full + (1 if rest and not config.drop_remainder else 0)
    out = out.apply(tf.data.experimental.assert_cardinality(cardinality))

    if isinstance(config.output, str):
        name = config.output
        out = out.map(lambda e: e[name])
    elif isinstance(config.output, tuple):
        names = config.output
        out = out.map(lambda e: tuple(e[n] for n in names))
    else:
        names = tuple(dataset.features)  # manifest order, all features
        out = out.map(lambda e: {n: e[n] for n in names})

    if config.prefetch is True:
        out = out.prefetch(tf.data.AUTOTUNE)
    elif config.prefetch:
        out = out.prefetch(int(config.prefetch))
    return out


def _global_batches(
    source: Source,
    ctx: ReadContext,
    config: ReadConfig,
    num_records: int,
    seed: int | None,
) -> tf.data.Dataset:
    """Exact global shuffle: a seeded permutation per epoch, one gather per batch.

    The permutation is drawn in the graph (``stateless_shuffle`` seeded by
    ``Dataset.random``, which rerandomises every epoch); each batch's indices
    are sorted, so the source reads each shard's rows in file order, and
    handed to the source in ONE ``numpy_function`` call per batch.
    """
    from shardstore.random_access import gather_records

    batch = config.batch_size or min(256, num_records)
    drop = config.drop_remainder and config.batch_size is not None
    num_batches = num_records // batch if drop else -(-num_records // batch)
    names = list(ctx.features)
    dtypes = [tf.as_dtype(ctx.features[n].dtype) for n in names]
    shapes = [[batch if drop else None, *ctx.features[n].shape] for n in names]
    n = tf.constant(num_records, tf.int64)

    def gather(indices: np.ndarray) -> list[np.ndarray]:
        got = gather_records(source, ctx, indices)
        return [got[name] for name in names]

    def epoch(r: tf.Tensor) -> tf.data.Dataset:
        perm = tf.random.experimental.stateless_shuffle(
            tf.range(n, dtype=tf.int64), seed=tf.stack([r, tf.constant(0x610BA1, tf.int64)])
        )

        def batch_indices(j: tf.Tensor) -> tf.Tensor:
            return tf.sort(perm[j * batch : tf.minimum((j + 1) * batch, n)])

        return tf.data.Dataset.range(num_batches).map(batch_indices)

    def fetch(indices: tf.Tensor) -> dict[str, tf.Tensor]:
        parts = tf.numpy_function(gather, [indices], dtypes, stateful=False)
        return {
            name: tf.ensure_shape(part, shape)
            for name, part, shape in zip(names, parts, shapes, strict=True)
        }

    epochs = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)
    return epochs.flat_map(epoch).map(
        fetch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=config.deterministic
    )


def _shuffle_records(
    blocks: tf.data.Dataset,
    config: ReadConfig,
    block: int,
    record_bytes: int,
    block_seed: int | None,
    window_seed: int | None,
) -> tf.data.Dataset:
    """Block-level shuffle buffer, then a seeded permutation within windows.

    Every record is kept exactly once; each window of records mixes blocks
    drawn at random from the buffer, which itself draws from several shards
    read in a shuffled order.
    """
    blocks = blocks.shuffle(BLOCK_SHUFFLE_BLOCKS, seed=block_seed, reshuffle_each_iteration=True)
    window = config.shuffle_buffer or max(2 * block, WINDOW_BYTES // max(1, record_bytes))
    window = max(window, config.batch_size or 1)
    if window > block:
        blocks = blocks.rebatch(window)
    randoms = tf.data.Dataset.random(seed=window_seed, rerandomize_each_iteration=True)

    def permute(elem: dict[str, tf.Tensor], r: tf.Tensor) -> dict[str, tf.Tensor]:
        n = tf.shape(next(iter(elem.values())), out_type=tf.int64)[0]
        perm = tf.random.experimental.stateless_shuffle(
            tf.range(n), seed=tf.stack([r, tf.constant(0x5EED, tf.int64)])
        )
        return {k: tf.gather(v, perm) for k, v in elem.items()}

    return tf.data.Dataset.zip(blocks, randoms).map(
        permute, num_parallel_calls=tf.data.AUTOTUNE, deterministic=config.deterministic
    )
