"""Datasets in object storage, write side: shards uploaded as they are finished.

The writer writes shards into a local scratch directory as usual; each finished shard
is uploaded under the new version's unique prefix and its local files deleted, so the
scratch space holds only the shards in flight. The commit is a create-only (or
If-Match) put of ``manifest.json``
(:class:`~shardstore.storage.objcommit.ObjectTransaction`). The read side is
:mod:`shardstore.reading.remote`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from shardstore.format.manifest import MANIFEST_NAME, Manifest, ShardEntry
from shardstore.storage import Store
from shardstore.storage.cache import default_cache_dir

if TYPE_CHECKING:
    from shardstore.storage.objcommit import ObjectTransaction

__all__ = ["RemoteWrite"]

#: Files uploaded at once by a writer.
UPLOAD_CONCURRENCY = 8
#: Files smaller than this are uploaded with one request; larger ones in parts.
SINGLE_PUT_BYTES = 8 << 20
#: Bytes read from a local file per upload part.
UPLOAD_CHUNK = 8 << 20


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
