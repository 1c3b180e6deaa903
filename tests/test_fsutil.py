"""Filesystem helpers: paths inside a dataset, and the descriptor-based layer under them.

``InsideResolver`` (every manifest path) and ``safefs`` (every listing,
creation and deletion) never follow a symbolic link below the root, whether
it would stay inside or leave; the root itself is used as named.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from pathlib import Path

import pytest

from shardstore.errors import (
    ChecksumError,
    DamagedFileNotFoundError,
    DamagedIsADirectoryError,
    DamagedNotADirectoryError,
    NotRegularFileError,
    StorageError,
    StorageFileExistsError,
    UnsafeLinkError,
)
from shardstore.storage import faults
from shardstore.storage.fsutil import (
    HashingFile,
    InsideResolver,
    read_manifest_bytes,
    resolve_inside,
)
from shardstore.storage.safefs import Directory, open_regular, read_regular, storage_errors


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
    os.mkfifo(d / "v-1" / "fifo.npy")
    (d / "v-1" / "dir.npy").mkdir()
    (d / "file-not-dir").write_bytes(b"f")
    return d


@pytest.mark.parametrize(("relpath", "size"), [("v-1/a.npy", 1), ("top.npy", 1)])
def test_regular_files_resolve_to_their_path_and_stat(root: Path, relpath: str, size: int) -> None:
    resolver = InsideResolver(root)
    path, st = resolver.resolve_stat(relpath)
    assert path == os.path.join(os.path.realpath(root), relpath)
    assert st is not None and st.st_size == size
    assert resolver.resolve(relpath) == resolve_inside(root, relpath) == Path(path)


@pytest.mark.parametrize("relpath", ["v-1/missing.npy", "v-2/missing.npy"])
def test_missing_files_resolve_with_no_stat(root: Path, relpath: str) -> None:
    assert InsideResolver(root).resolve_stat(relpath)[1] is None


@pytest.mark.parametrize(
    ("relpath", "error", "words"),
    [
        ("v-1/link-in.npy", UnsafeLinkError, "symbolic link"),
        ("v-in/a.npy", UnsafeLinkError, "symbolic link"),
        ("v-in/x.npy", UnsafeLinkError, "symbolic link"),
        ("v-1/link-out.npy", UnsafeLinkError, "outside the dataset directory"),
        ("v-out/a.npy", UnsafeLinkError, "outside the dataset directory"),
        ("v-out/missing.npy", UnsafeLinkError, "outside the dataset directory"),
        ("v-1/fifo.npy", NotRegularFileError, "a FIFO"),
        ("v-1/dir.npy", DamagedIsADirectoryError, "a directory"),
        ("file-not-dir/x.npy", DamagedNotADirectoryError, "not a directory"),
    ],
)
def test_links_and_non_regular_entries_are_damage(
    root: Path, relpath: str, error: type[ChecksumError], words: str
) -> None:
    resolver = InsideResolver(root)
    resolver.resolve("v-1/a.npy")  # a cached directory must not let a sibling through
    with pytest.raises(error, match=words) as exc:
        resolver.resolve_stat(relpath)
    assert isinstance(exc.value, ChecksumError) and exc.value.file == relpath
    if error is not DamagedIsADirectoryError:  # resolve() accepts directories (Zarr stores)
        with pytest.raises(error):
            resolve_inside(root, relpath)


def test_a_root_given_as_a_symlink_is_followed(root: Path, tmp_path: Path) -> None:
    (tmp_path / "alias").symlink_to(root, target_is_directory=True)
    path, st = InsideResolver(tmp_path / "alias").resolve_stat("v-1/a.npy")
    assert st is not None and path == os.path.join(os.path.realpath(root), "v-1/a.npy")


# -- safefs ------------------------------------------------------------------------------------
def test_sub_never_follows_a_link_and_names_what_is_there(root: Path) -> None:
    with Directory.open(root, damage=True) as d:
        with d.sub("v-1") as v:
            assert {e.name for e in v.entries()} >= {"a.npy", "fifo.npy", "link-in.npy"}
        for name, error in [
            ("v-in", UnsafeLinkError),
            ("v-out", UnsafeLinkError),
            ("file-not-dir", DamagedNotADirectoryError),
        ]:
            with pytest.raises(error, match=name):
                d.sub(f"{name}/deeper", create=True)
        with pytest.raises(DamagedFileNotFoundError, match="nothing"):
            d.sub("nothing/deeper")
        assert not (root / "v-out" / "deeper").exists()  # nothing created through the link
        assert d.try_sub("nothing") is None


def test_creation_is_exclusive_and_never_through_a_link(root: Path, tmp_path: Path) -> None:
    with Directory.open(root, damage=True) as d:
        with pytest.raises(StorageFileExistsError):
            d.create("v-out")  # O_EXCL: a link is never opened, its target never created
        with pytest.raises(UnsafeLinkError):
            d.mkdir("v-in")
    with pytest.raises(UnsafeLinkError):
        HashingFile(root / "v-out" / "new.npy", below=root).__enter__()
    assert sorted(os.listdir(tmp_path / "outside")) == ["a.npy"]


def test_remove_tree_unlinks_links_never_their_targets(root: Path, tmp_path: Path) -> None:
    (root / "v-1" / "sub").mkdir()
    (root / "v-1" / "sub" / "to-outside").symlink_to(tmp_path / "outside")
    with Directory.open(root) as d:
        freed = d.remove_tree("v-1")
        d.remove_tree("v-out")  # the link only
    assert freed == 1  # a.npy: links, FIFOs and directories free nothing
    assert not (root / "v-1").exists() and not (root / "v-out").exists()
    assert sorted(os.listdir(tmp_path / "outside")) == ["a.npy"]


def test_remove_tree_handles_deep_trees_without_recursion(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY)
    os.mkdir("t", dir_fd=fd)
    for _ in range(1500):  # deeper than Python's recursion limit (and than PATH_MAX allows)
        nxt = os.open("t" if _ == 0 else "d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nxt
        os.mkdir("d", dir_fd=fd)
    os.close(os.open("f", os.O_WRONLY | os.O_CREAT, dir_fd=fd))
    g = os.open("g", os.O_WRONLY | os.O_CREAT, dir_fd=fd)
    os.write(g, b"xy")
    os.close(g)
    os.close(fd)
    with Directory.open(tmp_path) as top:
        assert top.remove_tree("t") == 2
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("kind", ["fifo", "socket", "directory", "symlink"])
def test_open_regular_refuses_without_blocking(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "x"
    if kind == "fifo":
        os.mkfifo(path)  # opening it for reading would block until a writer comes
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
    elif kind == "directory":
        path.mkdir()
    else:
        (tmp_path / "target").write_bytes(b"t")
        path.symlink_to(tmp_path / "target")
    with pytest.raises(ChecksumError):
        open_regular(path)
    if kind == "symlink":  # a user's input may be a link; followed only when asked
        fd = open_regular(path, follow_symlinks=True, damage=False)
        os.close(fd)
    else:
        with pytest.raises(StorageError):
            open_regular(path, follow_symlinks=True, damage=False)


def test_open_regular_leaves_a_blocking_descriptor(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"data")
    fd = open_regular(tmp_path / "f")
    try:
        import fcntl

        assert not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK
        assert stat.S_ISREG(os.fstat(fd).st_mode)
    finally:
        os.close(fd)


def test_reads_are_bounded(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 100)
    assert read_regular(tmp_path / "f", 100) == b"x" * 100
    with pytest.raises(StorageError, match="larger than the 99 bytes") as exc:
        read_regular(tmp_path / "f", 99)
    assert exc.value.errno == errno.EFBIG
    with Directory.open(tmp_path) as d:
        assert read_manifest_bytes(d, "missing.json") is None


def test_storage_errors_keep_errno_name_the_path_and_the_operation(tmp_path: Path) -> None:
    with pytest.raises(StorageError) as exc, storage_errors("frobnicate", tmp_path / "x"):
        raise OSError(errno.EIO, "Input/output error")
    err = exc.value
    assert err.errno == errno.EIO and err.operation == "frobnicate"
    assert str(tmp_path / "x") in str(err) and "frobnicate" in str(err)


def test_each_change_is_a_storage_operation(tmp_path: Path) -> None:
    faults.arm(0)  # count without killing
    try:
        with Directory.open(tmp_path) as d:
            d.mkdir("a")
            with d.sub("a") as a:
                os.close(a.create("f"))
                a.unlink("f")
            d.rmdir("a")
        assert faults.trace()[-4:] == ["mkdir", "create", "unlink", "rmdir"]
    finally:
        faults.disarm()
