"""Dataset files on a local disk: create-only files, atomic publication, paths checked inside.

These are the few places where shardstore's crash-safety and containment
promises are kept, on top of :mod:`shardstore.storage.safefs` (descriptor-based
walking that never follows a link):

* shard files are created with ``O_EXCL`` (never overwritten in place), in a
  directory reached from the dataset root without following links, and
  hashed while they are written;
* the manifest is published by writing a temporary file, ``fsync``-ing it,
  then ``link`` (first commit: fails if another writer won) or ``replace``
  (overwrite) onto ``manifest.json``, then ``fsync``-ing the directory;
* every path read from a manifest is checked by :class:`InsideResolver`:
  each component must be a real directory and the file a regular file. A
  symbolic link anywhere below the dataset root is refused
  (:class:`~shardstore.errors.UnsafeLinkError`), whether or not it would
  leave the dataset; the root itself is used as the caller names it;
* ``manifest.json`` is read by :func:`read_manifest_bytes`: a regular file
  (never a link, a FIFO or a device), at most :data:`MAX_MANIFEST_BYTES`.

Every operation that changes the disk reports itself to
:func:`shardstore.storage.faults.storage_op` once it is done, so the crash tests can
kill a writer between any two of them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path, PurePosixPath
from types import TracebackType

from shardstore.errors import (
    ChecksumError,
    DamagedIsADirectoryError,
    DamagedNotADirectoryError,
    ManifestError,
    NotRegularFileError,
    StorageError,
    UnsafeLinkError,
)
from shardstore.format.blocks import BlockHasher, FileBlocks
from shardstore.storage import faults
from shardstore.storage.checksum import format_digest, new_hasher
from shardstore.storage.safefs import (
    Directory,
    describe_mode,
    read_regular,
    storage_errors,
)

__all__ = [
    "MAX_MANIFEST_BYTES",
    "HashingFile",
    "InsideResolver",
    "fsync_dir",
    "link_into",
    "make_dirs",
    "parent_directory",
    "read_manifest_bytes",
    "read_manifest_file",
    "remove_quietly",
    "remove_tree",
    "resolve_inside",
    "write_file_at",
    "write_new_file",
]

#: The largest ``manifest.json`` read (1 GiB). A manifest entry costs about
#: 150-300 bytes per file, so this holds datasets of millions of shard files;
#: the decoded manifest takes several times its size in memory, so a larger
#: one is refused rather than read (use fewer, larger shards).
MAX_MANIFEST_BYTES = 1 << 30


def parent_directory(path: Path, *, below: Path | None = None, create: bool = False) -> Directory:
    """The open directory holding ``path``.

    With ``below`` (an ancestor of ``path``), the directories after ``below``
    are reached one by one without following links (created if missing with
    ``create``); ``below`` itself is opened as named. Without it, the parent
    is opened as named.
    """
    if below is None:
        return Directory.open(path.parent, create=create, damage=True)
    rel = PurePosixPath(os.path.relpath(path.parent, below))
    if rel.parts[:1] == ("..",):
        raise ValueError(f"{path} is not inside {below}")
    base = Directory.open(below, create=create, damage=True)
    if str(rel) == ".":
        return base
    with base:
        return base.sub(rel.as_posix(), create=create)


class HashingFile:
    """A new file, written sequentially, hashed and counted as it is written.

    Use as a context manager. The file is created with ``O_EXCL`` and
    ``O_NOFOLLOW`` in a directory reached from ``below`` (if given) without
    following links; on an exception inside the block it is removed. After a
    clean exit, :attr:`size` and :attr:`checksum` describe exactly the bytes
    written, and :attr:`blocks` the checksum of each block
    (:mod:`shardstore.format.blocks`; the layout can be chosen with
    :meth:`set_block_layout` before writing). A full disk or a read-only file
    system raises the :class:`~shardstore.errors.StorageError` naming the file.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, fsync: bool = True, below: Path | None = None
    ) -> None:
        self.path = Path(path)
        self._below = below
        self._fsync = fsync
        self._hasher = new_hasher()
        self._block_hasher = BlockHasher()
        self.size = 0
        self.checksum = ""
        self.blocks: FileBlocks | None = None
        self._fd = -1
        self._dir: Directory | None = None

    def set_block_layout(self, first: int, block: int) -> None:
        """Blocks ``[0, first)``, then ``block`` bytes each (before the first write)."""
        self._block_hasher.set_layout(first, block)

    def __enter__(self) -> HashingFile:
        self._dir = parent_directory(self.path, below=self._below)
        try:
            self._fd = self._dir.create(self.path.name)
        except BaseException:
            self._dir.close()
            self._dir = None
            raise
        return self

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data`` (any contiguous buffer) to the file."""
        view = memoryview(data).cast("B")
        self._hasher.update(view)
        self._block_hasher.update(view)
        with storage_errors("write", self.path):
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
        assert self._dir is not None
        try:
            try:
                if exc_type is None and self._fsync:
                    with storage_errors("fsync", self.path):
                        os.fsync(self._fd)
                    faults.storage_op("fsync")
            finally:
                os.close(self._fd)
                self._fd = -1
        except BaseException:
            self._dir.unlink(self.path.name, missing_ok=True)
            self._dir.close()
            raise
        if exc_type is not None:
            with contextlib.suppress(OSError):  # the original error matters more
                self._dir.unlink(self.path.name, missing_ok=True)
        else:
            self.checksum = format_digest(self._hasher)
            self.blocks = self._block_hasher.finish(self.size, self.checksum)
        self._dir.close()


def link_into(src: Path, dst: Path, *, below: Path | None = None) -> None:
    """Hard-link the file ``src`` (as named) as the new file ``dst``.

    ``dst``'s directory is reached from ``below`` (if given) without following
    links, and created if missing. Errors keep ``errno`` (a
    :class:`~shardstore.errors.StorageError`), so a caller can tell a file
    system that refuses hard links.
    """
    d = parent_directory(dst, below=below, create=True)
    with d, storage_errors(f"hard-link {str(src)!r} as", d.child(dst.name)):
        os.link(src, dst.name, dst_dir_fd=d.fd, follow_symlinks=True)


def fsync_dir(path: Path) -> None:
    """``fsync`` a directory so that renames and links in it are durable (where supported)."""
    try:
        d = Directory.open(path)
    except OSError:
        return
    with d:
        d.fsync()


def make_dirs(path: Path, *, below: Path | None = None) -> None:
    """``mkdir -p path``; the part after ``below`` (if given) without following links."""
    if below is None:
        Directory.open(path, create=True).close()
    else:
        parent_directory(path / "x", below=below, create=True).close()


def write_new_file(path: Path, data: bytes, *, fsync: bool, below: Path | None = None) -> None:
    """Create ``path`` (``O_EXCL``) holding ``data``; removed again if anything fails."""
    with HashingFile(path, fsync=fsync, below=below) as f:
        f.write(data)


def write_file_at(d: Directory, name: str, data: bytes, *, fsync: bool = False) -> None:
    """Create the file ``name`` in ``d`` (``O_EXCL``, no link followed) holding ``data``.

    Removed again if writing fails.
    """
    fd = d.create(name)
    try:
        view = memoryview(data)
        with storage_errors("write", d.child(name)):
            while view:
                view = view[os.write(fd, view) :]
            if fsync:
                os.fsync(fd)
        faults.storage_op("write")
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            d.unlink(name, missing_ok=True)
        raise
    os.close(fd)


def remove_tree(path: Path) -> int:
    """Delete ``path`` (file, symlink or directory tree) without following links.

    The parent is opened as named; below it nothing is followed (see
    :meth:`shardstore.storage.safefs.Directory.remove_tree`). Returns the bytes of the
    regular files removed. Errors are ignored (the caller checks what is left
    if it cares).
    """
    try:
        d = Directory.open(path.parent)
    except OSError:
        return 0
    with d:
        try:
            return d.remove_tree(path.name)
        except OSError:
            return 0


def remove_quietly(path: Path, *, below: Path | None = None) -> None:
    """Remove a file (or link) if it exists; ignore errors (used on clean-up paths).

    Its directory is reached from ``below`` (if given) without following links.
    """
    try:
        d = parent_directory(path, below=below)
    except OSError:
        return
    with d, contextlib.suppress(OSError):
        d.unlink(path.name, missing_ok=True)


def read_manifest_bytes(root: Directory, name: str) -> bytes | None:
    """The bytes of the manifest ``name`` in the dataset directory ``root`` (``None``: missing).

    Refused: a link, a directory, a FIFO, a device or a socket (damage, a
    :class:`~shardstore.errors.ChecksumError`; nothing is opened that could
    block), and a file larger than :data:`MAX_MANIFEST_BYTES`
    (:class:`~shardstore.errors.ManifestError`, after reading at most that
    many bytes).
    """
    st = root.lstat(name)
    if st is None:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise wrong_entry(Path(root.path), name, root.child(name), st, "a regular file")
    try:
        return root.read_bytes(name, MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        return None  # removed since the lstat
    except StorageError as exc:
        if exc.errno == errno.EFBIG:
            raise _too_large(root.child(name)) from None
        raise


def _located(root: Path, relpath: str, err: ChecksumError) -> ChecksumError:
    """``err`` naming the dataset and ``relpath``: ``dataset '<root>': '<relpath>' <what>``."""
    err.file = relpath
    err.filename = relpath
    err.dataset = str(root)
    err.args = (f"dataset {str(root)!r}: {relpath!r} {err.what}",)
    return err


def wrong_entry(
    root: Path, relpath: str, full: str, st: os.stat_result, expected: str
) -> ChecksumError:
    """The damage error for ``relpath`` (at ``full``), ``st``'s kind, where ``expected`` belongs.

    A symbolic link gives :class:`~shardstore.errors.UnsafeLinkError`, whose
    message says where the link points and whether that is outside the
    dataset directory.
    """

    def located(err: ChecksumError) -> ChecksumError:
        return _located(root, relpath, err)

    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.readlink(full)
        except OSError:
            target = "?"
        real_root = os.path.realpath(root)
        real = os.path.realpath(full)
        inside = real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)
        where = "" if inside else ", outside the dataset directory"
        what = (
            f"is a symbolic link to {target!r}{where}; shardstore never follows links inside "
            "a dataset"
        )
        return located(UnsafeLinkError(what, what=what, errno=errno.ELOOP))
    what = f"is {describe_mode(st.st_mode)}, not {expected}"
    if expected == "a directory":
        return located(DamagedNotADirectoryError(what, what=what, errno=errno.ENOTDIR))
    if stat.S_ISDIR(st.st_mode):
        return located(DamagedIsADirectoryError(what, what=what, errno=errno.EISDIR))
    return located(NotRegularFileError(what, what=what))


def read_manifest_file(root: Path, name: str = "manifest.json") -> bytes | None:
    """:func:`read_manifest_bytes` by path: ``root`` as named, ``name`` never through a link.

    One ``lstat`` and one ``open`` of the manifest's own path (nothing else is
    opened); the same refusals as :func:`read_manifest_bytes`.
    """
    full = root / name
    with storage_errors("examine", full, damage=True):
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            return None
    if not stat.S_ISREG(st.st_mode):
        raise wrong_entry(root, name, str(full), st, "a regular file")
    try:
        return read_regular(full, MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        return None  # removed since the lstat
    except StorageError as exc:
        if exc.errno == errno.EFBIG:
            raise _too_large(str(full)) from None
        raise


def _too_large(path: str) -> ManifestError:
    return ManifestError(
        f"{path!r} is larger than {MAX_MANIFEST_BYTES} bytes, the most a manifest may hold; "
        "it is not a shardstore manifest (or the dataset needs fewer, larger shards)"
    )


class InsideResolver:
    """Absolute paths of manifest paths under one dataset root, checked component by component.

    Each directory on the way must be a real directory (checked once per
    directory with ``lstat``, cached) and the file a regular file; a symbolic
    link anywhere below the root raises :class:`~shardstore.errors.UnsafeLinkError`
    (saying so when it points outside the dataset directory), a FIFO, device
    or socket :class:`~shardstore.errors.NotRegularFileError`, a directory
    where a file belongs :class:`~shardstore.errors.DamagedIsADirectoryError`,
    a file where a directory belongs
    :class:`~shardstore.errors.DamagedNotADirectoryError`, all before anything
    is opened. The root is used as named (through a link the caller typed).
    Paths must have passed :func:`shardstore.format.manifest.check_relative_path`.
    Keep an instance for one pass over a dataset: cached directories are not
    re-checked.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self._root = Path(root)
        self._real_root = os.path.realpath(root)
        #: directory relpath -> absolute path; "" is the root
        self._dirs: dict[str, str] = {"": self._real_root}

    def _wrong(self, relpath: str, full: str, st: os.stat_result, expected: str) -> ChecksumError:
        return wrong_entry(self._root, relpath, full, st, expected)

    def _dir(self, relpath: str) -> str | None:
        """The absolute path of the directory ``relpath``, checked; ``None`` if missing."""
        cached = self._dirs.get(relpath)
        if cached is not None:
            return cached
        head, _, name = relpath.rpartition("/")
        parent = self._dir(head)
        if parent is None:
            return None
        full = os.path.join(parent, name)
        with storage_errors("examine", full, damage=True):
            try:
                st = os.lstat(full)
            except FileNotFoundError:
                return None
        if not stat.S_ISDIR(st.st_mode):
            raise self._wrong(relpath, full, st, "a directory")
        self._dirs[relpath] = full
        return full

    def resolve_stat(
        self, relpath: str, *, directory_ok: bool = False
    ) -> tuple[str, os.stat_result | None]:
        """The absolute path of the regular file ``relpath`` and its ``lstat`` (``None``: missing).

        One ``lstat`` per file (plus one per directory not seen yet). With
        ``directory_ok``, a real directory is accepted too.
        """
        head, _, name = relpath.rpartition("/")
        try:
            directory = self._dir(head)
        except ChecksumError as exc:  # name the file, and say which directory is wrong
            what = f"cannot be reached: {exc.file!r} {exc.what}"
            err = type(exc)(what, what=what, errno=exc.errno)
            raise _located(self._root, relpath, err) from None
        if directory is None:
            return os.path.join(self._real_root, relpath), None
        full = os.path.join(directory, name)
        with storage_errors("examine", full, damage=True):
            try:
                st = os.lstat(full)
            except FileNotFoundError:
                return full, None
        if not (stat.S_ISREG(st.st_mode) or (directory_ok and stat.S_ISDIR(st.st_mode))):
            raise self._wrong(relpath, full, st, "a regular file")
        return full, st

    def resolve_str(self, relpath: str) -> str:
        """The absolute path of the file or directory ``relpath`` (checked as above).

        A missing entry is not an error here (the reader reports it).
        """
        return self.resolve_stat(relpath, directory_ok=True)[0]

    def resolve(self, relpath: str) -> Path:
        """:meth:`resolve_str` as a ``Path``."""
        return Path(self.resolve_str(relpath))


def resolve_inside(root: Path, relpath: str) -> Path:
    """The absolute path of ``relpath`` under ``root`` (see :class:`InsideResolver`)."""
    return InsideResolver(root).resolve(relpath)
