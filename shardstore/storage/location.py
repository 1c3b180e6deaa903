"""Where a dataset lives: a local directory or an object-store prefix, parsed from what users type.

A *location* is either a local path (``data/train``, ``/mnt/x``, ``file:///mnt/x``) or a
URL whose scheme names an object store:

=================  ==========================================================
``s3://B/P``       Amazon S3 and S3-compatible stores (MinIO, SeaweedFS, R2...)
``gs://B/P``       Google Cloud Storage
``az://C/P``       Azure Blob Storage (also ``azure://``, ``abfs://``, ``abfss://``)
``https://H/P``    any HTTP(S) server, read-only (also ``http://``)
``memory://N/P``   an in-process store named ``N`` (tests, examples)
=================  ==========================================================

Anything of the form ``scheme://`` is a URL: a URL is never taken for a local path, and
an unknown scheme is an error naming the ones shardstore knows. Nothing here imports a
cloud client.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from shardstore.errors import InvalidInputError

__all__ = ["REMOTE_SCHEMES", "Location", "is_url", "parse_location"]

#: Object-store schemes, each mapped to the canonical name used in messages and URLs.
REMOTE_SCHEMES: dict[str, str] = {
    "s3": "s3",
    "gs": "gs",
    "az": "az",
    "azure": "az",
    "abfs": "az",
    "abfss": "az",
    "http": "http",
    "https": "https",
    "memory": "memory",
}
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")


def is_url(location: object) -> bool:
    """Whether ``location`` is a string of the form ``scheme://...``."""
    return isinstance(location, str) and _URL.match(location) is not None


@dataclass(frozen=True)
class Location:
    """A parsed dataset location.

    Attributes
    ----------
    scheme : ``"file"`` for a local directory, else the canonical object-store scheme.
    bucket : the bucket, container, host or memory-store name (``""`` for local paths).
    prefix : the key prefix inside the bucket, without leading or trailing ``/``.
    path : the local directory (``None`` for object stores).
    """

    scheme: str
    bucket: str = ""
    prefix: str = ""
    path: Path | None = None

    @property
    def is_local(self) -> bool:
        """True for a directory on this machine's file systems."""
        return self.scheme == "file"

    @property
    def read_only(self) -> bool:
        """True where shardstore can only read (plain HTTP servers)."""
        return self.scheme in ("http", "https")

    @property
    def url(self) -> str:
        """The location as users write it: the local path, or ``scheme://bucket/prefix``."""
        if self.path is not None:
            return str(self.path)
        tail = f"/{self.prefix}" if self.prefix else ""
        return f"{self.scheme}://{self.bucket}{tail}"

    def key_url(self, key: str) -> str:
        """The full location of ``key`` (a path relative to this location), for messages."""
        if self.path is not None:
            return str(self.path / key)
        return f"{self.url.rstrip('/')}/{key}"

    def __str__(self) -> str:
        return self.url


def parse_location(location: str | os.PathLike[str]) -> Location:
    """Parse a dataset location (see the module docstring).

    Raises
    ------
    InvalidInputError
        An unknown scheme, a URL without a bucket, or a malformed ``file://`` URL.
    """
    if isinstance(location, Location):
        return location
    if not isinstance(location, str):
        return Location("file", path=Path(os.fspath(location)))
    match = _URL.match(location)
    if match is None:
        if not location:
            raise InvalidInputError("the dataset location is empty")
        return Location("file", path=Path(location))
    scheme = match.group(1).lower()
    parts = urlsplit(location)
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise InvalidInputError(
                f"{location!r}: a file:// URL names a path on this machine "
                "(file:///absolute/path); for another host use its object-store URL"
            )
        path = unquote(parts.path)
        if not path:
            raise InvalidInputError(f"{location!r}: no path after file://")
        return Location("file", path=Path(path))
    canonical = REMOTE_SCHEMES.get(scheme)
    if canonical is None:
        known = ", ".join(f"{s}://" for s in ("file", "s3", "gs", "az", "https", "memory"))
        raise InvalidInputError(
            f"unknown storage scheme {scheme!r} in {location!r}; shardstore reads and writes "
            f"local paths and {known} (also http://, azure://, abfs://)"
        )
    bucket = parts.netloc
    if not bucket:
        raise InvalidInputError(f"{location!r}: no bucket (expected {scheme}://BUCKET/PREFIX)")
    if parts.query or parts.fragment:
        raise InvalidInputError(
            f"{location!r}: query strings and fragments are not part of a dataset location; "
            "pass store settings as storage_options"
        )
    prefix = unquote(parts.path).strip("/")
    if any(p in (".", "..") for p in prefix.split("/")) or "//" in prefix:
        raise InvalidInputError(
            f"{location!r}: the prefix must be a normalised path (no '.', '..' or '//')"
        )
    return Location(canonical, bucket=bucket, prefix=prefix)
