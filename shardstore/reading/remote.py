"""Datasets in object storage: the glue between the reader, the writer and the store.

A dataset at ``s3://``, ``gs://``, ``az://``, ``https://`` or ``memory://`` has the
same layout as a local one (``manifest.json`` and ``v-<id>/`` shard objects, see
``docs/format.md``). Two classes connect it to the local machinery:

* :class:`RemoteShards` (reading): the shards of an opened remote dataset, brought
  whole into the local :class:`~shardstore.storage.cache.ShardCache` (verified while
  they download) just before a reader touches them, and prefetched ahead of it. The
  cache keeps the dataset's layout, so every source reads a cached shard through its
  fast local path, exactly as it reads a local dataset.
* :class:`RemoteWrite` (writing): the writer writes shards into a local scratch
  directory as usual; each finished shard is uploaded under the new version's unique
  prefix and its local files deleted, so the scratch space holds only the shards in
  flight. The commit is a create-only (or If-Match) put of ``manifest.json``
  (:class:`~shardstore.storage.objcommit.ObjectTransaction`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shardstore.errors import DatasetNotFoundError, ManifestError
from shardstore.format.manifest import MANIFEST_NAME, Manifest, ShardEntry
from shardstore.storage import Store, open_store, parse_location
from shardstore.storage.cache import ShardCache, default_cache_dir

if TYPE_CHECKING:
    import numpy as np

    from shardstore.reading.reader import Dataset
    from shardstore.sources.base import ReadContext, Source
    from shardstore.storage.objcommit import ObjectTransaction
    from shardstore.storage.partial import PartialShards

__all__ = ["RemoteShards", "RemoteWrite", "open_remote", "remote_store", "require_local"]

log = logging.getLogger(__name__)

#: Files uploaded at once by a writer.
UPLOAD_CONCURRENCY = 8
#: Files smaller than this are uploaded with one request; larger ones in parts.
SINGLE_PUT_BYTES = 8 << 20
#: Shards a tf.data interleave may hold per parallel read: the current ones, those it
#: opens ahead, and one being prepared (they stay pinned, see :meth:`RemoteShards.plan`).
INTERLEAVE_AHEAD = 3
#: Shards whose blocks are fetched at once for one random read.
FILL_THREADS = 16
#: Bytes read from a local file per upload part.
UPLOAD_CHUNK = 8 << 20


def remote_store(
    location: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None
) -> Store | None:
    """The object store of ``location``, or ``None`` for a local path / ``file://`` URL.

    Raises
    ------
    InvalidInputError
        An unknown scheme, a malformed URL, or ``storage_options`` for a local path.
    """
    loc = parse_location(location)
    if loc.is_local:
        if storage_options:
            from shardstore.errors import InvalidInputError

            raise InvalidInputError(
                f"storage_options apply to object-store URLs, not to the local path {loc.url!r}",
                params=("storage_options",),
            )
        return None
    return open_store(loc, storage_options)


def local_path(location: str | os.PathLike[str]) -> Path:
    """The directory of a local ``location`` (a path or a ``file://`` URL)."""
    loc = parse_location(location)
    assert loc.path is not None
    return loc.path


def stored_bytes(shard: ShardEntry) -> int:
    """Bytes of every file of ``shard`` in the store, its block index included."""
    return sum(f.size for f in shard.stored_files)


def require_local(location: str | os.PathLike[str], what: str) -> None:
    """Refuse an object-store URL where ``what`` works on local directories only.

    Raises
    ------
    CapabilityError
        ``location`` is in object storage (a URL is never taken for a local path).
    """
    loc = parse_location(location)
    if not loc.is_local:
        from shardstore.errors import CapabilityError

        raise CapabilityError(
            f"{what} works on local directories, and {loc.url} is in object storage: "
            "copy datasets between object storage and a local directory with "
            "`shardstore convert SRC DEST --format npy` (any format), bit for bit"
        )


# -- reading -------------------------------------------------------------------------------
class RemoteShards:
    """The shards of a remote dataset, fetched into a local cache as readers need them.

    Parameters
    ----------
    store : the dataset's store.
    cache : the shard cache (shared by every dataset and process that uses its directory).
    """

    def __init__(self, store: Store, cache: ShardCache) -> None:
        self.store = store
        self.cache = cache

    def __repr__(self) -> str:
        return f"RemoteShards({self.store.url!r}, {self.cache!r})"

    @property
    def url(self) -> str:
        """The dataset's URL."""
        return self.store.url

    @property
    def root(self) -> Path:
        """The local directory where the cached shards keep the dataset's layout."""
        return self.cache.root(self.store)

    @contextlib.contextmanager
    def holding(self, shards: Iterable[ShardEntry]) -> Iterator[None]:
        """Have every file of ``shards`` in the cache, verified, for the ``with`` block."""
        held: list[ShardEntry] = []
        try:
            for shard in shards:
                self.cache.acquire(self.store, shard)
                held.append(shard)
            yield
        finally:
            for shard in held:
                self.cache.release(self.store, shard)

    @cached_property
    def partial(self) -> PartialShards:
        """Sparse copies of shards, for reads of a few records (``ds[i]``)."""
        from shardstore.storage.partial import PartialShards

        return PartialShards(self.store, self.cache)

    def ranged_context(self, ctx: ReadContext, verify_mode: str) -> ReadContext:
        """A context like ``ctx`` over the sparse copies (see :meth:`hold_for_read`)."""
        from shardstore.sources.base import ReadContext
        from shardstore.storage.integrity import Verifier

        root = self.partial.root
        root.mkdir(parents=True, exist_ok=True)
        return ReadContext(
            root, ctx.shards, ctx.features, ctx.block_records, verifier=Verifier(root, verify_mode)
        )

    def hold_for_read(
        self,
        held: contextlib.ExitStack,
        source: Source,
        ctx: ReadContext,
        ranged: ReadContext | None,
        rows: Mapping[int, np.ndarray],
    ) -> dict[int, ReadContext]:
        """Make the bytes that reading ``rows`` (``position -> rows``) touches local.

        Returns the context to read each position with: ``ctx`` where the whole shard
        is (or is brought) in the cache, ``ranged`` where only the blocks the source
        reads were fetched into sparse copies (sources with
        :meth:`~shardstore.sources.base.Source.record_ranges`, shards with a block
        index). What is returned stays in place until ``held`` closes.
        """
        from shardstore.storage.integrity import Verifier

        out: dict[int, ReadContext] = {}
        whole: list[ShardEntry] = []
        fills: list[tuple[ShardEntry, dict[str, list[tuple[int, int]]]]] = []
        fill_pos: list[int] = []
        for pos, wanted in rows.items():
            shard = ctx.shards[pos]
            spans = None
            if ranged is not None and shard.blocks is not None:
                spans = source.record_ranges(ranged, pos, wanted)
            if spans is None:
                whole.append(shard)
                out[pos] = ctx
                continue
            if held.enter_context(self.cache.entry_held(self.store, shard)):
                out[pos] = ctx  # the whole shard is cached already (and held)
                continue
            fills.append((shard, spans))
            fill_pos.append(pos)
            out[pos] = ranged  # type: ignore[assignment]
        # one exit stack per fill (a private copy lives in it), entered first: closed with
        # `held` whatever happens
        stacks = [held.enter_context(contextlib.ExitStack()) for _ in fills]
        roots: list[Path | None] = []
        if len(fills) == 1:
            roots = [self.partial.fill(*fills[0], stacks[0])]
        elif fills:
            with ThreadPoolExecutor(min(len(fills), FILL_THREADS)) as pool:
                futures = [
                    pool.submit(self.partial.fill, *job, stack)
                    for job, stack in zip(fills, stacks, strict=True)
                ]
                roots = [done.result() for done in futures]
        for pos, root in zip(fill_pos, roots, strict=True):
            if root is not None:  # a private copy: read there, verified as it was fetched
                assert ranged is not None
                out[pos] = dataclasses.replace(ranged, root=root, verifier=Verifier(root, "size"))
        if whole:
            held.enter_context(self.holding(whole))
        return out

    def fetch(self, shard: ShardEntry) -> None:
        """Bring ``shard`` into the cache; it stays there while among the recently used."""
        with self.holding((shard,)):
            pass

    def plan(self, shards: Sequence[ShardEntry], *, parallel: int, what: str) -> None:
        """Prefetch ``shards`` in this order; refuse a cache too small for what is held.

        ``parallel`` shards are read at once, and the cache keeps its prefetch depth
        and the recently used shards pinned: a ``cache_limit`` that cannot hold them
        would make downloads wait for room forever, so it fails now instead.
        """
        if not shards:
            return
        # a tf.data interleave reads `parallel` shards and opens as many again ahead (its
        # "future" elements): a shard fetched for it stays pinned until it has been opened
        readers = min(len(shards), INTERLEAVE_AHEAD * parallel + 1)
        largest = max(stored_bytes(s) for s in shards)
        held = min(len(shards), readers + self.cache.depth)
        self.cache.check_room(largest, held, what=what)
        self.cache.plan(self.store, shards, readers=readers)

    def listed_stat(self) -> Callable[[str], tuple[str, os.stat_result | None]]:
        """A ``resolve_stat`` over one listing of the store: sizes, no object read.

        For :func:`shardstore.storage.integrity.stat_shards` (``shardstore info``): the
        result's ``st_size`` is the object's size; ``None`` for a missing object.
        """
        sizes = {o.key: o.size for o in self.store.list()}

        def resolve_stat(relpath: str) -> tuple[str, os.stat_result | None]:
            size = sizes.get(relpath)
            if size is None:
                return relpath, None
            return relpath, os.stat_result((stat.S_IFREG | 0o444, 0, 0, 1, 0, 0, size, 0, 0, 0))

        return resolve_stat

    def fits(self, shards: Sequence[ShardEntry]) -> bool:
        """Whether the cache can hold every file of ``shards`` at once."""
        return sum(stored_bytes(s) for s in shards) <= self.cache.limit

    def check_whole(self, shards: Sequence[ShardEntry], *, what: str) -> None:
        """Refuse a reader that touches every shard at once when the cache cannot hold all."""
        total = sum(stored_bytes(s) for s in shards)
        if total > self.cache.limit:
            from shardstore.storage.cache import CacheFullError

            raise CacheFullError(
                f"{what} reads records from every shard at random, so the whole dataset "
                f"({total} bytes) must fit in the shard cache, whose cache_limit is "
                f"{self.cache.limit} bytes: raise cache_limit, or shuffle shard by shard "
                "(shuffle=True), which needs only the shards being read",
                params=("cache_limit", "shuffle"),
            )


def open_remote(
    store: Store,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    cache_limit: int | str | None = None,
    source: str | None = None,
    verify: str | None = None,
) -> Dataset:
    """Open the committed dataset in ``store`` for reading (see :func:`shardstore.open`)."""
    from shardstore.reading.reader import Dataset
    from shardstore.storage.fsutil import MAX_MANIFEST_BYTES

    try:
        data = store.get(MANIFEST_NAME, max_size=MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        raise DatasetNotFoundError(
            f"no shardstore dataset at {store.url}: no {MANIFEST_NAME} (never committed?)"
        ) from None
    try:
        manifest = Manifest.from_json(data)
    except ManifestError as exc:
        raise ManifestError(f"{store.key_url(MANIFEST_NAME)}: {exc}", params=exc.params) from None
    cache = ShardCache(cache_dir, cache_limit)
    remote = RemoteShards(store, cache)
    remote.root.mkdir(parents=True, exist_ok=True)
    dataset = Dataset(remote.root, manifest, source=source, verify=verify, remote=remote)
    if source is not None:
        dataset.source  # noqa: B018 - fail fast on an unknown or incompatible source
    return dataset


# -- writing -------------------------------------------------------------------------------
class RemoteWrite:
    """The object-store half of a :class:`~shardstore.writing.writer.Writer` writing to a URL.

    Parameters
    ----------
    store : where the dataset goes.
    version_id : the write's version id (its objects go under ``v-<version_id>/``).
    overwrite : replace an existing dataset.
    cache_dir, cache_limit : the shard cache of the dataset once written; shards are
        written under ``cache_dir`` before they are uploaded (each shard's files are
        deleted once uploaded).
    """

    def __init__(
        self,
        store: Store,
        version_id: str,
        *,
        overwrite: bool,
        cache_dir: str | os.PathLike[str] | None = None,
        cache_limit: int | str | None = None,
    ) -> None:
        from shardstore.storage.objcommit import ObjectTransaction

        self.store = store
        base = store.head(MANIFEST_NAME)
        self.txn: ObjectTransaction = ObjectTransaction(
            store, version_id, overwrite=overwrite, base=base
        )
        self.cache_dir = cache_dir
        self.cache_limit = cache_limit
        parent = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / ".writes"
        parent.mkdir(parents=True, exist_ok=True)
        #: The local directory the writer writes into (removed at the end).
        self.scratch = Path(tempfile.mkdtemp(prefix="write-", dir=parent))
        self._pool: ThreadPoolExecutor | None = None
        self._uploads: list[Future[None]] = []
        self._lock = threading.Lock()
        self.bytes_uploaded = 0

    def begin(self) -> None:
        """Take the writer's lease in the store (idempotent)."""
        self.txn.begin()

    def upload_shard(self, files_root: Path, shard: ShardEntry) -> None:
        """Upload the files of a finished shard in the background, then delete them here."""
        self.begin()
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    UPLOAD_CONCURRENCY, thread_name_prefix="shardstore-upload"
                )
            for f in shard.stored_files:
                self._uploads.append(self._pool.submit(self._upload, files_root / f.path, f.path))

    def _upload(self, path: Path, key: str) -> None:
        from shardstore.storage.safefs import open_binary

        with open_binary(path) as fh:
            size = os.fstat(fh.fileno()).st_size
            if size < SINGLE_PUT_BYTES:
                self.store.put(key, fh.read())
            else:
                sink = self.store.open_write(key)
                try:
                    while chunk := fh.read(UPLOAD_CHUNK):
                        sink.write(chunk)
                except BaseException:
                    sink.abort()
                    raise
                sink.close()
        path.unlink()
        with self._lock:
            self.bytes_uploaded += size

    def wait(self) -> None:
        """Wait for every upload; raise the first failure."""
        with self._lock:
            uploads = list(self._uploads)
        for future in uploads:
            future.result()

    def commit(self, manifest: Manifest) -> None:
        """Wait for the uploads, then publish ``manifest`` (or raise CommitConflictError)."""
        self.wait()
        self.txn.commit(manifest)

    def close(self, *, committed: bool) -> None:
        """Stop uploading, remove the scratch directory, and abort an uncommitted write."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if not committed:
            self.txn.abort()
        shutil.rmtree(self.scratch, ignore_errors=True)
