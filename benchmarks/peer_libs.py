"""The data-loading libraries a TensorFlow user would pick instead of shardstore.

Each :class:`Library` writes its own format once (untimed) and builds one
``tf.data.Dataset`` per mode it offers, yielding ``(x, label)`` batches as
TensorFlow tensors: ``"sequential"`` (in order), ``"shuffle"`` (its own
shuffle, usually by blocks or windows) and ``"global"`` (a uniform shuffle
of every record, where the library has one). Each uses the settings its
documentation recommends (``Library.settings`` says which); libraries that
yield NumPy in Python are wrapped the way their documentation tells
TensorFlow users: their own TF adapter where they have one, otherwise
``tf.data.Dataset.from_generator`` over their iterator, or a parallel
``map`` of a ``numpy_function`` over batch numbers for random-access reads.

The libraries are imported only when a library is used: this module itself
needs NumPy and TensorFlow only (the zarr adapter uses zarr, a dependency of
shardstore, and is tested in ``make test``). The others come from
``requirements/peers.txt`` and ``requirements/peers-torch.txt``
(``make bench-peers``).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

__all__ = [
    "FILE_BYTES",
    "LIBRARIES",
    "MODES",
    "Library",
    "batch_order",
    "by_name",
    "from_batches",
    "indexed_batches",
    "versions",
]

Arrays = Mapping[str, np.ndarray]
Batch = tuple[np.ndarray, np.ndarray]
AUTOTUNE = tf.data.AUTOTUNE
#: Files / shards of about 64 MiB, like shardstore's default shards.
FILE_BYTES = 64 << 20
MODES = ("sequential", "shuffle", "global")
SEED = 0


@dataclass(frozen=True)
class Library:
    """A peer library: its format writer, one pipeline per mode, and how it was set up.

    ``write(arrays, directory, batch_size)`` returns the state
    ``build(state, mode, batch_size)`` reads; ``modes`` maps each mode the
    library offers to what the row does; ``python`` names the interpreter it
    runs in (``"main"``: this process; ``"torch"``: the venv of
    ``requirements/peers-torch.txt``). Where a full epoch would take too
    long: ``max_records`` (per workload) makes its dataset that many records,
    and ``prefix_records`` (per mode, per workload) times only a prefix of the
    epoch's batches, scaled to the whole. ``preload``: modules its interpreter
    must import before TensorFlow.
    """

    name: str
    label: str
    distributions: tuple[str, ...]
    modes: Mapping[str, str]
    settings: str
    write: Callable[[Arrays, Path, int], Any]
    build: Callable[[Any, str, int], tf.data.Dataset]
    python: str = "main"
    max_records: Mapping[str, int] = field(default_factory=dict)
    prefix_records: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    preload: tuple[str, ...] = ()


def versions(library: Library) -> dict[str, str]:
    """``{distribution: version}`` of what ``library`` runs on here (raises if not installed)."""
    return {d: importlib.metadata.version(d) for d in library.distributions}


def _signature(shape: tuple[int, ...]) -> tuple[tf.TensorSpec, tf.TensorSpec]:
    return tf.TensorSpec((None, *shape), tf.float32), tf.TensorSpec((None,), tf.int64)


def _per_file(arrays: Arrays) -> int:
    record = sum(a[:1].nbytes for a in arrays.values())
    return max(1, FILE_BYTES // record)


def _ranges(n: int, step: int) -> Iterator[tuple[int, int, int]]:
    for k, lo in enumerate(range(0, n, step)):
        yield k, lo, min(n, lo + step)


def from_batches(make: Callable[[], Iterable[Batch]], shape: tuple[int, ...]) -> tf.data.Dataset:
    """``from_generator`` over a library's iterator of NumPy ``(x, label)`` batches.

    ``make`` is called once per epoch (a fresh iterator each time).
    """

    def generate() -> Iterator[Batch]:
        for x, label in make():
            yield np.asarray(x, np.float32).reshape(-1, *shape), np.asarray(label, np.int64)

    ds = tf.data.Dataset.from_generator(generate, output_signature=_signature(shape))
    return ds.prefetch(AUTOTUNE)


def batch_order(num_records: int, batch_size: int, mode: str) -> np.ndarray:
    """Batch numbers in the order a mode reads them (shuffled by ``SEED`` unless in order).

    A short last batch stays last, so that any prefix of whole batches holds
    ``batch_size`` records per batch.
    """
    batches = np.arange(-(-num_records // batch_size), dtype=np.int64)
    if mode != "sequential":
        np.random.default_rng(SEED).shuffle(batches[: num_records // batch_size])
    return batches


def indexed_batches(
    read: Callable[[int], Batch], order: np.ndarray, shape: tuple[int, ...]
) -> tf.data.Dataset:
    """Batches ``read(i)`` for each ``i`` of ``order``, read by a parallel, ordered ``map``.

    The usual way to feed TensorFlow from a random-access reader: one
    ``numpy_function`` per batch, ``num_parallel_calls=AUTOTUNE``.
    """

    def fetch(i: np.ndarray) -> Batch:
        x, label = read(int(i))
        return np.ascontiguousarray(x, np.float32), np.ascontiguousarray(label, np.int64)

    def load(i: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        x, label = tf.numpy_function(fetch, [i], (tf.float32, tf.int64), stateful=False)
        x.set_shape((None, *shape))
        label.set_shape((None,))
        return x, label

    ds = tf.data.Dataset.from_tensor_slices(order)
    return ds.map(load, num_parallel_calls=AUTOTUNE, deterministic=True).prefetch(AUTOTUNE)


def _permutation(n: int) -> np.ndarray:
    return np.random.default_rng(SEED).permutation(n)


def _global_indices(perm: np.ndarray, i: int, batch_size: int) -> np.ndarray:
    """Batch ``i`` of a global shuffle, sorted (the reads in file order; same records)."""
    return np.sort(perm[i * batch_size : (i + 1) * batch_size])


# -- plain zarr slices ----------------------------------------------------------------------
@dataclass(frozen=True)
class _Zarr:
    path: Path
    num_records: int
    shape: tuple[int, ...]


def _zarr_write(arrays: Arrays, directory: Path, batch_size: int) -> _Zarr:
    """One zarr v3 group: ``x`` and ``label``, uncompressed, one chunk per batch of records."""
    import zarr

    n = len(arrays["label"])
    chunk = min(n, batch_size)
    group = zarr.open_group(str(directory / "data.zarr"), mode="w")
    for name, a in arrays.items():
        z = group.create_array(
            name, shape=a.shape, dtype=a.dtype, chunks=(chunk, *a.shape[1:]), compressors=None
        )
        z[:] = a
    return _Zarr(directory / "data.zarr", n, tuple(arrays["x"].shape[1:]))


def _zarr_build(state: _Zarr, mode: str, batch_size: int) -> tf.data.Dataset:
    import zarr

    x = zarr.open_array(str(state.path / "x"), mode="r")
    label = zarr.open_array(str(state.path / "label"), mode="r")
    n = state.num_records

    if mode == "global":
        perm = _permutation(n)

        def read(i: int) -> Batch:
            idx = _global_indices(perm, i, batch_size)
            rows = (idx,)
            return np.asarray(x.get_orthogonal_selection(rows)), np.asarray(
                label.get_orthogonal_selection(rows)
            )

    else:

        def read(i: int) -> Batch:
            lo, hi = i * batch_size, min(n, (i + 1) * batch_size)
            return np.asarray(x[lo:hi]), np.asarray(label[lo:hi])

    return indexed_batches(read, batch_order(n, batch_size, mode), state.shape)


# -- Grain on ArrayRecord -------------------------------------------------------------------
#: Grain's ReadOptions defaults (threads reading records, elements prefetched per process)
GRAIN_THREADS, GRAIN_PREFETCH = 16, 500
#: records per window of Grain's window shuffle
GRAIN_WINDOW = 10_000


@dataclass(frozen=True)
class _Grain:
    paths: tuple[str, ...]
    shape: tuple[int, ...]


@dataclass(frozen=True)
class DecodeRecord:
    """One ArrayRecord record (``x`` bytes then the int64 label) to ``(x, label)`` arrays."""

    shape: tuple[int, ...]

    def __call__(self, record: bytes) -> Batch:
        count = int(np.prod(self.shape))
        x = np.frombuffer(record, np.float32, count=count).reshape(self.shape)
        label = np.frombuffer(record, np.int64, count=1, offset=4 * count)[0]
        return x, label


def _grain_write(arrays: Arrays, directory: Path, batch_size: int) -> _Grain:
    """ArrayRecord files of about 64 MiB, one record per row, ``group_size:1`` (Grain's rule)."""
    from array_record.python.array_record_module import ArrayRecordWriter

    x, label = arrays["x"], arrays["label"]
    paths = []
    for k, lo, hi in _ranges(len(label), _per_file(arrays)):
        paths.append(str(directory / f"{k:05d}.array_record"))
        writer = ArrayRecordWriter(paths[-1], "group_size:1,uncompressed")
        for i in range(lo, hi):
            writer.write(x[i].tobytes() + label[i].tobytes())
        writer.close()
    return _Grain(tuple(paths), tuple(x.shape[1:]))


def _grain_build(state: _Grain, mode: str, batch_size: int) -> tf.data.Dataset:
    import grain

    ds = grain.MapDataset.source(grain.sources.ArrayRecordDataSource(list(state.paths)))
    if mode == "global":
        ds = ds.shuffle(seed=SEED)
    ds = ds.map(DecodeRecord(state.shape))
    options = grain.ReadOptions(num_threads=GRAIN_THREADS, prefetch_buffer_size=GRAIN_PREFETCH)
    if mode == "shuffle":
        # the IterDataset window shuffle: WindowShuffleMapDataset repeats records of the last
        # window when the length is not a multiple of the window (seen with grain 0.2.18)
        records = grain.experimental.WindowShuffleIterDataset(
            ds.to_iter_dataset(options), window_size=GRAIN_WINDOW, seed=SEED
        )
        batches = records.batch(batch_size)
    else:
        batches = ds.batch(batch_size).to_iter_dataset(options)
    return from_batches(lambda: iter(batches), state.shape)


# -- Lance (lance-tensorflow) ---------------------------------------------------------------
@dataclass(frozen=True)
class _Lance:
    uri: str
    shape: tuple[int, ...]


def _lance_write(arrays: Arrays, directory: Path, batch_size: int) -> _Lance:
    """A Lance dataset (default writer settings), ``x`` an Arrow fixed-shape tensor column.

    The tensor type is the one ``lance-tensorflow`` turns into a tensor through
    NumPy; a fixed-size list column would go through Python lists.
    """
    import lance
    import pyarrow as pa

    x = arrays["x"]
    table = pa.table(
        {
            "x": pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(x)),
            "label": pa.array(arrays["label"]),
        }
    )
    uri = str(directory / "data.lance")
    lance.write_dataset(table, uri)
    return _Lance(uri, tuple(x.shape[1:]))


def _lance_build(state: _Lance, mode: str, batch_size: int) -> tf.data.Dataset:
    import lance
    import lance_tensorflow as ltf

    ds = lance.dataset(state.uri)
    columns = ["x", "label"]
    shape = state.shape

    def reshape(batch: dict[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
        return tf.reshape(batch["x"], (-1, *shape)), batch["label"]

    if mode == "sequential":
        tfds = ltf.from_lance(ds, columns=columns, batch_size=batch_size)
        return tfds.map(reshape).prefetch(AUTOTUNE)
    if mode == "shuffle":  # its documented shuffle: batch ranges in random order, read ahead
        ranges = ltf.from_lance_batches(ds, shuffle=True, seed=SEED, batch_size=batch_size)
        tfds = ltf.lance_take_batches(ds, list(ranges.as_numpy_iterator()), columns=columns)
        return tfds.map(reshape).prefetch(AUTOTUNE)
    perm = _permutation(ds.count_rows())

    def read(i: int) -> Batch:  # its random access: take() of the batch's rows
        table = ds.take(_global_indices(perm, i, batch_size), columns=columns)
        return table["x"].combine_chunks().to_numpy_ndarray(), table["label"].to_numpy()

    return indexed_batches(read, batch_order(ds.count_rows(), batch_size, mode), shape)


# -- WebDataset -----------------------------------------------------------------------------
#: WebDataset's documented buffers: shards shuffled, then a sample shuffle buffer
WDS_SHARD_SHUFFLE, WDS_SAMPLE_SHUFFLE = 100, 1000


@dataclass(frozen=True)
class _WebDataset:
    urls: tuple[str, ...]
    shape: tuple[int, ...]


def _wds_write(arrays: Arrays, directory: Path, batch_size: int) -> _WebDataset:
    """Tar shards of about 64 MiB (``ShardWriter``): one ``x.npy`` + ``cls`` per sample."""
    import webdataset as wds

    x, label = arrays["x"], arrays["label"]
    pattern = str(directory / "shard-%06d.tar")
    with wds.ShardWriter(pattern, maxsize=FILE_BYTES, verbose=0) as sink:
        for i in range(len(label)):
            sink.write({"__key__": f"{i:09d}", "x.npy": x[i], "cls": int(label[i])})
    urls = tuple(sorted(str(p) for p in directory.glob("shard-*.tar")))
    return _WebDataset(urls, tuple(x.shape[1:]))


#: WebLoader (PyTorch DataLoader) worker processes: one per CPU of the benchmark machine
WDS_WORKERS = 2


def _wds_build(state: _WebDataset, mode: str, batch_size: int) -> tf.data.Dataset:
    import webdataset as wds

    shuffle = mode == "shuffle"
    ds = wds.WebDataset(
        list(state.urls),
        shardshuffle=WDS_SHARD_SHUFFLE if shuffle else False,
        seed=SEED,
        empty_check=False,
    )
    if shuffle:
        ds = ds.shuffle(WDS_SAMPLE_SHUFFLE, seed=SEED)
    ds = ds.decode().to_tuple("x.npy", "cls").batched(batch_size)
    loader = wds.WebLoader(
        ds, batch_size=None, num_workers=min(WDS_WORKERS, len(state.urls)), persistent_workers=True
    )
    return from_batches(lambda: loader, state.shape)


# -- MosaicML Streaming ---------------------------------------------------------------------
#: DataLoader workers and batches prefetched per worker (Streaming's examples use workers
#: = CPUs and PyTorch's default prefetch factor)
STREAMING_WORKERS, STREAMING_PREFETCH = 2, 2


@dataclass(frozen=True)
class _Streaming:
    local: str
    shape: tuple[int, ...]


def _streaming_write(arrays: Arrays, directory: Path, batch_size: int) -> _Streaming:
    """MDS shards (``MDSWriter``, uncompressed, 64 MiB size limit): ``x`` as an ndarray column."""
    from streaming import MDSWriter

    x, label = arrays["x"], arrays["label"]
    shape = tuple(int(d) for d in x.shape[1:])
    columns = {"x": f"ndarray:float32:{','.join(map(str, shape))}", "label": "int64"}
    local = directory / "mds"
    with MDSWriter(out=str(local), columns=columns, size_limit=FILE_BYTES) as writer:
        for i in range(len(label)):
            writer.write({"x": x[i], "label": label[i]})
    return _Streaming(str(local), shape)


def _streaming_build(state: _Streaming, mode: str, batch_size: int) -> tf.data.Dataset:
    import torch.utils.data
    from streaming import StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    clean_stale_shared_memory()
    options: dict[str, Any] = {"shuffle": mode != "sequential", "shuffle_seed": SEED}
    if mode == "global":
        options["shuffle_algo"] = "naive"
    dataset = StreamingDataset(local=state.local, batch_size=batch_size, **options)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=STREAMING_WORKERS,
        prefetch_factor=STREAMING_PREFETCH,
        persistent_workers=True,
    )

    def batches() -> Iterator[Batch]:
        for batch in loader:
            yield batch["x"], batch["label"]

    return from_batches(batches, state.shape)


LIBRARIES: tuple[Library, ...] = (
    Library(
        "grain",
        "Grain on ArrayRecord",
        ("grain", "array-record"),
        {
            "sequential": "`MapDataset` in order",
            "shuffle": "`WindowShuffleIterDataset` (windows of 10,000 records)",
            "global": "`MapDataset.shuffle` (global)",
        },
        "ArrayRecord `group_size:1,uncompressed`, 64 MiB files; `ReadOptions(num_threads=16, "
        "prefetch_buffer_size=500)` (its defaults); records decoded with `np.frombuffer`, "
        "batched by Grain; `from_generator` into TensorFlow (Grain has no TF adapter)",
        _grain_write,
        _grain_build,
        max_records={"tabular": 1 << 16},
    ),
    Library(
        "lance",
        "Lance (`lance-tensorflow`)",
        ("pylance", "lance-tensorflow"),
        {
            "sequential": "`from_lance` scan",
            "shuffle": "`from_lance_batches(shuffle=True)` + `lance_take_batches`",
            "global": "`take()` of each batch's random rows, parallel `map`",
        },
        "`lance.write_dataset` defaults, `x` an Arrow fixed-shape tensor; `lance-tensorflow`'s "
        "own `tf.data` adapters (read-ahead 10 batches for `lance_take_batches`); its random "
        "access (`take`) through a parallel `numpy_function` map",
        _lance_write,
        _lance_build,
    ),
    Library(
        "webdataset",
        "WebDataset",
        ("webdataset",),
        {
            "sequential": "tar shards in order",
            "shuffle": "`shardshuffle=100` + `.shuffle(1000)`",
        },
        "tar shards of 64 MiB (`ShardWriter`), samples `x.npy` + `cls`; `.decode()` + "
        "`.to_tuple()` + `.batched()` in `WebLoader(batch_size=None, num_workers=2, "
        "persistent_workers=True)` (its parallel loader, PyTorch's `DataLoader`); "
        "`from_generator` into TensorFlow",
        _wds_write,
        _wds_build,
        python="torch",
        max_records={"tabular": 1 << 16},
        preload=("torch",),
    ),
    Library(
        "zarr",
        "plain zarr slices",
        ("zarr",),
        {
            "sequential": "`x[lo:hi]` slices in order",
            "shuffle": "the same slices in random order",
            "global": "`get_orthogonal_selection` of each batch's random rows",
        },
        "zarr v3 arrays, uncompressed, one chunk per batch (256 images: 12 MiB; 4,096 rows); "
        "one `numpy_function` per batch in a parallel `map` (`AUTOTUNE`, ordered); a random "
        "row costs its whole chunk",
        _zarr_write,
        _zarr_build,
        prefix_records={"global": {"images": 1024, "tabular": 1 << 14}},
    ),
    Library(
        "streaming",
        "MosaicML Streaming",
        ("mosaicml-streaming", "torch"),
        {
            "sequential": "`StreamingDataset(shuffle=False)`",
            "shuffle": "`shuffle=True` (its default `py1e` block shuffle)",
            "global": '`shuffle_algo="naive"` (global)',
        },
        "MDS shards (`MDSWriter`, uncompressed, 64 MiB); a local dataset; PyTorch "
        "`DataLoader(num_workers=2, prefetch_factor=2, persistent_workers=True)` with "
        "Streaming's batching; `from_generator` into TensorFlow",
        _streaming_write,
        _streaming_build,
        python="torch",
        max_records={"tabular": 1 << 16},
        # triton (PyTorch's compiler, loaded by Streaming through torch) crashes the
        # process when its extension loads after TensorFlow's
        preload=("streaming",),
    ),
)


def by_name(names: Iterable[str]) -> tuple[Library, ...]:
    """The libraries called ``names`` (in :data:`LIBRARIES` order); an unknown name raises."""
    wanted = set(names)
    unknown = wanted - {lib.name for lib in LIBRARIES}
    if unknown:
        known = ", ".join(lib.name for lib in LIBRARIES)
        raise ValueError(f"unknown peer libraries {sorted(unknown)}: choose from {known}")
    return tuple(lib for lib in LIBRARIES if lib.name in wanted)
