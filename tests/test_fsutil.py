"""Filesystem helpers: InsideResolver agrees with resolve_inside, escapes included."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardstore.errors import ManifestError
from shardstore.fsutil import InsideResolver, resolve_inside


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A dataset-like tree with every kind of entry a manifest path can meet."""
    d = tmp_path / "ds"
    (d / "v-1").mkdir(parents=True)
    (d / "v-1" / "a.npy").write_bytes(b"a")
    (d / "top.npy").write_bytes(b"t")
    (d / "v-1" / "link-in.npy").symlink_to(d / "top.npy")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "a.npy").write_bytes(b"o")
    (d / "v-1" / "link-out.npy").symlink_to(outside / "a.npy")
    (d / "v-out").symlink_to(outside)  # a directory symlink leaving the dataset
    (d / "v-in").symlink_to(d / "v-1")  # a directory symlink staying inside
    return d


@pytest.mark.parametrize(
    "relpath",
    ["v-1/a.npy", "top.npy", "v-1/missing.npy", "v-1/link-in.npy", "v-in/a.npy", "v-in/x.npy"],
)
def test_resolves_like_resolve_inside(root: Path, relpath: str) -> None:
    resolver = InsideResolver(root)
    expected = resolve_inside(root, relpath)
    assert resolver.resolve(relpath) == expected
    assert resolver.resolve(relpath) == expected  # cached directory, same answer
    assert resolver.resolve_str(relpath) == str(expected)


@pytest.mark.parametrize("relpath", ["v-1/link-out.npy", "v-out/a.npy", "v-out/missing.npy"])
def test_refuses_escapes_like_resolve_inside(root: Path, relpath: str) -> None:
    with pytest.raises(ManifestError, match="outside the dataset"):
        resolve_inside(root, relpath)
    resolver = InsideResolver(root)
    resolver.resolve("v-1/a.npy")  # a cached directory must not let a sibling escape
    with pytest.raises(ManifestError, match="outside the dataset"):
        resolver.resolve(relpath)
