"""One-array-per-file ``.npy`` inputs: find them, check their headers, read them as records.

Every file is checked from its header alone (magic, version, dtype, shape,
memory order, and a size that holds the data) before anything is written,
so a bad file is reported by name up front: not a ``.npy`` file, unreadable,
truncated, holding Python objects (never loaded: see :data:`OBJECTS_REFUSED`),
an unsupported dtype, or a shape/dtype other than the rest's.
"""

from __future__ import annotations

import glob
import logging
import math
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from shardstore.errors import InvalidInputError
from shardstore.format.manifest import SUPPORTED_DTYPES, FeatureSpec
from shardstore.format.ragged import RaggedArray, length_stats
from shardstore.storage.safefs import open_binary

__all__ = [
    "OBJECTS_REFUSED",
    "BadFile",
    "FileStack",
    "NpyFile",
    "NpyHeader",
    "RaggedFileColumn",
    "check_npy_files",
    "expand_inputs",
    "has_magic",
    "read_npy_header",
]

#: Why a file of Python objects (dtype object) is refused: decoding one runs
#: code stored in the file, so shardstore never does it.
OBJECTS_REFUSED = (
    "holds Python objects (dtype object); decoding them would run code stored in the "
    "file, which shardstore never does"
)

log = logging.getLogger(__name__)

#: Largest ``.npy`` header read (NumPy's own default limit).
MAX_HEADER_BYTES = 10_000
#: Threads reading the headers of the input files.
CHECK_THREADS = 8


@dataclass(frozen=True)
class NpyHeader:
    """What a ``.npy`` header says: dtype, shape, memory order, where the data starts."""

    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    fortran_order: bool
    offset: int

    @property
    def nbytes(self) -> int:
        """Bytes of data the file must hold after its header."""
        return int(self.dtype.itemsize * math.prod(self.shape))


@dataclass(frozen=True)
class NpyFile:
    """An input file: its path, the name used in reports and labels, its header, and
    the size and modification time it had when checked."""

    path: Path
    name: str
    header: NpyHeader
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class BadFile:
    """An input file that cannot be ingested, and why."""

    name: str
    reason: str

    def to_json(self) -> dict[str, str]:
        """``{"file": ..., "reason": ...}``."""
        return {"file": self.name, "reason": self.reason}


def has_magic(text: str) -> bool:
    """Whether ``text`` is a glob pattern."""
    return glob.has_magic(text)


def expand_inputs(sources: Sequence[str | os.PathLike[str]]) -> list[tuple[Path, str]]:
    """The ``.npy`` files named by ``sources``: ``(path, name)`` pairs, in record order.

    A glob pattern (``**`` recurses) or a directory (searched recursively
    for ``*.npy``) contributes its matches sorted by path; plain files keep
    the order given. ``name`` is the path relative to the pattern's or
    directory's base (``cat/001.npy``), or the file's path as given.
    """
    out: list[tuple[Path, str]] = []
    seen: dict[tuple[int, int], str] = {}
    for item in sources:
        text = os.fspath(item)
        if has_magic(text):
            base = _glob_base(text)
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                raise InvalidInputError(f"{text!r} matches no file")
            found = [(Path(m), os.path.relpath(m, base)) for m in matches if os.path.isfile(m)]
        elif os.path.isdir(text):
            matches = sorted(glob.glob(os.path.join(glob.escape(text), "**", "*.npy"),
                                       recursive=True))  # fmt: skip
            found = [(Path(m), os.path.relpath(m, text)) for m in matches if os.path.isfile(m)]
            if not found:
                raise InvalidInputError(f"directory {text!r} holds no .npy file")
        elif os.path.exists(text):
            found = [(Path(text), text)]
        else:
            raise InvalidInputError(f"{text!r}: no such file or directory")
        for path, name in found:
            name = name.replace(os.sep, "/")
            try:
                st = path.stat()
            except OSError as exc:
                raise InvalidInputError(f"{name!r} cannot be read: {exc.strerror}") from None
            key = (st.st_dev, st.st_ino)
            if key in seen:
                raise InvalidInputError(f"{name!r} is listed twice (also as {seen[key]!r})")
            seen[key] = name
            out.append((path, name))
    if not out:
        raise InvalidInputError("no input files")
    return out


def _glob_base(pattern: str) -> str:
    """The directory part of ``pattern`` before its first wildcard."""
    parts = Path(pattern).parts
    fixed: list[str] = []
    for part in parts[:-1]:
        if has_magic(part):
            break
        fixed.append(part)
    return os.path.join(*fixed) if fixed else "."


def read_npy_header(f: BinaryIO) -> NpyHeader:
    """Parse the header of the ``.npy`` file open as ``f``; ``ValueError`` says what is wrong."""
    magic = f.read(6)
    if magic != b"\x93NUMPY":
        raise ValueError("not a .npy file (no NumPy magic)")
    f.seek(0)
    major, minor = np.lib.format.read_magic(f)
    if (major, minor) == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(
            f, max_header_size=MAX_HEADER_BYTES
        )
    elif (major, minor) == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(
            f, max_header_size=MAX_HEADER_BYTES
        )
    else:
        raise ValueError(f".npy format version {major}.{minor} is not supported (1.0 and 2.0 are)")
    return NpyHeader(np.dtype(dtype), tuple(int(d) for d in shape), bool(fortran), f.tell())


def _check_one(path: Path) -> tuple[NpyHeader, os.stat_result]:
    try:
        with open_binary(path, follow_symlinks=True, damage=False) as f:  # never a FIFO
            header = read_npy_header(f)
            st = os.fstat(f.fileno())
            size = st.st_size
    except OSError as exc:
        raise ValueError(f"cannot be read: {exc.strerror or exc}") from None
    except (ValueError, SyntaxError, TypeError) as exc:
        raise ValueError(f"invalid .npy header: {exc}") from None
    dtype = header.dtype
    if dtype.hasobject:
        raise ValueError(OBJECTS_REFUSED)
    if dtype.newbyteorder("<").str not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype {dtype} is not supported (numeric and bool dtypes only)")
    if size < header.offset + header.nbytes:
        raise ValueError(
            f"truncated: {size} bytes, a {dtype} array of shape {header.shape} needs "
            f"{header.offset + header.nbytes}"
        )
    if math.prod(header.shape[1:]) == 0:  # (0, ...) may be an empty ragged record
        raise ValueError(f"is empty (shape {header.shape})")
    return header, st


def _try_check(path: Path) -> tuple[NpyHeader, os.stat_result] | str:
    try:
        return _check_one(path)
    except ValueError as exc:
        return str(exc)


def _signature(header: NpyHeader) -> tuple[str, tuple[int, ...]]:
    return header.dtype.newbyteorder("<").str, header.shape


def _describe(signature: tuple[str, tuple[int, ...]]) -> str:
    return f"{np.dtype(signature[0]).name} {signature[1]}"


def check_npy_files(
    files: Sequence[tuple[Path, str]],
    *,
    on_error: str,
    expected: FeatureSpec | None = None,
) -> tuple[list[NpyFile], list[BadFile], FeatureSpec]:
    """Check every file's header; return the good files, the bad ones, and the record spec.

    The record spec is ``expected`` if given, else the dtype and shape most
    files share (the first file's on a tie). With ``on_error="fail"`` the
    first bad file raises ``InvalidInputError`` naming it.
    """
    good: list[NpyFile] = []
    bad: list[BadFile] = []

    def reject(name: str, reason: str) -> None:
        if on_error == "fail":
            raise InvalidInputError(
                f"{name!r} {reason} (on_error='skip' ingests the other files)",
                params=("on_error",),
            )
        bad.append(BadFile(name, reason))

    headers: list[tuple[Path, str, NpyHeader, os.stat_result]] = []
    # Small reads, one per file: threads overlap them (it matters on network filesystems).
    with ThreadPoolExecutor(CHECK_THREADS, thread_name_prefix="shardstore-check") as pool:
        results = pool.map(_try_check, [path for path, _ in files])
        for (path, name), result in zip(files, results, strict=True):
            if isinstance(result, str):
                reject(name, result)
            else:
                headers.append((path, name, *result))
    ragged = expected is not None and expected.is_ragged
    if expected is not None:
        want = (expected.dtype.str, tuple(int(d or 0) for d in expected.shape))
        how = "the expected records"
    elif headers:
        counts = Counter(_signature(h) for _, _, h, _ in headers)
        top = max(counts.values())
        want = next(_signature(h) for _, _, h, _ in headers if counts[_signature(h)] == top)
        how = f"the {top} other files" if top > 1 else "the first file"
    else:
        raise InvalidInputError(
            f"none of the {len(files)} input files can be ingested; first: "
            f"{bad[0].name!r} {bad[0].reason}"
        )
    if expected is None:
        # files that differ from the most common records in their first dimension
        # only: records of varying length, ingested as a ragged feature
        ragged = any(_same_rows(_signature(h), want) and _signature(h) != want
                     for _, _, h, _ in headers)  # fmt: skip
    for path, name, header, st in headers:
        sig = _signature(header)
        if not ragged and math.prod(sig[1]) == 0:
            reject(name, f"is empty (shape {sig[1]})")
            continue
        if sig == want or (ragged and _same_rows(sig, want)):
            good.append(NpyFile(path, name, header, st.st_size, st.st_mtime_ns))
            continue
        what = "shape" if sig[1] != want[1] else "dtype"
        if ragged:
            rows = f"{np.dtype(want[0]).name} (n, {', '.join(map(str, want[1][1:]))})"
            reject(name, f"has {what} {_describe(sig)}, unlike {how} (ragged: {rows})")
        else:
            reject(name, f"has {what} {_describe(sig)}, unlike {how} ({_describe(want)})")
    if not good:
        raise InvalidInputError(f"none of the {len(files)} input files can be ingested")
    if ragged:
        lengths = np.fromiter((f.header.shape[0] for f in good), np.int64, len(good))
        spec = FeatureSpec(np.dtype(want[0]), (None, *want[1][1:]), length_stats(lengths))
    else:
        spec = FeatureSpec(np.dtype(want[0]), want[1])
    return good, bad, spec


def _same_rows(sig: tuple[str, tuple[int, ...]], want: tuple[str, tuple[int, ...]]) -> bool:
    """Same dtype and the same shape but for the first dimension (which must exist)."""
    return sig[0] == want[0] and len(sig[1]) == len(want[1]) >= 1 and sig[1][1:] == want[1][1:]


class FileStack:
    """Records ``lo:hi`` of a list of one-array files, loaded only when sliced or converted.

    An array-like (``shape``, ``dtype``, slicing on the first axis,
    ``__array__``) over ``files[lo:hi]``; each slice reads just those files
    (straight into the output for little-endian C-order files).
    """

    def __init__(self, files: Sequence[NpyFile], spec: FeatureSpec) -> None:
        self._files = list(files)
        self._spec = spec
        self._record_shape = tuple(int(d) for d in spec.shape if d is not None)
        self.dtype = spec.dtype
        self.shape = (len(self._files), *self._record_shape)

    def __len__(self) -> int:
        return len(self._files)

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice):
            raise TypeError("a FileStack is sliced by ranges of records only")
        files = self._files[key]
        out = np.empty((len(files), *self._record_shape), self.dtype)
        for i, item in enumerate(files):
            _load_into(item, out[i])
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        arr = self[:]
        return arr if dtype is None else arr.astype(dtype)


class RaggedFileColumn:
    """A ragged feature over one-array files of varying length (a resumable-ingest column)."""

    def __init__(self, files: Sequence[NpyFile], spec: FeatureSpec) -> None:
        self._files = list(files)
        self.spec = spec
        self.num_records = len(self._files)

    def read(self, lo: int, hi: int) -> RaggedArray:
        """Records ``lo:hi``, loaded into one values array."""
        files = self._files[lo:hi]
        lengths = np.fromiter((f.header.shape[0] for f in files), np.int64, len(files))
        values = np.empty((int(lengths.sum()), *self.spec.inner_shape), self.spec.dtype)
        start = 0
        for item, n in zip(files, lengths.tolist(), strict=True):
            _load_into(item, values[start : start + n])
            start += n
        return RaggedArray.from_lengths(values, lengths)


def _load_into(item: NpyFile, out: np.ndarray) -> None:
    header = item.header
    if not out.size:
        return
    direct = header.dtype == out.dtype and not header.fortran_order
    buf = out if direct else np.empty(header.shape[::-1] if header.fortran_order else
                                      header.shape, header.dtype)  # fmt: skip
    view = buf.data.cast("B")
    try:
        with open_binary(item.path, buffering=0, follow_symlinks=True, damage=False) as f:
            f.seek(header.offset)
            got = 0
            while got < len(view):
                n = f.readinto(view[got:])
                if not n:
                    break
                got += n
    except OSError as exc:
        raise InvalidInputError(f"{item.name!r} cannot be read: {exc.strerror or exc}") from None
    if got != len(view):
        raise InvalidInputError(f"{item.name!r} changed since it was checked: it is now shorter")
    if not direct:
        out[...] = buf.T if header.fortran_order else buf
