"""shardstore: write NumPy arrays once as shards, read them into fast tf.data pipelines.

>>> import shardstore
>>> ds = shardstore.write("data/train", {"image": images, "label": labels})  # doctest: +SKIP
>>> tfds = shardstore.open("data/train").to_tf(batch_size=32, features=("image", "label"))

Importing this package is cheap: TensorFlow and source plugins are imported
only when a pipeline is built or a source is used.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from shardstore import _aliases
from shardstore._version import __version__
from shardstore.api import gc, open, write
from shardstore.errors import (
    CapabilityError,
    ChecksumError,
    CommitConflictError,
    DamagedFileNotFoundError,
    DamagedFilesError,
    DamagedIsADirectoryError,
    DamagedNotADirectoryError,
    DatasetExistsError,
    DatasetNotFoundError,
    DiskFullError,
    InvalidInputError,
    ManifestError,
    MissingDependencyError,
    NotRegularFileError,
    PluginConflictError,
    PluginLoadError,
    ReadOnlyStorageError,
    ShardStoreError,
    SourceNotFoundError,
    StorageError,
    StorageFileExistsError,
    StorageFileNotFoundError,
    StorageIsADirectoryError,
    StorageNotADirectoryError,
    StoragePermissionError,
    StorageUnavailableError,
    UnsafeLinkError,
    UnsupportedDTypeError,
    from_tf_error,
)
from shardstore.format.manifest import FeatureSpec, Manifest
from shardstore.format.ragged import RaggedArray
from shardstore.reading.reader import Dataset
from shardstore.registry import SourceInfo, available_sources, get_source, register_source
from shardstore.writing.convert import convert
from shardstore.writing.ingest import ingest
from shardstore.writing.merge import merge
from shardstore.writing.writer import Writer

if TYPE_CHECKING:
    from shardstore.writing.adopt import index_tfrecords


def __getattr__(name: str) -> Any:
    # PEP 562: attributes that would import a plugin module are loaded on first use.
    if name == "index_tfrecords":
        from shardstore.writing.adopt import index_tfrecords

        return index_tfrecords
    # the module paths of earlier releases (shardstore.manifest, shardstore.tfops, ...)
    module = _aliases.resolve(name)
    if module is not None:
        return module
    raise AttributeError(f"module 'shardstore' has no attribute {name!r}")


__all__ = [
    "CapabilityError",
    "ChecksumError",
    "CommitConflictError",
    "DamagedFileNotFoundError",
    "DamagedFilesError",
    "DamagedIsADirectoryError",
    "DamagedNotADirectoryError",
    "Dataset",
    "DatasetExistsError",
    "DatasetNotFoundError",
    "DiskFullError",
    "FeatureSpec",
    "InvalidInputError",
    "Manifest",
    "ManifestError",
    "MissingDependencyError",
    "NotRegularFileError",
    "PluginConflictError",
    "PluginLoadError",
    "RaggedArray",
    "ReadOnlyStorageError",
    "ShardStoreError",
    "SourceInfo",
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
    "Writer",
    "__version__",
    "available_sources",
    "convert",
    "from_tf_error",
    "gc",
    "get_source",
    "index_tfrecords",
    "ingest",
    "merge",
    "open",
    "register_source",
    "write",
]

_aliases.install(sys.modules[__name__])
