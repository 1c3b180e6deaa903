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

import itertools
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import tensorflow as tf

from shardstore.errors import CapabilityError, InvalidInputError
from shardstore.manifest import FeatureSpec
from shardstore.sources.base import ReadContext, Source

if TYPE_CHECKING:
    from shardstore.reader import Dataset

__all__ = ["BLOCK_BYTES", "WINDOW_BYTES", "ReadConfig", "build_pipeline"]

#: Target bytes per block a source yields (measured: ~1 MiB is the sweet spot
#: between per-element overhead and cache-friendly copies).
BLOCK_BYTES = 1 << 20
#: The largest block: a batch up to this size is read as one block.
MAX_BLOCK_BYTES = 16 << 20
#: Bytes of records one gather call reads (small records: many batches per call).
GATHER_BYTES = 4 << 20
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


def _flag(value: object, what: str) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise InvalidInputError(f"{what} must be True or False, got {value!r}")
    return bool(value)


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
    tf_native: bool = False

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
        tf_native: bool = False,
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
            tf_native=_flag(tf_native, "tf_native"),
        )


def _block_records(record_bytes: int, batch_size: int | None, longest_shard: int) -> int:
    """Records per block: about ``BLOCK_BYTES``, made of whole batches where possible.

    Blocks of whole batches rebatch by slicing only; a batch bigger than a
    block (but at most ``MAX_BLOCK_BYTES``) becomes one block, so it is never
    glued together from pieces.
    """
    block = max(1, BLOCK_BYTES // max(1, record_bytes))
    if batch_size and batch_size <= block:
        block -= block % batch_size
    elif batch_size and batch_size * record_bytes <= MAX_BLOCK_BYTES:
        block = batch_size
    return max(1, min(block, longest_shard))


def _seeds(seed: int | None, n: int) -> list[int | None]:
    if seed is None:
        return [None] * n
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(n, dtype=np.uint32)]


def _choose_source(dataset: Dataset, config: ReadConfig) -> tuple[Source, bool]:
    """The source to read with, and whether batches are gathered from it by index.

    Gathering by index is the fast path when the source's scattered reads are
    cheap (``gather_batches``; ``npy`` datasets read through ``memmap``): one
    ``numpy_function`` per batch reads the batch's records straight into its
    tensors. ``shuffle="global"`` always gathers (it needs random access).
    Otherwise the source's block reader (:meth:`~Source.tf_reader`) is
    interleaved; ``tf_native=True`` asks for that path with TensorFlow ops
    only (serialisable, for tf.data service).
    """
    if config.tf_native:
        source = dataset.source
        source.require("tf_native")
        if config.shuffle == "global":
            raise CapabilityError(
                "shuffle='global' gathers records by index with a random_access source, "
                "which a tf_native pipeline cannot do; use shuffle=True"
            )
        return source, False
    if config.shuffle == "global":
        return dataset.source_for("random_access"), True
    try:
        gatherer = dataset.source_for("random_access")
    except CapabilityError:
        return dataset.source, False
    if gatherer.gather_batches:
        return gatherer, True
    return dataset.source, False


def build_pipeline(dataset: Dataset, config: ReadConfig) -> tf.data.Dataset:
    """The ``tf.data.Dataset`` for ``dataset`` read with ``config``."""
    source, by_index = _choose_source(dataset, config)
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
    dataset.check_files(shards)
    num_records = sum(s.num_records for s in shards)
    record_bytes = sum(s.record_nbytes for s in specs.values())
    longest = max((s.num_records for s in shards), default=1)
    block = _block_records(record_bytes, config.batch_size, longest)
    ctx = ReadContext(dataset.path, shards, specs, block)
    source.check_shards(ctx)
    shard_seed, block_seed, window_seed = _seeds(config.seed, 3)

    if not shards:
        empty = {
            n: np.zeros((0, *(int(d or 0) for d in s.shape)), s.dtype) for n, s in specs.items()
        }
        blocks = tf.data.Dataset.from_tensors(empty).take(0)
    elif by_index:
        order = _record_order(ctx, config, num_records, record_bytes, block, window_seed)
        blocks = _gather_batches(source, ctx, config, order)
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
        if config.batch_size is not None:
            blocks = blocks.rebatch(config.batch_size, drop_remainder=config.drop_remainder)

    if config.batch_size is None:
        out = blocks.unbatch()
        cardinality = num_records
    else:
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


def _gather_group(batch: int | None, block: int, record_bytes: int) -> int:
    """Records gathered by one ``numpy_function`` call: whole batches, about ``GATHER_BYTES``.

    Small records are gathered many batches at a time (then cut with
    ``rebatch``), so the per-call cost (microseconds of Python) is spread
    over megabytes; large ones one batch at a time.
    """
    if batch is None:
        return block
    return batch * max(1, GATHER_BYTES // max(1, batch * record_bytes))


def _record_order(
    ctx: ReadContext,
    config: ReadConfig,
    num_records: int,
    record_bytes: int,
    block: int,
    seed: int | None,
) -> tf.data.Dataset:
    """Record numbers (``int64`` vectors of one gather group each) in reading order.

    * ``shuffle=False``: consecutive ranges, in record order.
    * ``shuffle=True``: blocks of ``block`` consecutive records in a random
      order (across every shard), records permuted within windows of about
      ``shuffle_buffer`` records. Each batch reads a few contiguous runs.
    * ``shuffle="global"``: an exact permutation of all records.

    The shuffled orders are drawn in the graph from ``Dataset.random``, which
    rerandomises every epoch. When a group is one batch, its numbers are
    sorted, so the source reads each shard front to back straight into the
    batch (records inside a batch come sorted); bigger groups keep the
    shuffled order (the gather sorts, reads, then puts records in place).
    """
    group = _gather_group(config.batch_size, block, record_bytes)
    drop = config.drop_remainder and config.batch_size is not None
    used = num_records // group * group if drop and group == config.batch_size else num_records
    num_groups = -(-used // group)
    n = tf.constant(used, tf.int64)
    if not config.shuffle:
        return tf.data.Dataset.range(num_groups).map(
            lambda j: tf.range(j * group, tf.minimum((j + 1) * group, n))
        )

    if config.shuffle == "global":

        def epoch(r: tf.Tensor) -> tf.data.Dataset:
            perm = tf.random.experimental.stateless_shuffle(
                tf.range(num_records, dtype=tf.int64),
                seed=tf.stack([r, tf.constant(0x610BA1, tf.int64)]),
            )
            return tf.data.Dataset.range(num_groups).map(
                lambda j: perm[j * group : tf.minimum((j + 1) * group, n)]
            )

    else:
        starts = ctx.record_starts.tolist()
        lo = np.concatenate([np.arange(a, b, block) for a, b in itertools.pairwise(starts)])
        hi = np.concatenate(
            [np.minimum(np.arange(a, b, block) + block, b) for a, b in itertools.pairwise(starts)]
        )
        block_lo, block_hi = tf.constant(lo, tf.int64), tf.constant(hi, tf.int64)
        window = config.shuffle_buffer or max(2 * block, WINDOW_BYTES // max(1, record_bytes))
        per_window = max(1, -(-max(window, group) // block))
        num_windows = -(-len(lo) // per_window)

        def epoch(r: tf.Tensor) -> tf.data.Dataset:
            perm = tf.random.experimental.stateless_shuffle(
                tf.range(len(lo), dtype=tf.int64), seed=tf.stack([r, tf.constant(0xB10C, tf.int64)])
            )

            def window_records(j: tf.Tensor) -> tf.Tensor:
                picked = perm[j * per_window : (j + 1) * per_window]
                records = tf.ragged.range(
                    tf.gather(block_lo, picked), tf.gather(block_hi, picked)
                ).flat_values
                return tf.random.experimental.stateless_shuffle(records, seed=tf.stack([r, j]))

            return tf.data.Dataset.range(num_windows).map(window_records).rebatch(group)

    epochs = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)
    order = epochs.flat_map(epoch)
    if group == config.batch_size:
        order = order.map(tf.sort)
    return order


def _gather_batches(
    source: Source, ctx: ReadContext, config: ReadConfig, order: tf.data.Dataset
) -> tf.data.Dataset:
    """Batches of the records ``order`` names: one ``numpy_function`` call per group."""
    from shardstore.random_access import gather_records

    names = list(ctx.features)
    dtypes = [tf.as_dtype(ctx.features[n].dtype) for n in names]
    shapes = [[None, *ctx.features[n].shape] for n in names]

    def gather(indices: np.ndarray) -> list[np.ndarray]:
        got = gather_records(source, ctx, indices)
        return [got[name] for name in names]

    def fetch(indices: tf.Tensor) -> dict[str, tf.Tensor]:
        parts = tf.numpy_function(gather, [indices], dtypes, stateful=False)
        return {
            name: tf.ensure_shape(part, shape)
            for name, part, shape in zip(names, parts, shapes, strict=True)
        }

    groups = order.map(
        fetch,
        num_parallel_calls=config.num_parallel_reads or tf.data.AUTOTUNE,
        deterministic=config.deterministic,
    )
    if config.batch_size is None:
        return groups
    return groups.rebatch(config.batch_size, drop_remainder=config.drop_remainder)


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
