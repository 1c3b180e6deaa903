"""Datasets in object storage: the glue between the reader, the writer and the store.

A dataset at ``s3://``, ``gs://``, ``az://``, ``https://`` or ``memory://`` has the
same layout as a local one (``manifest.json`` and ``v-<id>/`` shard objects, see
``docs/format.md``). Two classes connect it to the local machinery:

* :class:`RemoteShards` (reading): the shards of an opened remote dataset, brought
  whole into the local :class:`~shardstore.storage.cache.ShardCache` (verified while
  they download) just before a reader touches them, and prefetched ahead of it. The
  cache keeps the dataset's layout, so every source reads a cached shard through its
  fast local path, exactly as it reads a local dataset.
* :class:`~shardstore.writing.remote.RemoteWrite` (writing): the writer writes shards
  into a local scratch directory as usual; each finished shard is uploaded under the
  new version's unique prefix and its local files deleted, so the scratch space holds
  only the shards in flight. The commit is a create-only (or If-Match) put of
  ``manifest.json``
  (:class:`~shardstore.storage.objcommit.ObjectTransaction`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from shardstore.format.manifest import ShardEntry
from shardstore.storage import Store, local_path, remote_store, require_local
from shardstore.storage.cache import ShardCache

if TYPE_CHECKING:
    import numpy as np

    from shardstore.sources.base import ReadContext, Source
    from shardstore.storage.partial import PartialShards

__all__ = [
    "RemoteShards",
    "local_path",
    "remote_store",
    "require_local",
    "stored_bytes",
]

log = logging.getLogger(__name__)

#: Shards a tf.data interleave may hold per parallel read: the current ones, those it
#: opens ahead, and one being prepared (they stay pinned, see :meth:`RemoteShards.plan`).
INTERLEAVE_AHEAD = 3
#: Shards whose blocks are fetched at once for one random read.
FILL_THREADS = 16


def stored_bytes(shard: ShardEntry) -> int:
    """Bytes of every file of ``shard`` in the store, its block index included."""
    return sum(f.size for f in shard.stored_files)


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


#: Names this module had when it held both halves, and where they are now.
_MOVED = {
    "open_remote": "shardstore.reading.reader.open_remote",
    "RemoteWrite": "shardstore.writing.remote.RemoteWrite",
    "UPLOAD_CONCURRENCY": "shardstore.writing.remote.UPLOAD_CONCURRENCY",
    "UPLOAD_CHUNK": "shardstore.writing.remote.UPLOAD_CHUNK",
    "SINGLE_PUT_BYTES": "shardstore.writing.remote.SINGLE_PUT_BYTES",
}


def __getattr__(name: str) -> object:
    if name in _MOVED:
        raise ImportError(f"{__name__}.{name} is now {_MOVED[name]}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
