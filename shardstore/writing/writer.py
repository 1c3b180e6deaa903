"""The writer: arrays in, shards and one atomically committed manifest out.

:class:`Writer` accepts record batches (``name -> array`` with one shared
leading length), cuts them into shards of ``records_per_shard`` records,
hands each shard to the chosen source, and commits the manifest last:

1. every input is validated before anything touches the disk;
2. shard files go to a fresh staging directory ``.shardstore/staging/v-<version_id>/``
   inside the dataset, created with ``O_EXCL`` and hashed as they are written;
   the writer holds a lock for its whole life so that no clean-up touches them;
3. at commit, if ``manifest.json`` is still what it was when the writer was
   created (else :class:`~shardstore.errors.CommitConflictError`), the
   directory becomes ``v-<version_id>/`` and ``manifest.json`` is published
   atomically (see :mod:`shardstore.storage.commit`); until then no reader can see
   the new data;
4. on an exception, or :meth:`Writer.abort`, the new files are removed;
   after an overwrite, the previous version is kept for a grace period (for
   readers that opened it), then removed by a later write or ``shardstore gc``.

Full shards are written straight from views of the input, so a memory-mapped
array is copied record range by record range, never loaded whole; only the
records of one incomplete shard are buffered between calls to ``write``.
Shards may be written in parallel (``executor=``, see :mod:`shardstore.writing.parallel`);
the manifest lists them in index order either way.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from shardstore.errors import (
    DatasetExistsError,
    InvalidInputError,
    ManifestError,
    ShardStoreError,
    UnsupportedDTypeError,
)
from shardstore.format.manifest import (
    MANIFEST_NAME,
    SUPPORTED_DTYPES,
    FeatureSpec,
    Manifest,
    ShardEntry,
    check_feature_name,
    feature_specs_from_arrays,
)
from shardstore.format.ragged import RaggedArray, length_stats, merge_length_stats
from shardstore.registry import get_source
from shardstore.sources.base import ArrayLike, ShardWriteContext
from shardstore.storage import local_path, remote_store
from shardstore.storage.cache import parse_size
from shardstore.storage.commit import Transaction, manifest_state
from shardstore.storage.progress import progress_bar
from shardstore.writing.parallel import ShardDispatcher, is_dask_collection
from shardstore.writing.remote import RemoteWrite

if TYPE_CHECKING:
    from shardstore.reading.reader import Dataset

__all__ = ["DEFAULT_SHARD_SIZE", "ShardLayout", "Writer", "normalize_arrays", "parse_size"]

log = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 64 << 20


@dataclass(frozen=True)
class ShardLayout:
    """How records are cut into shards: a fixed count, or a target size in bytes."""

    shard_bytes: int
    records: int | None = None

    @classmethod
    def create(cls, shard_size: int | str | None, records_per_shard: int | None) -> ShardLayout:
        """Validate ``shard_size`` / ``records_per_shard`` (at most one; default 64 MiB)."""
        if shard_size is not None and records_per_shard is not None:
            raise InvalidInputError(
                "give shard_size or records_per_shard, not both",
                params=("shard_size", "records_per_shard"),
            )
        if records_per_shard is not None and (
            isinstance(records_per_shard, bool)
            or not isinstance(records_per_shard, int | np.integer)
            or records_per_shard <= 0
        ):
            raise InvalidInputError(
                f"records_per_shard must be a positive integer, got {records_per_shard!r}",
                params=("records_per_shard",),
            )
        shard_bytes = parse_size(shard_size if shard_size is not None else DEFAULT_SHARD_SIZE)
        return cls(shard_bytes, None if records_per_shard is None else int(records_per_shard))

    def records_for(self, record_bytes: float) -> int:
        """Records per shard for records of ``record_bytes`` (a mean for ragged features)."""
        return self.records or max(1, int(self.shard_bytes // max(1.0, record_bytes)))


def _as_array_like(name: str, value: Any) -> ArrayLike:
    if isinstance(value, RaggedArray) or all(
        hasattr(value, a) for a in ("shape", "dtype", "__getitem__")
    ):
        return value
    if isinstance(value, list | tuple) and value and all(np.ndim(v) >= 1 for v in value):
        shapes = {np.shape(v) for v in value}
        if len(shapes) > 1:  # one array per record, of varying lengths: a ragged feature
            try:
                return RaggedArray.from_arrays(value)
            except InvalidInputError as exc:
                raise InvalidInputError(f"feature {name!r}: {exc}") from None
    try:
        return np.asarray(value)
    except Exception as exc:
        raise InvalidInputError(f"feature {name!r}: cannot be read as an array: {exc}") from None


def _num_records(array: ArrayLike) -> int:
    return len(array) if isinstance(array, RaggedArray) else int(array.shape[0])


def normalize_arrays(arrays: Any) -> dict[str, ArrayLike]:
    """Validate a ``write`` input and return it as ``name -> array-like``.

    Accepts a mapping of name to array-like (NumPy arrays, ``np.memmap``,
    anything with ``shape``, ``dtype`` and slicing) with one shared leading
    length, or a single array, stored as feature ``"x"``. Nothing is copied.
    A ragged feature is a :class:`~shardstore.format.ragged.RaggedArray`, or a list
    of arrays (one per record) whose first dimensions differ.

    Raises
    ------
    InvalidInputError
        Empty input, bad names, 0-d arrays, differing leading lengths, or
        empty (zero-byte) records.
    UnsupportedDTypeError
        A dtype the format cannot hold (object, strings, datetimes, ...).
    """
    if isinstance(arrays, Mapping):
        items = {name: _as_array_like(str(name), v) for name, v in arrays.items()}
        if not all(isinstance(n, str) for n in arrays):
            raise InvalidInputError("feature names must be strings")
    else:
        items = {"x": _as_array_like("x", arrays)}
    if not items:
        raise InvalidInputError("nothing to write: the mapping of arrays is empty")
    lengths: dict[str, int] = {}
    for name, arr in items.items():
        try:
            check_feature_name(name)
        except ManifestError as exc:
            raise InvalidInputError(str(exc)) from None
        dtype = np.dtype(arr.dtype)
        if dtype.newbyteorder("<").str not in SUPPORTED_DTYPES:
            raise UnsupportedDTypeError(
                f"feature {name!r} has dtype {dtype!r}; shardstore stores bool, "
                "(u)int8-64, float16-64 and complex64/128 only (no object, string, "
                "datetime or structured dtypes)"
            )
        if isinstance(arr, RaggedArray):
            if math.prod(arr.inner_shape) == 0:
                raise InvalidInputError(
                    f"feature {name!r} has empty rows (inner shape {arr.inner_shape})"
                )
            lengths[name] = len(arr)
            continue
        if not all(isinstance(d, int | np.integer) for d in arr.shape):
            raise InvalidInputError(
                f"feature {name!r} has shape {arr.shape} with unknown sizes "
                "(a Dask array? call .compute_chunk_sizes() first)"
            )
        shape = tuple(int(d) for d in arr.shape)
        if len(shape) == 0:
            raise InvalidInputError(
                f"feature {name!r} is a 0-d array; the first axis must index records"
            )
        if math.prod(shape[1:]) == 0:
            raise InvalidInputError(
                f"feature {name!r} has empty records (per-record shape {shape[1:]})"
            )
        lengths[name] = shape[0]
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{n}: {k}" for n, k in lengths.items())
        raise InvalidInputError(f"features have different numbers of records ({detail})")
    return items


class Writer:
    """Streaming, atomic dataset writer. Use as a context manager.

    Parameters
    ----------
    path : the dataset directory (created if missing), or an object-store URL
        (``s3://bucket/prefix``, ``gs://``, ``az://``, ``memory://``).
    format : the source that writes the shards (``"npy"`` by default).
    shard_size : target bytes per shard (int or ``"64MiB"``); the default.
    records_per_shard : records per shard instead of ``shard_size``.
    overwrite : replace an existing dataset (atomically) instead of refusing; the
        commit fails with ``CommitConflictError`` if another writer committed
        at ``path`` after this writer was created.
    metadata : free-form JSON-serialisable user metadata for the manifest.
    fsync : flush files to stable storage before the commit (default True).
    progress : show a progress bar (default: only on a terminal).
    executor : where shards are written: ``"serial"`` (default, in the calling
        thread), ``"threads"``, a ``concurrent.futures.Executor`` or a
        ``dask.distributed.Client`` (see :mod:`shardstore.writing.parallel`). With an
        executor, ``write(batch)`` returns once the shards cut straight from
        ``batch`` are on disk, so the batch's arrays may then be reused.
    storage_options : settings of the object store when ``path`` is a URL (endpoint,
        region, credentials...; see ``docs/object-storage.md``).
    cache_dir, cache_limit : the shard cache of the dataset returned by :meth:`close`
        when ``path`` is a URL; shards are written under ``cache_dir`` before they are
        uploaded, and deleted there once uploaded.
    **options : source-specific options (e.g. ``compression`` for zarr).

    Notes
    -----
    The commit happens on a clean exit of the ``with`` block (or
    :meth:`close`); an exception inside the block removes everything written.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        format: str = "npy",
        shard_size: int | str | None = None,
        records_per_shard: int | None = None,
        overwrite: bool = False,
        metadata: Mapping[str, Any] | None = None,
        fsync: bool = True,
        progress: bool | None = None,
        total: int | None = None,
        executor: Any = "serial",
        storage_options: Mapping[str, Any] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        cache_limit: int | str | None = None,
        **options: Any,
    ) -> None:
        self._layout = ShardLayout.create(shard_size, records_per_shard)
        try:
            self._metadata = json.loads(json.dumps(dict(metadata or {}), allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"metadata must be JSON-serialisable: {exc}") from None
        self._source = get_source(format)
        self._options = self._source.check_options(options)
        self.version_id = secrets.token_hex(8)
        #: The object-store side of a write to a URL (``None``: a local dataset).
        self._remote: RemoteWrite | None = None
        store = remote_store(path, storage_options)
        if store is not None:
            self._remote = RemoteWrite(
                store,
                self.version_id,
                overwrite=bool(overwrite),
                cache_dir=cache_dir,
                cache_limit=cache_limit,
            )
            path = self._remote.scratch  # shards are written here, then uploaded
        else:
            path = local_path(path)
        self.root = Path(path)
        if self.root.exists() and not self.root.is_dir():
            raise InvalidInputError(f"{self.root} exists and is not a directory")
        self._overwrite = bool(overwrite)
        if not self._overwrite and (self.root / MANIFEST_NAME).exists():
            raise DatasetExistsError(
                f"a dataset already exists at {self.root}; pass overwrite=True to replace it",
                params=("overwrite",),
            )
        self._fsync = fsync and self._remote is None  # scratch files are uploaded, not kept
        self._prefix = f"v-{self.version_id}"
        # What manifest.json holds now: the commit succeeds only if it is unchanged.
        base = manifest_state(self.root)
        #: The ``version_id`` this write replaces (``None``: no dataset when it started).
        self.replaces: str | None = base.version_id
        self._txn = Transaction(
            self.root, self.version_id, overwrite=self._overwrite, fsync=fsync, base=base
        )
        self._features: dict[str, FeatureSpec] | None = None
        self._rps = 0
        self._pending: dict[str, list[Any]] = {}
        self._pending_count = 0
        self._shards: list[ShardEntry] = []
        self._lengths: dict[str, list[dict[str, Any]]] = {}  # ragged: stats of each shard
        self._next_index = 0
        self._dispatcher = ShardDispatcher(executor, self._source, on_done=self._shard_done)
        self._state = "open"
        self._bar = progress_bar(total=total, desc="write", unit="rec", enabled=progress)

    # -- public API -------------------------------------------------------------------
    @property
    def features(self) -> Mapping[str, FeatureSpec] | None:
        """The feature specs (known after the first ``write``)."""
        return self._features

    @property
    def records_per_shard(self) -> int:
        """Records per shard (known after the first ``write``)."""
        return self._rps

    def write(self, batch: Any) -> None:
        """Append a batch of records: ``name -> array`` (or one array, feature ``"x"``)."""
        self._check_open()
        try:
            arrays = normalize_arrays(batch)
            self._check_batch(arrays)
            self._append(arrays)
            if self._dispatcher.asynchronous:
                self._dispatcher.wait()  # shards may hold views of ``batch``
        except BaseException:
            self.abort()
            raise

    def close(self) -> Dataset:
        """Write the last shard and commit the manifest; return the opened dataset."""
        self._check_open()
        try:
            if self._features is None:
                raise InvalidInputError("nothing was written: no batch reached the Writer")
            if self._pending_count:
                self._flush_pending()
            self._shards = self._dispatcher.finish()
            return self._commit()
        except BaseException:
            self.abort()
            raise
        finally:
            self._bar.close()

    def abort(self) -> None:
        """Remove everything this writer wrote; the previous dataset (if any) is untouched."""
        if self._state in ("aborted", "committed"):
            return
        self._state = "aborted"
        self._dispatcher.close()  # no task may create files after the clean-up
        self._bar.close()
        self._txn.abort()
        if self._remote is not None:
            self._remote.close(committed=False)
        log.debug("aborted write of %s (version %s)", self.root, self.version_id)

    def __enter__(self) -> Writer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.abort()
        elif self._state == "open":
            self.close()

    # -- internals --------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._state != "open":
            raise ShardStoreError(f"this Writer is {self._state}; open a new one")

    def _check_batch(self, arrays: Mapping[str, ArrayLike]) -> None:
        specs = feature_specs_from_arrays(arrays)
        if self._features is None:
            self._source.check_features(specs)
            self._features = specs
            record_bytes = sum(  # ragged: the mean record of this first batch
                dataclasses.replace(s, lengths=length_stats(arrays[k].lengths)).mean_record_nbytes
                if s.is_ragged
                else s.record_nbytes
                for k, s in specs.items()
            )
            self._rps = self._layout.records_for(record_bytes)
            return
        if set(specs) != set(self._features):
            raise InvalidInputError(
                f"batch has features {sorted(specs)}, the dataset has {sorted(self._features)}"
            )
        for name, spec in specs.items():
            if spec != self._features[name]:
                expected = self._features[name]
                raise InvalidInputError(
                    f"feature {name!r}: batch has dtype {spec.dtype} shape {spec.shape}, "
                    f"the dataset has dtype {expected.dtype} shape {expected.shape}"
                )

    def _append(self, arrays: Mapping[str, ArrayLike]) -> None:
        n = _num_records(next(iter(arrays.values())))
        pos = 0
        while pos < n:
            if self._pending_count == 0 and n - pos >= self._rps:
                # A whole shard straight from views of the input: nothing buffered.
                self._write_shard({k: v[pos : pos + self._rps] for k, v in arrays.items()})
                pos += self._rps
                continue
            take = min(self._rps - self._pending_count, n - pos)
            for k, v in arrays.items():
                part = v[pos : pos + take]  # copied, unless immutable and lazy (Dask)
                if isinstance(part, RaggedArray):
                    part = part.compact()
                elif not is_dask_collection(part):
                    part = np.array(part)
                self._pending.setdefault(k, []).append(part)
            self._pending_count += take
            pos += take
            if self._pending_count == self._rps:
                self._flush_pending()

    def _flush_pending(self) -> None:
        arrays = {
            k: parts[0]
            if len(parts) == 1
            else RaggedArray.concatenate(parts)
            if isinstance(parts[0], RaggedArray)
            else np.concatenate([np.asarray(p) for p in parts])
            for k, parts in self._pending.items()
        }
        self._pending = {}
        self._pending_count = 0
        self._write_shard(arrays)

    def _write_shard(self, arrays: Mapping[str, ArrayLike]) -> None:
        assert self._features is not None
        n = _num_records(next(iter(arrays.values())))
        for k, arr in arrays.items():
            if isinstance(arr, RaggedArray):
                self._lengths.setdefault(k, []).append(length_stats(arr.lengths))
        self._txn.begin()
        ctx = ShardWriteContext(
            root=self._txn.shard_root,  # .shardstore/staging: renamed into place at commit
            base=self.root,
            prefix=self._prefix,
            index=self._next_index,
            num_records=n,
            features=self._features,
            options=self._options,
            fsync=self._fsync,
        )
        self._next_index += 1
        self._dispatcher.submit(ctx, arrays)

    def _shard_done(self, entry: ShardEntry) -> None:
        if self._remote is not None:
            self._remote.upload_shard(self._txn.shard_root, entry)
        self._bar.update(entry.num_records)

    def _commit(self) -> Dataset:
        from shardstore._version import __version__
        from shardstore.reading.reader import Dataset

        assert self._features is not None
        features = {
            k: dataclasses.replace(spec, lengths=merge_length_stats(self._lengths.get(k, [])))
            if spec.is_ragged
            else spec
            for k, spec in self._features.items()
        }
        manifest = Manifest(
            features=features,
            shards=tuple(self._shards),
            version_id=self.version_id,
            metadata=self._metadata,
            created_by=f"shardstore {__version__}",
        )
        if self._remote is not None:
            return self._commit_remote(self._remote, manifest)
        self._txn.commit(manifest)
        self._state = "committed"
        log.info(
            "committed %s: %d records in %d shards (version %s)",
            self.root,
            manifest.num_records,
            len(manifest.shards),
            self.version_id,
        )
        return Dataset(self.root, manifest)

    def _commit_remote(self, remote: RemoteWrite, manifest: Manifest) -> Dataset:
        from shardstore.reading.reader import open_remote

        remote.commit(manifest)  # waits for the uploads; create-only / If-Match put
        self._state = "committed"
        self._txn.abort()  # the scratch directory's own bookkeeping
        remote.close(committed=True)
        log.info(
            "committed %s: %d records in %d shards (version %s)",
            remote.store.url,
            manifest.num_records,
            len(manifest.shards),
            self.version_id,
        )
        return open_remote(remote.store, cache_dir=remote.cache_dir, cache_limit=remote.cache_limit)
