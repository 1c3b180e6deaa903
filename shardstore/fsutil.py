"""Filesystem primitives: create-only files, atomic publication, safe paths.

These are the few places where shardstore's crash-safety promises are kept:

* shard files are created with ``O_EXCL`` (never overwritten in place) and
  hashed while they are written;
* the manifest is published by writing a temporary file, ``fsync``-ing it,
  then ``link`` (first commit: fails if another writer won) or ``replace``
  (overwrite) onto ``manifest.json``, then ``fsync``-ing the directory;
* every path read from a manifest is resolved with :func:`resolve_inside`,
  which refuses symlinks that leave the dataset directory.

Every operation that changes the disk reports itself to
:func:`shardstore.faults.storage_op` once it is done, so the crash tests can
kill a writer between any two of them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path
from types import TracebackType

from shardstore import faults
from shardstore.blocks import BlockHasher, FileBlocks
from shardstore.checksum import format_digest, new_hasher
from shardstore.errors import DatasetExistsError, ManifestError

__all__ = [
    "HashingFile",
    "InsideResolver",
    "fsync_dir",
    "fsync_tree",
    "make_dirs",
    "publish",
    "remove_quietly",
    "remove_tree",
    "rename",
    "resolve_inside",
    "write_new_file",
]


class HashingFile:
    """A new file, written sequentially, hashed and counted as it is written.

    Use as a context manager. The file is created with ``O_EXCL``; on an
    exception inside the block it is removed. After a clean exit,
    :attr:`size` and :attr:`checksum` describe exactly the bytes written, and
    :attr:`blocks` the checksum of each block (:mod:`shardstore.blocks`; the
    layout can be chosen with :meth:`set_block_layout` before writing).
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.path = Path(path)
        self._fsync = fsync
        self._hasher = new_hasher()
        self._block_hasher = BlockHasher()
        self.size = 0
        self.checksum = ""
        self.blocks: FileBlocks | None = None
        self._fd = -1

    def set_block_layout(self, first: int, block: int) -> None:
        """Blocks ``[0, first)``, then ``block`` bytes each (before the first write)."""
        self._block_hasher.set_layout(first, block)

    def __enter__(self) -> HashingFile:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        self._fd = os.open(self.path, flags, 0o644)
        faults.storage_op("create")
        return self

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data`` (any contiguous buffer) to the file."""
        view = memoryview(data).cast("B")
        self._hasher.update(view)
        self._block_hasher.update(view)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
            self.size += n
        faults.storage_op("write")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None and self._fsync:
                os.fsync(self._fd)
                faults.storage_op("fsync")
        finally:
            os.close(self._fd)
            self._fd = -1
        if exc_type is not None:
            remove_quietly(self.path)
        else:
            self.checksum = format_digest(self._hasher)
            self.blocks = self._block_hasher.finish(self.size, self.checksum)


def publish(tmp: Path, dest: Path, *, replace: bool) -> None:
    """Atomically make ``tmp`` visible as ``dest``.

    With ``replace=False`` the publication is create-only: if ``dest``
    appears first (another writer committed), raise ``DatasetExistsError``.
    Readers see the old file or the new one, never a partial one.
    """
    if replace:
        os.replace(tmp, dest)
        faults.storage_op("replace manifest")
    else:
        try:
            os.link(tmp, dest)
            faults.storage_op("link manifest")
        except FileExistsError:
            raise DatasetExistsError(
                f"{dest.parent}: another writer committed a dataset here first"
            ) from None
        except OSError as exc:  # filesystems without hard links
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            if dest.exists():
                raise DatasetExistsError(
                    f"{dest.parent}: another writer committed a dataset here first"
                ) from None
            os.replace(tmp, dest)
            faults.storage_op("replace manifest")
            fsync_dir(dest.parent)
            return
        remove_quietly(tmp)
    fsync_dir(dest.parent)


def fsync_dir(path: Path) -> None:
    """``fsync`` a directory so that renames and links in it are durable."""
    with contextlib.suppress(OSError):  # not supported everywhere (e.g. some network FS)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        faults.storage_op("fsync dir")


def fsync_tree(path: Path) -> None:
    """``fsync`` every directory under ``path`` (deepest first), then ``path`` itself."""
    for dirpath, _, _ in sorted(os.walk(path), key=lambda t: -len(Path(t[0]).parts)):
        fsync_dir(Path(dirpath))


def make_dirs(path: Path) -> None:
    """``mkdir -p path``, reporting each directory it creates."""
    missing: list[Path] = []
    p = path
    while not p.is_dir():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            if not d.is_dir():
                raise
            continue
        faults.storage_op("mkdir")


def rename(src: Path, dest: Path) -> None:
    """Atomically rename ``src`` to ``dest`` (a file, or a directory onto a missing name)."""
    os.rename(src, dest)
    faults.storage_op("rename")


def write_new_file(path: Path, data: bytes, *, fsync: bool) -> None:
    """Create ``path`` (``O_EXCL``) holding ``data``; removed again if anything fails."""
    with HashingFile(path, fsync=fsync) as f:
        f.write(data)


def remove_tree(path: Path) -> int:
    """Delete ``path`` (file, symlink or directory tree) without following links.

    Returns the bytes of the regular files removed. Errors are ignored (the
    caller checks what is left if it cares); each removal is reported as a
    storage operation.
    """
    freed = 0
    try:
        st = os.lstat(path)
    except OSError:
        return 0
    if not stat.S_ISDIR(st.st_mode):
        with contextlib.suppress(OSError):
            os.unlink(path)
            faults.storage_op("unlink")
            freed += st.st_size if stat.S_ISREG(st.st_mode) else 0
        return freed
    for dirpath, dirnames, filenames in os.walk(path, topdown=False, followlinks=False):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            full = os.path.join(dirpath, name)
            with contextlib.suppress(OSError):
                size = os.lstat(full).st_size
                os.unlink(full)
                faults.storage_op("unlink")
                freed += size
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)
            faults.storage_op("rmdir")
    return freed


def resolve_inside(root: Path, relpath: str) -> Path:
    """Absolute path of ``relpath`` under ``root``, refusing escapes via symlinks.

    ``relpath`` must already have passed the lexical checks of
    :func:`shardstore.manifest.check_relative_path`.
    """
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, relpath))
    if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
        raise ManifestError(
            f"{relpath!r} resolves to {real!r}, outside the dataset directory {real_root!r}"
        )
    return Path(real)


def remove_quietly(path: Path) -> None:
    """Remove a file if it exists; ignore errors (used on clean-up paths)."""
    with contextlib.suppress(OSError):
        path.unlink()
        faults.storage_op("unlink")


class InsideResolver:
    """:func:`resolve_inside` for many paths under one root, in one ``lstat`` each.

    ``resolve_inside`` calls ``realpath`` twice per path (a Python-level
    ``lstat`` of every component): about 80 us, i.e. over 1.5 s for a
    10,000-shard dataset. Here each directory is resolved once (with
    ``resolve_inside``, cached); a file that is not a symlink then resolves
    to ``<real directory>/<name>``, which is inside the root because its
    directory is; a symlink goes through ``resolve_inside`` itself. The
    result and the errors are those of ``resolve_inside``. Keep an instance
    for one pass over a dataset: cached directories are not re-checked.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self._root = Path(root)
        self._dirs: dict[str, str] = {"": os.path.realpath(root)}

    def resolve_stat(self, relpath: str) -> tuple[str, os.stat_result | None]:
        """The absolute real path of ``relpath`` and its ``stat`` (``None``: missing).

        One ``lstat`` for a file that is not a symlink (its ``lstat`` is its ``stat``).
        """
        head, _, name = relpath.rpartition("/")
        real_dir = self._dirs.get(head)
        if real_dir is None:
            real_dir = self._dirs[head] = str(resolve_inside(self._root, head))
        candidate = os.path.join(real_dir, name)
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            return candidate, None  # missing: realpath would return the candidate unchanged
        if not stat.S_ISLNK(st.st_mode):
            return candidate, st
        target = str(resolve_inside(self._root, relpath))
        try:
            return target, os.stat(target)
        except FileNotFoundError:
            return target, None

    def resolve_str(self, relpath: str) -> str:
        """The absolute real path of ``relpath``, as a string (see :func:`resolve_inside`)."""
        try:
            return self.resolve_stat(relpath)[0]
        except ManifestError:
            raise
        except OSError:  # e.g. no permission to lstat: let realpath (and the reader) decide
            return str(resolve_inside(self._root, relpath))

    def resolve(self, relpath: str) -> Path:
        """The absolute real path of ``relpath`` (see :func:`resolve_inside`)."""
        return Path(self.resolve_str(relpath))
