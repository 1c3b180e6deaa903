"""A dataset in a local directory, behind the :class:`~shardstore.storage.base.Store` interface.

Keys map to files under the directory. Every path is resolved inside it
(:func:`shardstore.storage.fsutil.resolve_inside`: a symlink that leads out of the dataset is
refused), new files are created exclusively (``O_EXCL``) and published with an atomic
``link`` or ``rename``. The dataset protocol on a local disk (staging directory, file
locks, rename and link) lives in :mod:`shardstore.storage.commit` and
:mod:`shardstore.storage.garbage`;
this class gives the generic operations the rest of shardstore shares with object
stores (reading manifests and byte ranges, listing, copying between stores).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from shardstore.errors import InvalidInputError
from shardstore.storage.base import ObjectInfo, PreconditionFailed, PutMode, Sink, Store
from shardstore.storage.fsutil import HashingFile, make_dirs, remove_quietly, resolve_inside
from shardstore.storage.location import Location
from shardstore.storage.safefs import open_regular, read_bounded

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = ["LocalStore"]


def _info(key: str, st: os.stat_result) -> ObjectInfo:
    return ObjectInfo(
        key, st.st_size, st.st_mtime, etag=f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"
    )


class _FileSink(Sink):
    """A new file written front to back (created exclusively, removed on abort)."""

    def __init__(self, path: Path, *, fsync: bool, below: Path) -> None:
        make_dirs(path.parent, below=below)
        self._file = HashingFile(path, fsync=fsync, below=below)
        self._file.__enter__()
        self._open = True

    def write(self, data: Buffer) -> None:
        self._file.write(memoryview(data))

    def close(self) -> None:
        if self._open:
            self._open = False
            self._file.__exit__(None, None, None)

    def abort(self) -> None:
        if self._open:
            self._open = False
            self._file.__exit__(RuntimeError, RuntimeError("aborted"), None)


class LocalStore(Store):
    """A :class:`~shardstore.storage.base.Store` over a local directory.

    Parameters
    ----------
    location : a parsed local location.
    fsync : flush new files to stable storage before they count as written.
    """

    def __init__(self, location: Location, *, fsync: bool = True) -> None:
        if location.path is None:
            raise ValueError("LocalStore needs a local location")
        self.location = location
        self.root = location.path
        self.fsync = fsync

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def path(self, key: str) -> Path:
        """The real path of ``key`` inside the dataset (symlinks out of it are refused)."""
        return resolve_inside(self.root, key)

    # -- reading ----------------------------------------------------------------------------
    def head(self, key: str) -> ObjectInfo | None:
        """See :meth:`Store.head` (regular files only)."""
        try:
            st = os.stat(self.path(key))
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return _info(key, st)

    def _open(self, key: str) -> int:
        """A descriptor of the regular file ``key`` (never a link, a FIFO or a device)."""
        return open_regular(self.path(key), damage=False)

    def get(self, key: str, *, max_size: int) -> bytes:
        """See :meth:`Store.get`."""
        fd = self._open(key)
        try:
            size = os.fstat(fd).st_size
            if size > max_size:
                raise InvalidInputError(
                    f"{self.key_url(key)} is {size} bytes, more than the {max_size} "
                    "bytes allowed for it"
                )
            return read_bounded(fd, max_size, self.key_url(key))
        finally:
            os.close(fd)

    def get_ranges(self, key: str, starts: Sequence[int], ends: Sequence[int]) -> list[Buffer]:
        """See :meth:`Store.get_ranges`."""
        fd = self._open(key)
        try:
            return [os.pread(fd, hi - lo, lo) for lo, hi in zip(starts, ends, strict=True)]
        finally:
            os.close(fd)

    def iter_chunks(self, key: str, chunk_size: int) -> Iterator[Buffer]:
        """See :meth:`Store.iter_chunks`."""
        fd = self._open(key)
        try:
            while chunk := os.read(fd, chunk_size):
                yield chunk
        finally:
            os.close(fd)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """See :meth:`Store.list`: regular files, never through a symlink."""
        top = self.root
        for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
            rel_dir = os.path.relpath(dirpath, top)
            rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
            # descend only where keys can start with ``prefix``
            dirnames[:] = sorted(
                d
                for d in dirnames
                if (rel_dir + d + "/").startswith(prefix[: len(rel_dir + d) + 1])
            )
            for name in sorted(filenames):
                key = rel_dir + name
                if not key.startswith(prefix):
                    continue
                with contextlib.suppress(OSError):
                    st = os.lstat(os.path.join(dirpath, name))
                    if stat.S_ISREG(st.st_mode):
                        yield _info(key, st)

    # -- writing ----------------------------------------------------------------------------
    def put(
        self,
        key: str,
        data: Buffer,
        *,
        mode: PutMode = "overwrite",
        if_match: ObjectInfo | None = None,
    ) -> ObjectInfo:
        """See :meth:`Store.put`: a temporary file, then ``link`` (create) or ``rename``.

        ``if_match`` is not offered on a local directory (the local commit protocol
        uses file locks instead); it raises ``NotImplementedError``.
        """
        if if_match is not None:
            raise NotImplementedError("a local directory commits with file locks, not If-Match")
        dest = self.path(key)
        make_dirs(dest.parent, below=self.root)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}-{id(data):x}.tmp")
        with HashingFile(tmp, fsync=self.fsync, below=self.root) as f:
            f.write(memoryview(data))
        try:
            if mode == "create":
                try:
                    os.link(tmp, dest)
                except FileExistsError:
                    raise PreconditionFailed(f"{self.key_url(key)} exists") from None
            else:
                os.replace(tmp, dest)
        finally:
            remove_quietly(tmp, below=self.root)
        return _info(key, os.stat(dest))

    def open_write(self, key: str) -> Sink:
        """See :meth:`Store.open_write`: a new file created exclusively."""
        return _FileSink(self.root / key, fsync=self.fsync, below=self.root)

    def delete(self, keys: Iterable[str]) -> None:
        """See :meth:`Store.delete` (files only; directories are left to garbage collection)."""
        for key in keys:
            remove_quietly(self.root / key, below=self.root)
