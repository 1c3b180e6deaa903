"""The storage layer: every file and object shardstore reads or writes goes through here.

A dataset lives at a *location*: a local directory or an object-store prefix
(:mod:`shardstore.storage.location`). :func:`open_store` returns the
:class:`~shardstore.storage.base.Store` for it:

* :class:`~shardstore.storage.local.LocalStore` for local paths and ``file://``;
* :class:`~shardstore.storage.objects.ObjectStore` for ``s3://``, ``gs://``, ``az://``,
  ``https://`` and ``memory://`` (obstore, an optional dependency:
  ``pip install 'shardstore[cloud]'``).

Nothing here imports a cloud client until a remote location is opened.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shardstore.errors import InvalidInputError
from shardstore.storage.base import ObjectInfo, PreconditionFailed, Sink, Store
from shardstore.storage.location import REMOTE_SCHEMES, Location, is_url, parse_location

__all__ = [
    "REMOTE_SCHEMES",
    "Location",
    "ObjectInfo",
    "PreconditionFailed",
    "Sink",
    "Store",
    "is_url",
    "local_path",
    "open_store",
    "parse_location",
    "remote_store",
    "require_local",
]


def open_store(
    location: str | os.PathLike[str] | Location | Store,
    storage_options: Mapping[str, Any] | None = None,
) -> Store:
    """The store of a dataset location (a path, a URL, or an already open store).

    Parameters
    ----------
    location : a local path, ``file://`` URL or object-store URL (``s3://bucket/prefix``...).
    storage_options : settings of an object store (endpoint, region, credentials,
        retries: see :mod:`shardstore.storage.objects`); refused for local paths.

    Raises
    ------
    InvalidInputError
        An unknown scheme, a malformed URL, or ``storage_options`` for a local path.
    MissingDependencyError
        A remote location without obstore installed.
    """
    if isinstance(location, Store):
        if storage_options:
            raise InvalidInputError("storage_options apply to a location, not to an open store")
        return location
    loc = location if isinstance(location, Location) else parse_location(location)
    if loc.is_local:
        if storage_options:
            raise InvalidInputError(
                f"storage_options apply to object stores; {loc.url!r} is a local path"
            )
        from shardstore.storage.local import LocalStore

        return LocalStore(loc)
    from shardstore.storage.objects import ObjectStore

    return ObjectStore(loc, storage_options)


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
