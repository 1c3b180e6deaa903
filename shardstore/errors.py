"""The exceptions shardstore raises.

Every error derives from :class:`ShardStoreError`, so ``except ShardStoreError``
catches anything shardstore refuses. Each one also derives from the builtin
exception a Python user would expect (``ValueError`` for bad input,
``FileNotFoundError`` for a missing dataset...), in the style of zarr-python's
``NodeNotFoundError(BaseZarrError, FileNotFoundError)``, so existing handlers
keep working.

Two families report what the operating system said, each keeping ``errno``
and naming the file and the operation:

* :class:`StorageError` (an ``OSError``): the storage failed or refused (no
  permission, disk full, read-only file system, ...). Each errno with a
  builtin subclass gets a class deriving from it too
  (:class:`StoragePermissionError` is a ``PermissionError``...).
* :class:`ChecksumError` (an ``OSError``): the dataset is damaged: a file does
  not match its manifest, or an entry is not what the format puts there (a
  version directory replaced by a file, ``manifest.json`` that is a
  directory or a FIFO, a symlink inside the dataset). The command line exits
  with status 1 for it.

:func:`from_os_error` is the one place an ``OSError`` becomes one of these; the
storage layer (:func:`shardstore.storage.safefs.storage_errors`) calls it.
"""

from __future__ import annotations

import errno as _errno
import os
import re
from collections.abc import Iterable

__all__ = [
    "CapabilityError",
    "ChecksumError",
    "CommitConflictError",
    "DamagedFileNotFoundError",
    "DamagedFilesError",
    "DamagedIsADirectoryError",
    "DamagedNotADirectoryError",
    "DatasetExistsError",
    "DatasetNotFoundError",
    "DiskFullError",
    "InvalidInputError",
    "ManifestError",
    "MissingDependencyError",
    "NotRegularFileError",
    "PluginConflictError",
    "PluginLoadError",
    "ReadOnlyStorageError",
    "ShardStoreError",
    "SourceNotFoundError",
    "StorageError",
    "StorageFileExistsError",
    "StorageFileNotFoundError",
    "StorageIsADirectoryError",
    "StorageNotADirectoryError",
    "StoragePermissionError",
    "StorageUnavailableError",
    "UnsafeLinkError",
    "UnsupportedDTypeError",
    "from_tf_error",
]


class ShardStoreError(Exception):
    """Base class of every error raised by shardstore.

    Parameters
    ----------
    *args : object
        The message (and any further arguments, as for ``Exception``).
    params : iterable of str, optional
        The parameters the message names, spelled as in Python (``"pass
        overwrite=True"``, ``"shard_size must be > 0"``). The command line
        respells each one as its option (``--overwrite``, ``--shard-size``),
        so a message tells each user what to type.

    Attributes
    ----------
    params : tuple of str
        The ``params`` given (empty when the message names none).
    """

    params: tuple[str, ...] = ()

    def __init__(self, *args: object, params: Iterable[str] = ()) -> None:
        super().__init__(*args)
        self.params = tuple(params)


class InvalidInputError(ShardStoreError, ValueError):
    """The caller passed something shardstore cannot write or read.

    Examples: arrays whose leading lengths differ, ``shard_size <= 0``, an
    unknown option. Raised before anything is written.
    """


class UnsupportedDTypeError(InvalidInputError, TypeError):
    """An array's dtype cannot be stored (object, string, datetime, ...)."""


class ManifestError(ShardStoreError, ValueError):
    """A ``manifest.json`` is malformed, unsafe, or of an unknown version."""


class DatasetNotFoundError(ShardStoreError, FileNotFoundError):
    """There is no committed dataset at the given path."""


class DatasetExistsError(ShardStoreError, FileExistsError):
    """A dataset already exists where one was to be written (``overwrite=False``)."""


class CommitConflictError(DatasetExistsError):
    """Another writer committed at the same path after this write started.

    Raised by the commit instead of silently replacing the other writer's
    version (first writes and overwrites alike). Nothing of the failed write
    is published; start the write again to write over the new state.
    """


class StorageError(ShardStoreError, OSError):
    """The storage failed or refused an operation (an ``OSError`` with a clear message).

    Attributes
    ----------
    errno, strerror : as the operating system reported them.
    filename : the file or directory concerned.
    operation : what shardstore was doing (``"create"``, ``"write"``, ``"list"``...).
    """

    def __init__(
        self,
        message: str,
        *,
        errno: int | None = None,
        strerror: str | None = None,
        filename: str | None = None,
        operation: str | None = None,
        params: Iterable[str] = (),
    ) -> None:
        super().__init__(message, params=params)
        self.errno = errno
        self.strerror = strerror
        self.filename = filename
        self.operation = operation

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class StorageFileNotFoundError(StorageError, FileNotFoundError):
    """A file or directory shardstore needed is not there (``ENOENT``)."""


class StorageFileExistsError(StorageError, FileExistsError):
    """A file shardstore creates exclusively already exists (``EEXIST``)."""


class StoragePermissionError(StorageError, PermissionError):
    """No permission for the operation (``EACCES``, ``EPERM``)."""


class StorageNotADirectoryError(StorageError, NotADirectoryError):
    """A path component that must be a directory is not one (``ENOTDIR``)."""


class StorageIsADirectoryError(StorageError, IsADirectoryError):
    """A directory where a file was expected (``EISDIR``)."""


class DiskFullError(StorageError):
    """The file system is full (``ENOSPC``) or the user's quota is spent (``EDQUOT``)."""


class ReadOnlyStorageError(StorageError):
    """The file system is mounted read-only (``EROFS``)."""


class ChecksumError(ShardStoreError, OSError):
    """The dataset is damaged: a file does not match its manifest, or is not what belongs there.

    Raised for a size or checksum mismatch, a missing file, and for an entry
    the format never creates where it stands (a version directory replaced by
    a file, ``manifest.json`` as a directory or a FIFO, a symlink inside the
    dataset). Subclasses also derive from the matching builtin
    (:class:`DamagedNotADirectoryError` is a ``NotADirectoryError``...).

    Attributes
    ----------
    dataset, shard, file : the dataset path, the shard index and the file's
        relative path, so the message names exactly what is damaged
        (``None`` where they do not apply).
    what : the description of the damage, without the location.
    errno : the operating system's error number when one reported the damage.
    """

    def __init__(
        self,
        message: str,
        *,
        dataset: str | None = None,
        shard: int | None = None,
        file: str | None = None,
        what: str | None = None,
        errno: int | None = None,
    ) -> None:
        super().__init__(message)
        self.dataset = dataset
        self.shard = shard
        self.file = file
        self.what = what if what is not None else message
        self.errno = errno
        if errno is not None:
            self.strerror = os.strerror(errno)
        if file is not None:
            self.filename = file

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

    @classmethod
    def in_file(
        cls,
        dataset: object,
        shard: int,
        file: str,
        what: str,
        *,
        errno: int | None = None,
    ) -> ChecksumError:
        """``dataset '<dataset>', shard <shard>: file '<file>' <what>``, attributes set.

        Called on :class:`ChecksumError` itself, the class follows ``errno``
        (``ENOTDIR`` gives a :class:`DamagedNotADirectoryError`...).
        """
        kind = damage_class(errno) if cls is ChecksumError else cls
        return kind(
            f"dataset {str(dataset)!r}, shard {shard}: file {file!r} {what}",
            dataset=str(dataset),
            shard=shard,
            file=file,
            what=what,
            errno=errno,
        )


class DamagedFilesError(ChecksumError):
    """:meth:`Dataset.verify` found damaged files: every one is in :attr:`errors`.

    A :class:`ChecksumError` whose ``dataset``, ``shard`` and ``file`` are
    those of the first damaged file; :attr:`errors` holds one
    ``ChecksumError`` per damaged file, in shard order, and :attr:`checked`
    the number of files checked.
    """

    def __init__(self, message: str, errors: list[ChecksumError], *, checked: int) -> None:
        first = errors[0] if errors else None
        super().__init__(
            message,
            dataset=first.dataset if first else None,
            shard=first.shard if first else None,
            file=first.file if first else None,
        )
        self.errors = list(errors)
        self.checked = checked


class DamagedFileNotFoundError(ChecksumError, FileNotFoundError):
    """A file or directory the dataset needs is missing."""


class DamagedNotADirectoryError(ChecksumError, NotADirectoryError):
    """Something that is not a directory stands where the dataset has a directory."""


class DamagedIsADirectoryError(ChecksumError, IsADirectoryError):
    """A directory stands where the dataset has a file."""


class NotRegularFileError(ChecksumError):
    """A FIFO, a device node or a socket stands where the dataset has a file.

    shardstore never opens such an entry for reading (a FIFO would block, a
    device could be read forever).
    """


class UnsafeLinkError(ChecksumError, ManifestError):
    """A symbolic link inside the dataset directory (shardstore never follows one).

    Also a :class:`ManifestError`: a path that would leave the dataset (the
    message then says "outside the dataset directory") is unsafe as well as
    damaged.
    """


class SourceNotFoundError(ShardStoreError, LookupError):
    """No installed source plugin has the requested name."""


class PluginLoadError(ShardStoreError, ImportError):
    """A source plugin is installed but could not be imported or is not a Source."""


class PluginConflictError(ShardStoreError):
    """Two installed distributions register a source under the same name."""


class CapabilityError(ShardStoreError, NotImplementedError):
    """A source was asked for something it declares it cannot do."""


class MissingDependencyError(ShardStoreError, ImportError):
    """An optional dependency is not installed (e.g. matplotlib for plots).

    The message names the ``pip install`` command that adds it.
    """


_STORAGE_CLASSES: dict[int, type[StorageError]] = {
    _errno.ENOENT: StorageFileNotFoundError,
    _errno.EEXIST: StorageFileExistsError,
    _errno.EACCES: StoragePermissionError,
    _errno.EPERM: StoragePermissionError,
    _errno.ENOTDIR: StorageNotADirectoryError,
    _errno.EISDIR: StorageIsADirectoryError,
    _errno.ENOSPC: DiskFullError,
    _errno.EDQUOT: DiskFullError,
    _errno.EROFS: ReadOnlyStorageError,
}
_DAMAGE_CLASSES: dict[int, type[ChecksumError]] = {
    _errno.ENOENT: DamagedFileNotFoundError,
    _errno.ENOTDIR: DamagedNotADirectoryError,
    _errno.EISDIR: DamagedIsADirectoryError,
    _errno.ELOOP: UnsafeLinkError,
}
#: Errors that mean "the dataset is not laid out as the format says" when met
#: inside a dataset (rather than "the storage failed").
DAMAGE_ERRNOS: frozenset[int] = frozenset(_DAMAGE_CLASSES)


def damage_class(errno: int | None) -> type[ChecksumError]:
    """The :class:`ChecksumError` subclass for damage the OS reported with ``errno``."""
    return _DAMAGE_CLASSES.get(errno, ChecksumError) if errno is not None else ChecksumError


def from_os_error(
    exc: OSError, operation: str, path: object, *, damage: bool = False
) -> StorageError | ChecksumError:
    """The shardstore error for ``exc``, raised while doing ``operation`` on ``path``.

    With ``damage=True`` (the path is part of a dataset whose layout the format
    fixes), a missing entry, a file where a directory belongs, a directory
    where a file belongs and a symlink (``ELOOP`` from ``O_NOFOLLOW``) are
    damage: a :class:`ChecksumError`. Anything else is a :class:`StorageError`
    whose class follows ``errno``. ``errno`` and the path are kept.
    """
    code = exc.errno
    name = os.fsdecode(path) if isinstance(path, str | bytes | os.PathLike) else str(path)
    reason = exc.strerror or str(exc)
    if damage and code in DAMAGE_ERRNOS:
        what = {
            _errno.ENOENT: "is missing",
            _errno.ENOTDIR: "is not a directory (or a component of its path is not)",
            _errno.EISDIR: "is a directory where a file belongs",
            _errno.ELOOP: "is a symbolic link; shardstore never follows links inside a dataset",
        }[code]
        return damage_class(code)(
            f"{name!r} {what} (while trying to {operation}); the dataset is damaged",
            file=name,
            what=what,
            errno=code,
        )
    if code in (_errno.ENOSPC, _errno.EDQUOT):
        message = (
            f"no space left on the device holding {name!r} (while trying to {operation}; "
            f"{reason}): free some space there, or write elsewhere, and try again"
        )
    elif code == _errno.EROFS:
        message = (
            f"{name!r} is on a read-only file system (while trying to {operation}): "
            "write somewhere writable, or remount it read-write"
        )
    elif code in (_errno.EACCES, _errno.EPERM):
        message = f"permission denied: cannot {operation} {name!r} ({reason})"
    else:
        message = f"cannot {operation} {name!r}: {reason}"
    cls = _STORAGE_CLASSES.get(code, StorageError) if code is not None else StorageError
    return cls(message, errno=code, strerror=exc.strerror, filename=name, operation=operation)


_BUILTIN_ERRNO = (
    (NotADirectoryError, _errno.ENOTDIR),
    (IsADirectoryError, _errno.EISDIR),
    (FileNotFoundError, _errno.ENOENT),
    (PermissionError, _errno.EACCES),
)
_TF_CARRIED = re.compile(r"\b([A-Z][A-Za-z]*Error): (.+?)(?:\nTraceback |\n\n|\n\t|\Z)", re.S)
_LOCATED = re.compile(r"dataset '(?P<dataset>[^']*)', shard (?P<shard>\d+): file '(?P<file>[^']*)'")


def from_tf_error(exc: BaseException) -> ShardStoreError | None:
    """The :class:`ShardStoreError` a ``tf.data`` pipeline carried in a TensorFlow error.

    Inside a running pipeline TensorFlow turns every Python exception into its
    own ``tf.errors.OpError``, keeping only the message (``"ChecksumError:
    dataset '...', shard 3: file '...' ..."``). Code that iterates a pipeline
    itself (``Dataset.iter_numpy``) rebuilds the typed error from it, so that
    ``except ChecksumError`` works there too. Returns ``None`` when the message
    names no shardstore error.
    """
    for match in _TF_CARRIED.finditer(str(exc)):
        cls = globals().get(match.group(1))
        if not (isinstance(cls, type) and issubclass(cls, ShardStoreError)):
            continue
        message = match.group(2).strip()
        try:
            error: ShardStoreError = cls(message)
        except TypeError:  # a class that needs more than its message
            base = ChecksumError if issubclass(cls, ChecksumError) else ShardStoreError
            error = base(message)
        for builtin, code in _BUILTIN_ERRNO:
            if isinstance(error, builtin) and getattr(error, "errno", None) is None:
                error.errno = code
                break
        located = _LOCATED.search(message)
        if located is not None and isinstance(error, ChecksumError):
            error.dataset = located["dataset"]
            error.shard = int(located["shard"])
            error.file = located["file"]
        return error
    return None


class StorageUnavailableError(StorageError, ConnectionError):
    """The storage did not answer, or kept failing, after every retry."""


_STORAGE_HINTS: dict[str, tuple[type[StorageError], str]] = {
    "denied": (
        StoragePermissionError,
        "check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
        "GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_ACCOUNT_KEY... or storage_options) "
        "and the bucket's permissions",
    ),
    "not_found": (StorageFileNotFoundError, ""),
    "unsupported": (StorageError, "this store does not offer that operation"),
    "failed": (
        StorageUnavailableError,
        "retried with backoff until the retry limit; check the endpoint and the network, "
        "or raise max_retries / retry_timeout in storage_options",
    ),
}


def storage_error(kind: str, op: str, where: str, detail: str) -> StorageError:
    """The :class:`StorageError` for a failed ``op`` (``read``, ``write``...) on ``where``.

    ``kind`` is ``"not_found"``, ``"denied"``, ``"unsupported"`` or ``"failed"``; used
    for object stores, whose errors carry no ``errno`` (see :func:`from_os_error` for
    the operating system's).
    """
    cls, hint = _STORAGE_HINTS.get(kind, (StorageError, ""))
    message = f"cannot {op} {where}: {detail}"
    if hint:
        message += f" ({hint})"
    return cls(message, filename=where, operation=op)
