"""The two calls most users need: :func:`write` and :func:`open`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from shardstore.errors import DatasetNotFoundError, InvalidInputError, ManifestError
from shardstore.format.manifest import MANIFEST_NAME, Manifest
from shardstore.reading.reader import Dataset, open_remote
from shardstore.storage import integrity, local_path, remote_store
from shardstore.storage.fsutil import read_manifest_file
from shardstore.storage.safefs import storage_boundary
from shardstore.writing.writer import Writer, normalize_arrays

if TYPE_CHECKING:
    from shardstore.storage.garbage import GcReport

__all__ = ["gc", "open", "write"]


def _path(path: object, *args: object, **kwargs: object) -> object:
    return path


@storage_boundary("write", _path)
def write(
    path: str | os.PathLike[str],
    arrays: Any,
    *,
    format: str = "npy",
    shard_size: int | str | None = None,
    records_per_shard: int | None = None,
    overwrite: bool = False,
    metadata: dict[str, Any] | None = None,
    fsync: bool = True,
    progress: bool | None = None,
    executor: Any = "threads",
    storage_options: Mapping[str, Any] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    cache_limit: int | str | None = None,
    **options: Any,
) -> Dataset:
    """Write arrays as a sharded dataset and return it, opened.

    Parameters
    ----------
    path : the dataset directory, or an object-store URL (``s3://bucket/prefix``,
        ``gs://``, ``az://``, ``memory://``; see ``docs/object-storage.md``).
    arrays : ``name -> array-like`` with one shared leading length (NumPy
        arrays, ``np.memmap``, Dask arrays, anything with ``shape``, ``dtype``
        and slicing), or a single array (stored as feature ``"x"``).
    format : the source that writes the shards (``"npy"``).
    shard_size : target bytes per shard (default ``"64MiB"``), or
    records_per_shard : records per shard instead.
    overwrite : replace an existing dataset atomically instead of refusing.
        The replaced version stays on disk for the grace period (readers
        that opened it keep working), then a later write or :func:`gc`
        removes it. Fails with ``CommitConflictError`` if another writer
        committed at ``path`` meanwhile.
    metadata : JSON-serialisable user metadata kept in the manifest.
    fsync : flush to stable storage before committing (default True).
    progress : progress bar (default: only on a terminal).
    executor : where the shards are written (:mod:`shardstore.writing.parallel`):
        ``"threads"`` (default: a private pool of ``min(4, os.cpu_count())``
        threads), ``"serial"``, any ``concurrent.futures.Executor``, or a
        ``dask.distributed.Client`` (shards written on its workers; Dask
        arrays computed there). The output is the same bytes whatever runs it.
    storage_options, cache_dir, cache_limit : for a URL, as in :func:`open`; shards are
        written under ``cache_dir`` and each is deleted there once uploaded.
    **options : source-specific options.

    Notes
    -----
    Everything is validated before the first byte is written; on any error
    nothing is left behind and an existing dataset is untouched.
    """
    items = normalize_arrays(arrays)
    total = int(next(iter(items.values())).shape[0])
    writer = Writer(
        path,
        format=format,
        shard_size=shard_size,
        records_per_shard=records_per_shard,
        overwrite=overwrite,
        metadata=metadata,
        fsync=fsync,
        progress=progress,
        total=total,
        executor=executor,
        storage_options=storage_options,
        cache_dir=cache_dir,
        cache_limit=cache_limit,
        **options,
    )
    writer.write(items)  # aborts (removes its files) on any error
    return writer.close()


@storage_boundary("open", _path)
def open(
    path: str | os.PathLike[str],
    *,
    source: str | None = None,
    verify: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    cache_limit: int | str | None = None,
) -> Dataset:
    """Open a committed dataset for reading.

    Parameters
    ----------
    path : the dataset directory, or an object-store URL (``s3://bucket/prefix``,
        ``gs://``, ``az://``, ``https://``, ``memory://``; see ``docs/object-storage.md``).
    source : read with this source instead of the one that wrote the shards
        (it must be able to read them).
    verify : what is checksummed on the read path: ``"once"`` (default:
        every block this process reads is verified when it is first read,
        against the shard's block index) or ``"size"`` (sizes only). Default:
        ``$SHARDSTORE_VERIFY`` or ``"once"``. See ``docs/reliability.md``.
    storage_options : object-store settings (endpoint, region, credentials...), for a
        URL; by default they come from the environment (``AWS_ENDPOINT_URL``...).
    cache_dir : for a URL, the local directory shards are cached in (default
        ``$SHARDSTORE_CACHE_DIR``, else ``~/.cache/shardstore``); shared safely by every
        process of the machine.
    cache_limit : for a URL, bytes the cache may use (``"200GiB"``; default
        ``$SHARDSTORE_CACHE_LIMIT``, else half the free space of its file system).

    Raises
    ------
    DatasetNotFoundError
        No committed dataset (no ``manifest.json``) at ``path``.
    ManifestError
        The manifest is invalid, unsafe, of an unsupported format version, or
        larger than :data:`~shardstore.storage.fsutil.MAX_MANIFEST_BYTES`.
    ChecksumError
        ``manifest.json`` is not a regular file (a symlink, a directory, a
        FIFO, a device: nothing is read from it).
    StorageError
        The operating system refused (no permission...).
    """
    verify = integrity.normalize_mode(verify)
    store = remote_store(path, storage_options)
    if store is not None:
        return open_remote(
            store, cache_dir=cache_dir, cache_limit=cache_limit, source=source, verify=verify
        )
    root = local_path(path)
    if not root.is_dir():  # a link the caller typed is followed; nothing below it is
        raise DatasetNotFoundError(f"no shardstore dataset at {str(root)!r}: not a directory")
    data = read_manifest_file(root)
    if data is None:
        raise DatasetNotFoundError(
            f"no shardstore dataset at {str(root)!r}: no {MANIFEST_NAME} (never committed?)"
        )
    try:
        manifest = Manifest.from_json(data)
    except ManifestError as exc:  # name the file: "<path>/manifest.json: manifest.format: ..."
        raise ManifestError(f"{root / MANIFEST_NAME}: {exc}", params=exc.params) from None
    dataset = Dataset(root, manifest, source=source, verify=verify)
    if source is not None:
        dataset.source  # noqa: B018 - fail fast on an unknown or incompatible source
    return dataset


@storage_boundary("collect garbage in", _path)
def gc(
    path: str | os.PathLike[str],
    *,
    grace: float | None = None,
    dry_run: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> GcReport:
    """Delete what crashed writes and superseded versions left in a dataset directory.

    Parameters
    ----------
    path : the dataset directory, or an object-store URL.
    grace : seconds an overwritten version is kept after the overwrite, for
        readers that opened it (default ``$SHARDSTORE_GC_GRACE_SECONDS`` or
        24 hours). ``grace=0`` removes every superseded version now.
    dry_run : report, delete nothing.
    storage_options : object-store settings, for a URL (see :func:`open`).

    Returns
    -------
    GcReport
        ``removed`` (relative paths), ``bytes_freed``, ``kept_retired``
        (versions still in their grace period), ``in_progress`` (running
        writers, whose files are never touched) and ``damaged`` (entries that
        are not what belongs there, e.g. symlinks: reported, left alone).

    Raises
    ------
    ChecksumError
        The control area ``.shardstore`` is a symlink or not a directory:
        nothing is touched (remove it by hand once you have looked at it).

    Every write runs the same collection when it starts; ``docs/reliability.md``
    lists what is removed and when.
    """
    from shardstore.storage.garbage import collect

    store = remote_store(path, storage_options)
    if store is not None:
        from shardstore.storage.objgc import collect as collect_objects

        return collect_objects(store, grace=grace, dry_run=dry_run)
    root = local_path(path)
    if not root.is_dir():
        raise InvalidInputError(f"{str(root)!r} is not a directory")
    return collect(root, grace=grace, dry_run=dry_run)
