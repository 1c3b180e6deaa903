"""The ``tfrecord`` source: one TFRecord file of ``tf.train.Example`` per shard.

Each shard is a single standard TFRecord file, ``<prefix>/<index:06d>.tfrecord``,
holding one serialized ``tf.train.Example`` per record with every feature of the
record. A feature is stored as a ``bytes_list`` with one value: the record's
raw little-endian, C-order bytes (the encoding ``"raw"``). Any TensorFlow
program reads these files without shardstore::

    spec = {"image": tf.io.FixedLenFeature([], tf.string)}
    for rec in tf.data.TFRecordDataset(path):
        ex = tf.io.parse_single_example(rec, spec)
        image = tf.reshape(tf.io.decode_raw(ex["image"], tf.float32), [64, 64, 3])

Why raw bytes rather than ``float_list`` / ``int64_list``: raw bytes hold all
14 dtypes bit for bit (``float_list`` holds float32 only; ``int64_list`` has no
room for complex or float values and takes 1-10 bytes per value, 10 for any
negative number); every record has the same length, which makes the encoder
below possible; and parsing them is a ``memcpy``, where lists are decoded value
by value.

**Writing** uses neither TensorFlow (importing it costs seconds) nor the
protobuf library. Every feature has a fixed record size, so every serialized
``Example`` of a shard has the same length and the same bytes except the
feature data: :func:`record_layout` computes that constant layout once, and
:func:`encode_records` fills a reused chunk of framed records with NumPy (one
copy of the input), then adds each record's masked CRC-32C (``google-crc32c``).
The framing is TFRecord's: ``uint64 length``, ``uint32 masked_crc32c(length)``,
``data``, ``uint32 masked_crc32c(data)``, all little-endian. The files are
byte-identical to what ``tf.io.TFRecordWriter`` writes for the same Examples
serialized with ``SerializeToString(deterministic=True)`` (the tests check it).

**Reading** is TensorFlow-native: ``TFRecordDataset`` (which verifies every
record's CRC) -> ``batch(block)`` -> ``tf.io.parse_example`` on the whole block
-> :func:`shardstore.sources.tfops.decode_block` per feature. Only the features asked
for are parsed.

**File info.** Each file entry's ``info.features`` maps every feature to
``{"key": <Example key>, "encoding": "raw" | "int64_list" | "float_list"}``.
Files written by this source use ``key = feature name`` and ``"raw"``; files
adopted with :func:`shardstore.writing.adopt.index_tfrecords` may use other keys and
the list encodings, which the reader parses as ``FixedLenFeature([n])`` and
casts to the declared dtype.

This module also holds the TensorFlow-free TFRecord helpers that
:mod:`shardstore.writing.adopt` uses: :func:`masked_crc32c`, :func:`iter_frames`,
:func:`read_first_record` and :func:`parse_example`, a small parser of the
``tf.train.Example`` wire format.
"""

from __future__ import annotations

import math
import os
import struct
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, ClassVar, Final

import google_crc32c
import numpy as np

from shardstore.errors import ChecksumError, InvalidInputError, ManifestError
from shardstore.format.manifest import FeatureSpec, ShardEntry
from shardstore.sources.base import ArrayLike, ReadContext, ShardWriteContext, Source
from shardstore.storage.checksum import CHUNK_BYTES
from shardstore.storage.safefs import check_regular, open_binary

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = [
    "ENCODINGS",
    "SUFFIX",
    "RecordLayout",
    "TFRecordFormatError",
    "TFRecordSource",
    "check_encoding",
    "check_framing",
    "encode_records",
    "iter_frames",
    "masked_crc32c",
    "parse_example",
    "read_first_record",
    "record_layout",
]

SUFFIX = ".tfrecord"

#: How a feature's values are stored in an ``Example``.
ENCODINGS: Final = ("raw", "int64_list", "float_list")

#: Bytes a TFRecord adds around each record: length (8), its CRC (4), data CRC (4).
FRAME_OVERHEAD = 16
_HEADER = struct.Struct("<QI")
_CRC = struct.Struct("<I")
_MASK_DELTA = 0xA282EAD8

#: ``TFRecordDataset`` read buffer per open shard: reads of about one block
#: (1 MiB, see ``shardstore.reading.pipeline.BLOCK_BYTES``) instead of TF's 256 KiB, for
#: fewer, larger requests on slow or remote storage. On page-cached local files
#: 256 KiB-4 MiB measured the same; 16 MiB was slower.
READ_BUFFER_BYTES = 1 << 20

# Records shorter than this are checksummed from one bytes copy of their chunk
# (measured: ~2x faster below 1 KiB, slower above 8 KiB); see _crc32c_rows.
_SLICE_MAX_BYTES = 4096

_INT_KINDS = frozenset("biu")
_FLOAT_DTYPES = frozenset({"<f2", "<f4", "<f8"})


class TFRecordFormatError(InvalidInputError):
    """A file is not a valid TFRecord file of ``tf.train.Example`` records."""


# -- CRC-32C ---------------------------------------------------------------------------------
def masked_crc32c(data: bytes) -> int:
    """The masked CRC-32C TFRecord stores for ``data``.

    Parameters
    ----------
    data : bytes
        The checksummed bytes.

    Returns
    -------
    int
        ``((crc >> 15) | (crc << 17)) + 0xa282ead8`` modulo ``2**32``.
    """
    crc = int(google_crc32c.value(data))
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def _mask(crcs: np.ndarray) -> np.ndarray:
    crcs = crcs.astype(np.uint32, copy=False)
    return ((crcs >> np.uint32(15)) | (crcs << np.uint32(17))) + np.uint32(_MASK_DELTA)


def _crc32c_rows(rows: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Unmasked CRC-32C of ``rows[i, start:stop]`` for every row of a uint8 matrix.

    ``google_crc32c`` takes ``bytes`` only (not NumPy memory), so each record
    is copied once: short records from one ``bytes`` copy of the whole chunk
    (slicing ``bytes`` costs less than indexing an array), long ones row by row.
    """
    count, width = rows.shape
    length = stop - start
    value = google_crc32c.value
    if length < _SLICE_MAX_BYTES:
        blob = rows.tobytes()
        crcs = (value(blob[o : o + length]) for o in range(start, count * width, width))
    else:
        crcs = (value(rows[i, start:stop].tobytes()) for i in range(count))
    return np.fromiter(crcs, np.uint32, count)


# -- the Example wire format ---------------------------------------------------------------
def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _len_prefix(tag: int, length: int) -> bytes:
    return bytes([tag]) + _varint(length)


@dataclass(frozen=True)
class RecordLayout:
    """The byte layout of one framed record of fixed-size ``"raw"`` features.

    Attributes
    ----------
    header : bytes
        The 12 framing bytes before the data (length and its masked CRC).
    segments : tuple of (int, bytes)
        ``(offset in the frame, constant bytes)``: the protobuf tags and
        lengths between the feature data.
    fields : tuple of (int, int)
        ``(offset in the frame, byte size)`` of each feature's raw bytes.
    data_bytes : int
        Length of the serialized ``Example`` (the TFRecord ``length``).
    """

    header: bytes
    segments: tuple[tuple[int, bytes], ...]
    fields: tuple[tuple[int, int], ...]
    data_bytes: int

    @property
    def frame_bytes(self) -> int:
        """Bytes of one framed record in the file."""
        return self.data_bytes + FRAME_OVERHEAD


def record_layout(fields: Sequence[tuple[str, int]]) -> RecordLayout:
    """The layout of an ``Example`` holding ``fields`` (key, raw byte size), in order.

    ``Example{features: Features{feature: map<key, Feature{bytes_list:
    BytesList{value: [raw]}}>}}``: with fixed sizes every tag and length is a
    constant, so only the raw bytes differ from record to record.

    Parameters
    ----------
    fields : sequence of (str, int)
        The ``Example`` key and the raw byte size of each feature.

    Returns
    -------
    RecordLayout
        Where the constant bytes and each feature's data go in a frame.
    """
    prefixes: list[tuple[bytes, int]] = []
    for key, size in fields:
        k = key.encode("utf-8")
        bytes_list = 1 + len(_varint(size)) + size  # BytesList{value: raw}
        feature = 1 + len(_varint(bytes_list)) + bytes_list  # Feature{bytes_list}
        entry = 1 + len(_varint(len(k))) + len(k) + 1 + len(_varint(feature)) + feature
        prefix = (
            _len_prefix(0x0A, entry)  # Features.feature (map entry)
            + _len_prefix(0x0A, len(k))  # entry.key
            + k
            + _len_prefix(0x12, feature)  # entry.value
            + _len_prefix(0x0A, bytes_list)  # Feature.bytes_list
            + _len_prefix(0x0A, size)  # BytesList.value
        )
        prefixes.append((prefix, size))
    features_len = sum(len(p) + s for p, s in prefixes)
    head = _len_prefix(0x0A, features_len)  # Example.features
    data_bytes = len(head) + features_len
    length = struct.pack("<Q", data_bytes)
    header = length + _CRC.pack(masked_crc32c(length))
    segments: list[tuple[int, bytes]] = []
    placed: list[tuple[int, int]] = []
    pos = len(header)
    pending = head
    for prefix, size in prefixes:
        pending += prefix
        segments.append((pos, pending))
        pos += len(pending)
        placed.append((pos, size))
        pos += size
        pending = b""
    return RecordLayout(header, tuple(segments), tuple(placed), data_bytes)


def _read_varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while pos < end and shift < 70:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
    raise TFRecordFormatError("malformed protobuf varint")


def _fields(buf: bytes, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """``(field number, wire type, start, end_or_value)`` for each field of a message.

    For length-delimited fields (wire type 2) the last two items are the
    payload's bounds; for varints and fixed-size fields ``start`` is the
    field's offset and the last item its value.
    """
    pos = start
    while pos < end:
        tag, pos = _read_varint(buf, pos, end)
        number, wire = tag >> 3, tag & 7
        if wire == 2:
            size, pos = _read_varint(buf, pos, end)
            if pos + size > end:
                raise TFRecordFormatError("protobuf field runs past the end of its message")
            yield number, wire, pos, pos + size
            pos += size
        elif wire == 0:
            value, after = _read_varint(buf, pos, end)
            yield number, wire, pos, value
            pos = after
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if pos + width > end:
                raise TFRecordFormatError("protobuf field runs past the end of its message")
            yield number, wire, pos, int.from_bytes(buf[pos : pos + width], "little")
            pos += width
        else:
            raise TFRecordFormatError(f"unsupported protobuf wire type {wire}")


def _parse_feature(buf: bytes, start: int, end: int) -> tuple[str, list[Any]]:
    kind: str = "none"
    values: list[Any] = []
    names = {1: "bytes_list", 2: "float_list", 3: "int64_list"}
    for number, wire, lo, hi in _fields(buf, start, end):
        if number not in names or wire != 2:
            continue
        if names[number] != kind:  # oneof: a later member replaces an earlier one
            kind, values = names[number], []
        for inner, iwire, a, b in _fields(buf, lo, hi):
            if inner != 1:
                continue
            if kind == "bytes_list" and iwire == 2:
                values.append(bytes(buf[a:b]))
            elif kind == "float_list" and iwire == 2:  # packed
                if (b - a) % 4:
                    raise TFRecordFormatError("packed float_list length is not a multiple of 4")
                values.extend(np.frombuffer(buf[a:b], "<f4").tolist())
            elif kind == "float_list" and iwire == 5:
                values.append(float(np.frombuffer(buf[a : a + 4], "<f4")[0]))
            elif kind == "int64_list" and iwire == 2:  # packed
                pos = a
                while pos < b:
                    v, pos = _read_varint(buf, pos, b)
                    values.append(v - (1 << 64) if v >= 1 << 63 else v)
            elif kind == "int64_list" and iwire == 0:
                v = b & 0xFFFFFFFFFFFFFFFF
                values.append(v - (1 << 64) if v >= 1 << 63 else v)
            else:
                raise TFRecordFormatError(f"{kind} value has unexpected wire type {iwire}")
    return kind, values


def parse_example(data: bytes) -> dict[str, tuple[str, list[Any]]]:
    """Decode a serialized ``tf.train.Example`` without TensorFlow.

    Parameters
    ----------
    data : bytes
        One record of a TFRecord file.

    Returns
    -------
    dict
        ``key -> (kind, values)``, where ``kind`` is ``"bytes_list"``,
        ``"float_list"``, ``"int64_list"`` or ``"none"`` (a ``Feature`` with no
        value set) and ``values`` a list of ``bytes``, ``float`` or ``int``.

    Raises
    ------
    TFRecordFormatError
        ``data`` is not a well-formed ``Example``.
    """
    out: dict[str, tuple[str, list[Any]]] = {}
    for number, wire, lo, hi in _fields(data, 0, len(data)):
        if number != 1 or wire != 2:
            continue
        for fnum, fwire, a, b in _fields(data, lo, hi):  # Features
            if fnum != 1 or fwire != 2:
                continue
            key: str = ""
            feature: tuple[str, list[Any]] = ("none", [])
            for enum, ewire, c, d in _fields(data, a, b):  # map entry
                if enum == 1 and ewire == 2:
                    try:
                        key = bytes(data[c:d]).decode("utf-8")
                    except UnicodeDecodeError:
                        raise TFRecordFormatError("feature key is not UTF-8") from None
                elif enum == 2 and ewire == 2:
                    feature = _parse_feature(data, c, d)
            out[key] = feature  # map semantics: the last entry for a key wins
    return out


# -- framing ---------------------------------------------------------------------------------
def _gzip_hint(head: bytes) -> str:
    if head[:2] == b"\x1f\x8b":
        return " (it looks GZIP-compressed; decompress it first)"
    return ""


def iter_frames(
    f: IO[bytes], *, size: int, name: str, verify_data: bool = True
) -> Iterator[tuple[bytes, bytes, bytes]]:
    """Yield ``(header, data, footer)`` for every record of an open TFRecord file.

    Parameters
    ----------
    f : binary file
        Positioned at the start of the file.
    size : int
        The file's size in bytes (bounds every length before it is read).
    name : str
        How to name the file in errors.
    verify_data : bool
        Also check each record's data CRC (the length CRC is always checked).

    Raises
    ------
    TFRecordFormatError
        A truncated file, a bad length, or a CRC mismatch (naming the byte offset).
    """
    offset = 0
    while True:
        header = f.read(_HEADER.size)
        if not header:
            return
        if len(header) < _HEADER.size:
            raise TFRecordFormatError(f"{name}: truncated record header at byte {offset}")
        length, length_crc = _HEADER.unpack(header)
        if masked_crc32c(header[:8]) != length_crc:
            raise TFRecordFormatError(
                f"{name}: not a TFRecord file: bad length checksum at byte {offset}"
                + (_gzip_hint(header) if offset == 0 else "")
            )
        if offset + FRAME_OVERHEAD + length > size:
            raise TFRecordFormatError(
                f"{name}: truncated: the record at byte {offset} needs {length} bytes of data"
            )
        data = f.read(length)
        footer = f.read(_CRC.size)
        if len(data) != length or len(footer) != _CRC.size:
            raise TFRecordFormatError(f"{name}: truncated record at byte {offset}")
        if verify_data and masked_crc32c(data) != _CRC.unpack(footer)[0]:
            raise TFRecordFormatError(f"{name}: corrupted record at byte {offset} (CRC mismatch)")
        yield header, data, footer
        offset += FRAME_OVERHEAD + length


def read_first_record(f: IO[bytes], *, size: int, name: str) -> bytes | None:
    """The data of the first record of an open TFRecord file (``None`` if empty)."""
    for _header, data, _footer in iter_frames(f, size=size, name=name):
        return data
    return None


def encode_records(
    features: Mapping[str, FeatureSpec],
    arrays: Mapping[str, ArrayLike],
    num_records: int,
    *,
    chunk_bytes: int = CHUNK_BYTES,
) -> Iterator[np.ndarray]:
    """Encode records as framed TFRecords of ``Example``, a chunk at a time.

    Parameters
    ----------
    features : mapping of str to FeatureSpec
        The fixed-shape features; each is stored under its own name as
        ``"raw"`` bytes, in name order (the order in which protobuf's
        deterministic serialization writes map entries).
    arrays : mapping of str to array-like
        ``num_records`` records of each feature (sliced a chunk at a time, so
        memory-mapped input is never loaded whole).
    num_records : int
        Records to encode.
    chunk_bytes : int
        About how many bytes each chunk holds (at least one record).

    Yields
    ------
    numpy.ndarray
        ``uint8[count, frame_bytes]``: the next ``count`` framed records, ready
        to append to a file. The buffer is reused: consume each chunk before
        asking for the next.
    """
    names = sorted(features)
    layout = record_layout([(n, features[n].record_nbytes) for n in names])
    frame = layout.frame_bytes
    step = max(1, min(num_records, chunk_bytes // frame))
    # The constant bytes (framing, tags, lengths) are filled once; each chunk
    # then only copies the feature data in and computes the data CRCs.
    buf = np.empty((step, frame), np.uint8)
    buf[:, : len(layout.header)] = np.frombuffer(layout.header, np.uint8)
    for offset, const in layout.segments:
        buf[:, offset : offset + len(const)] = np.frombuffer(const, np.uint8)
    for lo in range(0, num_records, step):
        count = min(step, num_records - lo)
        rows = buf[:count]
        for fname, (offset, size) in zip(names, layout.fields, strict=True):
            dst = rows[:, offset : offset + size].view(features[fname].dtype)
            src = np.asarray(arrays[fname][lo : lo + count]).reshape(count, -1)
            np.copyto(dst, src, casting="equiv")  # equiv: byte-swaps big-endian input
        crcs = _mask(_crc32c_rows(rows, len(layout.header), frame - _CRC.size))
        rows[:, frame - _CRC.size :] = crcs.astype("<u4").view(np.uint8).reshape(count, 4)
        yield rows


# -- encodings -------------------------------------------------------------------------------
def check_encoding(dtype: np.dtype[Any], encoding: object) -> str | None:
    """Why ``encoding`` cannot hold ``dtype``, or ``None`` if it can.

    ``"raw"`` holds every dtype; ``"int64_list"`` holds bool and integers;
    ``"float_list"`` holds float16/32/64 (values are float32 in the file).
    """
    if encoding not in ENCODINGS:
        return f"unknown encoding {encoding!r}; use one of {', '.join(ENCODINGS)}"
    if encoding == "int64_list" and dtype.kind not in _INT_KINDS:
        return f"encoding 'int64_list' holds bool and integer dtypes, not {dtype.name}"
    if encoding == "float_list" and dtype.str not in _FLOAT_DTYPES:
        return f"encoding 'float_list' holds float16/32/64, not {dtype.name}"
    return None


def _file_layouts(ctx: ReadContext) -> dict[str, tuple[str, str]]:
    """``feature -> (key, encoding)`` shared by every shard of ``ctx``; validated."""
    chosen: dict[str, tuple[str, str]] | None = None
    for shard in ctx.shards:
        if len(shard.files) != 1:
            raise ManifestError(
                f"shard {shard.index}: a tfrecord shard has exactly one file, "
                f"not {len(shard.files)}"
            )
        entry = shard.files[0]
        where = f"shard {shard.index}, file {entry.path!r}"
        table = entry.info.get("features")
        if not isinstance(table, Mapping):
            raise ManifestError(f"{where}: info.features must be an object")
        layout: dict[str, tuple[str, str]] = {}
        for fname, spec in ctx.features.items():
            item = table.get(fname)
            if not isinstance(item, Mapping):
                raise ManifestError(f"{where}: info.features has no entry for {fname!r}")
            key, encoding = item.get("key"), item.get("encoding")
            if not isinstance(key, str) or not key:
                raise ManifestError(f"{where}: info.features.{fname}.key must be a string")
            problem = check_encoding(spec.dtype, encoding)
            if problem is not None:
                raise ManifestError(f"{where}: info.features.{fname}: {problem}")
            layout[fname] = (key, str(encoding))
        keys = [k for k, _ in layout.values()]
        if len(set(keys)) != len(keys):
            raise ManifestError(f"{where}: two features read the same Example key")
        if chosen is None:
            chosen = layout
        elif layout != chosen:
            raise ManifestError(
                f"{where}: stores its features with other keys or encodings than shard "
                f"{ctx.shards[0].index}; read those shards separately"
            )
    return chosen or {}


def _decoder(
    specs: Mapping[str, FeatureSpec], layout: Mapping[str, tuple[str, str]]
) -> Callable[[tf.Tensor], dict[str, tf.Tensor]]:
    """The function turning a ``[b]`` string tensor of Examples into a block."""
    import tensorflow as tf

    from shardstore.sources.tfops import decode_block

    parse_spec: dict[str, Any] = {}
    for fname, (key, encoding) in layout.items():
        count = math.prod(d for d in specs[fname].shape if d is not None)
        if encoding == "raw":
            parse_spec[key] = tf.io.FixedLenFeature([], tf.string)
        elif encoding == "int64_list":
            parse_spec[key] = tf.io.FixedLenFeature([count], tf.int64)
        else:
            parse_spec[key] = tf.io.FixedLenFeature([count], tf.float32)

    def convert(value: tf.Tensor, fname: str, encoding: str) -> tf.Tensor:
        spec = specs[fname]
        dims = [int(d) for d in spec.shape if d is not None]
        if encoding == "raw":
            # A record of the wrong size must fail loudly instead of turning the
            # block into more (or fewer) rows. (A reshape to [b, *shape] would
            # check it too, but Grappler may drop a reshape it deems redundant.)
            out = decode_block(value, spec)
            same = tf.debugging.assert_equal(
                tf.shape(out, out_type=tf.int64)[0],
                tf.size(value, out_type=tf.int64),
                message=f"a record of feature {fname!r} does not have the "
                f"{spec.record_nbytes} bytes of a {spec.dtype.name} {spec.shape} record",
            )
            with tf.control_dependencies([same]):
                return tf.identity(out)
        value = tf.reshape(value, [-1, *dims])
        if spec.dtype == np.bool_:
            return tf.not_equal(value, 0)
        if spec.dtype.str == "<u8":
            return tf.bitcast(value, tf.uint64)  # int64_list holds uint64 as two's complement
        return tf.cast(value, tf.as_dtype(spec.dtype))

    def decode(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        parsed = tf.io.parse_example(serialized, parse_spec)
        return {
            fname: convert(parsed[key], fname, encoding)
            for fname, (key, encoding) in layout.items()
        }

    return decode


# -- framing check before TensorFlow reads a file ----------------------------------------------
_framing_lock = threading.Lock()
_framing_ok: dict[str, tuple[int, int, int, int]] = {}


def check_framing(path: Path, shard: ShardEntry, *, dataset: str | None = None) -> None:
    """Check that every record header of ``path`` is sound before TensorFlow reads it.

    ``TFRecordDataset`` trusts each record's length once its CRC matches: a
    crafted file announcing a 2**40-byte record crashes the process (seen
    with TF 2.21). This walks the headers: every length CRC must match, every
    record must fit in the file, the last one must end it, and there must be
    ``num_records`` of them. Files whose records all have one length (what
    this source writes) are checked in one vectorised pass; others record by
    record. A file that passed is remembered (by path, inode, size, mtime) for
    the life of the process.

    Raises
    ------
    ChecksumError
        Naming the shard and the file, and the byte offset of the bad header.
    """
    entry = shard.files[0]

    def damaged(what: str) -> ChecksumError:
        if dataset is None:
            return ChecksumError(
                f"shard {shard.index}: file {entry.path!r} {what}",
                shard=shard.index,
                file=entry.path,
            )
        return ChecksumError.in_file(dataset, shard.index, entry.path, what)

    try:
        st = check_regular(path)  # never a FIFO or a device: nothing that could block
    except OSError as exc:
        raise damaged(f"cannot be read ({exc})") from None
    sig = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    with _framing_lock:
        if _framing_ok.get(str(path)) == sig:
            return
    try:
        count = _count_frames(path, st.st_size, shard.num_records)
    except TFRecordFormatError as exc:
        raise damaged(f"is not a sound TFRecord file: {exc}") from None
    if count != shard.num_records:
        raise damaged(f"holds {count} records, the manifest says {shard.num_records}")
    with _framing_lock:
        _framing_ok[str(path)] = sig


def _count_frames(path: Path, size: int, expected: int) -> int:
    """Walk the record headers of a TFRecord file; return how many records it holds."""
    with open_binary(path, buffering=0) as f:
        fd = f.fileno()
        first = os.pread(fd, _HEADER.size, 0)
        if len(first) == _HEADER.size and expected > 0:
            length = _HEADER.unpack(first)[0]
            frame = length + FRAME_OVERHEAD
            if masked_crc32c(first[:8]) == _HEADER.unpack(first)[1] and frame * expected == size:
                # one length for every record: compare every header with the first at once
                data = np.memmap(f, dtype=np.uint8, mode="r", shape=(expected, frame))
                heads = data[:, : _HEADER.size]
                if np.array_equal(heads, np.broadcast_to(heads[0], heads.shape)):
                    return expected
        offset = count = 0
        while offset < size:
            header = os.pread(fd, _HEADER.size, offset)
            if len(header) < _HEADER.size:
                raise TFRecordFormatError(f"truncated record header at byte {offset}")
            length, length_crc = _HEADER.unpack(header)
            if masked_crc32c(header[:8]) != length_crc:
                raise TFRecordFormatError(f"bad length checksum at byte {offset}")
            if length > size - offset - FRAME_OVERHEAD:
                raise TFRecordFormatError(
                    f"the record at byte {offset} announces {length} bytes, past the end "
                    f"of the {size}-byte file"
                )
            offset += FRAME_OVERHEAD + length
            count += 1
        return count


# -- the source ------------------------------------------------------------------------------
class TFRecordSource(Source):
    """Shards as standard TFRecord files of ``tf.train.Example`` records."""

    name: ClassVar[str] = "tfrecord"
    tf_native: ClassVar[bool] = True
    random_access: ClassVar[bool] = False

    def write_shard(self, shard: ShardWriteContext, arrays: Mapping[str, ArrayLike]) -> None:
        """Write the shard's records as one ``.tfrecord`` file, without TensorFlow.

        Parameters
        ----------
        shard : ShardWriteContext
            Where and what to write.
        arrays : mapping of str to array-like
            ``shard.num_records`` records of every feature.
        """
        with shard.create(SUFFIX) as f:
            f.info["features"] = {n: {"key": n, "encoding": "raw"} for n in shard.features}
            for chunk in encode_records(shard.features, arrays, shard.num_records):
                f.write(chunk)

    def prepare_shard(self, ctx: ReadContext, position: int) -> None:
        """Check every record header of the shard's file before TensorFlow reads it.

        See :func:`check_framing`: ``TFRecordDataset`` trusts a record's
        length once its CRC matches, and crashes on absurd lengths.
        """
        shard = ctx.shards[position]
        check_framing(ctx.resolve(shard.files[0].path), shard, dataset=str(ctx.root))

    def tf_reader(self, ctx: ReadContext) -> Callable[[tf.Tensor], tf.data.Dataset]:
        """Blocks via ``TFRecordDataset`` -> ``batch`` -> ``parse_example`` -> decode.

        Parameters
        ----------
        ctx : ReadContext
            The shards and features to read.

        Returns
        -------
        callable
            ``position -> tf.data.Dataset`` of blocks ``feature -> Tensor[b, *shape]``.
        """
        import tensorflow as tf

        layout = _file_layouts(ctx)
        resolved = [ctx.resolve(s.files[0].path) for s in ctx.shards]
        if not ctx.lazy:  # else the reader calls prepare_shard just before each shard is read
            for position in range(len(ctx.shards)):
                self.prepare_shard(ctx, position)
        paths = tf.constant([str(p) for p in resolved], tf.string)
        decode = _decoder(ctx.features, layout)
        block = ctx.block_records

        def read_shard(pos: tf.Tensor) -> tf.data.Dataset:
            records = tf.data.TFRecordDataset(paths[pos], buffer_size=READ_BUFFER_BYTES)
            return records.batch(block).map(decode)

        return read_shard
