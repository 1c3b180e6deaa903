"""The exceptions shardstore raises.

Every error derives from :class:`ShardStoreError`, so ``except ShardStoreError``
catches anything shardstore refuses. Each one also derives from the builtin
exception a Python user would expect (``ValueError`` for bad input,
``FileNotFoundError`` for a missing dataset...), in the style of zarr-python's
``NodeNotFoundError(BaseZarrError, FileNotFoundError)``, so existing handlers
keep working.
"""

from __future__ import annotations

__all__ = [
    "CapabilityError",
    "ChecksumError",
    "CommitConflictError",
    "DatasetExistsError",
    "DatasetNotFoundError",
    "InvalidInputError",
    "ManifestError",
    "MissingDependencyError",
    "PluginConflictError",
    "PluginLoadError",
    "ShardStoreError",
    "SourceNotFoundError",
    "StorageError",
    "StorageNotFoundError",
    "StoragePermissionError",
    "StorageUnavailableError",
    "UnsupportedDTypeError",
    "storage_error",
]


class ShardStoreError(Exception):
    """Base class of every error raised by shardstore."""


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


class ChecksumError(ShardStoreError, OSError):
    """A shard file does not match the size or checksum its manifest records.

    Attributes
    ----------
    dataset, shard, file : the dataset path, the shard index and the file's
        relative path, so the message names exactly what is damaged.
    """

    def __init__(
        self,
        message: str,
        *,
        dataset: str | None = None,
        shard: int | None = None,
        file: str | None = None,
    ) -> None:
        super().__init__(message)
        self.dataset = dataset
        self.shard = shard
        self.file = file

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

    @classmethod
    def in_file(cls, dataset: object, shard: int, file: str, what: str) -> ChecksumError:
        """``dataset '<dataset>', shard <shard>: file '<file>' <what>``, attributes set."""
        return cls(
            f"dataset {str(dataset)!r}, shard {shard}: file {file!r} {what}",
            dataset=str(dataset),
            shard=shard,
            file=file,
        )


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


class StorageError(ShardStoreError, OSError):
    """Storage refused or failed an operation (a file system or an object store).

    The message names the operation and the file or object URL; ``errno`` is kept
    where the operating system gave one.
    """


class StorageNotFoundError(StorageError, FileNotFoundError):
    """A file or object that should exist does not."""


class StoragePermissionError(StorageError, PermissionError):
    """The storage denied access (permissions, credentials)."""


class StorageUnavailableError(StorageError, ConnectionError):
    """The storage did not answer, or kept failing, after every retry."""


_STORAGE_HINTS = {
    "denied": (
        StoragePermissionError,
        "check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
        "GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_ACCOUNT_KEY... or storage_options) "
        "and the bucket's permissions",
    ),
    "not_found": (StorageNotFoundError, ""),
    "unsupported": (StorageError, "this store does not offer that operation"),
    "failed": (
        StorageUnavailableError,
        "retried with backoff until the retry limit; check the endpoint and the network, "
        "or raise max_retries / retry_timeout in storage_options",
    ),
}


def storage_error(kind: str, op: str, where: str, detail: str) -> StorageError:
    """The :class:`StorageError` for a failed ``op`` (``read``, ``write``...) on ``where``.

    ``kind`` is ``"not_found"``, ``"denied"``, ``"unsupported"`` or ``"failed"``.
    """
    cls, hint = _STORAGE_HINTS.get(kind, (StorageError, ""))
    message = f"cannot {op} {where}: {detail}"
    if hint:
        message += f" ({hint})"
    return cls(message)
