"""The ``npy`` source: one standard ``.npy`` file per feature per shard.

Files are plain NumPy ``.npy`` (little-endian, C order), readable by
``np.load`` without shardstore. The manifest stores each file's header
length (``info.header_bytes``), so the TF-native reader jumps straight to
the data: it reads blocks of records with ``FixedLengthRecordDataset`` and
decodes them with ``decode_raw``: no Python in the hot path, no
``py_function``, serialisable pipelines.
"""

from __future__ import annotations

import functools
import io
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar, NamedTuple

import numpy as np

from shardstore.errors import InvalidInputError, ManifestError
from shardstore.format.manifest import FeatureSpec, FileEntry, ShardEntry
from shardstore.format.ragged import RaggedArray
from shardstore.sources.base import (
    ArrayLike,
    ReadContext,
    ShardWriteContext,
    Source,
    iter_record_chunks,
)

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = [
    "NpyHeader",
    "NpySource",
    "npy_header",
    "npy_layout",
    "ragged_layout",
    "read_npy_header",
    "write_ragged_npy",
]

SUFFIX = ".npy"
#: The offsets file of a ragged feature (a ``.npy`` file of ``int64``).
OFFSETS_SUFFIX = ".offsets"
#: The longest ``.npy`` header accepted when one is parsed (NumPy's own default limit).
MAX_HEADER_BYTES = 10_000
# NumPy parses headers with ``ast.literal_eval``; CPython 3.11 can fail with
# "SystemError: AST constructor recursion depth mismatch" when two threads do
# that at once (seen with parallel tf.data readers), so one parse at a time.
_HEADER_LOCK = threading.Lock()


@functools.lru_cache(maxsize=4096)
def npy_header(dtype: np.dtype[Any], shape: tuple[int, ...]) -> bytes:
    """The ``.npy`` header NumPy itself would write for a C-order array (cached)."""
    header: dict[str, Any] = {"descr": dtype.str, "fortran_order": False, "shape": shape}
    buf = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(buf, header)
    except ValueError:  # header too long for format 1.0
        buf = io.BytesIO()
        np.lib.format.write_array_header_2_0(buf, header)
    return buf.getvalue()


def write_ragged_npy(
    shard: ShardWriteContext, fname: str, spec: FeatureSpec, ragged: RaggedArray
) -> None:
    """A ragged feature as two ``.npy`` files: values, then offsets (``int64``, from 0).

    ``<index>.<feature>.npy`` holds ``(sum(lengths), *inner)`` values and
    ``<index>.<feature>.offsets`` the ``num_records + 1`` offsets (a ``.npy``
    file too); their ``info["ragged"]`` says which is which.
    """
    if not isinstance(ragged, RaggedArray):
        raise InvalidInputError(f"feature {fname!r} is ragged; expected a RaggedArray")
    offsets = (ragged.offsets - ragged.offsets[0]).astype("<i8")
    values = ragged.flat_values
    for part, suffix, data, dtype, unit in (
        ("values", SUFFIX, values, spec.dtype, spec.row_nbytes),
        ("offsets", OFFSETS_SUFFIX, offsets, np.dtype("<i8"), 8),
    ):
        header = npy_header(dtype, tuple(int(d) for d in data.shape))
        with shard.create(suffix, feature=fname) as f:
            f.align_blocks(len(header), unit)  # checksum blocks of whole rows, after the header
            f.info["header_bytes"] = len(header)
            f.info["ragged"] = part
            f.write(header)
            for chunk in iter_record_chunks(data, dtype):
                f.write(chunk)


def ragged_layout(ctx: ReadContext, position: int, fname: str) -> tuple[int, int, int, int]:
    """``(values header, rows of values, offsets header, records)`` of a ragged feature.

    Checked against the manifest: both files' sizes must match their header
    lengths, the offsets file must hold ``num_records + 1`` entries and the
    values file whole rows; else ``ManifestError``, before any file is read.
    """
    shard = ctx.shards[position]
    spec = ctx.features[fname]
    values, offsets = shard.ragged_files(fname)
    vh, oh = (_header_bytes(shard, e) for e in (values, offsets))
    rows, rest = divmod(values.size - vh, spec.row_nbytes)
    if rest:
        raise ManifestError(
            f"shard {shard.index}, file {values.path!r}: size {values.size} is not "
            f"header_bytes + whole rows of {spec.row_nbytes} bytes"
        )
    if offsets.size != oh + 8 * (shard.num_records + 1):
        raise ManifestError(
            f"shard {shard.index}, file {offsets.path!r}: size {offsets.size} does not hold "
            f"{shard.num_records + 1} offsets after a {oh}-byte header"
        )
    return vh, rows, oh, shard.num_records


def _header_bytes(shard: ShardEntry, entry: FileEntry) -> int:
    header = entry.info.get("header_bytes")
    if type(header) is not int or not 0 < header <= entry.size:
        raise ManifestError(
            f"shard {shard.index}, file {entry.path!r}: invalid info.header_bytes {header!r}"
        )
    return header


def npy_layout(ctx: ReadContext) -> dict[str, list[int]]:
    """Each feature's header length in each shard, checked against the manifest.

    A file's size must be exactly ``header_bytes + num_records * record bytes``;
    anything else (a lying or damaged manifest) raises ``ManifestError``
    before any file is read.
    """
    headers: dict[str, list[int]] = {}
    for fname, spec in ctx.features.items():
        if spec.is_ragged:
            for position in range(len(ctx.shards)):
                ragged_layout(ctx, position, fname)
            continue
        column = headers[fname] = []
        record_bytes = spec.record_nbytes
        for shard in ctx.shards:
            entry = shard.file_for(fname)
            header = entry.info.get("header_bytes")
            if type(header) is not int or not 0 < header <= entry.size:
                raise ManifestError(
                    f"shard {shard.index}, file {entry.path!r}: invalid info.header_bytes "
                    f"{header!r}"
                )
            expected = header + shard.num_records * record_bytes
            if entry.size != expected:
                raise ManifestError(
                    f"shard {shard.index}, file {entry.path!r}: size {entry.size} does not "
                    f"match header_bytes + num_records * record bytes = {expected}"
                )
            column.append(header)
    return headers


class NpyHeader(NamedTuple):
    """What a ``.npy`` header says: dtype, shape, order, and where the data starts."""

    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    fortran_order: bool
    data_offset: int


def read_npy_header(f: BinaryIO) -> NpyHeader:
    """Parse the ``.npy`` header at the start of ``f`` without reading any data.

    Only the header is read (at most :data:`MAX_HEADER_BYTES`); NumPy parses
    it as a Python literal (never code), and nothing is allocated from what it
    claims. The caller compares the result with the manifest.

    Raises
    ------
    ValueError
        Not a ``.npy`` file, or a malformed or overlong header.
    """
    try:
        major, _ = np.lib.format.read_magic(f)
        with _HEADER_LOCK:  # NumPy parses with ast, which CPython < 3.12 cannot run in threads
            return _read_header(f, major)
    except ValueError:
        raise
    except Exception as exc:  # numpy raises TypeError, SyntaxError... on hostile headers
        raise ValueError(f"malformed .npy header ({type(exc).__name__}: {exc})") from None


def _read_header(f: BinaryIO, major: int) -> NpyHeader:
    if major == 1:
        read = np.lib.format.read_array_header_1_0
    elif major in (2, 3):
        read = np.lib.format.read_array_header_2_0
    else:
        raise ValueError(f"unsupported .npy format version {major}")
    shape, fortran, dtype = read(f, max_header_size=MAX_HEADER_BYTES)
    return NpyHeader(np.dtype(dtype), tuple(int(d) for d in shape), bool(fortran), f.tell())


class NpySource(Source):
    """Shards as ``.npy`` files, read with TensorFlow ops only.

    Ragged features are stored (values + offsets files) and read by index
    through ``memmap``; this source's TF-native block reader takes
    fixed-shape features only.
    """

    name: ClassVar[str] = "npy"
    tf_native: ClassVar[bool] = True
    supports_ragged: ClassVar[bool] = True
    reads: ClassVar[frozenset[str]] = frozenset({"memmap"})
    random_access_source: ClassVar[str | None] = "memmap"

    def write_shard(self, shard: ShardWriteContext, arrays: Mapping[str, ArrayLike]) -> None:
        """Write one ``.npy`` file per feature (two for a ragged one: values and offsets)."""
        for fname, spec in shard.features.items():
            if spec.is_ragged:
                write_ragged_npy(shard, fname, spec, arrays[fname])
                continue
            shape = (shard.num_records, *(int(d) for d in spec.shape if d is not None))
            header = npy_header(spec.dtype, shape)
            with shard.create(SUFFIX, feature=fname) as f:
                # checksum blocks of whole records after the header: a random read of a
                # record verifies its own bytes
                f.align_blocks(len(header), spec.record_nbytes)
                f.info["header_bytes"] = len(header)
                f.write(header)
                for chunk in iter_record_chunks(arrays[fname], spec.dtype):
                    f.write(chunk)

    def check_shards(self, ctx: ReadContext) -> None:
        """Check every file's recorded header length and size against the features."""
        npy_layout(ctx)

    def tf_reader(self, ctx: ReadContext) -> Callable[[tf.Tensor], tf.data.Dataset]:
        """Blocks of records via ``FixedLengthRecordDataset`` + ``decode_raw``."""
        import tensorflow as tf

        from shardstore.sources.tfops import decode_block, fixed_record_blocks

        counts = tf.constant([s.num_records for s in ctx.shards], tf.int64)
        headers = npy_layout(ctx)
        tables: dict[str, tuple[tf.Tensor, tf.Tensor]] = {}
        for fname in ctx.features:
            paths = [ctx.resolve_str(shard.file_for(fname).path) for shard in ctx.shards]
            tables[fname] = (tf.constant(paths, tf.string), tf.constant(headers[fname], tf.int64))
        specs = dict(ctx.features)

        def read_shard(pos: tf.Tensor) -> tf.data.Dataset:
            parts = {
                fname: fixed_record_blocks(
                    paths[pos],
                    header_bytes=headers[pos],
                    num_records=counts[pos],
                    record_bytes=specs[fname].record_nbytes,
                    block_records=ctx.block_records,
                )
                for fname, (paths, headers) in tables.items()
            }
            raw = tf.data.Dataset.zip(parts)
            return raw.map(
                tf.autograph.experimental.do_not_convert(
                    lambda blk: {k: decode_block(v, specs[k]) for k, v in blk.items()}
                )
            )

        # No tensor control flow here: spare tf.data the AutoGraph transpiler (~0.1 s).
        convert: Callable[[tf.Tensor], tf.data.Dataset] = tf.autograph.experimental.do_not_convert(
            read_shard
        )
        return convert
