"""Hostile datasets: lying manifests, headers and metadata, escaping paths, code in data, bombs.

An attacker controls every byte of the dataset directory, checksums
included (they are recomputed after every edit here, so integrity checks do
not hide the deeper ones). Whatever they write, reading must:

* raise only ``ShardStoreError`` subclasses (from ``open``, ``verify``,
  ``to_tf`` building, random access; iterating a ``tf.data`` pipeline can
  only report through ``tf.errors.OpError``, which is accepted there), never
  crash, never hang;
* never allocate what a header claims (checked with ``tracemalloc``);
* never open a file outside the dataset directory (checked with an audit hook);
* never import or execute anything named by the data.

``SHARDSTORE_STRESS=1`` (``make stress``) raises the hypothesis example counts.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import shardstore
from shardstore import cli
from shardstore.errors import (
    CapabilityError,
    ChecksumError,
    DatasetExistsError,
    DatasetNotFoundError,
    DiskFullError,
    ManifestError,
    ReadOnlyStorageError,
    ShardStoreError,
    SourceNotFoundError,
    UnsafeLinkError,
    UnsupportedDTypeError,
    from_tf_error,
)
from shardstore.format.manifest import Manifest
from shardstore.sources.tfrecord import masked_crc32c
from shardstore.storage.checksum import hash_file
from shardstore.testing import assert_bitwise_equal, assert_damage_reported, collect

sys.path.insert(0, str(Path(__file__).parent))
from tmpfs import mounted_tmpfs, remount_read_only

STRESS = os.environ.get("SHARDSTORE_STRESS", "") not in ("", "0")
EXAMPLES = 2000 if STRESS else 60
SLOW_EXAMPLES = 300 if STRESS else 25  # examples that build tf.data pipelines
#: Peak Python/NumPy allocation allowed while reading a hostile dataset.
MEMORY_LIMIT = 64 << 20
SETTINGS = {
    "deadline": None,
    "derandomize": not STRESS,  # the regular run is reproducible; the stress run explores
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
}
ROOT = Path(__file__).resolve().parent.parent


# -- helpers -----------------------------------------------------------------------------------
def records(n: int = 12) -> dict[str, np.ndarray]:
    return {"a": np.arange(n * 3, dtype=np.int32).reshape(n, 3), "b": np.linspace(0, 1, n)}


@pytest.fixture(scope="module")
def originals(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for fmt in ("npy", "zarr", "tfrecord"):
        out[fmt] = tmp_path_factory.mktemp(fmt) / "d"
        shardstore.write(out[fmt], records(), format=fmt, records_per_shard=5, fsync=False)
    return out


@contextlib.contextmanager
def scratch_copy(original: Path) -> Iterator[Path]:
    """A private copy of ``original`` (hypothesis runs many examples per test)."""
    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp) / "d"
        shutil.copytree(original, dest, symlinks=True)
        yield dest


def load(path: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((path / "manifest.json").read_bytes())
    return result


def save(path: Path, manifest: Any, *, fix_checksums: bool = True) -> None:
    """Write a manifest, first recomputing every listed file's size and checksum (as an
    attacker would) where the entry names a plain file inside the dataset."""
    if fix_checksums:
        for shard in _items(manifest, "shards"):
            for f in _items(shard, "files"):
                rel = f.get("path") if isinstance(f, dict) else None
                if isinstance(rel, str) and re.fullmatch(r"v-[0-9a-f]+(/[\w.]+)+", rel):
                    target = path / rel
                    if target.is_file() and not target.is_symlink():
                        f["size"], f["checksum"] = hash_file(target)
    text = manifest if isinstance(manifest, str | bytes) else json.dumps(manifest)
    data = text.encode() if isinstance(text, str) else text
    (path / "manifest.json").write_bytes(data)


def _items(obj: Any, key: str) -> list[Any]:
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, list) else []


def try_everything(path: Path, *, tf_reads: bool = True) -> list[str]:
    """Every way of reading ``path``; return how each ended. Any other exception propagates.

    ``tf_reads=False`` skips iterating tf.data pipelines (slow to build; for data
    that the Python readers behind them would see the same way)."""
    outcomes = []

    def attempt(name: str, fn: Callable[[], Any], *, tf_ok: bool = False) -> None:
        allowed: tuple[type[BaseException], ...] = (ShardStoreError,)
        if tf_ok:
            allowed += (tf.errors.OpError,)
        try:
            fn()
        except allowed as exc:
            outcomes.append(f"{name}: {type(exc).__name__}")
        else:
            outcomes.append(f"{name}: ok")

    try:
        ds = shardstore.open(path)
    except ShardStoreError as exc:
        return [f"open: {type(exc).__name__}"]
    attempt("verify", lambda: ds.verify(progress=False))
    attempt("info", ds.info)
    attempt("getitem", lambda: ds[np.arange(min(ds.num_records, 64))])
    # without random access, iter_numpy reads through tf.data: tf.errors can report there
    attempt("iter_numpy", lambda: next(iter(shardstore.open(path, verify="size").iter_numpy(4))),
            tf_ok=True)  # fmt: skip
    for verify in ("once", "size"):
        unchecked = shardstore.open(path, verify=verify)
        if tf_reads:
            read = lambda d=unchecked: collect(d.to_tf(batch_size=4))  # noqa: E731
        else:
            read = lambda d=unchecked: d.to_tf(batch_size=4)  # noqa: E731
        attempt(f"to_tf[{verify}]", read, tf_ok=True)
    return outcomes


@contextlib.contextmanager
def bounded_memory(limit: int = MEMORY_LIMIT) -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
        _, peak = tracemalloc.get_traced_memory()
        assert peak < limit, f"{peak} bytes allocated reading a hostile dataset"
    finally:
        tracemalloc.stop()


_OPENED: list[str] | None = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _OPENED is not None and event == "open" and args and isinstance(args[0], str | bytes):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


def _allowed(opened: str, dataset: Path) -> bool:
    """Inside the dataset, or Python's own files (modules imported on first use, and the
    sources TF's autograph writes to the temp directory), or the scratch space of a Dask
    cluster from an earlier test in this process (its nanny threads still tidy up there)."""
    real = os.path.realpath(opened)
    if f"{os.sep}dask-scratch-space{os.sep}" in real + os.sep:
        return True
    if real.endswith((".py", ".pyc", ".so")) or os.path.isdir(real):
        return True
    places = [dataset, Path(sys.prefix), Path(sys.base_prefix), ROOT, Path("/proc"), Path("/dev")]
    return any(real.startswith(os.path.realpath(p) + os.sep) for p in places)


@contextlib.contextmanager
def opened_files() -> Iterator[list[str]]:
    """Record every path Python opens in the block (builtins.open, os.open, io...)."""
    global _OPENED
    _OPENED = []
    try:
        yield _OPENED
    finally:
        _OPENED = None


# -- manifests ---------------------------------------------------------------------------------
BAD_STRINGS = [
    "../x.npy", "/etc/passwd", "C:\\x.npy", "C:foo.npy", "c:/x", "a\x00b", "v-1\\x.npy",
    "v-00/../../etc/passwd", "", ".", "manifest.json", "os:system", "os.path", "|O", "<U4",
    ">f8", "xxh3_64:0000000000000000", "\u202e", "v-" + "a" * 5000,
]  # fmt: skip
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([0, -1, 1, 2**31, 2**32, 2**40, 2**62, 2**63, 2**64])
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.sampled_from(BAD_STRINGS),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


def _get(obj: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        obj = obj[key]
    return obj


@st.composite
def mutated(draw: st.DrawFn, manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest`` with 1-3 random edits: a value replaced, a key deleted, an entry duplicated."""
    out = copy.deepcopy(manifest)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["tweak", "tweak", "replace", "delete", "duplicate"]))
        paths = [p for p in _paths(out) if p]
        if op == "tweak":  # an integer becomes another plausible-looking integer
            ints = [p for p in paths if type(_get(out, p)) is int]
            paths = ints or paths
        where = draw(st.sampled_from(paths))
        parent = out
        for key in where[:-1]:
            parent = parent[key]
        if op == "tweak" and type(parent[where[-1]]) is int:
            value = parent[where[-1]]
            parent[where[-1]] = draw(
                st.sampled_from(
                    [
                        0,
                        1,
                        value + 1,
                        max(0, value - 1),
                        value * 2,
                        value // 2,
                        2**31,
                        2**40,
                        2**63 - 1,
                    ]
                )
            )
        elif op in ("replace", "tweak"):
            parent[where[-1]] = draw(json_values)
        elif op == "delete":
            del parent[where[-1]]
        elif isinstance(parent, list):
            parent.append(copy.deepcopy(parent[where[-1]]))
        else:
            parent[where[-1]] = [parent[where[-1]]] * 2
    return out


@settings(max_examples=EXAMPLES * (5 if STRESS else 2), **SETTINGS)
@given(st.binary(max_size=300) | json_values.map(json.dumps).map(str.encode))
def test_any_bytes_parse_or_raise_manifest_error(data: bytes) -> None:
    with contextlib.suppress(ManifestError):
        Manifest.from_json(data)


@settings(max_examples=EXAMPLES * (5 if STRESS else 2), **SETTINGS)
@given(st.data())
def test_mutated_manifests_parse_or_raise_manifest_error(data: st.DataObject) -> None:
    valid = json.loads(_SAMPLE)
    with contextlib.suppress(ManifestError):
        Manifest.from_dict(data.draw(mutated(valid)))


_SAMPLE = json.dumps(
    {"format": "shardstore", "format_version": 1, "version_id": "00ff00ff00ff00ff",
     "created_by": "t", "num_records": 8, "metadata": {"k": [1]},
     "features": {"x": {"dtype": "<f4", "shape": [2, 2]}, "y": {"dtype": "<i8", "shape": []}},
     "shards": [{"index": i, "source": "npy", "num_records": 4, "files": [
         {"path": f"v-00ff00ff/00000{i}.x.npy", "size": 192, "checksum": "xxh3_64:0123456789abcdef",
          "feature": "x", "info": {"header_bytes": 128}},
         {"path": f"v-00ff00ff/00000{i}.y.npy", "size": 160, "checksum": "xxh3_64:0123456789abcdef",
          "feature": "y", "info": {"header_bytes": 128}}]} for i in range(2)]}
)  # fmt: skip


@pytest.mark.parametrize("fmt", ["npy", "zarr", "tfrecord"])
@settings(max_examples=SLOW_EXAMPLES, **SETTINGS)
@given(data=st.data())
def test_mutated_manifests_of_real_datasets_only_raise_shardstore_errors(
    originals: dict[str, Path], fmt: str, data: st.DataObject
) -> None:
    with scratch_copy(originals[fmt]) as path:
        manifest = data.draw(mutated(load(path)))
        save(path, manifest, fix_checksums=data.draw(st.booleans()))
        with bounded_memory(), opened_files() as opened:
            outcomes = try_everything(path)
        assert [p for p in opened if not _allowed(p, path)] == []
        event("deepest: " + outcomes[-1])


# -- the 12-byte file that claims 2**40 elements -----------------------------------------------
def _one_file_dataset(path: Path, payload: bytes, *, shape: list[int], num_records: int,
                      source: str = "npy", info: dict[str, Any] | None = None) -> None:  # fmt: skip
    (path / "v-00000000").mkdir(parents=True)
    (path / "v-00000000" / "000000.x.npy").write_bytes(payload)
    size, checksum = hash_file(path / "v-00000000" / "000000.x.npy")
    manifest = {
        "format": "shardstore", "format_version": 1, "version_id": "00000000",
        "num_records": num_records, "features": {"x": {"dtype": "|u1", "shape": shape}},
        "shards": [{"index": 0, "source": source, "num_records": num_records, "files": [
            {"path": "v-00000000/000000.x.npy", "size": size, "checksum": checksum,
             "feature": "x", "info": info or {"header_bytes": 1}}]}],
    }  # fmt: skip
    save(path, manifest, fix_checksums=False)


@pytest.mark.parametrize(
    ("shape", "num_records"),
    [([], 2**40), ([2**20, 2**20], 1), ([2**13, 2**13, 2**13], 2), ([2**30], 2**10)],
)
def test_a_12_byte_file_claiming_2_40_elements_fails_before_allocating(
    tmp_path: Path, shape: list[int], num_records: int
) -> None:
    _one_file_dataset(tmp_path / "d", b"\x93NUMPY\x01\x00abcd", shape=shape,
                      num_records=num_records)  # fmt: skip
    with bounded_memory():
        ds = shardstore.open(tmp_path / "d")
        for read in (lambda: ds[0], lambda: ds.to_tf(4), lambda: next(ds.iter_numpy(1))):
            with pytest.raises(ShardStoreError, match=r"claims .* bytes of records in 12 bytes"):
                read()


def npy_file(header: dict[str, Any] | bytes, data: bytes, version: int = 1) -> bytes:
    """A ``.npy`` file with an arbitrary (possibly lying) header."""
    body = header if isinstance(header, bytes) else repr(header).encode("utf-8")
    pad = 64 - (10 + len(body) + 1) % 64
    body = body + b" " * pad + b"\n"
    if version == 1:
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body + data
    return b"\x93NUMPY\x02\x00" + struct.pack("<I", len(body) + 2) + body + data


def test_an_npy_header_claiming_2_40_elements_is_refused_before_mapping(tmp_path: Path) -> None:
    liar = npy_file({"descr": "|u1", "fortran_order": False, "shape": (2**40,)}, b"abc")
    header = len(liar) - 3
    _one_file_dataset(tmp_path / "d", liar, shape=[], num_records=3,
                      info={"header_bytes": header})  # fmt: skip
    with bounded_memory():
        ds = shardstore.open(tmp_path / "d")
        with pytest.raises(ManifestError, match=r"holds uint8 \(1099511627776,\)"):
            ds[0]
    # the default reader gathers through memmap, which parses the header: refused mid-pipeline
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"ManifestError: .*1099511627776"):
        collect(ds.to_tf(3, features="x"))
    # the TF-native reader never parses the header: it reads the 3 records the manifest describes
    native = ds.to_tf(3, features="x", tf_native=True)
    assert_bitwise_equal(collect(native), np.frombuffer(b"abc", np.uint8))


npy_headers = st.fixed_dictionaries(
    {
        "descr": st.sampled_from(["|u1", "<f4", ">f4", "|O", "<U3", "|V4", "S2", "<i8", "(2,)u1",
                                  "[('a', '<f4')]"]) | st.text(max_size=8),
        "fortran_order": st.sampled_from([False, True, 0, "no", None]),
        "shape": st.lists(st.integers(-5, 2**64), max_size=4).map(tuple)
        | st.sampled_from([(3,), (3, 1), (), None, "3", (3.0,), (2**40,)]),
    }
)  # fmt: skip


@settings(max_examples=EXAMPLES, **SETTINGS)
@given(
    header=npy_headers | st.binary(max_size=80),
    version=st.sampled_from([1, 2]),
    data=st.binary(min_size=1, max_size=8),
)
def test_hostile_npy_headers_only_raise_shardstore_errors(
    header: dict[str, Any] | bytes, version: int, data: bytes
) -> None:
    raw = npy_file(header, data, version)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d"
        _one_file_dataset(path, raw, shape=[], num_records=len(data),
                          info={"header_bytes": len(raw) - len(data)})  # fmt: skip
        with bounded_memory():
            ds = shardstore.open(path)
            try:
                got = ds[:]["x"]
            except ShardStoreError:
                pass
            else:  # accepted: only a header that says exactly what the manifest says
                assert isinstance(header, dict) and header["descr"] == "|u1"
                assert got.tobytes() == data


# -- zarr metadata -----------------------------------------------------------------------------
def _zarr_meta(path: Path) -> Path:
    return next(path.glob("v-*/000000.zarr/a/zarr.json"))


@settings(max_examples=SLOW_EXAMPLES, **SETTINGS)
@given(data=st.data())
def test_mutated_zarr_metadata_only_raises_shardstore_errors(
    originals: dict[str, Path], data: st.DataObject
) -> None:
    with scratch_copy(originals["zarr"]) as path:
        meta = _zarr_meta(path)
        meta.write_text(json.dumps(data.draw(mutated(json.loads(meta.read_text())))))
        save(path, load(path))  # checksums recomputed: only the metadata checks stand
        with bounded_memory():
            outcomes = try_everything(path, tf_reads=False)  # tf.data: the same decoder
        event("getitem: " + next((o for o in outcomes if o.startswith("getitem")), "not reached"))


@pytest.mark.parametrize(
    "edit",
    [
        {"data_type": "string"},
        {"data_type": "object"},
        {"shape": [2**40]},
        {"chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [2**40, 3]}}},
        {"codecs": [{"name": "numcodecs.pickle"}]},
        {"codecs": [{"name": "vlen-utf8"}]},
        {"codecs": [{"name": "bytes"}, {"name": "numcodecs.pickle", "configuration": {}}]},
        {"storage_transformers": [{"name": "anything"}]},
    ],
)
def test_zarr_metadata_that_could_run_code_or_allocate_is_refused(
    originals: dict[str, Path], edit: dict[str, Any]
) -> None:
    with scratch_copy(originals["zarr"]) as path:
        meta = _zarr_meta(path)
        meta.write_text(json.dumps({**json.loads(meta.read_text()), **edit}))
        save(path, load(path))
        with bounded_memory():
            ds = shardstore.open(path)
            with pytest.raises(ManifestError, match=re.escape(meta.relative_to(path).as_posix())):
                ds[0]
            with pytest.raises(tf.errors.OpError, match="ManifestError"):
                collect(ds.to_tf(4))


def test_a_pickle_in_a_zarr_chunk_is_never_unpickled(
    originals: dict[str, Path], tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    payload = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()  # pickle protocol 0
    with scratch_copy(originals["zarr"]) as path:
        meta = _zarr_meta(path)
        spec = json.loads(meta.read_text())
        pickle_codec = {"name": "numcodecs.pickle", "configuration": {"protocol": 0}}
        spec["codecs"][0]["configuration"]["codecs"] = [pickle_codec]
        meta.write_text(json.dumps(spec))
        chunk = meta.parent / "c" / "0" / "0"
        chunk.write_bytes(payload)
        save(path, load(path))
        outcomes = try_everything(path)
    assert not marker.exists()
    assert all(not o.endswith(": ok") for o in outcomes if o.startswith(("getitem", "to_tf")))


# -- decompression bombs -----------------------------------------------------------------------
def _replace_chunk(path: Path, new: bytes, pattern: str = "v-*/000000.zarr/a/c/0/0") -> None:
    """Put ``new`` as the only chunk of a shard file, fixing the shard index and its CRC."""
    import google_crc32c

    data = next(path.glob(pattern))
    raw = data.read_bytes()
    nchunks = 1
    index = np.frombuffer(raw[-(16 * nchunks + 4) : -4], "<u8").reshape(nchunks, 2).copy()
    index[0] = (0, len(new))
    body = index.astype("<u8").tobytes()
    data.write_bytes(new + body + struct.pack("<I", google_crc32c.value(body)))


@pytest.mark.parametrize("kind", ["blosc lies", "real blosc bomb", "zstd lies"])
def test_decompression_bombs_fail_before_allocating(originals: dict[str, Path], kind: str) -> None:
    import numcodecs

    with scratch_copy(originals["zarr"]) as path:
        declared = 5 * 3 * 4  # chunk_records x record bytes of feature "a" (int32 x 3)
        if kind == "blosc lies":  # a valid header announcing 1 GiB instead of 60 bytes
            chunk = bytearray(numcodecs.Blosc(cname="zstd").encode(np.zeros(15, np.int32)))
            chunk[4:8] = struct.pack("<I", 1 << 30)
        elif kind == "real blosc bomb":  # 64 MiB of zeros in ~16 KiB
            chunk = bytearray(numcodecs.Blosc(cname="zstd").encode(np.zeros(16 << 20, np.int32)))
        elif kind == "zstd lies":  # a bare zstd frame announcing 64 MiB
            meta = _zarr_meta(path)
            spec = json.loads(meta.read_text())
            zstd = {"name": "zstd", "configuration": {"level": 1}}
            spec["codecs"][0]["configuration"]["codecs"][1] = zstd
            meta.write_text(json.dumps(spec))
            chunk = bytearray(numcodecs.Zstd().encode(np.zeros(16 << 20, np.int32)))
        assert len(chunk) < 1 << 20
        _replace_chunk(path, bytes(chunk))
        save(path, load(path))
        shardstore.open(originals["zarr"])[0]  # imports done: only the read is measured
        with bounded_memory(4 << 20):  # the bombs would take 64 MiB to 1 GiB
            ds = shardstore.open(path)
            with pytest.raises(ChecksumError, match="chunk 0") as exc:
                ds[0]
        assert exc.value.file is not None and exc.value.file.endswith("a/c/0/0")
        with pytest.raises(tf.errors.OpError, match="chunk 0"):  # the same decoder, in tf.data
            collect(ds.to_tf(4, features="a"))
        assert declared < 1 << 20


def test_a_chunk_expanding_more_than_65536_fold_is_refused(tmp_path: Path) -> None:
    """Even when its header matches the declared chunk size (8 MiB announced in 16 bytes)."""
    # 64 KiB records, 128 per chunk: one chunk of 8 MiB per shard; ds[0] needs 64 KiB
    ds = shardstore.write(tmp_path / "d", {"v": np.zeros((256, 1 << 14), np.float32)},
                          format="zarr", records_per_shard=128, chunk_records=128)  # fmt: skip
    ds[1]  # imports done: only the hostile read below is measured
    pattern = "v-*/000000.zarr/v/c/0/0"
    header = bytearray(next(ds.path.glob(pattern)).read_bytes()[:16])
    assert int.from_bytes(header[4:8], "little") == 1 << 23  # it does announce the 8 MiB
    header[12:16] = struct.pack("<I", 16)  # ... from these 16 bytes
    _replace_chunk(ds.path, bytes(header), pattern)
    save(ds.path, load(ds.path))
    with bounded_memory(4 << 20), pytest.raises(ChecksumError, match="decompression bomb"):
        shardstore.open(ds.path)[0]


# -- paths ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad",
    ["../outside.npy", "/etc/passwd", "C:\\x.npy", "C:x.npy", "c:/x.npy", "v-0\\x.npy",
     "v-0/x\x00.npy", "v-0/../../outside.npy", "./v-0/x.npy", "v-0//x.npy", "\\\\srv\\share\\x"],
)  # fmt: skip
def test_unsafe_paths_are_refused_before_any_file_is_opened(
    originals: dict[str, Path], bad: str
) -> None:
    with scratch_copy(originals["npy"]) as path:
        manifest = load(path)
        manifest["shards"][1]["files"][0]["path"] = bad
        save(path, manifest, fix_checksums=False)
        with opened_files() as opened, pytest.raises(ManifestError, match="path"):
            shardstore.open(path)
        assert [os.path.realpath(p) for p in opened] == [os.path.realpath(path / "manifest.json")]


@pytest.mark.parametrize("what", ["file", "version dir", "manifest"])
def test_symlinks_leaving_the_dataset_are_refused_before_opening(
    originals: dict[str, Path], tmp_path: Path, what: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    with scratch_copy(originals["npy"]) as path:
        manifest = load(path)
        victim = manifest["shards"][1]["files"][0]["path"]
        if what == "file":
            shutil.copy(path / victim, outside / "secret.npy")
            (path / victim).unlink()
            (path / victim).symlink_to(outside / "secret.npy")
        elif what == "version dir":
            vdir = path / victim.split("/")[0]
            shutil.copytree(vdir, outside / "v")
            shutil.rmtree(vdir)
            vdir.symlink_to(outside / "v", target_is_directory=True)
        else:
            shutil.copy(path / "manifest.json", outside / "manifest.json")
            (path / "manifest.json").unlink()
            (path / "manifest.json").symlink_to(outside / "manifest.json")
        with opened_files() as opened:
            with pytest.raises(ManifestError, match="outside the dataset directory"):
                ds = shardstore.open(path)
                ds.to_tf(4, tf_native=True)  # TensorFlow ops only: checked up front
            with pytest.raises(  # else refused when the reader reaches the file
                (ManifestError, tf.errors.OpError), match="outside the dataset directory"
            ):
                collect(shardstore.open(path).to_tf(4))
            with pytest.raises(ManifestError, match="outside the dataset directory"):
                shardstore.open(path)[:]
        assert not [p for p in opened if str(outside) in os.path.realpath(p)]


# -- no code from data ---------------------------------------------------------------------------
def test_no_pickle_anywhere_in_the_code() -> None:
    """Every np.load passes allow_pickle=False; no pickle, marshal, dill or cloudpickle."""
    offenders = []
    for py in [*(ROOT / "shardstore").rglob("*.py"), *(ROOT / "plugins").rglob("*.py")]:
        text = py.read_text()
        for m in re.finditer(r"np\.load\(", text):
            call = text[m.start() : text.index(")", m.start()) + 1]
            if "allow_pickle=False" not in call:
                offenders.append(f"{py}: {call}")
        for bad in ("allow_pickle=True", "import pickle", "import marshal", "import dill",
                    "cloudpickle", "pickle.load"):  # fmt: skip
            if bad in text:
                offenders.append(f"{py}: {bad}")
    assert offenders == []


@pytest.mark.parametrize("fmt", ["npy", "memmap", "zarr", "tfrecord"])
def test_object_dtypes_are_refused_on_write(tmp_path: Path, fmt: str) -> None:
    for bad in (np.array([object(), None], dtype=object), np.array(["ab", "c"]),
                np.array([b"x", b"y"]), np.zeros(2, dtype=[("a", "<f4")])):  # fmt: skip
        with pytest.raises(UnsupportedDTypeError):
            shardstore.write(tmp_path / "d", {"x": bad}, format=fmt)
        assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("dtype", ["|O", "<U4", "|S3", "|V8", "<M8[s]", "[('a', '<f4')]"])
def test_object_dtypes_are_refused_on_read(originals: dict[str, Path], dtype: str) -> None:
    with scratch_copy(originals["npy"]) as path:
        manifest = load(path)
        manifest["features"]["a"]["dtype"] = dtype
        save(path, manifest)
        with pytest.raises(ManifestError, match="not a supported dtype"):
            shardstore.open(path)


@pytest.mark.parametrize(
    "name", ["os:system", "os.path", "subprocess:run", "shardstore.sources.npy:NpySource", "../npy"]
)
def test_a_source_named_by_module_path_is_refused(originals: dict[str, Path], name: str) -> None:
    with scratch_copy(originals["npy"]) as path:
        manifest = load(path)
        manifest["shards"][0]["source"] = name
        save(path, manifest)
        with pytest.raises(ManifestError, match="invalid source name"):
            shardstore.open(path)


def test_an_unknown_source_name_imports_nothing(originals: dict[str, Path]) -> None:
    """A registered-name-shaped source that is not registered: SourceNotFoundError, no import.

    ``this`` is a real stdlib module that prints the Zen of Python when imported.
    """
    with scratch_copy(originals["npy"]) as path:
        manifest = load(path)
        for shard in manifest["shards"]:
            shard["source"] = "this"
        save(path, manifest)
        code = (
            "import sys, shardstore\n"
            f"ds = shardstore.open({str(path)!r})\n"
            "for read in (lambda: ds[0], lambda: ds.to_tf(4), lambda: ds.source):\n"
            "    try:\n"
            "        read()\n"
            "    except shardstore.SourceNotFoundError as e:\n"
            "        print('refused:', e)\n"
            "print('imported:', 'this' in sys.modules)\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=300, check=True).stdout  # fmt: skip
    assert out.count("refused: no shardstore source named 'this'") == 3
    assert "imported: False" in out and "Beautiful is better" not in out
    with pytest.raises(SourceNotFoundError):
        shardstore.get_source("this")
    assert "this" not in sys.modules


def test_disabling_autoload_loads_only_the_builtins() -> None:
    """With the real shardstore-hdf5 distribution installed, the switch hides it."""
    code = (
        "import json, sys, shardstore\n"
        "names = sorted(shardstore.available_sources())\n"
        "for n in names: shardstore.get_source(n)\n"
        "print(json.dumps([names, sorted(m for m in sys.modules if 'hdf5' in m or 'h5py' in m)]))"
    )
    env = {**os.environ, "SHARDSTORE_DISABLE_PLUGIN_AUTOLOAD": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300, check=True).stdout  # fmt: skip
    names, modules = json.loads(out)
    assert names == ["memmap", "npy", "tfrecord", "zarr"] and modules == []
    env.pop("SHARDSTORE_DISABLE_PLUGIN_AUTOLOAD")
    listing_only = code.replace("for n in names: shardstore.get_source(n)\n", "")
    out = subprocess.run([sys.executable, "-c", listing_only], capture_output=True, text=True,
                         env=env, timeout=300, check=True).stdout  # fmt: skip
    assert "hdf5" in json.loads(out)[0]  # the control: installed, and found without the switch


# -- TFRecord framing ----------------------------------------------------------------------------
@pytest.mark.parametrize("length", [2**33, 2**40, 2**62, 2**64 - 1])
def test_a_tfrecord_announcing_a_huge_record_is_refused_before_tensorflow_reads_it(
    originals: dict[str, Path], length: int
) -> None:
    """TF 2.21's TFRecordDataset crashes the process (SIGSEGV) on a 2**40-byte length."""
    with scratch_copy(originals["tfrecord"]) as path:
        victim = next(path.glob("v-*/000001.tfrecord"))
        raw = victim.read_bytes()
        head = struct.pack("<Q", length)
        victim.write_bytes(head + struct.pack("<I", masked_crc32c(head)) + raw[12:])
        save(path, load(path))
        victim_path = str(victim.relative_to(path))
        for verify in ("once", "size"):
            ds = shardstore.open(path, verify=verify)
            with pytest.raises(ChecksumError, match=r"announces .* past the end") as exc:
                ds.to_tf(4, tf_native=True)  # TF ops only: checked when the pipeline is built
            assert exc.value.shard == 1
            # else checked in Python when the reader reaches the shard, before TF opens it
            err = assert_damage_reported(lambda ds=ds: collect(ds.to_tf(4)), path, 1, victim_path)
            assert re.search(r"announces .* past the end", str(err))


# -- symlinks: nothing is listed, created or deleted through one -----------------------------
def snapshot(root: Path) -> list[tuple[str, str, int, int, bytes]]:
    """Every entry under ``root`` (links not followed): path, kind, size, mtime, contents."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            full = Path(dirpath) / name
            st = os.lstat(full)
            kind = "l" if full.is_symlink() else "d" if full.is_dir() else "f"
            data = full.read_bytes() if kind == "f" else b""
            out.append((str(full.relative_to(root)), kind, st.st_size, st.st_mtime_ns, data))
    return sorted(out)


def victim_dir(tmp_path: Path) -> Path:
    """A directory outside the dataset holding names garbage collection would delete."""
    victim = tmp_path / "victim"
    (victim / "v-0123456789abcdef").mkdir(parents=True)
    (victim / "v-0123456789abcdef" / "000000.x.npy").write_bytes(b"precious")
    (victim / "0123456789abcdef.lock").write_bytes(b"precious lock")
    (victim / "manifest-0123456789abcdef.tmp").write_bytes(b"{}")
    (victim / "precious.txt").write_bytes(b"the user's data")
    (victim / "deep" / "er").mkdir(parents=True)
    (victim / "deep" / "er" / "file").write_bytes(b"x")
    return victim


def with_leftovers(path: Path) -> None:
    """A dataset with a superseded version, a crashed write and an interrupted collection."""
    shardstore.write(path, records(), fsync=False)
    shardstore.write(path, records(14), overwrite=True, fsync=False)
    ctl = path / ".shardstore"
    (ctl / "staging" / "v-dead0000beef0000").mkdir(parents=True)
    (ctl / "staging" / "v-dead0000beef0000" / "000000.a.npy").write_bytes(b"half")
    (ctl / "manifest-dead0000beef0000.tmp").write_bytes(b"{")
    (ctl / "writers").mkdir(exist_ok=True)
    (ctl / "writers" / "dead0000beef0000.lock").write_bytes(b"")
    (ctl / "trash" / "v-0000aaaa.1234" / "sub").mkdir(parents=True)
    (ctl / "trash" / "v-0000aaaa.1234" / "sub" / "f").write_bytes(b"junk")


def run_gc_or_write(path: Path, how: str) -> str:
    """Collect garbage (API or CLI) or overwrite; how it ended (a ShardStoreError is fine)."""
    try:
        if how == "gc":
            report = shardstore.gc(path, grace=0)
            return f"ok, damaged={report.damaged}"
        if how == "cli":
            return f"exit {cli.main(['gc', '--grace', '0', str(path)])}"
        shardstore.write(path, records(16), overwrite=True, fsync=False)
        return "ok"
    except ShardStoreError as exc:
        return type(exc).__name__


CONTROL_PLACES = [".shardstore", ".shardstore/trash", ".shardstore/staging",
                  ".shardstore/retired", ".shardstore/writers"]  # fmt: skip


@pytest.mark.parametrize("how", ["gc", "cli", "overwrite"])
@pytest.mark.parametrize("place", CONTROL_PLACES)
def test_nothing_is_deleted_through_a_symlinked_control_area(
    tmp_path: Path, place: str, how: str
) -> None:
    path = tmp_path / "d"
    with_leftovers(path)
    victim = victim_dir(tmp_path)
    before = snapshot(victim)
    shutil.move(path / place, tmp_path / "moved")
    (path / place).symlink_to(victim, target_is_directory=True)
    outcome = run_gc_or_write(path, how)
    assert snapshot(victim) == before, outcome  # nothing deleted, created or changed there
    assert (path / place).is_symlink()  # the link itself is left for the user to look at
    if place == ".shardstore":  # no lock can be taken: refused before touching anything
        assert outcome in ("UnsafeLinkError", "exit 1"), outcome
    elif how == "gc":
        assert f"{place}: is a symbolic link" in outcome, outcome


@pytest.mark.parametrize("how", ["gc", "overwrite"])
@pytest.mark.parametrize(
    "link",
    ["v-0123456789abcdef", ".shardstore/trash/v-1111.ab", ".shardstore/trash/v-0000aaaa.1234/ln",
     ".shardstore/staging/v-feed0000feed0000", ".shardstore/retired/v-0123456789abcdef",
     ".shardstore/writers/feed0000feed0000.lock", ".shardstore/lock",
     ".shardstore/manifest-feed0000feed0000.tmp", ".manifest-feed.tmp"],
)  # fmt: skip
def test_symlinks_inside_the_control_area_are_never_followed(
    tmp_path: Path, link: str, how: str
) -> None:
    path = tmp_path / "d"
    with_leftovers(path)
    victim = victim_dir(tmp_path)
    target = victim if not link.endswith((".lock", ".tmp")) else victim / "precious.txt"
    if (path / link).is_file():
        (path / link).unlink()  # e.g. the dataset lock file, left in place by design
    (path / link).symlink_to(target)
    before = snapshot(victim)
    outcome = run_gc_or_write(path, how)
    assert snapshot(victim) == before, outcome
    if link == ".shardstore/lock":  # the dataset lock cannot be taken: refused
        assert outcome == "UnsafeLinkError", outcome
    elif how == "gc" and not link.startswith(".shardstore/trash/v-0000aaaa.1234/"):
        assert "is a symbolic link" in outcome, outcome  # reported, left alone


@pytest.mark.parametrize("when", ["between shards", "before the commit"])
def test_a_staging_directory_swapped_for_a_symlink_mid_write_is_refused(
    tmp_path: Path, when: str
) -> None:
    path = tmp_path / "d"
    victim = victim_dir(tmp_path)
    before = snapshot(victim)
    writer = shardstore.Writer(path, records_per_shard=4, fsync=False)
    writer.write(records(8))  # two shards written into .shardstore/staging/v-<id>/
    staged = path / ".shardstore" / "staging" / f"v-{writer.version_id}"
    shutil.move(staged, tmp_path / "moved")
    staged.symlink_to(victim, target_is_directory=True)
    with pytest.raises(ShardStoreError) as exc:
        if when == "between shards":
            writer.write(records(8))
        writer.close()
    assert isinstance(exc.value, ChecksumError), exc.value
    assert snapshot(victim) == before
    with pytest.raises(DatasetNotFoundError):
        shardstore.open(path)  # nothing was published


def test_a_dataset_root_given_as_a_symlink_is_followed(tmp_path: Path) -> None:
    """The path the user names may be a link (decided: it is theirs); links below it are not."""
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    shardstore.write(link, records(), fsync=False)
    shardstore.write(link, records(14), overwrite=True, fsync=False)
    ds = shardstore.open(link)
    ds.verify(progress=False)
    assert_bitwise_equal(ds[:]["a"], records(14)["a"])
    assert shardstore.gc(link, grace=0).removed
    assert link.is_symlink() and (real / "manifest.json").is_file()


@pytest.mark.parametrize("what", ["file", "version dir", "manifest"])
def test_symlinks_inside_the_dataset_are_refused_even_when_they_stay_inside(
    originals: dict[str, Path], what: str
) -> None:
    with scratch_copy(originals["npy"]) as path:
        victim = load(path)["shards"][1]["files"][0]["path"]
        if what == "file":
            (path / "copy.npy").write_bytes((path / victim).read_bytes())
            (path / victim).unlink()
            (path / victim).symlink_to(path / "copy.npy")
        elif what == "version dir":
            vdir = path / victim.split("/")[0]
            vdir.rename(path / "elsewhere")
            vdir.symlink_to(path / "elsewhere", target_is_directory=True)
        else:
            (path / "manifest.json").rename(path / "m.json")
            (path / "manifest.json").symlink_to(path / "m.json")
        for read in (
            lambda: shardstore.open(path)[:],
            lambda: shardstore.open(path).to_tf(4, tf_native=True),  # checked up front
            lambda: typed(lambda: collect(shardstore.open(path).to_tf(4))),  # when reached
            lambda: shardstore.open(path).verify(progress=False),
        ):
            with pytest.raises(UnsafeLinkError, match="symbolic link"):
                read()
        assert cli.main(["verify", str(path)]) == 1


def typed(read: Any) -> Any:
    """``read()``, with the error a ``tf.data`` pipeline carried raised as its own type."""
    try:
        return read()
    except tf.errors.OpError as exc:
        carried = from_tf_error(exc)
        if carried is None:
            raise
        raise carried from exc


# -- FIFOs, devices, sockets, directories: never block, never read without end ---------------
NON_REGULAR_SCRIPT = r"""
import json, os, shutil, socket, stat, sys, tempfile
from pathlib import Path
import numpy as np
import shardstore
from shardstore import cli
from shardstore.errors import ShardStoreError, from_tf_error

original, kind, where = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
tmp = Path(tempfile.mkdtemp())
path = tmp / "d"
shutil.copytree(original, path)
manifest = json.loads((path / "manifest.json").read_text())
rel = manifest["shards"][1]["files"][0]["path"] if where == "shard" else "manifest.json"
victim = path / rel
victim.unlink()
if kind == "fifo":
    os.mkfifo(victim)
elif kind == "zero":
    os.mknod(victim, stat.S_IFCHR | 0o666, os.makedev(1, 5))  # /dev/zero
elif kind == "socket":
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(victim))
else:
    victim.mkdir()
outcomes = {}

def attempt(name, fn):
    try:
        fn()
        outcomes[name] = "ok"
    except ShardStoreError as exc:
        outcomes[name] = type(exc).__name__
    except Exception as exc:  # reported, then judged by the test
        typed = from_tf_error(exc)  # inside a pipeline: TensorFlow's error carrying ours
        if typed is not None:
            outcomes[name] = type(typed).__name__
        else:
            outcomes[name] = "BAD " + type(exc).__name__ + ": " + str(exc)[:200]

def read_tf(**kw):
    for _ in shardstore.open(path).to_tf(batch_size=4, **kw):
        pass

attempt("open", lambda: shardstore.open(path))
attempt("verify", lambda: shardstore.open(path).verify(progress=False))
attempt("info", lambda: shardstore.open(path).info())
attempt("getitem", lambda: shardstore.open(path)[:])
attempt("iter_numpy", lambda: list(shardstore.open(path).iter_numpy(4)))
attempt("to_tf", read_tf)
attempt("to_tf[size]", lambda: [b for b in shardstore.open(path, verify="size").to_tf(4)])
attempt("to_tf[native]", lambda: read_tf(tf_native=True))
outcomes["cli verify"] = cli.main(["verify", str(path)])
outcomes["cli info"] = cli.main(["info", str(path)])
attempt("gc", lambda: shardstore.gc(path))
attempt("overwrite", lambda: shardstore.write(path, {"a": np.zeros(3)}, overwrite=True))
print("OUTCOMES " + json.dumps(outcomes), flush=True)
"""


NON_REGULAR_KINDS = ["fifo", "zero", "socket", "directory"]


@pytest.mark.parametrize(
    ("fmt", "kind", "where"),
    [(fmt, kind, "shard") for fmt in ("npy", "tfrecord") for kind in NON_REGULAR_KINDS]
    + [("npy", kind, "manifest") for kind in NON_REGULAR_KINDS],  # the same for every format
)
def test_non_regular_files_are_refused_without_blocking(
    originals: dict[str, Path], tmp_path: Path, fmt: str, kind: str, where: str
) -> None:
    """In a child process with a timeout: a hang fails the test, it does not stop the suite."""
    script = tmp_path / "script.py"
    script.write_text(NON_REGULAR_SCRIPT)
    try:
        proc = subprocess.run(
            [sys.executable, str(script), str(originals[fmt]), kind, where],
            capture_output=True, text=True, timeout=300,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"reading a dataset with a {kind} as its {where} hung: {exc.stdout!r}")
    if kind == "zero" and "PermissionError" in proc.stderr and not os.environ.get("CI"):
        pytest.skip("this machine forbids creating device nodes")
    lines = [x for x in proc.stdout.splitlines() if x.startswith("OUTCOMES ")]
    assert lines, proc.stderr[-3000:]
    outcomes = json.loads(lines[0][len("OUTCOMES ") :])
    bad = {k: v for k, v in outcomes.items() if isinstance(v, str) and v.startswith("BAD")}
    assert not bad, outcomes
    damage = {"NotRegularFileError", "DamagedIsADirectoryError"}
    if where == "manifest":
        assert outcomes["open"] in damage, outcomes
        # a damaged manifest is replaced by an overwrite (a directory cannot be: renaming a
        # file over it fails, as a typed error naming it)
        expected = "StorageIsADirectoryError" if kind == "directory" else "ok"
        assert outcomes["overwrite"] == expected, outcomes
    else:
        for op in ("verify", "getitem", "iter_numpy", "to_tf", "to_tf[size]", "to_tf[native]"):
            allowed = damage | ({"CapabilityError"} if op == "getitem" else set())
            assert outcomes[op] in allowed, (op, outcomes)
        assert outcomes["info"] == "ok", outcomes
    assert outcomes["cli verify"] == 1, outcomes  # damage: exit status 1


# -- lying counts -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "count", [2**48, 2**62, 2**63, 2**64 + 1, -1, -(2**63)], ids=lambda c: f"count{c}"
)
@pytest.mark.parametrize("where", ["shard", "dataset", "both"])
def test_impossible_record_counts_are_refused_when_the_manifest_is_read(
    originals: dict[str, Path], count: int, where: str
) -> None:
    with scratch_copy(originals["npy"]) as path:
        manifest = load(path)
        if where in ("shard", "both"):
            manifest["shards"][0]["num_records"] = count
        if where in ("dataset", "both"):
            manifest["num_records"] = count
        save(path, manifest)
        with bounded_memory(), pytest.raises(ManifestError, match="num_records"):
            shardstore.open(path)
        assert cli.main(["info", str(path)]) == 2


@pytest.mark.parametrize(
    "shape",
    [[2**62], [2**31, 2**31], [2**40, 2], [2**64 + 1], [3, 2**63], [2**20] * 4],
    ids=lambda s: "x".join(map(str, s)),
)
def test_impossible_feature_shapes_are_refused_when_the_manifest_is_read(
    originals: dict[str, Path], shape: list[int]
) -> None:
    with scratch_copy(originals["npy"]) as path:
        manifest = load(path)
        manifest["features"]["a"]["shape"] = shape
        save(path, manifest)
        with bounded_memory(), pytest.raises(ManifestError, match=r"features\.a\.shape"):
            shardstore.open(path)


@pytest.mark.parametrize("fmt", ["npy", "zarr", "tfrecord"])
@pytest.mark.parametrize("count", [2**31, 2**40, 2**47])
def test_a_shard_claiming_more_records_than_its_bytes_fails_before_allocating(
    originals: dict[str, Path], fmt: str, count: int
) -> None:
    """Every path refuses before allocating: ``ds[:]`` once allocated 16 GiB for 2**31."""
    with scratch_copy(originals[fmt]) as path:
        manifest = load(path)
        manifest["shards"][1]["num_records"] = count
        manifest["num_records"] = sum(s["num_records"] for s in manifest["shards"])
        save(path, manifest)
        with bounded_memory():
            ds = shardstore.open(path)
            assert ds.info()["num_records"] == manifest["num_records"]  # metadata: no reading
            reads = {
                "verify": lambda: ds.verify(progress=False),
                "ds[:]": lambda: ds[:],
                "ds[5]": lambda: ds[5],  # the lying shard's first record
                "iter_numpy": lambda: list(ds.iter_numpy()),
                "to_tf": lambda: ds.to_tf(64),
                "to_tf[global]": lambda: ds.to_tf(64, shuffle="global"),
            }
            for name, read in reads.items():
                with pytest.raises(ShardStoreError) as exc:
                    read()
                if not isinstance(exc.value, CapabilityError):
                    assert "claims" in str(exc.value), (name, exc.value)
        assert cli.main(["verify", str(path)]) != 0  # never "OK" for what cannot be read


# -- typed errors -------------------------------------------------------------------------------
def test_a_version_directory_replaced_by_a_file_is_damage(originals: dict[str, Path]) -> None:
    with scratch_copy(originals["npy"]) as path:
        vdir = path / load(path)["shards"][0]["files"][0]["path"].split("/")[0]
        shutil.rmtree(vdir)
        vdir.write_bytes(b"not a directory")
        ds = shardstore.open(path)
        for read in (lambda: ds.verify(progress=False), lambda: ds[:],
                     lambda: typed(lambda: collect(ds.to_tf(4))),
                     lambda: next(ds.iter_numpy(4))):  # fmt: skip
            with pytest.raises(ChecksumError, match="not a directory") as exc:
                read()
            assert isinstance(exc.value, NotADirectoryError)
            assert exc.value.errno == errno.ENOTDIR and exc.value.shard == 0
        assert cli.main(["verify", str(path)]) == 1


@pytest.mark.parametrize("kind", ["directory", "symlink to a directory"])
def test_manifest_json_as_a_directory_is_damage(originals: dict[str, Path], kind: str) -> None:
    with scratch_copy(originals["npy"]) as path:
        (path / "manifest.json").unlink()
        if kind == "directory":
            (path / "manifest.json").mkdir()
        else:
            (path / "manifest.json").symlink_to(path / "v-dir", target_is_directory=True)
        with pytest.raises(ChecksumError) as exc:
            shardstore.open(path)
        if kind == "directory":
            assert isinstance(exc.value, IsADirectoryError) and exc.value.errno == errno.EISDIR
        assert "manifest.json" in str(exc.value)
        assert cli.main(["verify", str(path)]) == 1
        assert cli.main(["info", str(path)]) == 1


def test_the_manifest_size_is_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from shardstore.storage import fsutil

    path = tmp_path / "d"
    shardstore.write(path, records(), fsync=False)
    monkeypatch.setattr(fsutil, "MAX_MANIFEST_BYTES", 256)
    with bounded_memory(1 << 20), pytest.raises(ManifestError, match="larger than 256 bytes"):
        shardstore.open(path)


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le", "utf-32"])
def test_a_manifest_must_be_plain_utf8(originals: dict[str, Path], encoding: str) -> None:
    with scratch_copy(originals["npy"]) as path:
        text = (path / "manifest.json").read_text(encoding="utf-8")
        (path / "manifest.json").write_bytes(text.encode(encoding))
        with pytest.raises(ManifestError):  # a BOM, invalid UTF-8, or NULs JSON refuses
            shardstore.open(path)


def test_writing_into_a_directory_holding_other_files_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "d"
    path.mkdir()
    (path / "notes.txt").write_text("mine")
    (path / "photos").mkdir()
    with pytest.raises(DatasetExistsError, match=re.escape("'notes.txt', 'photos'")):
        shardstore.write(path, records(), fsync=False)
    assert sorted(os.listdir(path)) == ["notes.txt", "photos"]  # nothing written
    shardstore.write(path, records(), overwrite=True, fsync=False)  # asked for: allowed
    assert (path / "notes.txt").read_text() == "mine"


def test_a_full_disk_is_a_typed_error_naming_the_file(tmp_path: Path) -> None:
    """A real full file system (a 1 MiB tmpfs); the previous version stays whole."""
    with mounted_tmpfs(tmp_path / "mnt", "1m") as mnt:
        path = mnt / "d"
        shardstore.write(path, records(), fsync=False)
        big = {"a": np.zeros((200_000, 3), np.int32), "b": np.zeros(200_000)}
        with pytest.raises(DiskFullError) as exc:
            shardstore.write(path, big, overwrite=True, records_per_shard=50_000)
        err = exc.value
        assert isinstance(err, OSError) and isinstance(err, ShardStoreError)
        assert err.errno == errno.ENOSPC and err.filename and str(mnt) in err.filename
        assert "no space left" in str(err) and str(mnt) in str(err)
        assert_bitwise_equal(shardstore.open(path)[:]["a"], records()["a"])  # untouched
        assert not list((path / ".shardstore").glob("staging/*"))  # nothing half-written
        assert cli.main(["verify", str(path)]) == 0


def test_a_read_only_file_system_is_a_typed_error(tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "mnt", "4m") as mnt:
        path = mnt / "d"
        shardstore.write(path, records(), fsync=False)
        remount_read_only(mnt)
        for change in (
            lambda: shardstore.write(path, records(14), overwrite=True),
            lambda: shardstore.write(mnt / "new", records()),
            lambda: shardstore.gc(path, grace=0),
        ):
            with pytest.raises(ReadOnlyStorageError) as exc:
                change()
            assert exc.value.errno == errno.EROFS and "read-only file system" in str(exc.value)
            assert str(mnt) in str(exc.value)
        ds = shardstore.open(path)  # reading needs no write access
        assert_bitwise_equal(ds[:]["a"], records()["a"])
        ds.verify(progress=False)


# -- random hostile trees (make stress raises the counts) ----------------------------------------
def _entries(path: Path) -> list[str]:
    """Every entry under ``path`` (the control area included), as relative paths."""
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@settings(max_examples=SLOW_EXAMPLES // 2, **SETTINGS)
@given(data=st.data())
def test_random_symlinks_anywhere_are_never_followed(data: st.DataObject) -> None:
    """Entries anywhere in a dataset (control area included) replaced by links to a victim.

    Reads, ``gc`` and an overwrite may only succeed or raise ``ShardStoreError``;
    nothing of the victim is deleted, created or changed.
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d"
        with_leftovers(path)
        victim = victim_dir(Path(tmp))
        before = snapshot(victim)
        picks = data.draw(st.lists(st.sampled_from(_entries(path)), min_size=1, max_size=4))
        for rel in sorted(set(picks), key=len, reverse=True):  # deepest first
            entry = path / rel
            if not entry.exists() and not entry.is_symlink():
                continue  # under a directory already replaced
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            target = data.draw(st.sampled_from([victim, victim / "precious.txt", victim / "deep"]))
            entry.symlink_to(target, target_is_directory=target.is_dir())
        event(f"{len(set(picks))} link(s)")
        for name, action in [
            ("read", lambda: try_everything(path, tf_reads=False)),
            ("gc", lambda: shardstore.gc(path, grace=data.draw(st.sampled_from([0, 3600])))),
            ("overwrite", lambda: shardstore.write(path, records(9), overwrite=True, fsync=False)),
            ("gc again", lambda: shardstore.gc(path, grace=0)),
        ]:
            with contextlib.suppress(ShardStoreError):
                action()
            assert snapshot(victim) == before, name


NON_REGULAR_STRESS_SCRIPT = r"""
import json, os, random, shutil, socket, stat, sys, tempfile
from pathlib import Path
import numpy as np
import shardstore
from shardstore.errors import ShardStoreError, from_tf_error

original, trials, seed = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
sockets = []
summary = {}
for trial in range(trials):
    tmp = Path(tempfile.mkdtemp())
    path = tmp / "d"
    shutil.copytree(original, path)
    files = sorted(p for p in path.rglob("*") if p.is_file())
    for victim in rng.sample(files, rng.randint(1, 3)):
        victim.unlink()
        kind = rng.choice(["fifo", "zero", "socket", "directory"])
        if kind == "fifo":
            os.mkfifo(victim)
        elif kind == "zero":
            os.mknod(victim, stat.S_IFCHR | 0o666, os.makedev(1, 5))
        elif kind == "socket":
            s = socket.socket(socket.AF_UNIX)
            s.bind(str(victim))
            sockets.append(s)
        else:
            victim.mkdir()
    def attempt(name, fn):
        try:
            fn()
            summary[name + ": ok"] = summary.get(name + ": ok", 0) + 1
        except ShardStoreError as exc:
            key = name + ": " + type(exc).__name__
            summary[key] = summary.get(key, 0) + 1
        except Exception as exc:  # inside a pipeline: TensorFlow's error carrying ours
            typed = from_tf_error(exc)
            if typed is None:
                raise
            key = name + ": " + type(typed).__name__
            summary[key] = summary.get(key, 0) + 1
    attempt("verify", lambda: shardstore.open(path).verify(progress=False))
    attempt("getitem", lambda: shardstore.open(path)[:])
    attempt("to_tf", lambda: [b for b in shardstore.open(path, verify="size").to_tf(4)])
    attempt("native", lambda: [b for b in shardstore.open(path).to_tf(4, tf_native=True)])
    attempt("gc", lambda: shardstore.gc(path, grace=0))
    attempt("overwrite", lambda: shardstore.write(path, {"a": np.zeros(3)}, overwrite=True))
    shutil.rmtree(tmp)
print("SUMMARY " + json.dumps(summary), flush=True)
"""
NON_REGULAR_TRIALS = 150 if STRESS else 4


@pytest.mark.parametrize("fmt", ["npy", "zarr", "tfrecord"])
def test_random_fifos_devices_and_sockets_never_block(
    originals: dict[str, Path], tmp_path: Path, fmt: str
) -> None:
    """Random files replaced by FIFOs, ``/dev/zero`` nodes, sockets or directories, in a child."""
    script = tmp_path / "script.py"
    script.write_text(NON_REGULAR_STRESS_SCRIPT)
    seed = int.from_bytes(os.urandom(4), "little") if STRESS else 7
    try:
        proc = subprocess.run(
            [sys.executable, str(script), str(originals[fmt]), str(NON_REGULAR_TRIALS), str(seed)],
            capture_output=True, text=True, timeout=300 + 20 * NON_REGULAR_TRIALS,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"reading non-regular files hung (seed {seed}): {exc.stdout!r}")
    if "PermissionError" in proc.stderr and "mknod" in proc.stderr and not os.environ.get("CI"):
        pytest.skip("this machine forbids creating device nodes")
    lines = [x for x in proc.stdout.splitlines() if x.startswith("SUMMARY ")]
    assert lines and proc.returncode == 0, (seed, proc.stderr[-3000:])
    print(f"\n{fmt} (seed {seed}):", lines[0][len("SUMMARY ") :])


LIES = [2**31, 2**40, 2**47, 2**48 - 1, 2**48, 2**62, 2**63, 2**64 + 1, -1, -(2**63)]


@pytest.mark.parametrize("fmt", ["npy", "zarr", "tfrecord"])
@settings(max_examples=SLOW_EXAMPLES, **SETTINGS)
@given(data=st.data())
def test_lying_counts_anywhere_in_the_manifest_never_allocate(
    originals: dict[str, Path], fmt: str, data: st.DataObject
) -> None:
    """Any integer of the manifest (counts, sizes, shapes, offsets...) replaced by a lie."""
    with scratch_copy(originals[fmt]) as path:
        manifest = load(path)
        ints = [p for p in _paths(manifest) if p and type(_get(manifest, p)) is int]
        for where in data.draw(st.lists(st.sampled_from(ints), min_size=1, max_size=3)):
            parent = _get(manifest, where[:-1])
            parent[where[-1]] = data.draw(st.sampled_from(LIES))
            event(f"lie at {where[-1]}")
        save(path, manifest, fix_checksums=data.draw(st.booleans()))
        with bounded_memory():
            outcomes = try_everything(path)
        event("deepest: " + outcomes[-1])


def test_an_io_error_while_reading_is_a_typed_error(
    originals: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An OSError from below (a failing disk: EIO) leaves the API as a StorageError."""
    from shardstore.errors import StorageError
    from shardstore.sources import memmap

    def failing(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(memmap.MemmapSource, "read_records_into", failing)
    ds = shardstore.open(originals["npy"])
    for read in (lambda: ds[0], lambda: next(ds.iter_numpy(4)), lambda: ds.verify(progress=False)):
        with pytest.raises(StorageError) as exc:
            read()
        assert isinstance(exc.value, OSError) and exc.value.errno == errno.EIO
        assert str(ds.path) in str(exc.value)


INPUT_SCRIPT = r"""
import json, os, sys
from pathlib import Path
import numpy as np
import shardstore
from shardstore.errors import ShardStoreError

tmp = Path(sys.argv[1])
np.save(tmp / "ok.npy", np.arange(6))
for name in ("big.npy", "arrays.npz", "labels.csv", "records.tfrecord"):
    os.mkfifo(tmp / name)  # opening any of these for reading would block
(tmp / "files").mkdir()
np.save(tmp / "files" / "a.npy", np.arange(3))
os.mkfifo(tmp / "files" / "b.npy")
outcomes = {}

def attempt(name, fn):
    try:
        fn()
        outcomes[name] = "ok"
    except ShardStoreError as exc:
        outcomes[name] = type(exc).__name__
    except Exception as exc:
        outcomes[name] = "BAD " + type(exc).__name__ + ": " + str(exc)[:200]

attempt("npy", lambda: shardstore.ingest(tmp / "big.npy", tmp / "d1", kind="npy"))
attempt("npz", lambda: shardstore.ingest(tmp / "arrays.npz", tmp / "d2", kind="npz"))
attempt("files", lambda: shardstore.ingest(tmp / "files", tmp / "d3"))
attempt("labels", lambda: shardstore.ingest([tmp / "ok.npy"], tmp / "d4",
                                            labels=tmp / "labels.csv"))
attempt("tfrecord", lambda: shardstore.index_tfrecords(
    tmp / "d5", [tmp / "records.tfrecord"], features={"x": ("int64", [])}))
print("OUTCOMES " + json.dumps(outcomes), flush=True)
"""


def test_ingest_inputs_that_are_fifos_never_block(tmp_path: Path) -> None:
    """User inputs (.npy, .npz, a directory of files, a labels CSV, TFRecords) that are FIFOs."""
    script = tmp_path / "script.py"
    script.write_text(INPUT_SCRIPT)
    (tmp_path / "work").mkdir()
    try:
        proc = subprocess.run(
            [sys.executable, str(script), str(tmp_path / "work")],
            capture_output=True, text=True, timeout=300,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"ingesting a FIFO hung: {exc.stdout!r}")
    lines = [x for x in proc.stdout.splitlines() if x.startswith("OUTCOMES ")]
    assert lines, proc.stderr[-3000:]
    outcomes = json.loads(lines[0][len("OUTCOMES ") :])
    # a directory's scan takes its regular .npy files only: the FIFO is not an input
    assert outcomes.pop("files") == "ok"
    assert shardstore.open(tmp_path / "work" / "d3").num_records == 1  # a.npy: one record
    assert all(v == "InvalidInputError" for v in outcomes.values()), outcomes
