"""Safe file system access under a root directory: descriptors, never a symlink followed.

Every listing, creation, rename and deletion below a root goes through a
:class:`Directory`: an open directory file descriptor plus the path it was
reached by (used in messages only). Each step down opens one name relative
to the parent's descriptor with ``O_NOFOLLOW | O_DIRECTORY``; files are opened
with ``O_NOFOLLOW``; entries are listed and examined with ``fstatat`` without
following links; trees are removed the way :func:`shutil.rmtree` does in its
descriptor-based mode (``shutil._rmtree_safe_fd``). So nothing here can be
led out of the root by a symbolic link, whatever the tree holds or becomes
while it is walked: a link where a directory or a file belongs is refused
(:class:`~shardstore.errors.UnsafeLinkError`), never followed, and a link
inside a tree being removed is unlinked, never entered. The root itself is
opened as the caller names it (a symlink the caller typed is the caller's
choice).

Reading never blocks and never reads without bound: :func:`open_regular` and
:meth:`Directory.open_read` look at the entry with ``lstat`` first and open
only regular files, with ``O_NONBLOCK`` (a FIFO swapped in meanwhile cannot
block the ``open``), then check with ``fstat`` that what was opened is a
regular file, and only then clear ``O_NONBLOCK``. :func:`read_bounded`
reads at most a given number of bytes.

Every ``OSError`` leaves this module as a :class:`~shardstore.errors.StorageError`
or, for an entry that is not what belongs there (with ``damage=True``), a
:class:`~shardstore.errors.ChecksumError`, naming the path and the operation:
one translation, :func:`storage_errors`.

This module knows nothing of datasets: it takes a root and names relative to
it. Operations that change the disk report themselves to
:func:`shardstore.storage.faults.storage_op` (the crash tests kill a writer between
any two of them).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import io
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar, cast

from shardstore.storage import faults

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no O_NONBLOCK to clear either
    fcntl = None  # type: ignore[assignment]
from shardstore.errors import (
    ChecksumError,
    DamagedIsADirectoryError,
    DamagedNotADirectoryError,
    NotRegularFileError,
    ShardStoreError,
    StorageError,
    UnsafeLinkError,
    from_os_error,
)

__all__ = [
    "Directory",
    "Entry",
    "check_regular",
    "describe_mode",
    "open_binary",
    "open_regular",
    "read_bounded",
    "read_regular",
    "storage_boundary",
    "storage_errors",
]

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_DIR_FLAGS = os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC


@contextlib.contextmanager
def storage_errors(operation: str, path: object, *, damage: bool = False) -> Iterator[None]:
    """Turn an ``OSError`` raised in the block into a shardstore error naming ``path``.

    ``operation`` says what was being done (``"create"``, ``"list"``...).
    With ``damage=True`` the path belongs to a tree whose layout is fixed, so
    a missing entry, a file where a directory belongs (and the reverse) and a
    symlink met with ``O_NOFOLLOW`` are damage (:class:`ChecksumError`);
    everything else is a :class:`StorageError` keeping ``errno``.
    Shardstore's own errors pass through unchanged.
    """
    try:
        yield
    except ShardStoreError:
        raise
    except OSError as exc:
        raise from_os_error(exc, operation, path, damage=damage) from exc


_F = TypeVar("_F", bound=Callable[..., Any])


def storage_boundary(operation: str, where: Callable[..., object]) -> Callable[[_F], _F]:
    """Decorator: an ``OSError`` escaping the function becomes a shardstore error.

    The same translation as :func:`storage_errors`, for a public entry point
    (the last line of defence: the storage layer below translates what it
    raises itself). ``where(*args, **kwargs)`` names the path when the error
    does not (``exc.filename``). Generator functions are wrapped so that
    errors raised while iterating are translated too.
    """

    def translate(exc: OSError, args: tuple[Any, ...], kwargs: dict[str, Any]) -> ShardStoreError:
        return from_os_error(exc, operation, exc.filename or where(*args, **kwargs))

    def decorate(fn: _F) -> _F:
        if inspect.isgeneratorfunction(fn):

            @functools.wraps(fn)
            def gen(*args: Any, **kwargs: Any) -> Any:
                try:
                    return (yield from fn(*args, **kwargs))
                except ShardStoreError:
                    raise
                except OSError as exc:
                    raise translate(exc, args, kwargs) from exc

            return cast(_F, gen)

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except ShardStoreError:
                raise
            except OSError as exc:
                raise translate(exc, args, kwargs) from exc

        return cast(_F, call)

    return decorate


def describe_mode(mode: int) -> str:
    """``"a directory"``, ``"a FIFO"``, ``"a symbolic link"``... for an ``st_mode``."""
    for test, name in (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "an entry of unknown type"


def _wrong_kind(path: str, st: os.stat_result, expected: str) -> ChecksumError:
    """The damage error for ``path`` being ``st``'s kind where ``expected`` belongs."""
    kind = describe_mode(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        what = f"is a symbolic link where {expected} belongs (links are never followed)"
        return UnsafeLinkError(f"{path!r} {what}", file=path, what=what, errno=errno.ELOOP)
    what = f"is {kind}, not {expected}"
    if expected == "a directory":
        cls: type[ChecksumError] = DamagedNotADirectoryError
        code: int | None = errno.ENOTDIR
    elif stat.S_ISDIR(st.st_mode):
        cls, code = DamagedIsADirectoryError, errno.EISDIR
    else:
        cls, code = NotRegularFileError, None
    return cls(f"{path!r} {what}", file=path, what=what, errno=code)


def _join(parent: str, name: str) -> str:
    return name if parent in ("", ".") else f"{parent.rstrip(os.sep)}{os.sep}{name}"


def _check_name(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\x00" in name:
        raise ValueError(f"not a single path component: {name!r}")
    return name


@dataclass(frozen=True)
class Entry:
    """One entry of a directory: its name and its ``lstat`` (links not followed)."""

    name: str
    stat: os.stat_result

    @property
    def is_dir(self) -> bool:
        """A real directory (not a link to one)."""
        return stat.S_ISDIR(self.stat.st_mode)

    @property
    def is_file(self) -> bool:
        """A regular file (not a link to one)."""
        return stat.S_ISREG(self.stat.st_mode)

    @property
    def is_symlink(self) -> bool:
        """A symbolic link."""
        return stat.S_ISLNK(self.stat.st_mode)

    @property
    def kind(self) -> str:
        """``"a directory"``, ``"a symbolic link"``... (see :func:`describe_mode`)."""
        return describe_mode(self.stat.st_mode)


class Directory:
    """An open directory: a file descriptor, and the path it was reached by (for messages).

    Get the root with :meth:`open`, go down with :meth:`sub` (never through a
    link). Every name taken by a method is one path component. Use as a
    context manager, or :meth:`close` it. ``damage`` (inherited by
    sub-directories) makes a missing or wrong-kind entry a
    :class:`ChecksumError` rather than a :class:`StorageError`.
    """

    __slots__ = ("damage", "fd", "path")

    def __init__(self, fd: int, path: str, *, damage: bool) -> None:
        self.fd = fd
        self.path = path
        self.damage = damage

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, create: bool = False, damage: bool = False
    ) -> Directory:
        """Open the directory ``path`` as named (a symlink the caller typed is followed).

        With ``create``, missing directories on the way are created first.
        """
        name = os.fspath(path)
        with storage_errors("open the directory", name):
            if create:
                with contextlib.suppress(FileExistsError):  # a file there: the open says so
                    os.makedirs(name, exist_ok=True)
            fd = os.open(name, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
        return cls(fd, name, damage=damage)

    def sub(self, relpath: str, *, create: bool = False) -> Directory:
        """The directory ``relpath`` (``a/b/c``) below this one, each step without following links.

        With ``create``, missing directories are created (each creation is a
        storage operation). A link, a file or anything else where a directory
        belongs raises the damage error naming it.
        """
        current = self
        try:
            for name in relpath.split("/"):
                nxt = current._open_child_dir(_check_name(name), create=create)
                if current is not self:
                    current.close()
                current = nxt
        except BaseException:
            if current is not self:
                current.close()
            raise
        if current is self:  # "" or ".": a new descriptor of this directory
            with storage_errors("open the directory", self.path):
                return Directory(os.dup(self.fd), self.path, damage=self.damage)
        return current

    def try_sub(self, relpath: str) -> Directory | None:
        """:meth:`sub`, or ``None`` when an entry on the way is missing."""
        try:
            return self.sub(relpath)
        except FileNotFoundError:
            return None

    def _open_child_dir(self, name: str, *, create: bool) -> Directory:
        path = _join(self.path, name)
        if create:
            self.mkdir(name)
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=self.fd)
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                st = self.lstat(name)
                if st is not None and not stat.S_ISDIR(st.st_mode):
                    raise self._refuse(path, st, "a directory") from None
            raise from_os_error(exc, "open the directory", path, damage=self.damage) from exc
        return Directory(fd, path, damage=self.damage)

    def _refuse(self, path: str, st: os.stat_result, expected: str) -> ShardStoreError:
        err = _wrong_kind(path, st, expected)
        if self.damage:
            return err
        return StorageError(
            str(err), errno=err.errno, strerror=None, filename=path, operation="open"
        )

    def child(self, name: str) -> str:
        """The display path of ``name`` in this directory."""
        return _join(self.path, name)

    # -- looking -----------------------------------------------------------------------------
    def entries(self) -> list[Entry]:
        """Every entry, sorted by name, with its ``lstat`` (entries vanishing meanwhile skipped)."""
        out = []
        with storage_errors("list", self.path, damage=self.damage), os.scandir(self.fd) as it:
            for e in it:
                try:
                    out.append(Entry(e.name, e.stat(follow_symlinks=False)))
                except FileNotFoundError:
                    continue
        return sorted(out, key=lambda e: e.name)

    def names(self) -> list[str]:
        """Every entry's name, sorted."""
        with storage_errors("list", self.path, damage=self.damage):
            return sorted(os.listdir(self.fd))

    def lstat(self, name: str) -> os.stat_result | None:
        """The entry's ``lstat``, or ``None`` if there is none."""
        try:
            return os.stat(_check_name(name), dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise from_os_error(exc, "examine", self.child(name), damage=self.damage) from exc

    # -- reading -----------------------------------------------------------------------------
    def open_read(self, name: str) -> int:
        """A read-only descriptor of the regular file ``name`` (never blocks; see the module)."""
        path = self.child(name)
        st = self.lstat(name)
        if st is None:
            raise from_os_error(
                FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT)),
                "open",
                path,
                damage=self.damage,
            )
        if not stat.S_ISREG(st.st_mode):
            raise self._refuse(path, st, "a regular file")
        with storage_errors("open", path, damage=self.damage):
            fd = os.open(name, os.O_RDONLY | _NONBLOCK | _NOFOLLOW | _CLOEXEC, dir_fd=self.fd)
        return _settle(fd, path, self._refuse)

    def read_bytes(self, name: str, limit: int) -> bytes:
        """The contents of the regular file ``name``, refusing more than ``limit`` bytes."""
        fd = self.open_read(name)
        try:
            return read_bounded(fd, limit, self.child(name))
        finally:
            os.close(fd)

    # -- changing ----------------------------------------------------------------------------
    def mkdir(self, name: str, mode: int = 0o777) -> bool:
        """Create the directory ``name``; ``False`` if one is there already (a link is refused)."""
        path = self.child(name)
        try:
            os.mkdir(_check_name(name), mode, dir_fd=self.fd)
        except FileExistsError:
            st = self.lstat(name)
            if st is not None and not stat.S_ISDIR(st.st_mode):
                raise self._refuse(path, st, "a directory") from None
            return False
        except OSError as exc:
            raise from_os_error(exc, "create the directory", path, damage=self.damage) from exc
        faults.storage_op("mkdir")
        return True

    def create(self, name: str, *, mode: int = 0o644) -> int:
        """A write-only descriptor of the new file ``name`` (``O_EXCL``: never an existing one)."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
        with storage_errors("create", self.child(name)):
            fd = os.open(_check_name(name), flags, mode, dir_fd=self.fd)
        faults.storage_op("create")
        return fd

    def open_lock(self, name: str, *, create: bool) -> int | None:
        """A read-write descriptor of the lock file ``name`` (``None``: missing, not created).

        A link or anything but a regular file is refused, never opened
        through (``O_NOFOLLOW | O_NONBLOCK``, then ``fstat``).
        """
        return self._open_existing(name, os.O_RDWR, create=create, operation="open the lock")

    def open_append(self, name: str, *, create: bool) -> int | None:
        """A write-only, appending descriptor of the regular file ``name`` (``None``: missing)."""
        return self._open_existing(
            name, os.O_WRONLY | os.O_APPEND, create=create, operation="open for appending"
        )

    def _open_existing(self, name: str, access: int, *, create: bool, operation: str) -> int | None:
        path = self.child(name)
        flags = access | _NOFOLLOW | _NONBLOCK | _CLOEXEC | (os.O_CREAT if create else 0)
        try:
            fd = os.open(_check_name(name), flags, 0o644, dir_fd=self.fd)
        except FileNotFoundError:
            if create:
                raise from_os_error(
                    FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT)),
                    operation,
                    path,
                    damage=self.damage,
                ) from None
            return None
        except OSError as exc:
            st = self.lstat(name) if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO) else None
            if st is not None and not stat.S_ISREG(st.st_mode):
                raise self._refuse(path, st, "a regular file") from None
            raise from_os_error(exc, operation, path, damage=self.damage) from exc
        return _settle(fd, path, self._refuse)

    def unlink(self, name: str, *, missing_ok: bool = False) -> int:
        """Remove the non-directory ``name`` (a link itself, never its target); its size."""
        path = self.child(name)
        st = self.lstat(name)
        if st is None:
            if missing_ok:
                return 0
            raise from_os_error(
                FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT)), "remove", path
            )
        try:
            os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            if missing_ok:
                return 0
            raise from_os_error(
                FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT)), "remove", path
            ) from None
        except OSError as exc:
            raise from_os_error(exc, "remove", path) from exc
        faults.storage_op("unlink")
        return st.st_size if stat.S_ISREG(st.st_mode) else 0

    def rmdir(self, name: str) -> None:
        """Remove the empty directory ``name``."""
        with storage_errors("remove the directory", self.child(name)):
            os.rmdir(_check_name(name), dir_fd=self.fd)
        faults.storage_op("rmdir")

    def rename(self, name: str, dest: Directory, dest_name: str) -> None:
        """Rename ``name`` to ``dest/dest_name`` (atomic; the entry itself, links included)."""
        with storage_errors(f"rename to {dest.child(dest_name)!r}", self.child(name)):
            os.rename(
                _check_name(name), _check_name(dest_name), src_dir_fd=self.fd, dst_dir_fd=dest.fd
            )
        faults.storage_op("rename")

    def replace(self, name: str, dest: Directory, dest_name: str) -> None:
        """Rename ``name`` over ``dest/dest_name`` (atomic replacement)."""
        with storage_errors(f"replace {dest.child(dest_name)!r} with", self.child(name)):
            os.replace(
                _check_name(name), _check_name(dest_name), src_dir_fd=self.fd, dst_dir_fd=dest.fd
            )
        faults.storage_op("replace manifest")

    def link(self, name: str, dest: Directory, dest_name: str) -> None:
        """Hard-link ``name`` as ``dest/dest_name`` (fails if that exists; links not followed)."""
        os.link(
            _check_name(name),
            _check_name(dest_name),
            src_dir_fd=self.fd,
            dst_dir_fd=dest.fd,
            follow_symlinks=False,
        )  # errors are the caller's (it tells an existing name from a refused link)
        faults.storage_op("link manifest")

    def touch(self, name: str) -> None:
        """Set the modification time of the regular file ``name`` to now (never through a link)."""
        fd = self.open_read(name)
        try:
            with storage_errors("touch", self.child(name)):
                os.utime(fd)
        finally:
            os.close(fd)
        faults.storage_op("touch")

    def fsync(self) -> None:
        """``fsync`` this directory, so that entries created or renamed in it are durable.

        Some file systems refuse to ``fsync`` a directory; that is ignored.
        """
        with contextlib.suppress(OSError):
            os.fsync(self.fd)
            faults.storage_op("fsync dir")

    def fsync_tree(self) -> None:
        """``fsync`` every directory below this one (deepest first), then this one."""
        for name in [e.name for e in self.entries() if e.is_dir]:
            with self.sub(name) as child:
                child.fsync_tree()
        self.fsync()

    def remove_tree(self, name: str) -> int:
        """Delete ``name`` and everything below it without following a link; bytes freed.

        A link is removed itself; a directory is entered by descriptor with
        ``O_NOFOLLOW`` (and checked to be the directory just examined), the
        way :func:`shutil.rmtree` does it. Entries that cannot be removed are
        left (the caller looks at what is left if it cares); each removal is
        a storage operation. Deep trees do not recurse in Python.
        """
        st = self.lstat(name)
        if st is None:
            return 0
        if not stat.S_ISDIR(st.st_mode):
            with contextlib.suppress(OSError):
                return self.unlink(name, missing_ok=True)
            return 0
        freed = 0
        # a stack of (parent, name of the directory in it, its descriptor, its listing)
        stack: list[tuple[Directory, str, Directory, list[Entry]]] = []
        try:
            top = self._enter(name, st)
            if top is None:
                return 0
            stack.append((self, name, top, top.entries()))
            while stack:
                parent, dname, d, todo = stack[-1]
                if not todo:
                    stack.pop()
                    d.close()
                    with contextlib.suppress(OSError):
                        parent.rmdir(dname)
                    continue
                entry = todo.pop()
                if entry.is_dir:
                    sub = d._enter(entry.name, entry.stat)
                    if sub is not None:
                        stack.append((d, entry.name, sub, sub.entries()))
                else:
                    with contextlib.suppress(OSError):
                        freed += d.unlink(entry.name, missing_ok=True)
        finally:
            for _, _, d, _ in stack:
                d.close()
        return freed

    def _enter(self, name: str, st: os.stat_result) -> Directory | None:
        """Open the directory ``name`` last seen as ``st``; ``None`` if it changed or failed."""
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=self.fd)
        except OSError:
            return None
        try:
            if not os.path.samestat(st, os.fstat(fd)):  # swapped since it was examined
                os.close(fd)
                return None
        except OSError:
            os.close(fd)
            return None
        return Directory(fd, self.child(name), damage=self.damage)

    # -- lifetime ----------------------------------------------------------------------------
    def close(self) -> None:
        """Close the descriptor (idempotent)."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __enter__(self) -> Directory:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "fd", -1) >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)

    def __repr__(self) -> str:
        return f"Directory({self.path!r}, fd={self.fd})"


def _settle(
    fd: int,
    path: str,
    refuse: Callable[[str, os.stat_result, str], ShardStoreError],
) -> int:
    """Check that ``fd`` is a regular file, then clear ``O_NONBLOCK``; close it on refusal.

    The entry may have been replaced between its ``lstat`` and the ``open``
    (``manifest.json`` is, atomically, by every commit): what counts is what
    was opened. A FIFO swapped in meanwhile was opened without blocking
    (``O_NONBLOCK``) and is refused here, unread.
    """
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise refuse(path, st, "a regular file")
        if fcntl is not None and _NONBLOCK:
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~_NONBLOCK)
    except BaseException as exc:
        os.close(fd)
        if isinstance(exc, OSError) and not isinstance(exc, ShardStoreError):
            raise from_os_error(exc, "open", path) from exc
        raise
    return fd


def check_regular(
    path: str | os.PathLike[str], *, follow_symlinks: bool = False, damage: bool = True
) -> os.stat_result:
    """The ``stat`` of ``path`` if it is a regular file; raise otherwise, without opening it.

    For a path handed to code that opens files itself (TensorFlow's file
    readers, h5py): a FIFO, a device, a directory or (unless
    ``follow_symlinks``) a link is refused before anyone opens it.
    """
    name = os.fspath(path)
    with storage_errors("examine", name, damage=damage):
        st = os.stat(name) if follow_symlinks else os.lstat(name)
    if not stat.S_ISREG(st.st_mode):
        err = _wrong_kind(name, st, "a regular file")
        if damage:
            raise err
        raise StorageError(str(err), errno=err.errno, filename=name, operation="open")
    return st


def open_regular(
    path: str | os.PathLike[str], *, follow_symlinks: bool = False, damage: bool = True
) -> int:
    """A read-only descriptor of the regular file ``path``: the one safe way to open for reading.

    ``lstat`` (``stat`` with ``follow_symlinks``) first: anything but a regular
    file is refused without being opened. Then ``open`` with ``O_NONBLOCK``
    (and ``O_NOFOLLOW`` unless ``follow_symlinks``), ``fstat`` to check that
    the same regular file was opened, and ``O_NONBLOCK`` cleared. Paths inside
    a dataset are damage when wrong (``damage=True``); a user's input file
    (``follow_symlinks=True, damage=False``) gives a :class:`StorageError`.
    """
    name = os.fspath(path)
    check_regular(name, follow_symlinks=follow_symlinks, damage=damage)
    flags = os.O_RDONLY | _NONBLOCK | _CLOEXEC | (0 if follow_symlinks else _NOFOLLOW)
    with storage_errors("open", name, damage=damage):
        fd = os.open(name, flags)

    def refuse(p: str, st: os.stat_result, expected: str) -> ShardStoreError:
        err = _wrong_kind(p, st, expected)
        if damage:
            return err
        return StorageError(str(err), errno=err.errno, filename=p, operation="open")

    return _settle(fd, name, refuse)


def open_binary(
    path: str | os.PathLike[str],
    *,
    buffering: int = -1,
    follow_symlinks: bool = False,
    damage: bool = True,
) -> io.FileIO | io.BufferedReader:
    """:func:`open_regular` as a binary file object (``open(path, "rb")`` made safe)."""
    fd = open_regular(path, follow_symlinks=follow_symlinks, damage=damage)
    try:
        raw = io.FileIO(fd, "rb", closefd=True)
        return (
            raw
            if buffering == 0
            else io.BufferedReader(raw, buffering if buffering > 0 else io.DEFAULT_BUFFER_SIZE)
        )
    except BaseException:
        os.close(fd)
        raise


def read_bounded(fd: int, limit: int, path: str) -> bytes:
    """Read ``fd`` to its end, refusing (``StorageError``) a file longer than ``limit`` bytes."""
    chunks: list[bytes] = []
    total = 0
    with storage_errors("read", path):
        # os.read allocates what it is asked for: first the file's size (+1 to see its
        # end), then (a file that grew, or a size fstat does not know) 64 KiB at a time
        want = os.fstat(fd).st_size + 1
        while True:
            chunk = os.read(fd, max(1, min(want, limit + 1 - total)))
            want = 1 << 16
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise StorageError(
                    f"{path!r} is larger than the {limit} bytes allowed",
                    errno=errno.EFBIG,
                    strerror=os.strerror(errno.EFBIG),
                    filename=path,
                    operation="read",
                )
    return b"".join(chunks)


def read_regular(
    path: str | os.PathLike[str], limit: int, *, follow_symlinks: bool = False, damage: bool = True
) -> bytes:
    """The contents of the regular file ``path`` (:func:`open_regular`, :func:`read_bounded`)."""
    fd = open_regular(path, follow_symlinks=follow_symlinks, damage=damage)
    try:
        return read_bounded(fd, limit, os.fspath(path))
    finally:
        os.close(fd)
