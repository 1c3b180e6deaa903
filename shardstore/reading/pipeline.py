"""Build the ``tf.data`` pipeline behind :meth:`shardstore.Dataset.to_tf`.

The reader owns parallelism, shuffling and batching; a source only turns one
shard into a dataset of *blocks* (many records per element). The stages::

    shard positions ─► [worker split] ─► [seeded shard-order shuffle]
      ─► interleave(source reader, parallel)      # blocks of records
      ─► [block shuffle buffer ─► windows ─► seeded permutation in each window]
      ─► rebatch(batch_size) ─► assert_cardinality ─► output structure ─► prefetch

A default pipeline runs in the process that built it (it may call Python, and
its number of batches is asserted); it refuses to be split or moved by the
tf.data service with a clear message (:func:`_local_only`). A ``tf_native``
pipeline is TensorFlow ops only, made to be split: no cardinality assertion.

Ordered reading (``shuffle=False``) uses ``interleave`` with a block length
as long as the longest shard: several shards are read concurrently, but
records come out in dataset order. Working on blocks keeps tf.data's
per-element cost (microseconds) away from every record.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import numpy as np
import tensorflow as tf

from shardstore.errors import CapabilityError, InvalidInputError
from shardstore.format.manifest import FeatureSpec, ShardEntry
from shardstore.reading.tfexit import release_iterators_at_exit
from shardstore.sources.base import ReadContext, Source

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from shardstore.reading.remote import RemoteShards
    from shardstore.storage.integrity import Verifier

__all__ = ["BLOCK_BYTES", "WINDOW_BYTES", "Dataset", "ReadConfig", "build_pipeline"]

#: Target bytes per block a source yields (measured: ~1 MiB is the sweet spot
#: between per-element overhead and cache-friendly copies).
BLOCK_BYTES = 1 << 20
#: The largest block: a batch up to this size is read as one block.
MAX_BLOCK_BYTES = 16 << 20
#: Bytes of records one gather call reads (small records: many batches per call).
GATHER_BYTES = 4 << 20
#: Default bytes of records mixed together by the record shuffle.
WINDOW_BYTES = 32 << 20
#: How workers reading disjoint shares (``shard=`` / ``input_context=``) are
#: given the same number of steps: drop the batches beyond the smallest
#: share, repeat the smaller shares up to the largest, or not at all (None).
BALANCE_POLICIES: tuple[str | None, ...] = ("drop", "repeat", None)
#: Blocks held in the block shuffle buffer.
BLOCK_SHUFFLE_BLOCKS = 16


class Dataset(Protocol):
    """What the pipeline reads of a dataset: the part of :class:`shardstore.Dataset` it uses."""

    path: Path
    remote: RemoteShards | None
    verify_mode: str

    @property
    def location(self) -> str: ...

    @property
    def features(self) -> Mapping[str, FeatureSpec]: ...

    @property
    def shards(self) -> tuple[ShardEntry, ...]: ...

    @property
    def source(self) -> Source: ...

    def source_for(
        self,
        capability: str,
        *,
        wanted: str | None = None,
        instead: str | None = None,
        params: Sequence[str] = (),
    ) -> Source: ...

    def verifier(self) -> Verifier: ...

    def check_files(
        self,
        shards: Sequence[ShardEntry] | None = None,
        *,
        features: Sequence[str] | None = None,
    ) -> None: ...

    def _check_plausible(self, shards: Sequence[ShardEntry]) -> None: ...


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


def _choice(value: Any, what: str, allowed: tuple[Any, ...]) -> Any:
    if value not in allowed:
        raise InvalidInputError(f"{what} must be one of {allowed}, got {value!r}")
    return value


def _callable(value: Any, what: str) -> Any:
    if value is not None and not callable(value):
        raise InvalidInputError(f"{what} must be a callable or None, got {value!r}")
    return value


def _optional_str(value: Any, what: str) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise InvalidInputError(f"{what} must be a non-empty string or None, got {value!r}")
    return value


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
    start_step: int = 0
    balance: str | None = "drop"
    map_fn: Callable[..., Any] | None = None
    service: str | None = None
    service_sharding: str = "dynamic"
    job_name: str | None = None
    #: ragged feature -> padded length (0: the longest in the batch)
    pad: Mapping[str, int] | None = None
    pad_value: float = 0
    bucket_by: str | None = None
    bucket_boundaries: tuple[int, ...] | None = None

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
        start_step: int = 0,
        balance: str | None = "drop",
        map_fn: Callable[..., Any] | None = None,
        service: str | None = None,
        service_sharding: str = "dynamic",
        job_name: str | None = None,
        pad: bool | int | Mapping[str, int] = False,
        pad_value: float = 0,
        bucket_boundaries: Sequence[int] | str | None = None,
        bucket_by: str | None = None,
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
        ragged = [n for n in wanted if specs[n].is_ragged]
        pads = _pad_lengths(pad, ragged)
        if isinstance(pad_value, bool) or not isinstance(pad_value, int | float | np.number):
            raise InvalidInputError(f"pad_value must be a number, got {pad_value!r}")
        bucket_by, boundaries = _buckets(bucket_boundaries, bucket_by, ragged, specs)
        if boundaries is not None and (batch_size is None or start_step or service):
            raise InvalidInputError(
                "bucket_boundaries needs a batch_size, and cannot be combined with "
                "start_step or service",
                params=("batch_size",),
            )
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
            # tf.data service workers run serialised graphs: TensorFlow ops only
            tf_native=_flag(tf_native, "tf_native") or service is not None,
            start_step=_positive_int(start_step, "start_step", minimum=0),
            balance=_choice(balance, "balance", BALANCE_POLICIES),
            map_fn=_callable(map_fn, "map_fn"),
            service=_optional_str(service, "service"),
            service_sharding=_choice(service_sharding, "service_sharding", ("dynamic", "off")),
            job_name=_optional_str(job_name, "job_name"),
            pad=pads,
            pad_value=pad_value,
            bucket_by=bucket_by,
            bucket_boundaries=boundaries,
        )


def _pad_lengths(pad: Any, ragged: Sequence[str]) -> dict[str, int] | None:
    """``to_tf(pad=...)`` as ``ragged feature -> length`` (0: the batch's longest)."""
    if pad is False or pad is None:
        return None
    if not ragged:
        raise InvalidInputError("pad applies to ragged features; none of the features read is")
    if pad is True:
        return dict.fromkeys(ragged, 0)
    if isinstance(pad, int | np.integer) and not isinstance(pad, bool):
        return dict.fromkeys(ragged, _positive_int(pad, "pad"))
    if isinstance(pad, Mapping):
        unknown = sorted(set(pad) - set(ragged))
        if unknown:
            raise InvalidInputError(f"pad names {unknown}, which are not ragged features read")
        return {n: 0 if v is True else _positive_int(v, f"pad[{n!r}]") for n, v in pad.items()}
    raise InvalidInputError(
        f"pad must be True, a length, or a mapping of ragged feature to length, got {pad!r}"
    )


def _buckets(
    boundaries: Any, bucket_by: Any, ragged: Sequence[str], specs: Mapping[str, FeatureSpec]
) -> tuple[str | None, tuple[int, ...] | None]:
    """Validate ``bucket_boundaries`` / ``bucket_by``; ``"auto"``: powers of two from the stats."""
    if boundaries is None:
        if bucket_by is not None:
            raise InvalidInputError("bucket_by needs bucket_boundaries")
        return None, None
    if bucket_by is None:
        if len(ragged) != 1:
            raise InvalidInputError(
                f"bucket_boundaries needs bucket_by to name the ragged feature to bucket by "
                f"(ragged features read: {list(ragged)})"
            )
        bucket_by = ragged[0]
    if bucket_by not in ragged:
        raise InvalidInputError(f"bucket_by {bucket_by!r} is not a ragged feature read")
    if isinstance(boundaries, str):
        if boundaries != "auto":
            raise InvalidInputError(
                f"bucket_boundaries must be 'auto' or increasing lengths, got {boundaries!r}"
            )
        longest = int((specs[bucket_by].lengths or {}).get("max", 0))
        edges = tuple(1 << k for k in range(1, max(1, longest.bit_length())))
        return bucket_by, edges or (1,)
    try:
        edges = tuple(_positive_int(b, "a bucket boundary") for b in boundaries)
    except TypeError:
        raise InvalidInputError(
            f"bucket_boundaries must be 'auto' or increasing lengths, got {boundaries!r}"
        ) from None
    if not edges or any(b >= c for b, c in itertools.pairwise(edges)):
        raise InvalidInputError(f"bucket_boundaries must be increasing, got {list(edges)}")
    return bucket_by, edges


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


_F = TypeVar("_F", bound=Callable[..., Any])


def _plain(fn: _F) -> _F:
    """``fn`` as tf.data should trace it: without AutoGraph.

    The pipeline's own functions have no tensor-dependent Python control
    flow (their ``if``s test the configuration), so converting them is
    wasted work: about 0.15 s per function in a fresh process, most of the
    time to a first batch on a small dataset. (A user's ``map_fn`` keeps
    AutoGraph.)
    """
    return cast(_F, tf.autograph.experimental.do_not_convert(fn))


#: What a default pipeline says when the tf.data service splits it or runs it elsewhere.
LOCAL_ONLY_MESSAGE = (
    "shardstore: this to_tf() pipeline runs in the process that built it (it may read with "
    "Python code, and it counts on reading every shard to keep its number of batches), so "
    "the tf.data service cannot split it or run it on its workers. Use "
    "to_tf(..., service=<dispatcher address>), or apply "
    "tf.data.experimental.service.distribute to to_tf(..., tf_native=True)"
)
#: Where Linux tells a process who it is: its pid and start time (fields 1 and 22).
_PROC_STAT = "/proc/self/stat"


def _process_identity(stat: tf.Tensor) -> tf.Tensor:
    """``"<pid>:<start time>"`` from the text of ``/proc/self/stat`` (TensorFlow ops)."""
    pid = tf.strings.split(stat, " (")[0]
    after_name = tf.strings.split(stat, ") ")[-1]  # the name may hold spaces and parentheses
    start = tf.strings.split(tf.strings.strip(after_name), " ")[19]
    return tf.strings.join([pid, start], ":")


def _local_only(source: tf.data.Dataset, expected: int) -> tf.data.Dataset:
    """``source`` (the pipeline's own first dataset), refusing to be split or moved.

    The tf.data service runs a pipeline on its workers: with
    ``ShardingPolicy.DYNAMIC`` it splits the first dataset (``source``) among
    them, and a worker in another process cannot call this process's Python
    functions. A default pipeline would then fail deep inside TensorFlow
    ("expected 26 elements but contained only 0", "Could not find callback"),
    so it checks both first and fails with :data:`LOCAL_ONLY_MESSAGE`:

    * at every element, that it runs in the process that built it (Linux:
      pid and start time from ``/proc/self/stat``);
    * at the end, that it saw all ``expected`` elements of ``source``: an
      element of ``tf.data.Dataset.random``, which the service never splits,
      follows the source's last one on every worker.

    A ``tf_native`` pipeline has no such check: it is made to be split.
    """
    if os.path.exists(_PROC_STAT):
        with open(_PROC_STAT, encoding="utf-8", errors="replace") as f:
            stat = f.read()
        built_by = f"{stat.split(' (', 1)[0]}:{stat.rsplit(') ', 1)[1].split()[19]}"

        def same_process(x: tf.Tensor) -> tf.Tensor:
            here = _process_identity(tf.io.read_file(_PROC_STAT))
            check = tf.debugging.Assert(tf.equal(here, built_by), [LOCAL_ONLY_MESSAGE])
            with tf.control_dependencies([check]):
                return tf.identity(x)

        source = source.map(_plain(same_process))
    end = tf.data.Dataset.random(seed=0).take(1).map(_plain(lambda _: tf.constant(-1, tf.int64)))

    def count(seen: tf.Tensor, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        complete = tf.logical_or(x >= 0, tf.equal(seen, expected))
        check = tf.debugging.Assert(complete, [LOCAL_ONLY_MESSAGE])
        with tf.control_dependencies([check]):
            return seen + 1, tf.identity(x)

    return (
        source.concatenate(end)
        .scan(tf.constant(0, tf.int64), _plain(count))
        .filter(_plain(lambda x: x >= 0))
    )


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
    ragged = any(dataset.features[n].is_ragged for n in config.read_features)
    if config.tf_native:
        if ragged:
            raise CapabilityError(
                "ragged features are gathered by index (random_access, supports_ragged), "
                "which a tf_native pipeline (and so tf.data service) cannot do"
            )
        source = dataset.source
        source.require("tf_native")
        if config.shuffle == "global":
            raise CapabilityError(
                "shuffle='global' gathers records by index with a random_access source, "
                "which a tf_native pipeline cannot do; use shuffle=True",
                params=("shuffle",),
            )
        return source, False
    if config.shuffle == "global" or ragged:
        source = dataset.source_for(
            "random_access",
            wanted="shuffle='global'" if config.shuffle == "global" else "reading ragged features",
            instead="Use shuffle=True (blocks of records in a random order, mixed in a window)"
            if config.shuffle == "global"
            else None,
            params=("shuffle",),
        )
        if ragged:
            source.require("supports_ragged")
        return source, True
    if dataset.remote is not None and config.shuffle:
        # gathered batches of a shuffle read every shard at once, so the first batch
        # would wait for the whole dataset to download: in object storage shards are
        # read one after another, each as soon as it is in the cache (measured faster
        # cold, and as fast warm), and only the shards being read need room
        return dataset.source, False
    try:
        gatherer = dataset.source_for("random_access")
    except CapabilityError:
        return dataset.source, False
    if gatherer.gather_batches:
        return gatherer, True
    return dataset.source, False


@dataclass(frozen=True)
class _Plan:
    """What one worker reads: its shards, and the batches it delivers per epoch."""

    shards: tuple[ShardEntry, ...]
    num_records: int
    steps: int | None  # batches (records if unbatched) per epoch when balanced, else None

    @classmethod
    def create(cls, dataset: Dataset, config: ReadConfig) -> _Plan:
        shards = tuple(s for s in dataset.shards if s.num_records > 0)
        if config.shard is None:
            return cls(shards, sum(s.num_records for s in shards), None)
        index, count = config.shard
        if len(shards) < count:
            raise InvalidInputError(
                f"{len(shards)} shard(s) cannot be split among {count} workers; "
                "write the dataset with smaller shards"
            )
        shares = [sum(s.num_records for s in shards[i::count]) for i in range(count)]
        unit = config.batch_size or 1
        steps = None
        if count == 1:
            pass
        elif config.balance == "drop":
            steps = min(shares) // unit
        elif config.balance == "repeat":
            steps = max(-(-n // unit) for n in shares)
        return cls(shards[index::count], shares[index], steps)


def build_pipeline(dataset: Dataset, config: ReadConfig) -> tf.data.Dataset:
    """The ``tf.data.Dataset`` for ``dataset`` read with ``config``."""
    release_iterators_at_exit()  # a live iterator must not hang the interpreter's exit
    source, by_index = _choose_source(dataset, config)
    if config.start_step and not by_index:
        raise CapabilityError(
            f"start_step needs a source whose batches are gathered by index (random_access, "
            f"e.g. npy datasets); the {source.name!r} pipeline resumes through "
            "tf.train.Checkpoint of its iterator instead"
        )
    specs = {name: dataset.features[name] for name in config.read_features}
    plan = _Plan.create(dataset, config)
    shards, num_records = plan.shards, plan.num_records
    if config.tf_native and dataset.remote is not None:
        raise CapabilityError(
            f"tf_native=True reads the shard files with TensorFlow's own file ops, which "
            f"cannot fetch and verify them from {dataset.location}: leave tf_native off "
            "(shards are then fetched into the local cache as they are read)",
            params=("tf_native",),
        )
    if config.tf_native:
        # TensorFlow ops cannot hash: the files read are verified now, whole, up front
        dataset.check_files(shards, features=config.read_features)
    else:  # files are verified as they are read (shardstore.storage.integrity)
        dataset._check_plausible(shards)
    record_bytes = max(1, round(sum(s.mean_record_nbytes for s in specs.values())))
    longest = max((s.num_records for s in shards), default=1)
    block = _block_records(record_bytes, config.batch_size, longest)
    ctx = ReadContext(
        dataset.path,
        shards,
        specs,
        block,
        verifier=dataset.verifier(),
        lazy=not config.tf_native,
        remote=dataset.remote,
    )
    if dataset.remote is None:  # in object storage: each shard once it is fetched
        source.check_shards(ctx)
    ranged = None
    if dataset.remote is not None and shards:
        ranged = _plan_downloads(dataset, source, ctx, config, by_index)
    batch = config.batch_size
    if plan.steps is not None:
        cardinality = plan.steps
    elif batch is None:
        cardinality = num_records
    else:
        full, rest = divmod(num_records, batch)
        cardinality = full + (1 if rest and not config.drop_remainder else 0)

    if config.pad is not None and batch is None:
        raise InvalidInputError(
            "pad needs a batch_size (records are padded batch by batch)", params=("batch_size",)
        )
    if not shards or cardinality == 0:
        empty = {
            n: tf.RaggedTensor.from_row_lengths(
                np.zeros((0, *s.inner_shape), s.dtype), np.zeros(0, np.int64)
            )
            if s.is_ragged
            else np.zeros((0, *(int(d or 0) for d in s.shape)), s.dtype)
            for n, s in specs.items()
        }
        out = tf.data.Dataset.from_tensors(empty).take(0)
    elif by_index:
        one_batch = _gather_group(batch, block, record_bytes) == batch
        read = _group_reader(source, ctx, config, in_file_order=one_batch, ranged=ranged)
        out = _record_order(ctx, config, plan, record_bytes, block, read)
        if config.bucket_boundaries is not None:
            out = _bucketed(out.unbatch(), config)
        elif batch is not None:
            out = out.rebatch(batch, drop_remainder=config.drop_remainder or plan.steps is not None)
        else:
            out = out.unbatch()
    else:
        out = _block_pipeline(source, ctx, config, record_bytes)
        if plan.steps is not None and config.balance == "repeat":
            out = out.repeat()
        if batch is not None:
            out = out.rebatch(batch, drop_remainder=config.drop_remainder or plan.steps is not None)
        else:
            out = out.unbatch()
        if plan.steps is not None:
            # repeat(): "drop" never gets there (a share holds at least `steps` full
            # batches), but repeat().take(steps) has a known cardinality without an
            # assert_cardinality, which a tf_native pipeline does not have
            out = out.repeat().take(plan.steps)
    # a resumed first epoch is shorter than the next ones; a tf_native pipeline may be
    # split by the tf.data service (service=, or the user's own distribute), and then
    # each worker reads only the splits the dispatcher hands it; buckets fill unevenly
    if not config.start_step and not config.tf_native and config.bucket_boundaries is None:
        out = out.apply(tf.data.experimental.assert_cardinality(cardinality))
    if config.pad is not None:
        out = out.map(_plain(_padder(specs, config.pad, config.pad_value)))

    if isinstance(config.output, str):
        name = config.output
        out = out.map(_plain(lambda e: e[name]))
    elif isinstance(config.output, tuple):
        names = config.output
        out = out.map(_plain(lambda e: tuple(e[n] for n in names)))
    else:
        names = tuple(dataset.features)  # manifest order, all features
        out = out.map(_plain(lambda e: {n: e[n] for n in names}))
    if config.map_fn is not None:
        out = out.map(
            config.map_fn,
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=config.deterministic,
        )

    if config.service is not None:
        policy = tf.data.experimental.service.ShardingPolicy
        out = out.apply(
            tf.data.experimental.service.distribute(
                processing_mode=policy.DYNAMIC
                if config.service_sharding == "dynamic"
                else policy.OFF,
                service=config.service,
                job_name=config.job_name,
            )
        )
    if config.prefetch is True:
        out = out.prefetch(tf.data.AUTOTUNE)
    elif config.prefetch:
        out = out.prefetch(int(config.prefetch))
    return out


def _block_pipeline(
    source: Source, ctx: ReadContext, config: ReadConfig, record_bytes: int
) -> tf.data.Dataset:
    """Blocks of records from the source's block reader, interleaved (and shuffled)."""
    shard_seed, block_seed, window_seed = _seeds(config.seed, 3)
    read_shard = source.tf_reader(ctx)
    if ctx.lazy:
        read_shard = _prepared(source, ctx, read_shard)
    positions = tf.data.Dataset.range(len(ctx.shards))
    if config.shuffle:
        positions = positions.shuffle(
            len(ctx.shards), seed=shard_seed, reshuffle_each_iteration=True
        )
    if not config.tf_native:
        positions = _local_only(positions, len(ctx.shards))
    longest = max(s.num_records for s in ctx.shards)
    parallel = min(len(ctx.shards), config.num_parallel_reads or os.cpu_count() or 2)
    blocks = positions.interleave(
        read_shard,
        cycle_length=parallel,
        # ordered: drain a shard before moving on (others are read ahead meanwhile);
        # sources yield ceil(n / block) blocks per shard (the contract in base.py)
        block_length=1 if config.shuffle else math.ceil(longest / ctx.block_records),
        num_parallel_calls=parallel,
        deterministic=config.deterministic,
    )
    if config.shuffle:
        blocks = _shuffle_records(
            blocks, config, ctx.block_records, record_bytes, block_seed, window_seed
        )
    return blocks


def _plan_downloads(
    dataset: Dataset, source: Source, ctx: ReadContext, config: ReadConfig, by_index: bool
) -> ReadContext | None:
    """Prefetch the shards of a dataset in object storage ahead of the reader.

    Returns the context over sparse copies when batches are gathered from byte
    ranges instead (``shuffle="global"`` on a dataset larger than the cache).

    Shards are fetched in the order the reader opens them when it is known in Python
    (in order); a pipeline that shuffles shards in TensorFlow reads the same shards
    each epoch in another order, so they are fetched in manifest order, ``depth``
    ahead, and a shard the reader reaches first is fetched on demand. Shuffled
    batches gathered by index read from every shard at once: the whole dataset must
    fit in the cache; else a shuffle reads shard by shard (see ``_choose_source``),
    and ``shuffle="global"`` fetches each batch's records by ranged reads, when the
    source can say which bytes they are (it is refused otherwise).
    """
    remote = dataset.remote
    assert remote is not None
    if by_index and config.shuffle:
        if not remote.fits(ctx.shards) and _ranged_reads(source, ctx):
            return remote.ranged_context(ctx, dataset.verify_mode)
        what = "shuffle='global'" if config.shuffle == "global" else "this pipeline"
        remote.check_whole(ctx.shards, what=what)
        # every batch touches every shard: they stay pinned between batches (no lock,
        # stat and touch of each shard's entry per batch)
        remote.cache.keep = max(remote.cache.keep, len(ctx.shards))
    parallel = (
        1 if by_index else min(len(ctx.shards), config.num_parallel_reads or os.cpu_count() or 2)
    )
    remote.plan(ctx.shards, parallel=parallel, what="this pipeline")
    return None


def _ranged_reads(source: Source, ctx: ReadContext) -> bool:
    """Whether ``source`` reads records of ``ctx``'s shards from byte ranges it can name."""
    if not ctx.shards or any(s.blocks is None for s in ctx.shards):
        return False
    rows = np.zeros(1, dtype=np.int64)
    return all(source.record_ranges(ctx, p, rows) is not None for p in range(len(ctx.shards)))


def _prepared(
    source: Source, ctx: ReadContext, read_shard: Callable[[tf.Tensor], tf.data.Dataset]
) -> Callable[[tf.Tensor], tf.data.Dataset]:
    """``read_shard`` preceded, the first time each shard is reached, by its checks.

    One ``numpy_function`` per shard (not per block), run by the interleave
    when it opens the shard, so shards are checked in parallel and only when
    read: the files of a source that does not verify its own reads are
    hashed whole (once per process, :meth:`Verifier.require_shard`), then the
    source's :meth:`~Source.prepare_shard` runs (e.g. TFRecord framing).
    """
    verifier = None if source.verifies_reads else ctx.verifier
    has_hook = type(source).prepare_shard is not Source.prepare_shard
    remote = ctx.remote
    if verifier is None and not has_hook and remote is None:
        return read_shard
    names = tuple(ctx.features)

    def prepare(position: np.ndarray) -> np.int64:
        pos = int(position)
        if remote is not None:  # object storage: its files into the local cache, verified
            remote.fetch(ctx.shards[pos])
            source.check_shards(dataclasses.replace(ctx, shards=(ctx.shards[pos],)))
        if verifier is not None:
            verifier.require_shard(ctx.shards[pos], names)
        source.prepare_shard(ctx, pos)
        return np.int64(pos)

    def read(position: tf.Tensor) -> tf.data.Dataset:
        checked = tf.numpy_function(prepare, [position], tf.int64, stateful=False)
        return tf.data.Dataset.from_tensors(tf.reshape(checked, [])).flat_map(read_shard)

    return _plain(read)


def _gather_group(batch: int | None, block: int, record_bytes: int) -> int:
    """Records gathered by one ``numpy_function`` call: whole batches, about ``GATHER_BYTES``.

    Small records are gathered many batches at a time (then cut with
    ``rebatch``), so the per-call cost (microseconds of Python) is spread
    over megabytes; large ones one batch at a time.
    """
    if batch is None:
        return block
    return batch * max(1, GATHER_BYTES // max(1, batch * record_bytes))


def _seed_key(seed: int | None) -> tf.Tensor:
    """A stateless seed (``int64[2]``) from ``seed``, or from fresh entropy when ``None``."""
    if seed is None:
        seed = int(np.random.SeedSequence().entropy)  # type: ignore[arg-type]
    words = np.random.SeedSequence(seed).generate_state(2, dtype=np.uint64).view(np.int64)
    return tf.constant(words, tf.int64)


def _epoch_counter(first: int) -> tf.data.Dataset:
    """One element per iteration: the epoch number, ``first`` then ``first + 1``, ...

    A Python counter behind a stateful ``numpy_function``: every iteration
    over the pipeline (every epoch) asks for the next number, so the order of
    epoch ``e`` is a pure function of ``(seed, e)`` and a job can resume at
    any epoch. It runs in this process only (:func:`_local_only`, checked
    before the Python counter is called).
    """
    counter = itertools.count(first)

    def next_epoch() -> np.int64:
        return np.int64(next(counter))

    once = tf.data.Dataset.from_tensors(tf.constant(0, tf.int64))
    return _local_only(once, 1).map(
        _plain(lambda _: tf.reshape(tf.numpy_function(next_epoch, [], tf.int64, stateful=True), []))
    )


def _shard_blocks(starts: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """First and end record of every block of ``block`` records, shard by shard.

    ``starts`` holds each shard's first record and the total. Vectorised: a
    dataset of 10^5 shards is planned in milliseconds.
    """
    starts = np.asarray(starts, np.int64)
    sizes = np.diff(starts)
    counts = -(-sizes // block)
    first = np.repeat(starts[:-1], counts)
    index = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(
        np.cumsum(counts) - counts, counts
    )
    lo = first + index * block
    return lo, np.minimum(lo + block, np.repeat(starts[1:], counts))


def _record_order(
    ctx: ReadContext,
    config: ReadConfig,
    plan: _Plan,
    record_bytes: int,
    block: int,
    read: Callable[[tf.data.Dataset], tf.data.Dataset],
) -> tf.data.Dataset:
    """Record numbers (``int64`` vectors of one gather group each) in reading order.

    ``read`` turns an epoch's groups into what the pipeline yields
    (:func:`_group_reader`).

    * ``shuffle=False``: consecutive ranges, in record order.
    * ``shuffle=True``: blocks of ``block`` consecutive records in a random
      order (across every shard), records permuted within windows of about
      ``shuffle_buffer`` records. Each batch reads a few contiguous runs.
    * ``shuffle="global"``: an exact permutation of all records.

    Each epoch's order is one ``int64`` tensor (8 bytes per record), a pure
    function of ``(seed, epoch)`` (stateless random ops keyed by both): what
    lets ``start_step`` resume mid-epoch without reading what it skips, and
    ``balance`` cut or extend a worker's epoch, by slicing.
    """
    num_records = plan.num_records
    batch = config.batch_size or block
    group = _gather_group(config.batch_size, block, record_bytes)
    drop = config.drop_remainder and config.batch_size is not None
    if plan.steps is not None:
        used = plan.steps * (config.batch_size or 1)
    else:
        used = num_records // batch * batch if drop else num_records
    per_epoch = max(1, -(-used // batch))
    first_epoch, skip = divmod(config.start_step, per_epoch)
    reps = max(1, -(-used // max(1, num_records)))
    n = tf.constant(num_records, tf.int64)
    key = _seed_key(config.seed)
    block_lo, block_hi = _shard_blocks(ctx.record_starts, block)
    window = config.shuffle_buffer or max(2 * block, WINDOW_BYTES // max(1, record_bytes))
    per_window = max(1, -(-max(window, group) // block))
    num_windows = -(-len(block_lo) // per_window)

    def epoch_order(e: tf.Tensor) -> tf.Tensor:
        ekey = tf.random.experimental.stateless_fold_in(key, e)
        if not config.shuffle:
            return tf.range(n)
        if config.shuffle == "global":
            return tf.random.experimental.stateless_shuffle(tf.range(n), seed=ekey)
        los, his = tf.constant(block_lo, tf.int64), tf.constant(block_hi, tf.int64)
        blocks = tf.random.experimental.stateless_shuffle(
            tf.range(len(block_lo), dtype=tf.int64), seed=ekey
        )

        def window_records(j: tf.Tensor) -> tf.RaggedTensor:
            picked = blocks[j * per_window : (j + 1) * per_window]
            runs = tf.ragged.range(tf.gather(los, picked), tf.gather(his, picked))
            wkey = tf.random.experimental.stateless_fold_in(ekey, j)
            shuffled = tf.random.experimental.stateless_shuffle(runs.flat_values, seed=wkey)
            return tf.RaggedTensor.from_tensor(shuffled[tf.newaxis])[0]

        windows = tf.map_fn(
            window_records,
            tf.range(num_windows, dtype=tf.int64),
            fn_output_signature=tf.RaggedTensorSpec([None], tf.int64, ragged_rank=0),
        )
        return windows.flat_values

    # Group boundaries relative to the epoch's first record: one batch, then
    # doubling up to ``group``, so the first batch arrives after one batch's
    # worth of reading even when a group spans many shards.
    head, size = [0], batch
    while head[-1] < used and size < group:
        head.append(head[-1] + size)
        size *= 2
    tail = np.arange(head[-1] + group, used + group, group, dtype=np.int64)
    bounds = np.concatenate([np.asarray(head, np.int64), tail if head[-1] < used else tail[:0]])
    los, his = tf.constant(bounds[:-1], tf.int64), tf.constant(bounds[1:], tf.int64)

    def groups(e: tf.Tensor) -> tf.data.Dataset:
        order = epoch_order(e)
        if reps > 1:  # balance="repeat": this share starts over
            order = tf.tile(order, [reps])
        start = tf.where(e == first_epoch, tf.constant(skip * batch, tf.int64), 0)
        return read(
            tf.data.Dataset.from_tensor_slices((los + start, his + start))
            .filter(_plain(lambda lo, hi: lo < used))
            .map(_plain(lambda lo, hi: order[lo : tf.minimum(hi, used)]))
        )

    return _epoch_counter(first_epoch).flat_map(_plain(groups))


def _group_reader(
    source: Source,
    ctx: ReadContext,
    config: ReadConfig,
    in_file_order: bool,
    ranged: ReadContext | None = None,
) -> Callable[[tf.data.Dataset], tf.data.Dataset]:
    """An epoch's groups of record numbers -> their records, one ``numpy_function`` per group.

    The epoch's first group is read alone, the others (several at once) only
    once it is out: the first batch needs only its own shards, and groups
    read alongside it opened and read theirs on the same CPUs first (with
    1,500 small shards, the first batch came a second later). With
    ``in_file_order`` (a group is one batch), each group is sorted first, so
    the source reads every shard front to back straight into the batch.
    ``ranged``: fetch only the bytes read, into sparse copies (object storage).
    """
    from shardstore.format.ragged import RaggedArray
    from shardstore.reading.random_access import gather_records

    names = list(ctx.features)
    ragged = {n for n in names if ctx.features[n].is_ragged}
    # a ragged feature travels as two tensors: its values and each record's length
    dtypes, shapes = [], []
    for n in names:
        spec = ctx.features[n]
        if n in ragged:
            dtypes += [tf.as_dtype(spec.dtype), tf.int64]
            shapes += [[None, *spec.inner_shape], [None]]
        else:
            dtypes.append(tf.as_dtype(spec.dtype))
            shapes.append([None, *spec.shape])

    def gather(indices: np.ndarray) -> list[np.ndarray]:
        # in order, a group is consecutive records; it wraps around only when a share
        # repeats (balance="repeat"), and then its ends are not len - 1 apart
        contiguous = (
            not config.shuffle and len(indices) > 0 and indices[-1] - indices[0] == len(indices) - 1
        )
        if in_file_order and not contiguous:
            indices = np.sort(indices)
        got = gather_records(source, ctx, indices, ranged=ranged, contiguous=bool(contiguous))
        parts: list[np.ndarray] = []
        for name in names:
            value = got[name]
            if isinstance(value, RaggedArray):
                parts += [value.flat_values, value.lengths]
            else:
                parts.append(value)
        return parts

    def fetch(indices: tf.Tensor) -> dict[str, tf.Tensor | tf.RaggedTensor]:
        parts = tf.numpy_function(gather, [indices], dtypes, stateful=False)
        tensors = iter(
            tf.ensure_shape(part, shape) for part, shape in zip(parts, shapes, strict=True)
        )
        out: dict[str, tf.Tensor | tf.RaggedTensor] = {}
        for name in names:
            if name in ragged:
                values, lengths = next(tensors), next(tensors)
                out[name] = tf.RaggedTensor.from_row_lengths(values, lengths, validate=False)
            else:
                out[name] = next(tensors)
        return out

    def read(groups: tf.data.Dataset) -> tf.data.Dataset:
        rest = groups.skip(1).map(
            _plain(fetch),
            num_parallel_calls=config.num_parallel_reads or tf.data.AUTOTUNE,
            deterministic=config.deterministic,
        )
        return groups.take(1).map(_plain(fetch)).concatenate(rest)

    return read


def _bucketed(records: tf.data.Dataset, config: ReadConfig) -> tf.data.Dataset:
    """Batches of records of similar length: one open batch per length bucket.

    A record of length ``n`` goes to bucket ``i`` where ``boundaries[i-1] <= n
    < boundaries[i]``; each bucket emits a batch when it holds ``batch_size``
    records (the last ones at the end of the epoch, unless ``drop_remainder``).
    """
    name, batch = config.bucket_by, config.batch_size
    assert name is not None and batch is not None and config.bucket_boundaries is not None
    edges = tf.constant(config.bucket_boundaries, tf.int64)

    def bucket(record: dict[str, tf.Tensor]) -> tf.Tensor:
        length = tf.shape(record[name], out_type=tf.int64)[0]
        return tf.reduce_sum(tf.cast(length >= edges, tf.int64))

    def batches(_: tf.Tensor, window: tf.data.Dataset) -> tf.data.Dataset:
        return window.ragged_batch(batch, drop_remainder=config.drop_remainder)

    return records.group_by_window(
        key_func=_plain(bucket), reduce_func=_plain(batches), window_size=batch
    )


def _padder(
    specs: Mapping[str, FeatureSpec], pad: Mapping[str, int], value: float
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Batch -> batch with the ragged features in ``pad`` made dense (padded or cut to length)."""

    def dense(batch: dict[str, Any]) -> dict[str, Any]:
        out = dict(batch)
        for name, length in pad.items():
            spec = specs[name]
            fill = tf.constant(value, tf.as_dtype(spec.dtype))
            shape = [None, length or None, *spec.inner_shape]
            out[name] = batch[name].to_tensor(default_value=fill, shape=shape)
        return out

    return dense


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
        _plain(permute), num_parallel_calls=tf.data.AUTOTUNE, deterministic=config.deterministic
    )
