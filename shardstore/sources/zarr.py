"""The ``zarr`` source: one Zarr v3 group per shard, one sharded array per feature.

Layout of shard ``i`` of a write (all paths relative to the write's directory)::

    000000.zarr/zarr.json                   the group's metadata (feature: none)
    000000.zarr/<feature>/zarr.json         the array's metadata (feature: <feature>)
    000000.zarr/<feature>/c/0[/0...]        all of the array's chunks (feature: <feature>)

    000000.zarr/<ragged>/zarr.json          a ragged feature: a subgroup (feature: <ragged>)
    000000.zarr/<ragged>/values/zarr.json   its values, ``(total, *inner)``
    000000.zarr/<ragged>/values/c/0[/0...]  (no such file when every record is empty)
    000000.zarr/<ragged>/offsets/zarr.json  its offsets, ``(num_records + 1,)`` int64
    000000.zarr/<ragged>/offsets/c/0

Each fixed-shape feature of a shard is one Zarr v3 array of shape
``(num_records, *shape)``. Its chunks hold ``chunk_records`` whole records
(``(chunk_records, *shape)``) and are stored with Zarr's ``sharding_indexed``
codec, so every chunk of the array lives in one file: a run of compressed
chunks followed by an index of (offset, length) pairs protected by a CRC32C.
Every chunk is written, even one that equals the fill value, so the data file
always exists and no record is ever reconstructed from a fill value. The
directory is a standard Zarr v3 store: ``zarr.open_group(path, mode="r")``
reads it without shardstore.

**Ragged features.** A ragged feature (records of shape ``(length_i,
*inner)``) is a Zarr subgroup named after the feature holding two arrays
stored exactly like fixed features (same codecs, options and single shard
file): ``values``, every record's rows one after another, chunked by rows
(about :data:`CHUNK_BYTES` each), and ``offsets`` (``int64``, starting at 0,
non-decreasing, ending at the rows of ``values``): record ``i`` is
``values[offsets[i]:offsets[i + 1]]``. Every feature owns exactly one
top-level node of the shard's group, named after it; feature names hold no
``/``, so the two arrays inside a ragged feature's node can never collide
with another feature, whatever its name (a suffix scheme such as
``<feature>.offsets`` could: ``.`` is allowed in feature names). The data
files carry ``info["ragged"]`` (``"values"`` or ``"offsets"``, found by
:meth:`ShardEntry.ragged_files` without listing directories) and the values
file ``info["rows"]``. Zarr writes no chunk file for an array without rows,
so when every record of a shard is empty, the values array's ``zarr.json``
carries those marks instead.

The group is assembled in a :class:`zarr.storage.MemoryStore` and every key
of that store is then copied through :meth:`ShardWriteContext.create`, so each
file (metadata included) is hashed and recorded in the manifest. The data
file's ``info`` records ``chunk_records`` (rows per chunk) and ``compression``.

Every compression is Zarr's core ``blosc`` codec: a byte shuffle, then
``zstd``, ``lz4`` or Blosc's own ``blosclz`` (see :func:`_compressors`).

Reading is not TF-native: chunks are decoded in Python with numcodecs (Blosc
releases the GIL, so the reader's parallel interleave decodes several shards
at once). :meth:`ZarrSource.tf_reader` emits one ``tf.numpy_function`` per
block of records (never per record). It reads a shard file's index once
(CRC-checked, cached), then ``pread``s and decodes whole chunks; a chunk that
straddles two blocks is decoded once. Arrays this fast path does not
recognise are read through zarr itself. :meth:`ZarrSource.read_records`
(random access) decodes the chunks holding the rows asked for the same way;
:meth:`ZarrSource.read_ragged` reads a ragged feature's offsets once per
shard (validated, cached), then the chunks of values holding the records.
Ragged features are always read by index (the reader gathers them); the
block reader takes fixed-shape features only.
``docs/format.md`` section 11 specifies the layout.

**Untrusted data.** Before zarr parses an array's ``zarr.json``, shardstore
checks it (:func:`_check_array_metadata`): numeric data types only, the
manifest's shape and dtype (for a ragged feature: the values' dtype and inner
shape, ``int64`` and ``(num_records + 1,)`` for the offsets), chunk shapes no
larger than the array, and codecs from a short list of pure decoders
(``bytes``, ``blosc``, ``zstd``, ``gzip``, ``crc32c``, ``transpose``,
``sharding_indexed``), so no codec that decodes strings or Python objects is
ever instantiated. On the fast path every chunk's stored length and announced
size are checked before anything is allocated (decompression bombs fail with
a :class:`ChecksumError`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from shardstore.errors import (
    CapabilityError,
    ChecksumError,
    InvalidInputError,
    ManifestError,
    UnsupportedDTypeError,
)
from shardstore.format.manifest import FeatureSpec, FileEntry, ShardEntry
from shardstore.format.ragged import OFFSETS_CACHE_BYTES, RaggedArray, offsets_problem, value_rows
from shardstore.sources.base import (
    ArrayLike,
    ReadContext,
    ShardWriteContext,
    Source,
    aligned_empty,
)
from shardstore.storage.caches import LRU, ByteBudgetCache
from shardstore.storage.integrity import MAX_EXPANSION, FileCheck, Verifier
from shardstore.storage.safefs import open_binary

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = [
    "CHUNK_BYTES",
    "COMPRESSIONS",
    "DEFAULT_COMPRESSION",
    "DEFAULT_LEVELS",
    "LEVELS",
    "ZarrSource",
    "default_chunk_records",
]

log = logging.getLogger(__name__)

SUFFIX = ".zarr"
#: Target decoded bytes of one chunk when ``chunk_records`` is not given.
CHUNK_BYTES = 1 << 20
#: Accepted values of the ``compression`` write option.
COMPRESSIONS: tuple[str | None, ...] = ("zstd", "lz4", "blosc", None)
DEFAULT_COMPRESSION = "zstd"
#: compression -> the Blosc compressor that implements it ("blosc": Blosc's own).
_CNAMES: dict[str, Literal["zstd", "lz4", "blosclz"]] = {
    "zstd": "zstd",
    "lz4": "lz4",
    "blosc": "blosclz",
}
#: Blosc compression levels (``clevel``): the allowed range, and the default per
#: compression. For zstd, clevel 3 writes ~3x faster than 5 for ~2% larger files
#: (measured on float32 images); decoding is equally fast.
LEVELS = (1, 9)
DEFAULT_LEVELS: dict[str, int] = {"zstd": 3, "lz4": 5, "blosc": 5}
#: Decoded input records handed to zarr per write call (bounds write memory).
_WRITE_PIECE_BYTES = 64 << 20
#: Opened arrays / parsed shard indexes kept per source instance.
_MAX_OPEN = 1024
#: Decoded bytes of chunks kept while a block stream is still inside them.
_MAX_CACHED_BYTES = 256 << 20
#: The arrays of a ragged feature's subgroup, as ``info["ragged"]`` names them.
RAGGED_PARTS = ("values", "offsets")
_EMPTY = np.uint64(2**64 - 1)


def default_chunk_records(spec: FeatureSpec) -> int:
    """Records per chunk when ``chunk_records`` is not given: about 1 MiB of the feature."""
    return max(1, CHUNK_BYTES // max(1, spec.record_nbytes))


def _describe_compressions() -> str:
    return ", ".join(repr(c) for c in COMPRESSIONS)


def _compressors(compression: str | None, level: int, dtype: np.dtype[Any]) -> Any:
    """The zarr ``compressors`` argument for one array (``None``: no compression).

    Every compression is Zarr's core ``blosc`` codec: it shuffles each chunk
    (the i-th bytes of all numbers together; bits for 1-byte types, as zarr
    does by default), then compresses it with the named compressor. On numeric
    data the shuffle buys both a better ratio and a faster decode than the
    bare ``zstd`` codec (docs/format.md, section 11), and Blosc releases the
    GIL while it decodes.
    """
    from zarr.codecs import BloscCodec

    if compression is None:
        return None
    shuffle: Literal["shuffle", "bitshuffle"] = "bitshuffle" if dtype.itemsize == 1 else "shuffle"
    return [
        BloscCodec(
            cname=_CNAMES[compression], clevel=level, shuffle=shuffle, typesize=dtype.itemsize
        )
    ]


@dataclass(frozen=True)
class _ArrayRef:
    """Where one array of one shard lives (from the manifest; no file opened).

    The array of a fixed-shape feature, or the ``values`` or ``offsets`` array
    (``part``) of a ragged one. Its "records" are the array's rows.
    """

    shard: int
    feature: str
    part: str | None  # None: a fixed-shape feature; else "values" or "offsets"
    dtype: np.dtype[Any]
    shape: tuple[int, ...]  # of one row (one record of a fixed-shape feature)
    num_records: int  # rows of the array
    chunk_records: int  # rows per chunk
    root: Path  # absolute path of the shard's .zarr group
    meta_relpath: str  # manifest path of the array's zarr.json
    data_relpath: str  # manifest path of the chunk (shard) file
    data_path: Path  # absolute path of that file
    checksum: str = ""  # the manifest's checksum of the metadata and the data file
    dataset: str = ""  # the dataset directory (named by errors)
    # what verifies the files read, for the reader that located the array (see ``check``)
    verifier: Verifier | None = field(default=None, compare=False, repr=False)
    entries: tuple[ShardEntry, FileEntry, tuple[FileEntry, ...]] | None = field(
        default=None, compare=False, repr=False
    )

    @cached_property
    def check(self) -> FileCheck | None:
        """The data file's check, once the array's metadata files are verified (on first use).

        Nothing is opened before the array is first read: a pipeline over
        many shards checks each one when it reaches it.
        """
        if self.verifier is None or self.entries is None:
            return None
        shard, data, metas = self.entries
        self.verifier.require_files(shard, metas)  # small, read by zarr itself: whole
        return self.verifier.file(shard, data)

    @property
    def node(self) -> str:
        """The array's path inside the shard's group."""
        return self.feature if self.part is None else f"{self.feature}/{self.part}"

    @property
    def row_nbytes(self) -> int:
        """Bytes of one row of the array."""
        return int(self.dtype.itemsize * math.prod(self.shape))

    @property
    def key(self) -> str:
        # the checksums too: another version of the file at the same path (an in-place
        # edit) must not be read through what was cached for the old one
        return f"{self.data_path}\n{self.checksum}"


@dataclass(frozen=True)
class _ShardPlan:
    """How one shard is cut into blocks, and which arrays each block reads."""

    num_records: int
    block_records: int
    arrays: tuple[_ArrayRef, ...]

    @property
    def num_blocks(self) -> int:
        return -(-self.num_records // self.block_records)

    def rows(self, block: int) -> tuple[int, int]:
        lo = block * self.block_records
        return lo, min(self.num_records, lo + self.block_records)


class _ChunkFile:
    """Decodes whole chunks of one sharded array straight from its data file.

    Used for the arrays this source writes: a single shard covering the array,
    chunks of ``(chunk_records, *shape)``, the ``bytes`` codec (little-endian)
    followed by at most one ``blosc`` or ``zstd`` codec.
    """

    def __init__(
        self,
        ref: _ArrayRef,
        *,
        offsets: np.ndarray,
        lengths: np.ndarray,
        codec: str | None,
        fill_value: Any,
    ) -> None:
        import numcodecs

        self.ref = ref
        self._offsets = offsets
        self._lengths = lengths
        self._codec = codec
        self._blosc = numcodecs.Blosc() if codec == "blosc" else None
        self._zstd = numcodecs.Zstd() if codec == "zstd" else None
        self._fill_value = fill_value
        self._chunk_nbytes = ref.chunk_records * ref.row_nbytes
        self._chunk_shape = (ref.chunk_records, *ref.shape)
        #: where the shard index was read from, and its bytes (see :meth:`verify_index`)
        self.index_at: tuple[int, bytes] = (0, b"")

    def verify_index(self, check: FileCheck) -> None:
        """Verify the bytes the shard index was parsed from with another reader's ``check``."""
        start, raw = self.index_at
        if raw:
            with open(self.ref.data_path, "rb", buffering=0) as f:
                fd = f.fileno()
                check.verify_range(start, raw, lambda at, n: os.pread(fd, n, at))

    def chunk(
        self, index: int, out: np.ndarray | None = None, check: FileCheck | None = None
    ) -> np.ndarray:
        """Chunk ``index``, all ``chunk_records`` rows, in ``out`` or a new array.

        The chunk's stored bytes are verified with ``check`` (the blocks of
        the data file they lie in) before they are decoded or returned.

        Raw and compressed chunks are read or decoded straight into the array,
        so each byte is written once (into ``out`` when given: C-contiguous, the
        chunk's shape). Nothing is allocated before the chunk's
        stored length and the size its Blosc or Zstandard header announces
        are checked against the declared chunk size (and against
        :data:`~shardstore.storage.integrity.MAX_EXPANSION`): a decompression bomb
        fails here, having cost one read of its compressed bytes.
        """
        ref = self.ref
        offset, length = int(self._offsets[index]), int(self._lengths[index])
        if self._offsets[index] == _EMPTY and self._lengths[index] == _EMPTY:
            if out is None:
                out = aligned_empty(self._chunk_shape, ref.dtype)
            out[...] = self._fill_value
            return out
        want = self._chunk_nbytes
        if self._codec is None and length != want:
            raise _damaged(ref, f"raw chunk {index} has {length} bytes, not {want}")
        if self._codec is not None and want > length * MAX_EXPANSION:
            raise _damaged(
                ref,
                f"chunk {index} would expand {length} bytes into {want} (more than "
                f"{MAX_EXPANSION}-fold: refused as a decompression bomb)",
            )
        with open_binary(ref.data_path, buffering=0) as f:
            fd = f.fileno()
            if self._codec is None:
                if out is None:
                    out = aligned_empty(self._chunk_shape, ref.dtype)
                dest = out.reshape(-1).view(np.uint8)
                f.seek(offset)
                view, got = dest.data, 0
                while got < length and (n := f.readinto(view[got:])):
                    got += n
                if got != length:
                    raise _damaged(ref, f"chunk {index} is cut short ({got} of {length} bytes)")
                if check is not None:
                    check.verify_range(offset, view[:length], lambda at, n: os.pread(fd, n, at))
                return out
            raw = os.pread(fd, length, offset)
            if len(raw) != length:
                raise _damaged(ref, f"chunk {index} is cut short ({len(raw)} of {length} bytes)")
            if check is not None:
                check.verify_range(offset, raw, lambda at, n: os.pread(fd, n, at))
        if self._blosc is not None:
            # Blosc's header: bytes 4-7 decoded size, 12-15 compressed size (little-endian)
            nbytes = int.from_bytes(raw[4:8], "little")
            cbytes = int.from_bytes(raw[12:16], "little")
            if length < 16 or nbytes != want or cbytes != length:
                raise _damaged(
                    ref,
                    f"chunk {index} does not decode (its Blosc header announces {nbytes} bytes "
                    f"in {cbytes}; the chunk is {want} bytes in {length})",
                )
        else:
            announced = _zstd_content_size(raw)
            if announced != want:
                raise _damaged(
                    ref,
                    f"chunk {index} does not decode (its Zstandard header announces "
                    f"{'no size' if announced is None else f'{announced} bytes'}; "
                    f"the chunk is {want} bytes)",
                )
        if out is None:  # allocated only now: after every check on what the chunk claims
            out = aligned_empty(self._chunk_shape, ref.dtype)
        dest = out.reshape(-1).view(np.uint8)
        try:
            if self._blosc is not None:
                self._blosc.decode(raw, out=dest)
            else:
                assert self._zstd is not None
                self._zstd.decode(raw, out=dest)
        except Exception as exc:
            raise _damaged(ref, f"chunk {index} does not decode ({exc})") from None
        return out

    def rows(self, rows: np.ndarray, check: FileCheck | None = None) -> np.ndarray:
        """Records ``rows`` (sorted, unique, local to the shard), one chunk decoded at a time."""
        ref = self.ref
        out = np.empty((len(rows), *ref.shape), ref.dtype)
        chunks = rows // ref.chunk_records
        bounds = np.flatnonzero(np.diff(chunks)) + 1
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(rows)], strict=True):
            if lo == hi:
                continue
            c = int(chunks[lo])
            out[lo:hi] = self.chunk(c, check=check)[rows[lo:hi] - c * ref.chunk_records]
        return out


def _zstd_content_size(frame: bytes) -> int | None:
    """The decoded size a Zstandard frame header announces (RFC 8878, 3.1.1.1), or ``None``."""
    if len(frame) < 6 or frame[:4] != b"\x28\xb5\x2f\xfd":
        return None
    descriptor = frame[4]
    single_segment = (descriptor >> 5) & 1
    pos = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[descriptor & 3]
    size_bytes = (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6]
    if size_bytes == 0 or len(frame) < pos + size_bytes:
        return None
    value = int.from_bytes(frame[pos : pos + size_bytes], "little")
    return value + 256 if size_bytes == 2 else value


def _damaged(ref: _ArrayRef, what: str, *, relpath: str | None = None) -> ChecksumError:
    relpath = relpath or ref.data_relpath
    part = "" if ref.part is None else f", {ref.part}"
    return ChecksumError.in_file(
        ref.dataset,
        ref.shard,
        relpath,
        f"(feature {ref.feature!r}{part}) is damaged: {what}; run Dataset.verify() to "
        "check every file",
    )


def _values_chunk_rows(spec: FeatureSpec, rows: int, records: int, chunk: int | None) -> int:
    """Rows per chunk of a ragged feature's values: about 1 MiB, or ``chunk`` records' worth.

    With the ``chunk_records`` option, a chunk holds about as many rows as
    that many records of the shard hold on average.
    """
    if chunk is None:
        want = CHUNK_BYTES // max(1, spec.row_nbytes)
    else:
        want = -(-chunk * rows // max(1, records))
    return max(1, min(rows, want))


def _write_array(
    group: Any,
    name: str,
    source: ArrayLike,
    shape: tuple[int, ...],
    dtype: np.dtype[Any],
    chunk: int,
    opts: Mapping[str, Any],
) -> None:
    """Array ``name`` of ``group``: ``shape`` (rows first) of ``source``, in one shard file.

    Chunks of ``chunk`` rows; every chunk is written (even one equal to the
    fill value), whole chunks per call, each call re-assembling the
    (in-memory) shard file. An array without rows has no chunk at all.
    """
    rows, *inner = shape
    arr = group.create_array(
        name,
        shape=shape,
        dtype=dtype,
        chunks=(chunk, *inner),
        shards=(max(chunk, -(-rows // chunk) * chunk), *inner),  # one file, every chunk
        compressors=_compressors(opts["compression"], opts["compression_level"], dtype),
        fill_value=np.zeros((), dtype)[()],
        config={"write_empty_chunks": True},
    )
    row_nbytes = dtype.itemsize * math.prod(inner)
    step = chunk * max(1, _WRITE_PIECE_BYTES // max(1, chunk * row_nbytes))
    for lo in range(0, rows, step):
        hi = min(rows, lo + step)
        arr[lo:hi] = np.ascontiguousarray(np.asarray(source[lo:hi]), dtype=dtype)


def _locate(
    ctx: ReadContext,
    shard: ShardEntry,
    data: FileEntry,
    feature: str,
    part: str | None,
    dtype: np.dtype[Any],
    shape: tuple[int, ...],
    rows: int,
) -> _ArrayRef:
    """The array whose data file is ``data``, checked against the manifest (no I/O).

    ``data`` must be the chunk file of ``<shard>.zarr/<node>`` (the array's
    ``zarr.json`` for a ragged feature's values without rows), with a valid
    ``info.chunk_records``; the group's and the array's metadata must be
    listed too. Else ``ManifestError``.
    """
    node = feature if part is None else f"{feature}/{part}"
    chunk = data.info.get("chunk_records")
    if type(chunk) is not int or chunk < 1 or (rows and chunk > rows):
        raise ManifestError(
            f"shard {shard.index}, file {data.path!r}: invalid info.chunk_records {chunk!r}"
        )
    if rows == 0 and part == "values":  # no chunk file: the mark is on the metadata
        root, sep, key = data.path.rpartition(f"/{node}/zarr.json")
        valid = bool(sep) and not key
    else:
        root, sep, key = data.path.rpartition(f"/{node}/c/")
        valid = bool(sep) and all(p.isdigit() for p in key.split("/"))
    if not valid or not root.endswith(SUFFIX):
        raise ManifestError(
            f"shard {shard.index}, file {data.path!r} is not a chunk file of a "
            f"'<shard>{SUFFIX}/{node}/c/...' zarr array"
        )
    meta_relpath = f"{root}/{node}/zarr.json"
    metas = [f"{root}/zarr.json", *([f"{root}/{feature}/zarr.json"] if part else []), meta_relpath]
    entries = {f.path: f for f in shard.files if f.path in metas}
    for meta in metas:
        if meta not in entries:
            raise ManifestError(f"shard {shard.index}: zarr metadata {meta!r} is not listed")
    checksums = {path: f.checksum for path, f in entries.items()}
    return _ArrayRef(
        shard=shard.index,
        feature=feature,
        part=part,
        dtype=dtype,
        shape=shape,
        num_records=rows,
        chunk_records=chunk,
        root=ctx.resolve(root),
        meta_relpath=meta_relpath,
        data_relpath=data.path,
        data_path=ctx.resolve(data.path),
        checksum=data.checksum + checksums[meta_relpath],
        dataset=str(ctx.root),
        verifier=ctx.checker,
        entries=(shard, data, tuple(entries.values())),
    )


class ZarrSource(Source):
    """Shards as Zarr v3 groups with one sharded, compressed array per feature.

    Write options (``shardstore.write(..., format="zarr", **options)``):

    compression : ``"zstd"`` (default), ``"lz4"``, ``"blosc"`` (Blosc's own
        blosclz) or ``None``; every one shuffles bytes first (Zarr ``blosc`` codec).
    compression_level : Blosc's ``clevel``, 1-9 (default 3 for zstd, else 5).
    chunk_records : records per chunk (default: about 1 MiB of the feature;
        never more than the shard holds). A ragged feature's values are chunked
        by rows: about 1 MiB, or as many rows as ``chunk_records`` records hold
        on average; its offsets in chunks of ``chunk_records`` entries.
    """

    name: ClassVar[str] = "zarr"
    tf_native: ClassVar[bool] = False
    random_access: ClassVar[bool] = True
    supports_ragged: ClassVar[bool] = True
    verifies_reads: ClassVar[bool] = True
    write_options: ClassVar[frozenset[str]] = frozenset(
        {"compression", "chunk_records", "compression_level"}
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._arrays: LRU[str, Any] = LRU(_MAX_OPEN)  # zarr.Array by data file
        # (reader,) by data file; (None,) when the array is read through zarr
        self._files: LRU[str, tuple[_ChunkFile | None]] = LRU(_MAX_OPEN)
        # chunks that straddle two blocks, kept until the next block of the shard takes
        # their last row; the byte budget bounds what abandoned iterations leave behind
        self._chunks: ByteBudgetCache[tuple[str, int]] = ByteBudgetCache(_MAX_CACHED_BYTES)
        # ragged features: each shard's offsets (validated), by offsets and values files
        self._offsets: ByteBudgetCache[tuple[str, int]] = ByteBudgetCache(OFFSETS_CACHE_BYTES)

    # -- options and features ---------------------------------------------------------
    def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Validate ``compression``, ``compression_level`` and ``chunk_records``.

        Returns every option, defaults filled in (``chunk_records`` ``None``
        means about 1 MiB per chunk of each feature).

        Raises
        ------
        InvalidInputError
            An unknown option, an unknown compression (the message lists the
            accepted ones), a level out of range or a non-positive chunk size.
        """
        opts = super().check_options(options)
        compression = opts.get("compression", DEFAULT_COMPRESSION)
        if not (compression is None or isinstance(compression, str)) or (
            compression not in COMPRESSIONS
        ):
            raise InvalidInputError(
                f"unknown compression={compression!r} for the 'zarr' source; "
                f"use one of {_describe_compressions()}",
                params=("compression",),
            )
        level = opts.get("compression_level")
        if compression is None:
            if level is not None:
                raise InvalidInputError(
                    "compression_level needs a compression (it is None)",
                    params=("compression_level",),
                )
        else:
            lo, hi = LEVELS
            if level is None:
                level = DEFAULT_LEVELS[compression]
            elif (
                isinstance(level, bool)
                or not isinstance(level, int | np.integer)
                or not lo <= level <= hi
            ):
                raise InvalidInputError(
                    f"compression_level must be an integer from {lo} to {hi} (Blosc's clevel), "
                    f"got {level!r}",
                    params=("compression_level",),
                )
            level = int(level)
        chunk = opts.get("chunk_records")
        if chunk is not None:
            if isinstance(chunk, bool) or not isinstance(chunk, int | np.integer) or chunk < 1:
                raise InvalidInputError(
                    f"chunk_records must be a positive integer, got {chunk!r}",
                    params=("chunk_records",),
                )
            chunk = int(chunk)
        return {"compression": compression, "compression_level": level, "chunk_records": chunk}

    def check_features(self, features: Mapping[str, FeatureSpec]) -> None:
        """Refuse what the base class refuses, object dtypes, and non-Zarr node names.

        Each feature becomes a Zarr node named after it (an array, or for a
        ragged feature a group holding the arrays ``values`` and ``offsets``),
        so ``zarr.json`` and names starting with ``__`` (reserved by the Zarr
        v3 specification) are refused with :class:`InvalidInputError`.
        """
        super().check_features(features)
        for fname, spec in features.items():
            if spec.dtype.hasobject:
                raise UnsupportedDTypeError(
                    f"feature {fname!r}: object dtypes cannot be stored by the 'zarr' source"
                )
            if fname == "zarr.json" or fname.startswith("__"):
                raise InvalidInputError(
                    f"feature name {fname!r} cannot name a Zarr array ('zarr.json' and names "
                    "starting with '__' are reserved); rename the feature"
                )

    # -- writing --------------------------------------------------------------------------
    def write_shard(self, shard: ShardWriteContext, arrays: Mapping[str, ArrayLike]) -> None:
        """Build the shard's Zarr group in memory, then write each key through the core.

        A ragged feature (a :class:`~shardstore.format.ragged.RaggedArray`) becomes a
        subgroup holding its ``values`` and ``offsets`` arrays.
        """
        import zarr
        from zarr.storage import MemoryStore

        opts = self.check_options(shard.options)
        self.check_features(shard.features)
        n = shard.num_records
        store_dict: dict[str, Any] = {}
        group = zarr.create_group(store=MemoryStore(store_dict=store_dict), zarr_format=3)
        meta_keys = {"zarr.json"}
        infos: dict[str, dict[str, Any]] = {}  # array node -> info of its data file
        empty: set[str] = set()  # array nodes without rows (zarr writes no chunk file)
        for fname, spec in shard.features.items():
            if not spec.is_ragged:
                chunk = min(n, opts["chunk_records"] or default_chunk_records(spec))
                shape = (n, *(int(d) for d in spec.shape if d is not None))
                _write_array(group, fname, arrays[fname], shape, spec.dtype, chunk, opts)
                meta_keys.add(f"{fname}/zarr.json")
                infos[fname] = {"chunk_records": chunk, "compression": opts["compression"]}
                continue
            ragged = arrays[fname]
            if not isinstance(ragged, RaggedArray):
                raise InvalidInputError(f"feature {fname!r} is ragged; expected a RaggedArray")
            values = ragged.flat_values
            offsets = (ragged.offsets - ragged.offsets[0]).astype("<i8")
            rows = len(values)
            sub = group.create_group(fname)
            chunks = {
                "values": _values_chunk_rows(spec, rows, n, opts["chunk_records"]),
                "offsets": min(n + 1, opts["chunk_records"] or max(1, CHUNK_BYTES // 8)),
            }
            _write_array(
                sub, "values", values, (rows, *spec.inner_shape), spec.dtype, chunks["values"], opts
            )
            _write_array(
                sub, "offsets", offsets, (n + 1,), np.dtype("<i8"), chunks["offsets"], opts
            )
            for part in RAGGED_PARTS:
                meta_keys.add(f"{fname}/{part}/zarr.json")
                info: dict[str, Any] = {"ragged": part, "chunk_records": chunks[part]}
                if part == "values":
                    info["rows"] = rows
                info["compression"] = opts["compression"]
                infos[f"{fname}/{part}"] = info
            meta_keys.add(f"{fname}/zarr.json")
            if rows == 0:
                empty.add(f"{fname}/values")

        # Expected: the metadata above, and one chunk file per array with rows.
        data_keys = {key.partition("/c/")[0]: key for key in store_dict if key not in meta_keys}
        if (
            set(data_keys) != set(infos) - empty
            or len(data_keys) + len(meta_keys) != len(store_dict)
            or not meta_keys <= set(store_dict)
            or not all(re.fullmatch(r"[0-9]+(/[0-9]+)*", k.partition("/c/")[2])
                       for k in data_keys.values())
        ):  # fmt: skip
            raise RuntimeError(  # pragma: no cover - guards against a zarr behaviour change
                f"zarr wrote unexpected keys {sorted(store_dict)} for shard {shard.index}"
            )
        info_of = {key: infos[node] for node, key in data_keys.items()}
        info_of.update({f"{node}/zarr.json": infos[node] for node in empty})

        for key in sorted(store_dict):  # deterministic file order in the manifest
            feature, _, rest = key.partition("/")
            with shard.create(f"{SUFFIX}/{key}") as f:
                if rest:
                    f.feature = feature  # the file belongs to that feature's array(s)
                f.info.update(info_of.get(key, {}))
                f.write(store_dict[key].as_numpy_array())

    # -- locating arrays ------------------------------------------------------------------
    def _array_ref(self, ctx: ReadContext, shard: ShardEntry, feature: str) -> _ArrayRef:
        """The fixed-shape feature's array in ``shard``, validated against the manifest (no I/O)."""
        spec = ctx.features[feature]
        entries = [f for f in shard.files if f.feature == feature and "chunk_records" in f.info]
        if len(entries) != 1:
            raise ManifestError(
                f"shard {shard.index} has {len(entries)} zarr chunk files for feature "
                f"{feature!r}; expected exactly 1"
            )
        shape = tuple(int(d) for d in spec.shape if d is not None)
        return _locate(ctx, shard, entries[0], feature, None, spec.dtype, shape, shard.num_records)

    def _ragged_refs(
        self, ctx: ReadContext, shard: ShardEntry, feature: str
    ) -> tuple[_ArrayRef, _ArrayRef]:
        """The ``values`` and ``offsets`` arrays of a ragged feature in ``shard`` (no I/O).

        Checked against the manifest: both data files are marked
        (``info["ragged"]``), the values file's ``info["rows"]`` is a row
        count its size can hold (at most :data:`MAX_EXPANSION`-fold), and
        every path is where this source puts it; else ``ManifestError``.
        """
        spec = ctx.features[feature]
        values, offsets = shard.ragged_files(feature)
        rows = values.info.get("rows")
        if type(rows) is not int or rows < 0:
            raise ManifestError(
                f"shard {shard.index}, file {values.path!r}: invalid info.rows {rows!r}"
            )
        if rows * spec.row_nbytes > max(1, values.size) * MAX_EXPANSION:
            raise ManifestError(
                f"shard {shard.index}, file {values.path!r}: info.rows claims {rows} rows "
                f"({rows * spec.row_nbytes} bytes) in a file of {values.size} bytes"
            )
        return (
            _locate(ctx, shard, values, feature, "values", spec.dtype, spec.inner_shape, rows),
            _locate(ctx, shard, offsets, feature, "offsets", np.dtype("<i8"), (),
                    shard.num_records + 1),
        )  # fmt: skip

    def _zarr_array(self, ref: _ArrayRef) -> Any:
        """The zarr array of ``ref``, opened read-only once per source instance."""
        arr = self._arrays.get(ref.key)
        if arr is not None:
            return arr
        import zarr
        from zarr.storage import LocalStore

        ref.check  # noqa: B018 - the metadata is verified before zarr parses it
        with self._lock:
            arr = self._arrays.get(ref.key)
            if arr is None:
                _check_array_metadata(ref)  # before zarr parses it (codecs can run code)
                store = LocalStore(ref.root, read_only=True)
                try:
                    arr = zarr.open_array(store, path=ref.node, mode="r", zarr_format=3)
                except Exception as exc:
                    what = f"zarr cannot open the array ({type(exc).__name__}: {exc})"
                    raise _damaged(ref, what, relpath=ref.meta_relpath) from exc
                expected = (ref.num_records, *ref.shape)
                if tuple(arr.shape) != expected or np.dtype(arr.dtype) != ref.dtype:
                    raise ManifestError(
                        f"shard {ref.shard}: zarr array {ref.node!r} has shape "
                        f"{tuple(arr.shape)} and dtype {arr.dtype}; the manifest says "
                        f"{expected} and {ref.dtype}"
                    )
                arr = self._arrays.put(ref.key, arr)
        return arr

    def _chunk_file(self, ref: _ArrayRef) -> _ChunkFile | None:
        """The fast reader of ``ref``'s data file, or ``None`` to read through zarr."""
        cached = self._files.get(ref.key)
        if cached is not None:
            if cached[0] is not None and ref.check is not None and not ref.check.done:
                cached[0].verify_index(ref.check)  # parsed for another reader: check it here
            return cached[0]
        # zarr.json as written (checked first; the same JSON zarr parses): arrays on the
        # fast path never go through zarr itself, whose event-loop thread must not be
        # waited on from inside a tf.data function while the pipeline is torn down
        ref.check  # noqa: B018 - the metadata is verified before it is parsed
        meta = _check_array_metadata(ref)
        layout = _fast_path(meta, ref)
        fill = _fill_value(meta.get("fill_value"), ref.dtype) if layout is not None else None
        reader: _ChunkFile | None = None
        if layout is None or fill is None:
            log.debug("zarr source: reading %s through zarr (not on the fast path)", ref.key)
            self._zarr_array(ref)
        else:
            offsets, lengths, index_at = _read_shard_index(ref, layout)
            reader = _ChunkFile(
                ref, offsets=offsets, lengths=lengths, codec=layout.codec, fill_value=fill
            )
            reader.index_at = index_at
        return self._files.put(ref.key, (reader,))[0]

    # -- reading --------------------------------------------------------------------------
    def _read_rows(self, ref: _ArrayRef, lo: int, hi: int, *, cache: bool = True) -> np.ndarray:
        """Records ``lo:hi`` of ``ref`` in a new aligned array, decoding whole chunks.

        Chunks that lie inside ``lo:hi`` are decoded straight into it. With
        ``cache``, a chunk that continues past ``hi`` is kept for the next call,
        so a sequential pass decodes each chunk once.
        """
        reader = self._chunk_file(ref)
        if reader is None:
            return self._through_zarr(ref, lambda arr: arr[lo:hi])
        chunk_records = ref.chunk_records
        out = aligned_empty((hi - lo, *ref.shape), ref.dtype)
        for c in range(lo // chunk_records, (hi - 1) // chunk_records + 1):
            c_lo = c * chunk_records
            c_end = min(ref.num_records, c_lo + chunk_records)  # rows of this chunk in use
            s_lo, s_hi = max(lo, c_lo), min(hi, c_end)
            if c_lo >= lo and c_lo + chunk_records <= hi:
                reader.chunk(c, out=out[c_lo - lo : c_lo - lo + chunk_records], check=ref.check)
                continue
            if not cache or (s_lo == c_lo and s_hi == c_end):
                data = reader.chunk(c, check=ref.check)  # the block takes every row of this chunk
            else:  # the chunk straddles blocks: decode once, keep it for the next block
                key = (ref.key, c)
                cached = self._chunks.get(key)
                data = reader.chunk(c, check=ref.check) if cached is None else cached
                if s_hi == c_end:
                    self._chunks.pop(key)
                else:
                    self._chunks.put(key, data)
            out[s_lo - lo : s_hi - lo] = data[s_lo - c_lo : s_hi - c_lo]
        return out

    def _plan(self, ctx: ReadContext, shard: ShardEntry) -> _ShardPlan:
        # Blocks of exactly ctx.block_records: the ordered reader interleaves
        # ceil(longest / block_records) blocks per shard, so smaller blocks would
        # mix shards. Chunks straddling two blocks are decoded once (see _read_rows).
        refs = tuple(self._array_ref(ctx, shard, f) for f in ctx.features)
        return _ShardPlan(shard.num_records, ctx.block_records, refs)

    def tf_reader(self, ctx: ReadContext) -> Callable[[tf.Tensor], tf.data.Dataset]:
        """Blocks of records, one ``tf.numpy_function`` per block decoding whole chunks.

        Fixed-shape features only: the reader gathers ragged ones by index.
        """
        import tensorflow as tf

        ragged = [name for name, spec in ctx.features.items() if spec.is_ragged]
        if ragged:
            raise CapabilityError(
                f"the 'zarr' block reader takes fixed-shape features only; ragged "
                f"features ({', '.join(ragged)}) are read by index (read_ragged)"
            )

        plans = [self._plan(ctx, shard) for shard in ctx.shards]
        counts = tf.constant([p.num_blocks for p in plans], tf.int64)
        names = tuple(ctx.features)
        specs = [ctx.features[n] for n in names]
        tout = [tf.as_dtype(s.dtype) for s in specs]

        def read_block(pos: np.ndarray, block: np.ndarray) -> list[np.ndarray]:
            plan = plans[int(pos)]
            lo, hi = plan.rows(int(block))
            return [self._read_rows(ref, lo, hi) for ref in plan.arrays]

        def block_tensors(pos: tf.Tensor, block: tf.Tensor) -> dict[str, tf.Tensor]:
            outs = tf.numpy_function(
                read_block, [pos, block], Tout=tout, stateful=False, name="zarr_read_block"
            )
            return {
                n: tf.ensure_shape(t, [None, *s.shape])
                for n, t, s in zip(names, outs, specs, strict=True)
            }

        def read_shard(pos: tf.Tensor) -> tf.data.Dataset:
            return tf.data.Dataset.range(counts[pos]).map(lambda b: block_tensors(pos, b))

        return read_shard

    def check_shards(self, ctx: ReadContext) -> None:
        """Check the manifest's marks of every ragged feature read (``ManifestError``)."""
        for fname, spec in ctx.features.items():
            if spec.is_ragged:
                for shard in ctx.shards:
                    self._ragged_refs(ctx, shard, fname)

    def _gather(self, ref: _ArrayRef, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (sorted, unique) of ``ref``, each chunk holding some decoded once.

        A run of consecutive rows is decoded chunk by chunk like a block (whole
        chunks straight into the result); other rows are copied out of their
        decoded chunks, or read with zarr's orthogonal selection (``arr.oindex``)
        for arrays off the fast path.
        """
        if rows.size == 0:
            return np.empty((0, *ref.shape), ref.dtype)
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        if hi - lo == rows.size:  # a run (ds[i], ds[i:j], iter_numpy): decode whole chunks
            return self._read_rows(ref, lo, hi, cache=False)
        reader = self._chunk_file(ref)
        if reader is not None:
            return reader.rows(rows, ref.check)
        return self._through_zarr(ref, lambda arr: arr.oindex[rows])

    def read_records(self, ctx: ReadContext, position: int, rows: np.ndarray) -> dict[str, Any]:
        """Records ``rows`` (sorted, unique) of a shard, for each of ``ctx.features``.

        Fixed-shape features come as arrays ``(len(rows), *shape)``, ragged
        ones as :class:`~shardstore.format.ragged.RaggedArray` (see :meth:`read_ragged`).
        Only the chunks holding the rows are decoded. Thread-safe.
        """
        shard = ctx.shards[position]
        rows = np.asarray(rows, dtype=np.int64)
        out: dict[str, Any] = {}
        for fname, spec in ctx.features.items():
            if spec.is_ragged:
                out[fname] = self.read_ragged(ctx, position, fname, rows)
            else:
                out[fname] = self._gather(self._array_ref(ctx, shard, fname), rows)
        return out

    def read_records_into(
        self,
        ctx: ReadContext,
        position: int,
        rows: np.ndarray,
        out: Mapping[str, np.ndarray],
    ) -> None:
        """Records ``rows`` of the fixed-shape features named by ``out``, into ``out``.

        Only those features are read (the reader gathers ragged ones with
        :meth:`read_ragged`).
        """
        shard = ctx.shards[position]
        rows = np.asarray(rows, dtype=np.int64)
        for fname, dest in out.items():
            dest[...] = self._gather(self._array_ref(ctx, shard, fname), rows)

    def _offsets_of(self, values: _ArrayRef, offsets: _ArrayRef) -> np.ndarray:
        """A ragged feature's offsets in one shard: validated, cached (read-only).

        Raises
        ------
        ChecksumError
            Naming the shard and the offsets file, unless the offsets start at
            0, never decrease and end at the rows of ``values``.
        """
        key = (f"{offsets.key}\n{values.key}", 0)
        table = self._offsets.get(key)
        if table is not None and (offsets.check is None or offsets.check.done):
            return table
        table = self._read_rows(offsets, 0, offsets.num_records, cache=False)
        problem = offsets_problem(table, values.num_records)
        if table.shape != (offsets.num_records,) or problem:
            raise _damaged(offsets, f"{problem} ({values.data_relpath!r})")
        table.flags.writeable = False
        self._offsets.pop(key)
        self._offsets.put(key, table)
        return table

    def read_ragged(
        self, ctx: ReadContext, position: int, feature: str, rows: np.ndarray
    ) -> RaggedArray:
        """Records ``rows`` (sorted, unique, local) of the ragged ``feature`` of one shard.

        The shard's offsets are read once (validated, cached); then the rows
        of values the records span are read like the rows of a fixed-shape
        feature: one contiguous range decoded chunk by chunk when the records
        follow each other (empty records between them included), else each
        chunk holding some rows decoded once. Returns a compact
        :class:`~shardstore.format.ragged.RaggedArray`. Thread-safe.

        Raises
        ------
        ChecksumError
            Damaged offsets or chunks, naming the shard and the file.
        ManifestError
            A manifest or ``zarr.json`` that contradicts the feature.
        """
        shard = ctx.shards[position]
        values, offsets = self._ragged_refs(ctx, shard, feature)
        table = self._offsets_of(values, offsets)
        rows = np.asarray(rows, dtype=np.int64)
        starts, ends = table[rows], table[rows + 1]
        lengths = ends - starts
        total = int(lengths.sum())
        if total == 0:
            data = np.empty((0, *values.shape), values.dtype)
        elif int(ends[-1]) - int(starts[0]) == total:  # no gap: one range of rows
            data = self._read_rows(values, int(starts[0]), int(ends[-1]), cache=False)
        else:  # scattered records: their rows of values, each chunk decoded once
            data = self._gather(values, value_rows(starts, lengths))
        return RaggedArray.from_lengths(data, lengths)

    def _through_zarr(self, ref: _ArrayRef, select: Callable[[Any], Any]) -> np.ndarray:
        """``select(array)`` read by zarr itself; its decoding errors become ``ChecksumError``.

        zarr reads the data file itself, so the file is verified whole first.
        """
        if ref.check is not None:
            ref.check.verify_all()
        arr = self._zarr_array(ref)
        try:
            return np.asarray(select(arr), dtype=ref.dtype)
        except Exception as exc:
            raise _damaged(ref, f"zarr cannot decode it ({type(exc).__name__}: {exc})") from None


@dataclass(frozen=True)
class _Layout:
    """What the fast path needs from an array's metadata (see :func:`_fast_path`)."""

    codec: str | None  # "blosc", "zstd", or None for raw chunks
    chunks_in_shard: int  # entries in the shard index
    index_at_end: bool
    index_crc32c: bool


def _fast_path(meta: dict[str, Any], ref: _ArrayRef) -> _Layout | None:
    """The layout of ``ref``'s array if the fast path can read it, else ``None``.

    ``meta`` is the array's ``zarr.json``. The fast path reads one shard that
    covers the whole array, with chunks of whole records, the ``bytes`` codec
    (little-endian) and at most one ``blosc`` or ``zstd`` codec; anything
    else is read through zarr.
    """
    codec: str | None
    try:
        (sharding,) = meta["codecs"]
        grid = meta["chunk_grid"]["configuration"]["chunk_shape"]
        if sharding["name"] != "sharding_indexed" or grid[0] < ref.num_records:
            return None
        if meta["chunk_key_encoding"]["name"] != "default":
            return None
        cfg = sharding["configuration"]
        inner = list(cfg["chunk_shape"])
        if inner != [ref.chunk_records, *ref.shape] or list(grid[1:]) != inner[1:]:
            return None
        codecs = cfg["codecs"]
        first = codecs[0]
        endian = (first.get("configuration") or {}).get("endian", "little")
        if first["name"] != "bytes" or (endian != "little" and ref.dtype.itemsize > 1):
            return None
        if len(codecs) == 1:
            codec = None
        elif len(codecs) == 2 and codecs[1]["name"] in ("blosc", "zstd"):
            codec = codecs[1]["name"]  # both decoders read their parameters from the frame
        else:
            return None
        index_codecs = [c["name"] for c in cfg["index_codecs"]]
        if index_codecs not in (["bytes"], ["bytes", "crc32c"]):
            return None
        index_endian = (cfg["index_codecs"][0].get("configuration") or {}).get("endian")
        if index_endian not in (None, "little"):
            return None
        location = cfg.get("index_location", "end")
        if location not in ("start", "end") or grid[0] % inner[0]:
            return None
    except (KeyError, TypeError, ValueError, AttributeError, ZeroDivisionError):
        return None
    return _Layout(codec, grid[0] // inner[0], location == "end", index_codecs[-1] == "crc32c")


def _read_shard_index(
    ref: _ArrayRef, layout: _Layout
) -> tuple[np.ndarray, np.ndarray, tuple[int, bytes]]:
    """The (offsets, lengths) of the chunks in ``ref``'s data file, CRC-checked.

    Also where the index lies in the file and its bytes (verified with
    ``ref.check`` before they are parsed).
    """
    nchunks = layout.chunks_in_shard
    index_bytes = 16 * nchunks + (4 if layout.index_crc32c else 0)
    with open_binary(ref.data_path, buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        if size < index_bytes:
            raise _damaged(ref, f"{size} bytes cannot hold a shard index of {index_bytes}")
        start = size - index_bytes if layout.index_at_end else 0
        raw = os.pread(f.fileno(), index_bytes, start)
        if ref.check is not None and len(raw) == index_bytes:
            fd = f.fileno()
            ref.check.verify_range(start, raw, lambda at, n: os.pread(fd, n, at))
    index_at = (start, raw)
    if layout.index_crc32c:
        import google_crc32c

        body, stored = raw[:-4], int.from_bytes(raw[-4:], "little")
        if google_crc32c.value(body) != stored:
            raise _damaged(ref, "the shard index fails its CRC32C")
        raw = body
    table = np.frombuffer(raw, "<u8").reshape(nchunks, 2)
    offsets, lengths = table[:, 0].copy(), table[:, 1].copy()
    used = ~((offsets == _EMPTY) & (lengths == _EMPTY))
    end = np.uint64(size)
    if np.any(offsets[used] > end) or np.any(lengths[used] > end - offsets[used]):
        raise _damaged(ref, "the shard index points past the end of the file")
    return offsets, lengths, index_at


#: Codecs a shard's arrays may use: pure decoders of numeric data (no object,
#: string or Python-object codecs, which can run code or allocate without bound).
ALLOWED_CODECS = frozenset(
    {"bytes", "blosc", "zstd", "gzip", "crc32c", "transpose", "sharding_indexed"}
)
#: NumPy dtype string -> Zarr v3 ``data_type``.
_ZARR_DTYPES = {
    "|b1": "bool", "|i1": "int8", "<i2": "int16", "<i4": "int32", "<i8": "int64",
    "|u1": "uint8", "<u2": "uint16", "<u4": "uint32", "<u8": "uint64", "<f2": "float16",
    "<f4": "float32", "<f8": "float64", "<c8": "complex64", "<c16": "complex128",
}  # fmt: skip
#: Largest ``zarr.json`` accepted.
_MAX_METADATA_BYTES = 1 << 20


def _fill_value(value: Any, dtype: np.dtype[Any]) -> Any:
    """A ``zarr.json`` ``fill_value`` as a ``dtype`` scalar, or ``None`` if not understood.

    Numbers and booleans; ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` and hex bit
    patterns (``"0x7fc00000"``) for floats; ``[real, imag]`` for complex numbers.
    """

    def one(v: Any, kind: np.dtype[Any]) -> Any:
        if isinstance(v, str) and v.startswith("0x"):
            bits = np.array(int(v, 16), dtype=f"<u{kind.itemsize}")
            return bits.view(kind)[()]
        if isinstance(v, str) and v not in ("NaN", "Infinity", "-Infinity"):
            raise ValueError(v)
        return np.asarray(float(v) if isinstance(v, str) else v).astype(kind)[()]

    try:
        if dtype.kind == "c":
            part = np.dtype(f"<f{dtype.itemsize // 2}")
            if not (isinstance(value, list) and len(value) == 2):
                return None
            return np.asarray(complex(one(value[0], part), one(value[1], part))).astype(dtype)[()]
        if isinstance(value, list | dict) or value is None:
            return None
        return one(value, dtype)
    except (ValueError, TypeError, OverflowError):
        return None


def _check_array_metadata(ref: _ArrayRef) -> dict[str, Any]:
    """Refuse an array ``zarr.json`` that zarr should not be allowed to act on; return it.

    Raises
    ------
    ManifestError
        Naming the shard, the file and what is wrong.
    """
    path = ref.root / ref.node / "zarr.json"
    where = f"shard {ref.shard}, {ref.meta_relpath!r}"
    try:
        with open_binary(path) as f:
            raw = f.read(_MAX_METADATA_BYTES + 1)
    except OSError as exc:
        raise _damaged(ref, f"cannot be read ({exc})", relpath=ref.meta_relpath) from None
    if len(raw) > _MAX_METADATA_BYTES:
        raise ManifestError(f"{where}: longer than {_MAX_METADATA_BYTES} bytes")
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise _damaged(ref, f"not valid JSON ({exc})", relpath=ref.meta_relpath) from None
    expected = [ref.num_records, *ref.shape]

    def fail(what: str) -> ManifestError:
        return ManifestError(f"{where}: {what}")

    if not isinstance(meta, dict) or meta.get("zarr_format") != 3:
        raise fail("not Zarr v3 array metadata")
    if meta.get("node_type") != "array":
        raise fail(f"node_type is {meta.get('node_type')!r}, not 'array'")
    data_type = meta.get("data_type")
    if data_type != _ZARR_DTYPES.get(ref.dtype.str):
        raise fail(
            f"data_type {data_type!r} is not the manifest's {ref.dtype} "
            "(only numeric data types are read)"
        )
    if meta.get("shape") != expected:
        raise fail(f"shape {meta.get('shape')!r} is not the manifest's {expected}")
    if meta.get("storage_transformers"):
        raise fail("storage transformers are not supported")
    grid = meta.get("chunk_grid")
    config = grid.get("configuration") if isinstance(grid, dict) else None
    chunk_shape = config.get("chunk_shape") if isinstance(config, dict) else None
    if not isinstance(grid, dict) or grid.get("name") != "regular":
        raise fail("only a regular chunk grid is supported")
    _check_chunk_shape(chunk_shape, [max(1, 2 * d) for d in expected], fail)
    _check_codecs(meta.get("codecs"), chunk_shape, fail)
    return meta


def _check_chunk_shape(shape: Any, limit: list[int], fail: Callable[[str], Exception]) -> None:
    if (
        not isinstance(shape, list)
        or len(shape) != len(limit)
        or not all(type(d) is int and 1 <= d <= lim for d, lim in zip(shape, limit, strict=True))
    ):
        raise fail(f"chunk shape {shape!r} is not positive or exceeds the array ({limit})")


def _check_codecs(codecs: Any, chunk_shape: Any, fail: Callable[[str], Exception]) -> None:
    if not isinstance(codecs, list) or not codecs:
        raise fail("codecs must be a non-empty list")
    for codec in codecs:
        name = codec.get("name") if isinstance(codec, dict) else codec
        if not isinstance(name, str) or name not in ALLOWED_CODECS:
            raise fail(
                f"codec {name!r} is not allowed (shardstore reads numeric data with "
                f"{', '.join(sorted(ALLOWED_CODECS))} only)"
            )
        if name == "sharding_indexed":
            cfg = codec.get("configuration") if isinstance(codec, dict) else None
            if not isinstance(cfg, dict):
                raise fail("sharding_indexed needs a configuration")
            inner = cfg.get("chunk_shape")
            _check_chunk_shape(inner, chunk_shape, fail)
            _check_codecs(cfg.get("codecs"), inner, fail)
            _check_codecs(cfg.get("index_codecs"), [1, 2], fail)
