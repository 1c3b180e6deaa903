"""Every error is a ShardStoreError and also the builtin a user would catch."""

from __future__ import annotations

import pytest

import shardstore
from shardstore import errors


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [
        (errors.InvalidInputError, ValueError),
        (errors.UnsupportedDTypeError, TypeError),
        (errors.UnsupportedDTypeError, ValueError),
        (errors.ManifestError, ValueError),
        (errors.DatasetNotFoundError, FileNotFoundError),
        (errors.DatasetExistsError, FileExistsError),
        (errors.CommitConflictError, errors.DatasetExistsError),
        (errors.ChecksumError, OSError),
        (errors.SourceNotFoundError, LookupError),
        (errors.PluginLoadError, ImportError),
        (errors.CapabilityError, NotImplementedError),
        (errors.MissingDependencyError, ImportError),
    ],
)
def test_error_hierarchy(cls: type[Exception], builtin: type[Exception]) -> None:
    assert issubclass(cls, shardstore.ShardStoreError)
    assert issubclass(cls, builtin)


def test_every_public_error_is_exported() -> None:
    for name in errors.__all__:
        assert getattr(shardstore, name) is getattr(errors, name)


def test_checksum_error_carries_location() -> None:
    err = errors.ChecksumError("bad", dataset="d", shard=3, file="v-1/000003.x.npy")
    assert (err.dataset, err.shard, err.file) == ("d", 3, "v-1/000003.x.npy")
    assert str(err) == "bad"
