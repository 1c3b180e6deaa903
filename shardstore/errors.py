"""The exceptions shardstore raises.

Every error derives from :class:`ShardStoreError`, so ``except ShardStoreError``
catches anything shardstore refuses. Each one also derives from the builtin
exception a Python user would expect (``ValueError`` for bad input,
``FileNotFoundError`` for a missing dataset...), in the style of zarr-python's
``NodeNotFoundError(BaseZarrError, FileNotFoundError)``, so existing handlers
keep working.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "CapabilityError",
    "ChecksumError",
    "CommitConflictError",
    "DamagedFilesError",
    "DatasetExistsError",
    "DatasetNotFoundError",
    "InvalidInputError",
    "ManifestError",
    "MissingDependencyError",
    "PluginConflictError",
    "PluginLoadError",
    "ShardStoreError",
    "SourceNotFoundError",
    "UnsupportedDTypeError",
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
