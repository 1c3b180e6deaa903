"""Whole-array inputs: one big ``.npy``, an ``.npz``, a Zarr array or group, read lazily.

Nothing is loaded whole and no Python object is ever decoded:

* a ``.npy`` file is memory-mapped from its parsed header (object dtypes
  are refused before any data is touched);
* an ``.npz`` member stored without compression is memory-mapped too, at
  its offset inside the zip file; a compressed member is decompressed as a
  stream, in record order, one shard at a time;
* a Zarr array is sliced shard by shard (object dtypes refused; zarr itself
  refuses to open an array whose codecs decode Python objects).

Each input becomes :class:`~shardstore.writing.resumable.Column` objects whose
``read(lo, hi)`` returns a lazy slice (read where the shard is written) or,
for a compressed stream, the decompressed records.
"""

from __future__ import annotations

import logging
import math
import os
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np

from shardstore.errors import InvalidInputError, ManifestError, UnsupportedDTypeError
from shardstore.format.manifest import SUPPORTED_DTYPES, FeatureSpec, check_feature_name
from shardstore.sources.base import ArrayLike
from shardstore.storage.safefs import check_regular, open_binary
from shardstore.writing.npyfiles import OBJECTS_REFUSED, NpyHeader, read_npy_header

__all__ = [
    "ArrayColumn",
    "LazySlice",
    "StreamColumn",
    "fingerprint_tree",
    "open_npy",
    "open_npz",
    "open_zarr",
]

log = logging.getLogger(__name__)

_STREAM_CHUNK = 8 << 20


def _spec(where: str, dtype: np.dtype[Any], shape: tuple[int, ...]) -> FeatureSpec:
    if dtype.hasobject:
        raise UnsupportedDTypeError(f"{where} {OBJECTS_REFUSED}")
    if dtype.newbyteorder("<").str not in SUPPORTED_DTYPES:
        raise UnsupportedDTypeError(
            f"{where} has dtype {dtype}; shardstore stores bool, (u)int8-64, float16-64 and "
            "complex64/128 only"
        )
    if len(shape) == 0:
        raise InvalidInputError(f"{where} is 0-d; its first axis must index records")
    if math.prod(shape[1:]) == 0:
        raise InvalidInputError(f"{where} has empty records (per-record shape {shape[1:]})")
    return FeatureSpec(dtype.newbyteorder("<"), tuple(int(d) for d in shape[1:]))


def _feature_name(where: str, name: str) -> str:
    try:
        return check_feature_name(name)
    except ManifestError as exc:
        raise InvalidInputError(f"{where}: {exc}") from None


class LazySlice:
    """Records ``lo:hi`` of an array-like, read only when sliced or converted."""

    def __init__(self, array: ArrayLike, lo: int, hi: int) -> None:
        self._array = array
        self._lo = lo
        self.dtype = np.dtype(array.dtype)
        self.shape = (hi - lo, *(int(d) for d in array.shape[1:]))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: slice) -> np.ndarray:
        start, stop, step = key.indices(self.shape[0])
        if step != 1:
            raise TypeError("LazySlice supports contiguous ranges only")
        return np.asarray(self._array[self._lo + start : self._lo + max(start, stop)])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        arr = self[:]
        return arr if dtype is None else arr.astype(dtype)


class ArrayColumn:
    """A column over a sliceable array (memory map, Zarr array, FileStack)."""

    def __init__(self, array: ArrayLike, spec: FeatureSpec) -> None:
        self.array = array
        self.spec = spec
        self.num_records = int(array.shape[0])

    def read(self, lo: int, hi: int) -> ArrayLike:
        """A lazy view of records ``lo:hi``."""
        return LazySlice(self.array, lo, hi)


class StreamColumn:
    """A compressed ``.npz`` member, decompressed in record order (re-opened to go back)."""

    def __init__(self, path: Path, member: str, header: NpyHeader, spec: FeatureSpec) -> None:
        self.spec = spec
        self.num_records = int(header.shape[0])
        self._path = path
        self._member = member
        self._header = header
        self._record_bytes = header.dtype.itemsize * math.prod(header.shape[1:])
        self._zip: zipfile.ZipFile | None = None
        self._raw: BinaryIO | None = None
        self._stream: BinaryIO | None = None
        self._pos = 0

    def _open(self) -> BinaryIO:
        self.close()
        self._raw = open_binary(self._path, follow_symlinks=True, damage=False)
        self._zip = zipfile.ZipFile(self._raw)
        stream: BinaryIO = self._zip.open(self._member)  # type: ignore[assignment]
        stream.seek(self._header.offset)
        self._stream = stream
        self._pos = 0
        return stream

    def _read_exactly(self, stream: BinaryIO, nbytes: int) -> bytearray:
        out = bytearray(nbytes)
        view = memoryview(out)
        got = 0
        while got < nbytes:
            piece = stream.read(min(_STREAM_CHUNK, nbytes - got))
            if not piece:
                raise InvalidInputError(
                    f"{str(self._path)!r}: member {self._member!r} ends early (truncated)"
                )
            view[got : got + len(piece)] = piece
            got += len(piece)
        return out

    def read(self, lo: int, hi: int) -> np.ndarray:
        """Records ``lo:hi``, decompressed now (skipping forward if needed)."""
        stream = self._stream if self._stream is not None and lo >= self._pos else self._open()
        while self._pos < lo:
            step = min(lo - self._pos, max(1, _STREAM_CHUNK // self._record_bytes))
            self._read_exactly(stream, step * self._record_bytes)
            self._pos += step
        data = self._read_exactly(stream, (hi - lo) * self._record_bytes)
        self._pos = hi
        return np.frombuffer(data, dtype=self._header.dtype).reshape(
            hi - lo, *self._header.shape[1:]
        )

    def close(self) -> None:
        """Close the zip file."""
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        if self._zip is not None:
            self._zip.close()
            self._zip = None
        if self._raw is not None:
            self._raw.close()
            self._raw = None


def _memmap(path: Path, header: NpyHeader, offset: int) -> np.ndarray:
    if math.prod(header.shape) == 0:
        return np.empty(header.shape, header.dtype)
    order: Literal["C", "F"] = "F" if header.fortran_order else "C"
    with open_binary(path, follow_symlinks=True, damage=False) as f:  # a regular file only
        mm: np.ndarray = np.memmap(
            f, dtype=header.dtype, mode="r", offset=offset, shape=header.shape, order=order
        )
    return mm


def open_npy(path: Path, feature: str) -> dict[str, ArrayColumn]:
    """A big ``.npy`` file as one memory-mapped column named ``feature``."""
    where = f"{str(path)!r}"
    try:
        with open_binary(path, follow_symlinks=True, damage=False) as f:
            header = read_npy_header(f)
            size = os.fstat(f.fileno()).st_size
    except OSError as exc:
        raise InvalidInputError(f"{where} cannot be read: {exc.strerror or exc}") from None
    except (ValueError, SyntaxError, TypeError) as exc:
        raise InvalidInputError(f"{where}: invalid .npy file: {exc}") from None
    spec = _spec(where, header.dtype, header.shape)
    if size < header.offset + header.nbytes:
        raise InvalidInputError(
            f"{where} is truncated: {size} bytes, its header needs {header.offset + header.nbytes}"
        )
    return {_feature_name(where, feature): ArrayColumn(_memmap(path, header, header.offset), spec)}


def _local_header_end(f: BinaryIO, info: zipfile.ZipInfo, where: str) -> int:
    """Offset of a stored member's first byte in the zip file."""
    f.seek(info.header_offset)
    fixed = f.read(30)
    if len(fixed) != 30 or fixed[:4] != b"PK\x03\x04":
        raise InvalidInputError(f"{where}: damaged zip local header")
    name_len = int.from_bytes(fixed[26:28], "little")
    extra_len = int.from_bytes(fixed[28:30], "little")
    return int(info.header_offset) + 30 + name_len + extra_len


def open_npz(
    path: Path, members: list[str] | None = None
) -> tuple[dict[str, ArrayColumn | StreamColumn], dict[str, str]]:
    """The arrays of an ``.npz`` as columns, and how each is read (``memmap``/``stream``)."""
    where = f"{str(path)!r}"
    try:
        raw = open_binary(path, follow_symlinks=True, damage=False)  # a regular file only
    except OSError as exc:
        raise InvalidInputError(f"{where} is not a readable .npz (zip) file: {exc}") from None
    try:
        zf = zipfile.ZipFile(raw)
    except (OSError, zipfile.BadZipFile) as exc:
        raw.close()
        raise InvalidInputError(f"{where} is not a readable .npz (zip) file: {exc}") from None
    columns: dict[str, ArrayColumn | StreamColumn] = {}
    how: dict[str, str] = {}
    with zf, raw:
        infos = {
            i.filename[: -len(".npy")]: i for i in zf.infolist() if i.filename.endswith(".npy")
        }
        if not infos:
            raise InvalidInputError(f"{where} holds no .npy arrays")
        wanted = members if members is not None else list(infos)
        for name in wanted:
            if name not in infos:
                raise InvalidInputError(f"{where} has no array {name!r}; it has {sorted(infos)}")
            info = infos[name]
            w = f"{where}, array {name!r}"
            feature = _feature_name(w, name)
            if info.flag_bits & 0x1:
                raise InvalidInputError(f"{w} is encrypted")
            try:
                with zf.open(info) as member:
                    header = read_npy_header(member)  # type: ignore[arg-type]
            except (ValueError, SyntaxError, TypeError, zipfile.BadZipFile) as exc:
                raise InvalidInputError(f"{w}: invalid .npy data: {exc}") from None
            spec = _spec(w, header.dtype, header.shape)
            if info.file_size < header.offset + header.nbytes:
                raise InvalidInputError(f"{w} is truncated")
            if info.compress_type == zipfile.ZIP_STORED:
                offset = _local_header_end(raw, info, w) + header.offset
                columns[feature] = ArrayColumn(_memmap(path, header, offset), spec)
                how[feature] = "memmap"
            else:
                if header.fortran_order and len(header.shape) > 1:
                    raise InvalidInputError(
                        f"{w} is compressed and in Fortran order: its records are not "
                        "contiguous, so it cannot be streamed; save it in C order or uncompressed"
                    )
                columns[feature] = StreamColumn(path, info.filename, header, spec)
                how[feature] = "stream"
    return columns, how


def open_zarr(path: Path, feature: str, members: list[str] | None = None) -> dict[str, ArrayColumn]:
    """A Zarr array (one column, ``feature``) or group (a column per array), opened read-only."""
    import zarr

    where = f"{str(path)!r}"
    _check_tree(path, where)
    try:
        node = zarr.open(store=str(path), mode="r")
    except Exception as exc:  # zarr raises several kinds for "not a zarr store"
        raise InvalidInputError(f"{where} is not a readable Zarr array or group: {exc}") from None
    if isinstance(node, zarr.Array):
        if members:
            raise InvalidInputError(f"{where} is a Zarr array, not a group: no members to select")
        arrays = {feature: node}
    else:
        found = {name: arr for name, arr in node.arrays()}
        if members is not None:
            missing = [m for m in members if m not in found]
            if missing:
                raise InvalidInputError(
                    f"{where} has no array {missing[0]!r}; it has {sorted(found)}"
                )
            found = {m: found[m] for m in members}
        if not found:
            raise InvalidInputError(f"{where} is a Zarr group without arrays")
        arrays = dict(sorted(found.items()))
    columns: dict[str, ArrayColumn] = {}
    for name, arr in arrays.items():
        w = f"{where}, array {name!r}" if len(arrays) > 1 or name != feature else where
        dtype = np.dtype(arr.dtype)
        spec = _spec(w, dtype, tuple(int(d) for d in arr.shape))
        columns[_feature_name(w, name)] = ArrayColumn(arr, spec)
    return columns


def _check_tree(path: Path, where: str) -> None:
    """Refuse a store holding anything but regular files and directories (a FIFO would hang)."""
    if not path.is_dir():
        return
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            try:
                check_regular(Path(dirpath) / name, follow_symlinks=True, damage=False)
            except OSError as exc:
                raise InvalidInputError(f"{where}: {exc}") from None


def fingerprint_tree(path: Path) -> list[list[Any]]:
    """``[relative path, size, mtime_ns]`` of every file under ``path`` (or of ``path``)."""
    if path.is_file():
        st = path.stat()
        return [[path.name, st.st_size, st.st_mtime_ns]]
    out = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for name in sorted(filenames):
            full = Path(dirpath) / name
            st = full.stat()
            out.append([full.relative_to(path).as_posix(), st.st_size, st.st_mtime_ns])
    return out
