"""The write transaction on an object store: unique shard objects, a lease, a conditional commit.

Object stores have no rename, no hard link and no lock, so a write there goes
(``docs/format.md`` has the normative protocol)::

    <prefix>/
      manifest.json                     the commit point (create-only / If-Match put)
      v-<version_id>/...                shard objects, written straight here, never overwritten
      .shardstore/writers/<id>.json     the lease of a running writer (refreshed every minute)
      .shardstore/retired/v-<id>        marker: that version was superseded at its mtime

1. :meth:`ObjectTransaction.begin` puts the writer's lease and starts a heartbeat that
   refreshes it, so garbage collection on any machine knows the writer is alive;
2. sources write shard objects under ``v-<version_id>/`` (a random 64-bit id: no two
   writes share a name, and no object is ever overwritten);
3. :meth:`ObjectTransaction.commit` lists ``v-<version_id>/`` and checks that every
   object the manifest lists is there with its size, marks the version it replaces as
   retired, then puts ``manifest.json``: **create-only** (``If-None-Match: *``) for a
   first write, **If-Match** on the version read when the write began for an
   overwrite. Of two racing writers exactly one put succeeds; the other gets
   :class:`~shardstore.errors.CommitConflictError` and publishes nothing.

A reader sees the old manifest or the new one (a put is atomic), never a half-written
dataset. A writer killed midway leaves objects under an unreferenced ``v-<id>/`` and a
lease that stops being refreshed: :func:`shardstore.storage.objgc.collect` removes
them once the lease is older than :data:`WRITER_TIMEOUT_SECONDS`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time

from shardstore.errors import CommitConflictError, DatasetExistsError, ManifestError
from shardstore.format.manifest import MANIFEST_NAME, Manifest
from shardstore.storage.base import ObjectInfo, PreconditionFailed, Store
from shardstore.storage.layout import (
    LEASES,
    RETIRED,
    WRITER_TIMEOUT_ENV,
    WRITER_TIMEOUT_SECONDS,
    lease_key,
    referenced_prefixes,
    writer_timeout,
)
from shardstore.storage.objgc import collect

__all__ = [
    "HEARTBEAT_SECONDS",
    "LEASES",
    "RETIRED",
    "WRITER_TIMEOUT_ENV",
    "WRITER_TIMEOUT_SECONDS",
    "ObjectTransaction",
    "lease_key",
    "writer_timeout",
]

log = logging.getLogger(__name__)

#: A running writer refreshes its lease this often (seconds).
HEARTBEAT_SECONDS = 60.0


class ObjectTransaction:
    """One write's claim on an object-store dataset (see the module docstring).

    Parameters
    ----------
    store : the dataset's store.
    version_id : the new version's id (names ``v-<version_id>/``).
    overwrite : replace an existing dataset; without it, one that appears before the
        commit makes the commit fail.
    base : ``head("manifest.json")`` when the write started (``None``: no dataset); the
        commit succeeds only if ``manifest.json`` is still that version.
    """

    def __init__(
        self, store: Store, version_id: str, *, overwrite: bool, base: ObjectInfo | None
    ) -> None:
        if not overwrite and base is not None:
            raise DatasetExistsError(
                f"a dataset already exists at {store.url}; pass overwrite=True to replace it",
                params=("overwrite",),
            )
        self.store = store
        self.version_id = version_id
        self.prefix = f"v-{version_id}"
        self.overwrite = overwrite
        self.base = base
        self.state = "new"  # new -> open -> committed | aborted | suspended
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._started = time.time()

    # -- the lease --------------------------------------------------------------------------
    def _lease_body(self) -> bytes:
        return json.dumps(
            {
                "version_id": self.version_id,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "started": self._started,
                "refreshed": time.time(),
            }
        ).encode()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self.store.put(lease_key(self.version_id), self._lease_body())
            except Exception as exc:  # the next beat tries again; commit checks the lease
                log.warning("cannot refresh the writer lease of %s: %s", self.store.url, exc)

    def _end_lease(self) -> None:
        self._stop.set()
        if self._heartbeat is not None and self._heartbeat is not threading.current_thread():
            self._heartbeat.join(timeout=5)
        self._heartbeat = None
        try:
            self.store.delete([lease_key(self.version_id)])
        except Exception as exc:  # garbage collection removes a stale lease later
            log.warning("cannot remove the writer lease of %s: %s", self.store.url, exc)

    # -- the write --------------------------------------------------------------------------
    def begin(self, *, collect_garbage: bool = True) -> None:
        """Put this writer's lease and start refreshing it (idempotent)."""
        if self.state == "open":
            return
        if self.state != "new":
            raise RuntimeError(f"this write is {self.state}")
        if self.store.location.read_only:
            raise DatasetExistsError(f"{self.store.url} is read-only (an HTTP server)")
        self.store.put(lease_key(self.version_id), self._lease_body())
        self._heartbeat = threading.Thread(
            target=self._beat, name=f"shardstore-lease-{self.version_id}", daemon=True
        )
        self._heartbeat.start()
        self.state = "open"
        if collect_garbage:
            try:
                collect(self.store)
            except Exception as exc:  # garbage collection must never fail a write
                log.warning("garbage collection in %s failed: %s", self.store.url, exc)

    def commit(self, manifest: Manifest) -> None:
        """Publish ``manifest`` (whose new files are under ``v-<version_id>/``), or raise.

        Raises
        ------
        CommitConflictError
            ``manifest.json`` changed since the write started (another writer committed
            first). Nothing of this write was published.
        ManifestError
            An object the manifest lists is missing or has another size.
        """
        if manifest.version_id != self.version_id:
            raise ValueError("the manifest belongs to another write")
        self.begin()
        now = self.store.head(MANIFEST_NAME)
        if (now is None) != (self.base is None) or (
            now is not None and self.base is not None and now.etag != self.base.etag
        ):
            raise self._conflict()
        self._check_objects(manifest)
        if self.store.head(lease_key(self.version_id)) is None:
            raise CommitConflictError(
                f"{self.store.url}: this writer's lease was removed (by garbage collection "
                "after it went unrefreshed too long); nothing of this write was published"
            )
        if self.base is not None:
            self._retire_current(referenced_prefixes(manifest))
        body = manifest.to_json().encode("utf-8")
        try:
            if self.base is None:
                self.store.put(MANIFEST_NAME, body, mode="create")
            else:
                self.store.put(MANIFEST_NAME, body, if_match=self.base)
        except PreconditionFailed:
            raise self._conflict() from None
        self.state = "committed"
        self._end_lease()

    def _check_objects(self, manifest: Manifest) -> None:
        mine = [
            f
            for s in manifest.shards
            for f in s.stored_files
            if f.path.startswith(self.prefix + "/")
        ]
        if not mine:
            return
        listed = {o.key: o.size for o in self.store.list(self.prefix + "/")}
        for f in mine:
            size = listed.get(f.path)
            if size != f.size:
                what = "is missing" if size is None else f"has {size} bytes, not {f.size}"
                raise ManifestError(
                    f"{self.store.key_url(f.path)} {what}: the object store lost a shard "
                    "object before the commit; nothing was published"
                )

    def _retire_current(self, keep: set[str]) -> None:
        """Mark the versions the manifest being replaced uses (and the new one does not)."""
        try:
            current = Manifest.from_json(self.store.get(MANIFEST_NAME, max_size=1 << 30))
        except Exception as exc:  # unreadable: retire nothing (gc marks it on first sight)
            log.warning("cannot read the manifest being replaced at %s: %s", self.store.url, exc)
            return
        stamp = json.dumps({"retired_at": time.time(), "by": self.version_id}).encode()
        for name in sorted(referenced_prefixes(current) - keep):
            self.store.put(f"{RETIRED}{name}", stamp)

    def _conflict(self) -> CommitConflictError:
        now = self.store.head(MANIFEST_NAME)
        if self.base is None:
            what = "committed a dataset here"
        elif now is None:
            what = "deleted the dataset this write was to replace"
        else:
            what = "replaced the version this write was to replace"
        return CommitConflictError(
            f"{self.store.url}: another writer {what} after this write started; "
            "nothing of this write was published (start it again to write over the new state)"
        )

    def suspend(self) -> None:
        """Let go of this write but keep its objects (a resumable write continues later)."""
        if self.state != "open":
            return
        self.state = "suspended"
        self._end_lease()

    def abort(self) -> None:
        """Remove every object this write created; a committed dataset is untouched."""
        if self.state in ("committed", "aborted"):
            return
        was_open = self.state in ("open", "suspended")
        self.state = "aborted"
        if not was_open:
            return
        try:
            self.store.delete(o.key for o in self.store.list(self.prefix + "/"))
        except Exception as exc:  # the lease goes stale; gc removes the objects later
            log.warning("cannot remove the objects of an aborted write at %s: %s",
                        self.store.url, exc)  # fmt: skip
            self._stop.set()
            return
        self._end_lease()
