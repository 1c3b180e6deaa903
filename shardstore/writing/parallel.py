"""Writing shards in parallel: a thread pool, any ``concurrent.futures.Executor``, or Dask.

The :class:`~shardstore.writing.writer.Writer` decides *what* goes into each shard
(record ranges, indices, file names under ``v-<version_id>/``); a
:class:`ShardDispatcher` decides *where* the shards are written. Each task
writes one shard through the ordinary ``Source.write_shard`` path (files
created exclusively, hashed while written, ``fsync``-ed) and returns the
shard's manifest entry; the driver collects the entries, orders them by
index and commits one manifest at the end, atomically, as a serial write
does. The output is therefore bit-identical to a serial write whatever the
order in which shards finish.

Executors (the ``executor=`` argument of :func:`shardstore.write` and
:class:`~shardstore.writing.writer.Writer`):

``"serial"``
    Every shard is written in the calling thread, one after the other.
``"threads"``
    A private :class:`~concurrent.futures.ThreadPoolExecutor` of
    :func:`default_workers` threads (at most :data:`DEFAULT_MAX_WORKERS`),
    shut down when the write ends. The default of :func:`shardstore.write`.
    Writing a shard is mostly copying, hashing (xxh3 releases the GIL),
    ``write`` and ``fsync`` system calls, so threads overlap well.
a ``ThreadPoolExecutor``
    Yours; the shards read the input through views, never copied up front.
any other ``Executor`` (e.g. ``ProcessPoolExecutor``)
    Each shard's records are copied into plain arrays in the driver and sent
    with the task; the task loads the source plugin by name, so it must be
    installed where the tasks run.
a ``dask.distributed.Client`` (or ``client.get_executor()``)
    Shards are written on the Dask workers. The records of a ``dask.array``
    input are computed on the cluster (``client.compute``) and handed to the
    writing task worker to worker, never through the driver; NumPy input is
    scattered to the workers. The workers must see the dataset directory at
    the same path as the driver (a shared filesystem); the driver checks that
    every file a worker reports is there with its size before committing.

Memory stays bounded: at most ``2 x workers`` shards are in flight, so a
memory-mapped, lazily sliced or Dask input is never materialised whole.

On the first failure no new shard is started, the shards in flight are
waited for (a task cannot be interrupted, and must not create files after
the clean-up), and the error is raised; the writer then removes everything
it wrote.

Tasks and their results cross process boundaries through the executor's own
transport (Dask and ``ProcessPoolExecutor`` serialise them); shardstore
sends plain values, NumPy arrays and a module-level function, and gets back
the shard entry as JSON-ready data that the driver validates. No Python
object is ever stored in or decoded from a dataset.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np

from shardstore.errors import InvalidInputError, ManifestError, ShardStoreError
from shardstore.format.manifest import FeatureSpec, ShardEntry
from shardstore.sources.base import ArrayLike, ShardWriteContext, Source
from shardstore.storage.fsutil import remove_quietly

__all__ = [
    "DEFAULT_MAX_WORKERS",
    "EXECUTOR_NAMES",
    "ShardDispatcher",
    "default_workers",
    "is_dask_collection",
    "write_shard_task",
]

log = logging.getLogger(__name__)

#: Threads of the default local pool are ``min(DEFAULT_MAX_WORKERS, os.cpu_count())``.
DEFAULT_MAX_WORKERS: Final = 4
#: The executors that can be named by a string.
EXECUTOR_NAMES: Final = ("serial", "threads")
#: Shards in flight per worker: enough to keep every worker busy while the
#: driver slices, scatters or collects, few enough to bound memory.
IN_FLIGHT_PER_WORKER: Final = 2


def default_workers() -> int:
    """Threads of the default pool: the CPU count, capped at :data:`DEFAULT_MAX_WORKERS`."""
    return max(1, min(DEFAULT_MAX_WORKERS, os.cpu_count() or 1))


def is_dask_collection(value: object) -> bool:
    """Whether ``value`` is a Dask collection (without importing Dask)."""
    return "dask" in sys.modules and hasattr(value, "__dask_graph__")


def _is_distributed(obj: object, cls: str) -> bool:
    kind = type(obj)
    return kind.__module__.split(".")[0] == "distributed" and kind.__name__ == cls


def _materialize(value: ArrayLike) -> np.ndarray:
    """A plain C-contiguous array of ``value`` (computing a Dask array in this thread)."""
    if is_dask_collection(value):
        value = value.compute(scheduler="sync")  # in this thread; the caller parallelises
    return np.ascontiguousarray(np.asarray(value))


def _materialize_all(values: list[ArrayLike]) -> list[np.ndarray]:
    """:func:`_materialize` each value; Dask values in one computation (shared tasks once)."""
    lazy = [i for i, v in enumerate(values) if is_dask_collection(v)]
    if len(lazy) > 1:
        from dask.base import compute

        computed = compute(*(values[i] for i in lazy), scheduler="sync")  # type: ignore[no-untyped-call]
        values = list(values)
        for i, v in zip(lazy, computed, strict=True):
            values[i] = v
    return [_materialize(v) for v in values]


def _one_chunk(value: Any) -> Any:
    """A Dask array as the ``Delayed`` of its single chunk (rechunked to one if need be)."""
    if not hasattr(value, "to_delayed") or not hasattr(value, "rechunk"):
        return value
    # Unoptimised: fusing would give tasks shared by several features new names (run twice).
    return value.rechunk(value.shape).to_delayed(optimize_graph=False).ravel()[0]


def _task_spec(ctx: ShardWriteContext, source: str) -> dict[str, Any]:
    """Everything a remote task needs to write ``ctx``'s shard, as plain values."""
    return {
        "source": source,
        "root": os.fspath(ctx.root),
        "prefix": ctx.prefix,
        "index": ctx.index,
        "num_records": ctx.num_records,
        "features": {n: s.to_json() for n, s in ctx.features.items()},
        "options": dict(ctx.options),
        "fsync": ctx.fsync,
        "base": str(ctx.base) if ctx.base is not None else None,
    }


def _write_in_context(
    source: Source, ctx: ShardWriteContext, arrays: Mapping[str, ArrayLike]
) -> ShardEntry:
    """Write one shard; on failure remove the files this shard finished, then re-raise."""
    try:
        source.write_shard(ctx, arrays)
        ctx.write_block_index()  # the per-block checksums of every file the source wrote
    except BaseException:
        for entry in [*ctx.files, *([ctx.blocks] if ctx.blocks else [])]:
            remove_quietly(ctx.root / entry.path, below=ctx.below)
        raise
    return ctx.entry(source.name)


def write_shard_task(spec: Mapping[str, Any], arrays: list[Any]) -> dict[str, Any]:
    """Write one shard where the task runs; return its manifest entry as JSON data.

    The function an executor runs for each shard (module-level, so every
    executor can ship it by reference). ``spec`` is plain data (see
    :class:`ShardDispatcher`); ``arrays`` holds each feature's records in the
    order of ``spec["features"]`` (NumPy arrays, or Dask arrays computed here).
    """
    from shardstore.registry import get_source

    source = get_source(str(spec["source"]))
    features = {
        name: FeatureSpec.from_json(obj, where=f"features.{name}")
        for name, obj in spec["features"].items()
    }
    if len(arrays) != len(features):
        raise InvalidInputError(f"expected {len(features)} arrays, got {len(arrays)}")
    ctx = ShardWriteContext(
        root=Path(spec["root"]),
        base=Path(spec["base"]) if spec.get("base") else None,
        prefix=str(spec["prefix"]),
        index=int(spec["index"]),
        num_records=int(spec["num_records"]),
        features=features,
        options=dict(spec["options"]),
        fsync=bool(spec["fsync"]),
    )
    data = dict(zip(features, _materialize_all(arrays), strict=True))
    return _write_in_context(source, ctx, data).to_json()


class ShardDispatcher:
    """Writes shards on an executor, at most ``2 x workers`` at a time, and collects entries.

    Parameters
    ----------
    executor : ``"serial"``, ``"threads"``, a ``concurrent.futures.Executor``,
        a ``dask.distributed.Client`` or ``Client.get_executor()`` (see the
        module docstring).
    source : the source plugin writing the shards.
    on_done : called in the driver's thread with each finished shard's entry,
        in completion order (progress bars, journals).

    ``submit`` may block until a slot is free, and raises the first failure
    of any shard; ``finish`` waits for the rest and returns the entries in
    index order; ``close`` stops everything (cancels what has not started,
    waits for what has) and never raises.
    """

    def __init__(
        self,
        executor: Any,
        source: Source,
        *,
        on_done: Callable[[ShardEntry], None] | None = None,
    ) -> None:
        self._source = source
        self._on_done = on_done
        self._owned: cf.ThreadPoolExecutor | None = None
        self._client: Any = None
        self._executor: cf.Executor | None = None
        self._pending: dict[cf.Future[Any], ShardWriteContext] = {}
        self._entries: dict[int, ShardEntry] = {}
        self._error: BaseException | None = None
        self._workers = 1
        if isinstance(executor, str):
            if executor not in EXECUTOR_NAMES:
                raise InvalidInputError(
                    f"executor {executor!r} is not one of {', '.join(EXECUTOR_NAMES)}; "
                    "pass a concurrent.futures.Executor or a dask.distributed.Client"
                )
            self.mode = "inline" if executor == "serial" else "threads"
            self._workers = default_workers() if executor == "threads" else 1
        elif _is_distributed(executor, "Client"):
            self.mode = "dask"
            self._client = executor
            self._executor = executor.get_executor()
        elif _is_distributed(executor, "ClientExecutor"):
            self.mode = "dask"
            self._client = executor._client
            self._executor = executor
        elif isinstance(executor, cf.ThreadPoolExecutor):
            self.mode = "threads"
            self._executor = executor
        elif isinstance(executor, cf.Executor):
            self.mode = "remote"
            self._executor = executor
        else:
            raise InvalidInputError(
                f"executor must be 'serial', 'threads', a concurrent.futures.Executor or a "
                f"dask.distributed.Client, got {type(executor).__name__}"
            )
        if self.mode == "dask":
            self._workers = max(1, sum(self._client.nthreads().values()))
        elif self._executor is not None:
            self._workers = int(getattr(self._executor, "_max_workers", 0)) or default_workers()
        self.max_in_flight = IN_FLIGHT_PER_WORKER * self._workers
        log.debug("shard dispatcher: %s, %d worker(s)", self.mode, self._workers)

    @property
    def asynchronous(self) -> bool:
        """Whether shards may still be being written after :meth:`submit` returns."""
        return self.mode != "inline"

    def submit(self, ctx: ShardWriteContext, arrays: Mapping[str, ArrayLike]) -> None:
        """Write the shard of ``ctx`` from ``arrays`` (now, or on the executor)."""
        self._raise_if_failed()
        if self.mode == "inline":
            self._finished(ctx, _write_in_context(self._source, ctx, arrays))
            return
        while len(self._pending) >= self.max_in_flight:
            self._collect(cf.FIRST_COMPLETED)
            self._raise_if_failed()
        future = self._launch(ctx, arrays)
        self._pending[future] = ctx

    def wait(self) -> None:
        """Wait for every shard submitted so far; raise the first failure."""
        while self._pending:
            self._collect(cf.FIRST_EXCEPTION)
            self._raise_if_failed()
        self._raise_if_failed()

    def finish(self) -> list[ShardEntry]:
        """Wait for every shard and return all entries in index order."""
        try:
            self.wait()
        finally:
            self._shutdown()
        return [self._entries[i] for i in sorted(self._entries)]

    def close(self) -> None:
        """Cancel shards not started, wait for those running; never raises.

        On Dask nothing is cancelled: a cancelled Dask future whose task is
        already running on a worker does not stop it, and nothing tells when
        it has stopped, so every shard in flight (at most ``max_in_flight``)
        is waited for instead.
        """
        if self.mode == "dask":
            running = list(self._pending)
        else:
            running = [f for f in self._pending if not f.cancel()]
        if running:
            cf.wait(running)
        self._pending.clear()
        self._shutdown()

    # -- internals --------------------------------------------------------------------
    def _shutdown(self) -> None:
        if self._owned is not None:
            self._owned.shutdown(wait=True)
            self._owned = None

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _launch(self, ctx: ShardWriteContext, arrays: Mapping[str, ArrayLike]) -> cf.Future[Any]:
        if self.mode == "threads":
            if self._executor is None:
                self._owned = cf.ThreadPoolExecutor(self._workers, thread_name_prefix="shardstore")
                self._executor = self._owned
            local = {name: arrays[name] for name in ctx.features}
            return self._executor.submit(self._write_local, ctx, local)
        assert self._executor is not None
        spec = _task_spec(ctx, self._source.name)
        if self.mode == "dask":
            data = self._to_cluster([arrays[name] for name in ctx.features])
        else:
            data = _materialize_all([arrays[name] for name in ctx.features])
        return self._executor.submit(write_shard_task, spec, data)

    def _write_local(self, ctx: ShardWriteContext, arrays: Mapping[str, ArrayLike]) -> ShardEntry:
        if any(is_dask_collection(a) for a in arrays.values()):
            arrays = dict(zip(arrays, _materialize_all(list(arrays.values())), strict=True))
        return _write_in_context(self._source, ctx, arrays)

    def _to_cluster(self, values: list[ArrayLike]) -> list[Any]:
        """Futures of ``values`` on the cluster: Dask values computed there (in one
        graph, so shared tasks run once), others scattered from here."""
        lazy = [i for i, v in enumerate(values) if is_dask_collection(v)]
        # One chunk per value, computed as that chunk's task: no extra
        # "finalize" step that could run (and pull the data) on another worker.
        chunks = [_one_chunk(values[i]) for i in lazy]
        computed = iter(self._client.compute(chunks) if lazy else [])
        return [
            next(computed) if i in lazy else self._client.scatter(_materialize(v), hash=False)
            for i, v in enumerate(values)
        ]

    def _collect(self, return_when: str) -> None:
        done, _ = cf.wait(list(self._pending), return_when=return_when)
        for future in sorted(done, key=lambda f: self._pending[f].index):
            ctx = self._pending.pop(future)
            error = future.exception()
            if error is not None:
                if self._error is None:
                    self._error = error
                continue
            try:
                result = future.result()
                entry = result if isinstance(result, ShardEntry) else self._check(ctx, result)
            except ShardStoreError as exc:
                if self._error is None:
                    self._error = exc
                continue
            self._finished(ctx, entry)

    def _finished(self, ctx: ShardWriteContext, entry: ShardEntry) -> None:
        self._entries[ctx.index] = entry
        if self._on_done is not None:
            self._on_done(entry)

    def _check(self, ctx: ShardWriteContext, result: object) -> ShardEntry:
        """Validate the entry a remote task returned, and that its files are visible here."""
        where = f"shard {ctx.index} (written by a worker)"
        entry = ShardEntry.from_json(result, where=where)
        if (entry.index, entry.num_records, entry.source) != (
            ctx.index,
            ctx.num_records,
            self._source.name,
        ):
            raise ManifestError(f"{where}: the worker returned an entry for another shard")
        for f in entry.stored_files:
            if not f.path.startswith(ctx.prefix + "/"):
                raise ManifestError(f"{where}: file {f.path!r} is outside {ctx.prefix}/")
            try:
                size = (ctx.root / f.path).stat().st_size
            except FileNotFoundError:
                raise InvalidInputError(
                    f"{where}: file {f.path!r} is not visible at {ctx.root} on the driver; "
                    "the workers must write to a filesystem shared with the driver, "
                    "at the same path"
                ) from None
            if size != f.size:
                raise InvalidInputError(
                    f"{where}: file {f.path!r} has {size} bytes here, the worker wrote {f.size}"
                )
        return entry
