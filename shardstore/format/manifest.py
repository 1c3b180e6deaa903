"""The manifest: the one JSON file that describes a dataset, and its validation.

A dataset is a directory holding shard files and ``manifest.json``. The
manifest is the commit point: it is written last, atomically, and a reader
trusts nothing it does not describe. ``docs/format.md`` is the normative spec;
this module is its implementation.

Everything read from disk goes through :meth:`Manifest.from_json`, which
validates types, ranges, cross-field consistency and path safety and raises
:class:`~shardstore.errors.ManifestError` naming the offending field. Nothing
here opens a shard file.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Any

import numpy as np
import orjson

from shardstore.errors import ManifestError

__all__ = [
    "CHECKSUM_ALGORITHM",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "MAX_EXPANSION",
    "MAX_RECORDS",
    "MAX_RECORD_BYTES",
    "MAX_SHARD_BYTES",
    "SUPPORTED_DTYPES",
    "SUPPORTED_FORMAT_VERSIONS",
    "FeatureSpec",
    "FileEntry",
    "Manifest",
    "ShardEntry",
    "check_feature_name",
    "check_relative_path",
    "feature_specs_from_arrays",
]

FORMAT_NAME = "shardstore"
FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS: tuple[int, ...] = (1,)
MANIFEST_NAME = "manifest.json"
CHECKSUM_ALGORITHM = "xxh3_64"

#: The dtypes format v1 can hold, as little-endian numpy dtype strings.
SUPPORTED_DTYPES: frozenset[str] = frozenset(
    {"|b1", "|i1", "|u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8"}
    | {"<f2", "<f4", "<f8", "<c8", "<c16"}
)

#: The most records a shard, and a whole dataset, may claim (2^48, about 2.8e14):
#: every record count, offset and size derived from it fits in an ``int64``.
MAX_RECORDS = 1 << 48
#: The most bytes one record of a fixed-shape feature, or one row of a ragged
#: one, may claim (2^40).
MAX_RECORD_BYTES = 1 << 40
#: The most bytes the records of one shard may claim (2^62): sizes and
#: offsets computed from a manifest always fit in an ``int64``.
MAX_SHARD_BYTES = 1 << 62
#: Largest ratio of decoded record bytes to stored bytes a reader accepts, for a
#: shard and for a compressed chunk. Blosc/Zstandard reach ~18,000 on all-zero
#: data; a claim beyond this is a lying header or manifest, refused before any
#: allocation.
MAX_EXPANSION = 1 << 16

_MAX_NDIM = 32
_MAX_PATH_LEN = 1024
_FEATURE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")
_SOURCE_NAME = re.compile(r"[a-z][a-z0-9_\-]{0,63}")
_CHECKSUM = re.compile(r"xxh3_64:[0-9a-f]{16}")
_VERSION_ID = re.compile(r"[0-9a-f]{8,64}")
_FORBIDDEN_PATH_CHARS = ("\x00", "\\", ":")
#: A path every check below accepts: components of [A-Za-z0-9_.-] not starting with ".".
_PLAIN_PATH = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]*(?:/[A-Za-z0-9_\-][A-Za-z0-9_.\-]*)*")


def check_feature_name(name: object) -> str:
    """Return ``name`` if it is a valid feature name, else raise ``ManifestError``.

    Feature names appear in file names, so they are restricted to letters,
    digits, ``_``, ``.`` and ``-`` (at most 128 characters, not starting
    with ``.`` or ``-``).
    """
    if not isinstance(name, str) or not _FEATURE_NAME.fullmatch(name):
        raise ManifestError(
            f"invalid feature name {name!r}: use 1-128 characters from "
            "[A-Za-z0-9_.-], starting with a letter, digit or '_'"
        )
    return name


def check_relative_path(path: object, *, where: str = "path") -> str:
    """Return ``path`` if it is a safe relative POSIX path inside a dataset.

    Rejected: non-strings, empty paths, absolute paths, drive letters and
    anything with ``:``, backslashes, NUL bytes, ``..`` and ``.`` components,
    empty components (``a//b``) and overlong paths. This check is lexical;
    symlinks that leave the dataset directory are caught when the file is
    resolved (see :func:`shardstore.storage.fsutil.resolve_inside`).
    """
    if isinstance(path, str) and len(path) <= _MAX_PATH_LEN and _PLAIN_PATH.fullmatch(path):
        return path  # the common case, one regex (a manifest can list 10^5 shards)
    if not isinstance(path, str) or not path:
        raise ManifestError(f"{where}: expected a non-empty relative path, got {path!r}")
    if len(path) > _MAX_PATH_LEN:
        raise ManifestError(f"{where}: path longer than {_MAX_PATH_LEN} characters")
    for bad in _FORBIDDEN_PATH_CHARS:
        if bad in path:
            raise ManifestError(f"{where}: path {path!r} contains forbidden character {bad!r}")
    if path.startswith("/"):
        raise ManifestError(f"{where}: path {path!r} is absolute; manifest paths are relative")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ManifestError(
            f"{where}: path {path!r} is not a normalised path inside the dataset "
            "(no '..', '.', or empty components)"
        )
    # The checks above leave only normalised POSIX paths, for which
    # ``str(PurePosixPath(path)) == path``; building that object was most of
    # the cost of opening a 100,000-shard manifest.
    return path


@dataclass(frozen=True)
class FeatureSpec:
    """The type of one feature: numpy dtype and per-record shape.

    A ``None`` as the first dimension of ``shape`` marks a *ragged* feature:
    records vary in length along it (stored as values + offsets, see
    :mod:`shardstore.format.ragged`); the other dimensions are fixed. ``lengths``
    holds such a feature's length statistics
    (:func:`shardstore.format.ragged.length_stats`); it does not take part in
    comparisons.
    """

    dtype: np.dtype[Any]
    shape: tuple[int | None, ...]
    lengths: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def is_fixed(self) -> bool:
        """True if every dimension of a record is known."""
        return all(d is not None for d in self.shape)

    @property
    def is_ragged(self) -> bool:
        """True if records vary in length along their first dimension."""
        return bool(self.shape) and self.shape[0] is None

    @property
    def inner_shape(self) -> tuple[int, ...]:
        """The fixed dimensions of a ragged record (after the varying first one)."""
        return tuple(int(d) for d in self.shape[1:] if d is not None)

    @property
    def row_nbytes(self) -> int:
        """Bytes of one row along a ragged feature's varying dimension."""
        return int(self.dtype.itemsize * math.prod(self.inner_shape))

    @property
    def record_nbytes(self) -> int:
        """Bytes per record (fixed-shape features only)."""
        if not self.is_fixed:
            raise ManifestError("record_nbytes is undefined for a variable-shape feature")
        return int(self.dtype.itemsize * math.prod(d for d in self.shape if d is not None))

    @property
    def mean_record_nbytes(self) -> float:
        """Bytes per record on average: exact if fixed, from ``lengths`` if ragged (else 1 row)."""
        if self.is_fixed:
            return float(self.record_nbytes)
        count = (self.lengths or {}).get("count") or 0
        mean = (self.lengths or {}).get("total", 0) / count if count else 1.0
        return max(1.0, mean) * self.row_nbytes

    def to_json(self) -> dict[str, Any]:
        """The manifest representation of this spec."""
        out: dict[str, Any] = {"dtype": self.dtype.str, "shape": list(self.shape)}
        if self.lengths is not None:
            out["lengths"] = dict(self.lengths)
        return out

    @classmethod
    def from_json(cls, obj: object, *, where: str) -> FeatureSpec:
        """Parse and validate a manifest feature entry."""
        obj = _expect_dict(obj, where)
        dtype_str = obj.get("dtype")
        if not isinstance(dtype_str, str) or dtype_str not in SUPPORTED_DTYPES:
            raise ManifestError(
                f"{where}.dtype: {dtype_str!r} is not a supported dtype; "
                f"format v1 holds {sorted(SUPPORTED_DTYPES)}"
            )
        shape = obj.get("shape")
        if not isinstance(shape, list) or len(shape) > _MAX_NDIM:
            raise ManifestError(f"{where}.shape: expected a list of at most {_MAX_NDIM} dims")
        dims: list[int | None] = []
        for i, d in enumerate(shape):
            if d is None and i == 0:
                dims.append(None)
            elif d is None:
                raise ManifestError(
                    f"{where}.shape: {shape} has a variable dimension after the first; only "
                    "the first dimension of a record may vary"
                )
            else:
                dims.append(_expect_int(d, f"{where}.shape[{i}]", minimum=0))
        lengths = obj.get("lengths")
        if lengths is not None:
            lengths = _length_stats(lengths, f"{where}.lengths")
        spec = cls(np.dtype(str(dtype_str)), tuple(dims), lengths)
        if spec.is_fixed and spec.record_nbytes > MAX_RECORD_BYTES:
            raise ManifestError(
                f"{where}.shape: a record of {spec.record_nbytes} bytes is absurd (at most "
                f"2^40 bytes per record)"
            )
        if spec.row_nbytes > MAX_RECORD_BYTES:
            raise ManifestError(
                f"{where}.shape: a row of {spec.row_nbytes} bytes is absurd (at most 2^40)"
            )
        if 0 in dims:
            raise ManifestError(f"{where}.shape: {shape} holds no element per record")
        return spec

    def __repr__(self) -> str:
        return f"FeatureSpec(dtype={self.dtype.str!r}, shape={self.shape})"


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One file of a shard: relative path, byte size, checksum, source details.

    ``info`` belongs to the source that wrote the file: whatever it needs to
    read without opening the file first (for ``.npy``, the header length).
    """

    path: str
    size: int
    checksum: str
    feature: str | None = None
    info: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The manifest representation of this file."""
        out: dict[str, Any] = {"path": self.path, "size": self.size, "checksum": self.checksum}
        if self.feature is not None:
            out["feature"] = self.feature
        if self.info:
            out["info"] = dict(self.info)
        return out

    @classmethod
    def from_json(cls, obj: object, *, where: str) -> FileEntry:
        """Parse and validate a manifest file entry."""
        obj = _expect_dict(obj, where)
        path = check_relative_path(obj.get("path"), where=f"{where}.path")
        size = _expect_int(obj.get("size"), f"{where}.size", minimum=0)
        checksum = obj.get("checksum")
        if not isinstance(checksum, str) or not _CHECKSUM.fullmatch(checksum):
            raise ManifestError(
                f"{where}.checksum: expected '{CHECKSUM_ALGORITHM}:<16 hex digits>', "
                f"got {checksum!r}"
            )
        feature = obj.get("feature")
        if feature is not None:
            feature = check_feature_name(feature)
        info = obj.get("info", {})
        info = _expect_dict(info, f"{where}.info")
        return cls(path, size, checksum, feature, MappingProxyType(dict(info)))


@dataclass(frozen=True)
class ShardEntry:
    """One shard: which source wrote it, how many records, which files.

    ``blocks`` is the shard's block index (:mod:`shardstore.format.blocks`): the
    per-block checksums of its files, in a file of its own whose size and
    checksum are listed here. ``None`` for shards written before block
    indexes existed: their files are then verified whole.
    """

    index: int
    source: str
    num_records: int
    files: tuple[FileEntry, ...]
    blocks: FileEntry | None = None

    @property
    def stored_files(self) -> tuple[FileEntry, ...]:
        """Every file the shard keeps on disk: its ``files`` and its block index, if any."""
        return self.files if self.blocks is None else (*self.files, self.blocks)

    def file_for(self, feature: str) -> FileEntry:
        """The file holding ``feature`` in this shard (the first one listed for it)."""
        found = self._by_feature.get(feature)
        if found is None:
            raise ManifestError(f"shard {self.index} has no file for feature {feature!r}")
        return found

    @cached_property
    def _by_feature(self) -> dict[str, FileEntry]:
        """feature -> its first file (readers look files up per shard per read)."""
        out: dict[str, FileEntry] = {}
        for f in self.files:
            if f.feature is not None:
                out.setdefault(f.feature, f)
        return out

    def ragged_files(self, feature: str) -> tuple[FileEntry, FileEntry]:
        """The ``(values, offsets)`` files of a ragged feature (``info["ragged"]`` names each)."""
        found: dict[str, FileEntry] = {}
        for f in self.files:
            part = f.info.get("ragged")
            if f.feature == feature and part in ("values", "offsets"):
                if part in found:
                    raise ManifestError(
                        f"shard {self.index} lists two {part} files for ragged feature {feature!r}"
                    )
                found[part] = f
        if len(found) != 2:
            raise ManifestError(
                f"shard {self.index} lacks the values and offsets files of ragged feature "
                f"{feature!r}"
            )
        return found["values"], found["offsets"]

    @property
    def nbytes(self) -> int:
        """Total bytes of this shard's files."""
        return sum(f.size for f in self.files)

    def to_json(self) -> dict[str, Any]:
        """The manifest representation of this shard."""
        out: dict[str, Any] = {
            "index": self.index,
            "source": self.source,
            "num_records": self.num_records,
            "files": [f.to_json() for f in self.files],
        }
        if self.blocks is not None:
            out["blocks"] = self.blocks.to_json()
        return out

    @classmethod
    def from_json(cls, obj: object, *, where: str) -> ShardEntry:
        """Parse and validate a manifest shard entry."""
        obj = _expect_dict(obj, where)
        index = obj.get("index")
        if type(index) is not int or not 0 <= index <= _INT64_MAX:  # (no message built when valid)
            index = _expect_int(index, f"{where}.index", minimum=0)
        source = obj.get("source")
        if not isinstance(source, str) or not _SOURCE_NAME.fullmatch(source):
            raise ManifestError(f"{where}.source: invalid source name {source!r}")
        num_records = obj.get("num_records")
        if type(num_records) is not int or not 0 <= num_records < MAX_RECORDS:
            num_records = _expect_int(
                num_records, f"{where}.num_records", minimum=0, maximum=MAX_RECORDS - 1
            )
        files = obj.get("files")
        if not isinstance(files, list) or not files:
            raise ManifestError(f"{where}.files: expected a non-empty list")
        entries = tuple(
            _plain_file(f) or FileEntry.from_json(f, where=f"{where}.files[{i}]")
            for i, f in enumerate(files)
        )
        blocks = obj.get("blocks")
        if blocks is not None:
            blocks = _plain_file(blocks) or FileEntry.from_json(blocks, where=f"{where}.blocks")
            if blocks.feature is not None or blocks.info:
                raise ManifestError(f"{where}.blocks: a block index has no feature and no info")
        paths = [f.path for f in entries] + ([blocks.path] if blocks is not None else [])
        if len(set(paths)) != len(paths):
            raise ManifestError(f"{where}.files: the same path is listed twice")
        return cls(index, source, num_records, entries, blocks)


@dataclass(frozen=True)
class Manifest:
    """A whole dataset description (format v1).

    Build one with the writer, or parse one with :meth:`from_json`; both
    paths produce a validated, immutable object.
    """

    features: Mapping[str, FeatureSpec]
    shards: tuple[ShardEntry, ...]
    version_id: str
    metadata: Mapping[str, Any] = field(default_factory=dict)
    created_by: str = ""
    format_version: int = FORMAT_VERSION

    @property
    def num_records(self) -> int:
        """Records in the whole dataset."""
        return sum(s.num_records for s in self.shards)

    @property
    def nbytes(self) -> int:
        """Bytes of all shard files."""
        return sum(s.nbytes for s in self.shards)

    @property
    def sources(self) -> tuple[str, ...]:
        """The distinct source names used by the shards, in first-use order."""
        return tuple(dict.fromkeys(s.source for s in self.shards))

    def to_dict(self) -> dict[str, Any]:
        """The manifest as a JSON-ready ``dict``."""
        return {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "version_id": self.version_id,
            "created_by": self.created_by,
            "num_records": self.num_records,
            "features": {name: spec.to_json() for name, spec in self.features.items()},
            "shards": [s.to_json() for s in self.shards],
            "metadata": dict(self.metadata),
        }

    def to_json(self) -> str:
        """Serialise to the text stored in ``manifest.json``."""
        return json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """Parse and validate ``manifest.json`` text; raise ``ManifestError`` if invalid.

        Bytes must be UTF-8 without a byte order mark (the format says so; JSON
        decoders would otherwise guess UTF-16 or UTF-32 and skip a BOM).
        """
        if isinstance(text, bytes | bytearray | memoryview):
            raw = bytes(text)
            if raw.startswith(b"\xef\xbb\xbf"):
                raise ManifestError(
                    "manifest is not valid: it starts with a UTF-8 byte order mark; a "
                    "manifest is plain UTF-8 without one"
                )
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ManifestError(f"manifest is not valid UTF-8: {exc}") from None
        if text.startswith("\ufeff"):
            raise ManifestError("manifest is not valid: it starts with a byte order mark")
        with _gc_paused():  # parsing allocates millions of objects that all survive
            obj = _decode(text)
            manifest = cls.from_dict(obj)
            del obj  # freed while the collector is off: its first pass after would walk it all
        return manifest

    @classmethod
    def from_dict(cls, obj: object) -> Manifest:
        """Validate a decoded manifest object."""
        obj = _expect_dict(obj, "manifest")
        if obj.get("format") != FORMAT_NAME:
            raise ManifestError(
                f"manifest.format: expected {FORMAT_NAME!r}, got {obj.get('format')!r}"
            )
        version = obj.get("format_version")
        if type(version) is not int or version not in SUPPORTED_FORMAT_VERSIONS:
            readable = ", ".join(str(v) for v in SUPPORTED_FORMAT_VERSIONS)
            raise ManifestError(
                f"manifest.format_version {version!r} is not supported; this release of "
                f"shardstore reads format version(s) {readable}. Upgrade shardstore to read it."
            )
        version_id = obj.get("version_id")
        if not isinstance(version_id, str) or not _VERSION_ID.fullmatch(version_id):
            raise ManifestError(f"manifest.version_id: expected hex id, got {version_id!r}")
        created_by = obj.get("created_by", "")
        if not isinstance(created_by, str):
            raise ManifestError("manifest.created_by: expected a string")
        raw_features = _expect_dict(obj.get("features"), "manifest.features")
        if not raw_features:
            raise ManifestError("manifest.features: a dataset needs at least one feature")
        features: dict[str, FeatureSpec] = {}
        for name, spec in raw_features.items():
            try:
                check_feature_name(name)
            except ManifestError as exc:
                raise ManifestError(f"manifest.features: {exc}") from None
            features[name] = FeatureSpec.from_json(spec, where=f"manifest.features.{name}")
        raw_shards = obj.get("shards")
        if not isinstance(raw_shards, list):
            raise ManifestError("manifest.shards: expected a list")
        shards = tuple(
            _plain_shard(s) or ShardEntry.from_json(s, where=f"manifest.shards[{i}]")
            for i, s in enumerate(raw_shards)
        )
        seen_paths: set[str] = set()
        for pos, shard in enumerate(shards):
            if shard.index != pos:
                raise ManifestError(
                    f"manifest.shards[{pos}].index is {shard.index}; shards must be listed "
                    "in index order starting at 0"
                )
            for f in shard.stored_files:
                if f.feature is not None and f.feature not in features:
                    raise ManifestError(
                        f"manifest.shards[{pos}]: file {f.path!r} names unknown feature "
                        f"{f.feature!r}"
                    )
                if f.path in seen_paths or f.path == MANIFEST_NAME:
                    raise ManifestError(f"manifest.shards[{pos}]: path {f.path!r} is reused")
                seen_paths.add(f.path)
        num_records = _expect_int(
            obj.get("num_records"), "manifest.num_records", minimum=0, maximum=MAX_RECORDS - 1
        )
        total = sum(s.num_records for s in shards)
        if num_records != total:
            raise ManifestError(
                f"manifest.num_records is {num_records} but the shards hold {total} records"
            )
        record_bytes = sum(f.record_nbytes for f in features.values() if f.is_fixed)
        for pos, shard in enumerate(shards):
            if shard.num_records * record_bytes >= MAX_SHARD_BYTES:
                raise ManifestError(
                    f"manifest.shards[{pos}]: {shard.num_records} records of {record_bytes} "
                    "bytes cannot be real (more than 2^62 bytes in one shard)"
                )
        metadata = _expect_dict(obj.get("metadata", {}), "manifest.metadata")
        return cls(
            features=MappingProxyType(features),
            shards=shards,
            version_id=version_id,
            metadata=MappingProxyType(metadata),
            created_by=created_by,
            format_version=version,
        )


def feature_specs_from_arrays(arrays: Mapping[str, Any]) -> dict[str, FeatureSpec]:
    """Per-record specs of already validated arrays (leading axis = records).

    A ragged input (``shape`` ``(n, None, *inner)``) gives a ragged spec.
    """
    return {
        name: FeatureSpec(
            np.dtype(a.dtype).newbyteorder("<"),
            tuple(None if d is None else int(d) for d in a.shape[1:]),
        )
        for name, a in arrays.items()
    }


def _length_stats(obj: object, where: str) -> dict[str, Any]:
    """Validate a feature's ``lengths`` statistics (see ``ragged.length_stats``)."""
    stats = _expect_dict(obj, where)
    out: dict[str, Any] = {
        key: _expect_int(stats.get(key), f"{where}.{key}", minimum=0)
        for key in ("count", "total", "min", "max")
    }
    hist = stats.get("histogram")
    if not isinstance(hist, list) or not 0 < len(hist) <= 64:
        raise ManifestError(f"{where}.histogram: expected a list of 1 to 64 counts")
    out["histogram"] = [_expect_int(h, f"{where}.histogram[{i}]", minimum=0)
                        for i, h in enumerate(hist)]  # fmt: skip
    if sum(out["histogram"]) != out["count"] or out["min"] > out["max"]:
        raise ManifestError(f"{where}: inconsistent length statistics {stats}")
    return out


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector (restoring its previous state after).

    A 100,000-shard manifest decodes into millions of objects, none of them
    garbage; with the collector on, its repeated full passes over them
    doubled the time of ``open()``.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _decode(text: str) -> Any:
    """The JSON value of ``text``, exactly as :func:`json.loads` decodes it.

    orjson decodes a large manifest in half the time, but refuses some text
    ``json`` accepts (lone surrogates) and turns integers beyond 64 bits into
    floats. Every number of the format itself is checked to be an integer
    that fits (a float there is refused, as before); the user's ``metadata``
    is not, so a manifest whose metadata holds any float, and any text orjson
    refuses, is decoded by ``json`` (its value, or its error message).
    """
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    else:
        if not (type(obj) is dict and _has_float(obj.get("metadata"))):
            return obj
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8
        raise ManifestError(f"manifest is not valid JSON: {exc}") from None


def _has_float(value: object) -> bool:
    """Whether a decoded JSON value holds a float anywhere."""
    if type(value) is float:
        return True
    if type(value) is dict:
        return any(_has_float(v) for v in value.values())
    if type(value) is list:
        return any(_has_float(v) for v in value)
    return False


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid in a manifest")


_INT64_MAX = (1 << 63) - 1


def _plain_file(obj: object) -> FileEntry | None:
    """A file entry with nothing unusual, checked as :meth:`FileEntry.from_json` does.

    Builds no error message (a manifest lists up to 10^6 files); ``None`` for
    anything else, which the full check then reports with its place.
    """
    if type(obj) is not dict:
        return None
    path, size, checksum = obj.get("path"), obj.get("size"), obj.get("checksum")
    feature, info = obj.get("feature"), obj.get("info", {})
    if (
        type(path) is str
        and len(path) <= _MAX_PATH_LEN
        and _PLAIN_PATH.fullmatch(path)
        and type(size) is int
        and 0 <= size <= _INT64_MAX
        and type(checksum) is str
        and _CHECKSUM.fullmatch(checksum)
        and (feature is None or (type(feature) is str and _FEATURE_NAME.fullmatch(feature)))
        and type(info) is dict
    ):
        return _new_file_entry(
            path, size, checksum, feature, MappingProxyType(dict(info)) if info else _NO_INFO
        )
    return None


def _plain_shard(obj: object) -> ShardEntry | None:
    """A shard entry with nothing unusual, checked as :meth:`ShardEntry.from_json` does.

    ``None`` for anything else, which the full check then reports with its place.
    """
    if type(obj) is not dict:
        return None
    index, source, num_records = obj.get("index"), obj.get("source"), obj.get("num_records")
    files, blocks = obj.get("files"), obj.get("blocks")
    if not (
        type(index) is int
        and 0 <= index <= _INT64_MAX
        and type(source) is str
        and _SOURCE_NAME.fullmatch(source)
        and type(num_records) is int
        and 0 <= num_records < MAX_RECORDS
        and type(files) is list
        and files
    ):
        return None
    entries = []
    for f in files:
        entry = _plain_file(f)
        if entry is None:
            return None
        entries.append(entry)
    index_file = None
    if blocks is not None:
        index_file = _plain_file(blocks)
        if index_file is None or index_file.feature is not None or index_file.info:
            return None
        entries.append(index_file)
    if len({e.path for e in entries}) != len(entries):
        return None
    if index_file is not None:
        entries.pop()
    shard = object.__new__(ShardEntry)  # the dataclass's frozen __init__, without its cost
    shard.__dict__.update(
        index=index, source=source, num_records=num_records, files=tuple(entries),
        blocks=index_file,
    )  # fmt: skip
    return shard


#: The ``info`` of files that have none (block indexes): one shared empty mapping.
_NO_INFO: Mapping[str, Any] = MappingProxyType({})
_object_new = object.__new__
_set_path, _set_size, _set_checksum, _set_feature, _set_info = (
    FileEntry.__dict__[name].__set__ for name in ("path", "size", "checksum", "feature", "info")
)


def _new_file_entry(
    path: str, size: int, checksum: str, feature: str | None, info: Mapping[str, Any]
) -> FileEntry:
    """``FileEntry(...)`` for values already checked: its frozen ``__init__`` without the cost.

    (Half the time of a 100,000-shard ``open()`` was spent in the dataclass's
    ``__init__``, one ``object.__setattr__`` per field.)
    """
    entry = _object_new(FileEntry)
    _set_path(entry, path)
    _set_size(entry, size)
    _set_checksum(entry, checksum)
    _set_feature(entry, feature)
    _set_info(entry, info)
    return entry


def _expect_dict(obj: object, where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _expect_int(obj: object, where: str, *, minimum: int, maximum: int = (1 << 63) - 1) -> int:
    """``obj`` if it is an ``int`` in ``[minimum, maximum]`` (default: anything an int64 holds)."""
    if type(obj) is not int or not minimum <= obj <= maximum:
        shown = repr(obj) if type(obj) is not int or obj.bit_length() < 200 else "a huge number"
        raise ManifestError(
            f"{where}: expected an integer from {minimum} to {maximum}, got {shown}"
        )
    return obj
