"""The storage interface: the few operations shardstore needs from a directory or a bucket.

Everything that touches bytes (the writer, the commit, garbage collection, checksums,
sources reading shards) goes through a :class:`Store`. Two implementations exist: a
local directory (:mod:`shardstore.storage.local`) and an object store reached through
obstore (:mod:`shardstore.storage.objects`: S3, GCS, Azure, HTTP, memory).

Keys are ``/``-separated paths relative to the dataset location, exactly the paths
a manifest lists (``manifest.json``, ``v-<id>/000000.image.npy``). The operations are
the object-store ones, which a local directory can do too:

``head``, ``get`` (bounded), ``get_ranges``, ``iter_chunks`` (a sequential read),
``list`` (recursive, by prefix), ``put`` (whole object; ``mode="create"`` fails if the
key exists, ``if_match=etag`` fails unless the object is still that version),
``open_write`` (a sequential upload of unknown length), ``delete``.

A conditional ``put`` that loses raises :class:`PreconditionFailed`; the commit turns
it into :class:`~shardstore.errors.CommitConflictError`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from typing_extensions import Buffer

    from shardstore.storage.location import Location

__all__ = ["ObjectInfo", "PreconditionFailed", "Sink", "Store"]

PutMode = Literal["overwrite", "create"]


@dataclass(frozen=True)
class ObjectInfo:
    """What ``head`` and ``list`` tell about one object.

    Attributes
    ----------
    key : the key, relative to the store's location.
    size : bytes.
    mtime : last modification, seconds since the epoch.
    etag : the entity tag a conditional ``put`` can match (``None`` where none).
    version : the store's version id of the object, where it has one (GCS generations).
    """

    key: str
    size: int
    mtime: float
    etag: str | None = None
    version: str | None = None


class PreconditionFailed(Exception):
    """A conditional ``put`` lost: the key exists (``create``) or changed (``if_match``)."""


class Sink(ABC):
    """A new object being written front to back (:meth:`Store.open_write`)."""

    @abstractmethod
    def write(self, data: Buffer) -> None:
        """Append ``data``."""

    @abstractmethod
    def close(self) -> None:
        """Finish the object: after this it is readable, complete, at its key."""

    @abstractmethod
    def abort(self) -> None:
        """Give the object up: nothing of it stays at its key."""


class Store(ABC):
    """A dataset location's bytes: see the module docstring.

    Attributes
    ----------
    location : where the store points (its ``url`` names it in messages).
    """

    location: Location

    @property
    def url(self) -> str:
        """The location as users write it."""
        return self.location.url

    @property
    def is_local(self) -> bool:
        """True for a directory on this machine."""
        return self.location.is_local

    def key_url(self, key: str) -> str:
        """The full location of ``key``, for messages."""
        return self.location.key_url(key)

    # -- reading ----------------------------------------------------------------------------
    @abstractmethod
    def head(self, key: str) -> ObjectInfo | None:
        """Size, time and version of ``key``; ``None`` if there is no such object."""

    @abstractmethod
    def get(self, key: str, *, max_size: int) -> bytes:
        """The whole object ``key``, refused (``InvalidInputError``) if over ``max_size``.

        Raises ``FileNotFoundError`` (a ``StorageError`` subclass) when missing.
        """

    @abstractmethod
    def get_ranges(self, key: str, starts: Sequence[int], ends: Sequence[int]) -> list[Buffer]:
        """The bytes ``[start, end)`` of ``key`` for each pair (nearby ranges fetched together)."""

    @abstractmethod
    def iter_chunks(self, key: str, chunk_size: int) -> Iterator[Buffer]:
        """The object ``key`` front to back, in pieces of about ``chunk_size`` bytes."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (``"v-1/"``: a directory), any order."""

    # -- writing ----------------------------------------------------------------------------
    @abstractmethod
    def put(
        self,
        key: str,
        data: Buffer,
        *,
        mode: PutMode = "overwrite",
        if_match: ObjectInfo | None = None,
    ) -> ObjectInfo:
        """Store ``data`` at ``key`` atomically; return what ``head`` would now say of it.

        ``mode="create"`` fails with :class:`PreconditionFailed` if ``key`` exists;
        ``if_match`` (an earlier ``head`` of ``key``) fails with it unless ``key`` is
        still that version of the object.
        """

    @abstractmethod
    def open_write(self, key: str) -> Sink:
        """A :class:`Sink` for a new object at ``key``, written front to back."""

    @abstractmethod
    def delete(self, keys: Iterable[str]) -> None:
        """Remove ``keys``; keys that do not exist are ignored."""
