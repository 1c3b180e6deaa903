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


@pytest.mark.parametrize(
    ("relpath", "size"),
    [("v-1/a.npy", 1), ("v-1/link-in.npy", 1), ("v-in/a.npy", 1), ("v-1/missing.npy", None)],
)
def test_resolve_stat_gives_the_target_size_or_none(
    root: Path, relpath: str, size: int | None
) -> None:
    path, st = InsideResolver(root).resolve_stat(relpath)
    assert path == str(resolve_inside(root, relpath))
    assert (st.st_size if st is not None else None) == size


def test_dangling_symlink_inside_counts_as_missing(root: Path) -> None:
    (root / "v-1" / "dangling.npy").symlink_to(root / "v-1" / "gone.npy")
    path, st = InsideResolver(root).resolve_stat("v-1/dangling.npy")
    assert (path, st) == (str(resolve_inside(root, "v-1/gone.npy")), None)
