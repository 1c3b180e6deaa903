"""Adopt existing TFRecord files as a shardstore dataset, without re-encoding them.

:func:`index_tfrecords` turns TFRecord files of ``tf.train.Example`` (written
by any TensorFlow program) into a dataset read by the ``tfrecord`` source:
each file becomes one shard, as it is. It counts the records, checks every
record's framing and CRC, computes the file checksums, brings the files inside
the dataset directory and commits the manifest atomically, like
:class:`shardstore.Writer`.

**Why files are brought inside.** Manifest paths never leave the dataset
directory (``docs/format.md``, 7.3): a manifest from an untrusted place cannot
point a reader, or the clean-up after an overwrite, at arbitrary files, and a
dataset stays relocatable. So the files are not referenced where they are, and
symlinks to them are refused by every reader. Each file is

* **hard-linked** (``link="hardlink"``, and the first choice of ``"auto"``):
  a second name for the same data, inside the dataset. Nothing is copied, it
  takes no extra space, and it is atomic. The dataset holds its own link, so
  deleting, moving or renaming the original does not affect it. Hard links
  need the same filesystem, and share contents: *modifying an original in
  place* (not replacing it) changes the dataset's file too; ``verify`` then
  reports it, and a change of size is refused before reading.
* **copied** (``link="copy"``, and the fallback of ``"auto"`` when the
  filesystem refuses a hard link: another filesystem, no hard-link support,
  ``fs.protected_hardlinks``). The copy is independent of the original; it
  costs the time and the space of the data.

Nothing here imports TensorFlow: the ``Example`` of each file's first record
is decoded by :func:`shardstore.sources.tfrecord.parse_example`.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import secrets
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
from tqdm.auto import tqdm

from shardstore.errors import (
    DatasetExistsError,
    InvalidInputError,
    ManifestError,
    UnsupportedDTypeError,
)
from shardstore.format.manifest import (
    MANIFEST_NAME,
    SUPPORTED_DTYPES,
    FeatureSpec,
    FileEntry,
    Manifest,
    ShardEntry,
    check_feature_name,
)
from shardstore.sources.tfrecord import (
    SUFFIX,
    TFRecordSource,
    check_encoding,
    iter_frames,
    parse_example,
    read_first_record,
)
from shardstore.storage import faults
from shardstore.storage.checksum import CHUNK_BYTES, format_digest, new_hasher
from shardstore.storage.commit import Transaction, manifest_state
from shardstore.storage.fsutil import HashingFile, link_into
from shardstore.storage.progress import progress_bar
from shardstore.storage.safefs import open_binary, open_regular

if TYPE_CHECKING:
    from shardstore.reading.reader import Dataset

__all__ = ["LINK_MODES", "FeatureDecl", "index_tfrecords", "parse_feature_arg"]

log = logging.getLogger(__name__)

#: Accepted values of ``index_tfrecords(..., link=...)``.
LINK_MODES: Final = ("auto", "hardlink", "copy")

# os.link failures that mean "this filesystem will not hard-link this file":
# "auto" copies instead. Anything else (no space, read-only destination) is raised.
_NO_LINK_ERRNOS = frozenset(
    {errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}
    | {errno.ENOSYS}
)
_KIND_OF: Final = {"raw": "bytes_list", "int64_list": "int64_list", "float_list": "float_list"}
_SPEC_KEYS: Final = frozenset({"dtype", "shape", "encoding", "key"})


@dataclass(frozen=True)
class FeatureDecl:
    """A declared feature of adopted files.

    Attributes
    ----------
    spec : FeatureSpec
        dtype and per-record shape in the dataset.
    key : str
        The ``Example`` feature key holding it (default: the feature's name).
    encoding : str
        ``"raw"`` (a ``bytes_list`` of one value: the record's little-endian
        C-order bytes), ``"int64_list"`` or ``"float_list"`` (``prod(shape)``
        values, cast to the dtype when read).
    """

    spec: FeatureSpec
    key: str
    encoding: str


# -- declarations ------------------------------------------------------------------------------
def _as_dtype(name: str, value: object) -> np.dtype[Any]:
    if value is None:  # np.dtype(None) is float64: never a silent default
        raise UnsupportedDTypeError(f"feature {name!r}: no dtype given")
    try:
        dtype = np.dtype(value)  # type: ignore[call-overload]
    except (TypeError, ValueError) as exc:
        raise UnsupportedDTypeError(f"feature {name!r}: {value!r} is not a dtype ({exc})") from None
    if dtype.byteorder == ">":
        raise UnsupportedDTypeError(
            f"feature {name!r}: dtype {dtype.str!r} is big-endian; declare the little-endian "
            "dtype (raw bytes in the files must be little-endian)"
        )
    if dtype.newbyteorder("<").str not in SUPPORTED_DTYPES:
        raise UnsupportedDTypeError(
            f"feature {name!r}: dtype {dtype} cannot be stored; shardstore holds bool, "
            "(u)int8-64, float16-64 and complex64/128"
        )
    little: np.dtype[Any] = dtype.newbyteorder("<")
    return little


def _as_shape(name: str, value: object) -> tuple[int, ...]:
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, tuple | list) or not all(
        isinstance(d, int | np.integer) and not isinstance(d, bool) and d >= 0 for d in value
    ):
        raise InvalidInputError(
            f"feature {name!r}: shape must be a tuple of non-negative integers, got {value!r}"
        )
    shape = tuple(int(d) for d in value)
    if math.prod(shape) == 0:
        raise InvalidInputError(f"feature {name!r} has empty records (shape {shape})")
    return shape


def _declare(name: object, value: object) -> FeatureDecl:
    if not isinstance(name, str):
        raise InvalidInputError(f"feature names must be strings, got {name!r}")
    try:
        check_feature_name(name)
    except ManifestError as exc:
        raise InvalidInputError(str(exc)) from None
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - _SPEC_KEYS)
        if unknown:
            raise InvalidInputError(
                f"feature {name!r}: unknown key(s) {unknown}; use {sorted(_SPEC_KEYS)}"
            )
        if "dtype" not in value or "shape" not in value:
            raise InvalidInputError(f"feature {name!r}: give both 'dtype' and 'shape'")
        dtype, shape = value["dtype"], value["shape"]
        encoding, key = value.get("encoding", "raw"), value.get("key", name)
    elif isinstance(value, tuple | list) and len(value) in (2, 3):
        dtype, shape = value[0], value[1]
        encoding, key = (value[2] if len(value) == 3 else "raw"), name
    else:
        raise InvalidInputError(
            f"feature {name!r}: expected (dtype, shape[, encoding]) or a dict with "
            f"'dtype', 'shape' and optionally 'encoding' and 'key', got {value!r}"
        )
    spec = FeatureSpec(_as_dtype(name, dtype), _as_shape(name, shape))
    problem = check_encoding(spec.dtype, encoding)
    if problem is not None:
        raise InvalidInputError(f"feature {name!r}: {problem}")
    if not isinstance(key, str) or not key:
        raise InvalidInputError(f"feature {name!r}: key must be a non-empty string, got {key!r}")
    return FeatureDecl(spec, key, str(encoding))


def _declare_all(features: object) -> dict[str, FeatureDecl]:
    if not isinstance(features, Mapping) or not features:
        raise InvalidInputError(
            "features must be a non-empty mapping name -> (dtype, shape) or "
            "{'dtype', 'shape', 'encoding', 'key'}"
        )
    decls = {str(name): _declare(name, value) for name, value in features.items()}
    keys = [d.key for d in decls.values()]
    if len(set(keys)) != len(keys):
        raise InvalidInputError(f"two features read the same Example key: {keys}")
    return decls


def parse_feature_arg(text: str) -> tuple[str, dict[str, Any]]:
    """Parse a command-line feature declaration ``name:dtype:shape[:encoding]``.

    Parameters
    ----------
    text : str
        e.g. ``"image:uint8:64x64x3"``, ``"label:int64:scalar:int64_list"``.
        ``shape`` is dimensions joined by ``x`` or ``scalar`` (also ``()``).

    Returns
    -------
    (str, dict)
        The name and a declaration ``{"dtype", "shape", "encoding"}`` for
        :func:`index_tfrecords` (which validates the dtype and encoding).

    Raises
    ------
    InvalidInputError
        ``text`` does not have that form.
    """
    parts = text.split(":")
    if len(parts) not in (3, 4) or not all(parts):
        raise InvalidInputError(
            f"bad feature {text!r}: expected NAME:DTYPE:SHAPE[:ENCODING], "
            "e.g. image:uint8:64x64x3 or label:int64:scalar:int64_list"
        )
    name, dtype, shape_text = parts[:3]
    if shape_text.lower() in ("scalar", "()"):
        shape: tuple[int, ...] = ()
    else:
        dims = shape_text.lower().split("x")
        if not all(d.isdigit() for d in dims):
            raise InvalidInputError(
                f"bad shape {shape_text!r} in feature {text!r}: use dimensions joined by 'x' "
                "(e.g. 64x64x3) or 'scalar'"
            )
        shape = tuple(int(d) for d in dims)
    decl: dict[str, Any] = {"dtype": dtype, "shape": shape}
    if len(parts) == 4:
        decl["encoding"] = parts[3]
    return name, decl


# -- checking files ----------------------------------------------------------------------------
def _check_first_record(name: str, data: bytes, decls: Mapping[str, FeatureDecl]) -> None:
    """Raise ``InvalidInputError`` unless ``data`` (an Example) holds every declared feature."""
    try:
        parsed = parse_example(data)
    except InvalidInputError as exc:
        raise InvalidInputError(
            f"{name}: the first record is not a tf.train.Example: {exc}"
        ) from None
    for fname, decl in decls.items():
        where = f"{name}: feature {fname!r}" + (f" (key {decl.key!r})" if decl.key != fname else "")
        if decl.key not in parsed:
            raise InvalidInputError(
                f"{where}: the first record has no such key; it has {sorted(parsed)}"
            )
        kind, values = parsed[decl.key]
        expected = _KIND_OF[decl.encoding]
        if kind != expected:
            hint = {v: k for k, v in _KIND_OF.items()}.get(kind)
            raise InvalidInputError(
                f"{where}: the first record stores it as {kind}; encoding {decl.encoding!r} "
                f"expects {expected}" + (f" (declare encoding {hint!r}?)" if hint else "")
            )
        spec = decl.spec
        if decl.encoding == "raw":
            if len(values) != 1:
                raise InvalidInputError(
                    f"{where}: the first record holds {len(values)} byte strings; encoding "
                    "'raw' expects exactly one"
                )
            if len(values[0]) != spec.record_nbytes:
                raise InvalidInputError(
                    f"{where}: the first record holds {len(values[0])} bytes; a {spec.dtype.name} "
                    f"record of shape {spec.shape} has {spec.record_nbytes}"
                )
            continue
        count = math.prod(d for d in spec.shape if d is not None)
        if len(values) != count:
            raise InvalidInputError(
                f"{where}: the first record holds {len(values)} values; shape {spec.shape} "
                f"needs {count}"
            )
        if decl.encoding == "int64_list" and spec.dtype.str != "<u8":
            lo, hi = (0, 1) if spec.dtype == np.bool_ else (
                int(np.iinfo(spec.dtype).min), int(np.iinfo(spec.dtype).max))  # fmt: skip
            bad = [v for v in values if not lo <= v <= hi]
            if bad:
                raise InvalidInputError(
                    f"{where}: the first record holds {bad[0]}, outside the range of "
                    f"{spec.dtype.name} [{lo}, {hi}]"
                )


@dataclass(frozen=True)
class _Input:
    path: Path
    size: int


def _check_inputs(files: object, decls: Mapping[str, FeatureDecl]) -> list[_Input]:
    """Validate the input files and their first records, before anything is written."""
    if isinstance(files, str | os.PathLike):
        files = [files]
    if not isinstance(files, Iterable) or isinstance(files, bytes | Mapping):
        raise InvalidInputError(f"files must be a sequence of TFRecord file paths, got {files!r}")
    files = list(files)
    if not files:
        raise InvalidInputError("files must be a non-empty sequence of TFRecord file paths")
    inputs: list[_Input] = []
    seen: dict[tuple[int, int], Path] = {}
    for item in files:
        if not isinstance(item, str | os.PathLike):
            raise InvalidInputError(f"files must be paths, got {item!r}")
        path = Path(item)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise InvalidInputError(f"{str(path)!r}: no such file") from None
        except OSError as exc:
            raise InvalidInputError(f"{str(path)!r}: cannot be read: {exc.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise InvalidInputError(f"{str(path)!r} is not a regular file")
        identity = (st.st_dev, st.st_ino)
        if identity in seen:
            raise InvalidInputError(
                f"{str(path)!r} is listed twice (also as {str(seen[identity])!r})"
            )
        seen[identity] = path
        try:
            f = open_binary(path, follow_symlinks=True, damage=False)  # never a FIFO
        except OSError as exc:
            raise InvalidInputError(f"{str(path)!r}: cannot be read: {exc}") from None
        with f:
            first = read_first_record(f, size=st.st_size, name=repr(str(path)))
        if first is None:
            log.warning("%s holds no records", path)
        else:
            _check_first_record(repr(str(path)), first, decls)
        inputs.append(_Input(path, st.st_size))
    return inputs


# -- bringing files in -------------------------------------------------------------------------
def _scan(path: Path, name: str, sink: Callable[[bytearray], None], bar: tqdm[Any]) -> int:
    """Read every framed record of ``path`` (checking lengths and CRCs), pass all bytes to ``sink``.

    Returns the number of records. ``sink`` sees the whole file, in order, in
    pieces of about ``CHUNK_BYTES``.
    """
    count = 0
    pending = bytearray()
    with open_binary(path, buffering=CHUNK_BYTES, follow_symlinks=True, damage=False) as f:
        size = os.fstat(f.fileno()).st_size
        for header, data, footer in iter_frames(f, size=size, name=name):
            pending += header
            pending += data
            pending += footer
            count += 1
            if len(pending) >= CHUNK_BYTES:
                sink(pending)
                bar.update(len(pending))
                pending = bytearray()
    if pending:
        sink(pending)
        bar.update(len(pending))
    return count


def _hard_link(src: Path, dst: Path, *, below: Path, required: bool) -> bool:
    """Hard-link ``src`` as ``dst``; ``False`` if the filesystem refuses and a copy will do."""
    try:
        link_into(src, dst, below=below)
        faults.storage_op("link")
        return True
    except OSError as exc:
        if exc.errno not in _NO_LINK_ERRNOS:
            raise
        if required:
            raise InvalidInputError(
                f"cannot hard-link {str(src)!r} into {str(dst.parent)!r}: {exc.strerror}. "
                "Hard links need both on the same filesystem; use link='copy' or link='auto'",
                params=("link",),
            ) from None
        log.info("cannot hard-link %s (%s); copying it", src, exc.strerror)
        return False


def _adopt_file(
    src: _Input,
    root: Path,
    relpath: str,
    *,
    below: Path,
    link: str,
    fsync: bool,
    bar: tqdm[Any],
) -> tuple[int, int, str, bool]:
    """Bring one file in as ``relpath``; return ``(records, size, checksum, linked)``."""
    target = root / relpath
    name = repr(str(src.path))
    if link != "copy" and _hard_link(src.path, target, below=below, required=link == "hardlink"):
        hasher = new_hasher()
        size = 0

        def absorb(piece: bytearray) -> None:
            nonlocal size
            hasher.update(memoryview(piece))
            size += len(piece)

        # Hash the dataset's own link: exactly the bytes the manifest describes.
        count = _scan(target, name, absorb, bar)
        if fsync:
            fd = open_regular(target, follow_symlinks=True)
            try:
                os.fsync(fd)  # the original may have been written moments ago
            finally:
                os.close(fd)
        return count, size, format_digest(hasher), True
    with HashingFile(target, fsync=fsync, below=below) as out:
        count = _scan(src.path, name, out.write, bar)
    return count, out.size, out.checksum, False


# -- the entry point ---------------------------------------------------------------------------
def index_tfrecords(
    dest: str | os.PathLike[str],
    files: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
    features: Mapping[str, Any],
    *,
    link: str = "auto",
    overwrite: bool = False,
    progress: bool | None = None,
    fsync: bool = True,
    metadata: Mapping[str, Any] | None = None,
) -> Dataset:
    """Build a dataset at ``dest`` over existing TFRecord files, without re-encoding.

    Each file (a TFRecord file of ``tf.train.Example``, uncompressed) becomes
    one shard, in the order given, read by the ``tfrecord`` source. Every
    record's framing and CRC is checked, and the first record of every file is
    decoded and checked against ``features`` before anything is written.

    Parameters
    ----------
    dest : path
        The dataset directory (created if missing).
    files : iterable of paths
        The TFRecord files, in record order (a single path is accepted too).
    features : mapping
        ``name -> (dtype, shape)``, ``(dtype, shape, encoding)`` or
        ``{"dtype": ..., "shape": ..., "encoding": ..., "key": ...}``. The
        ``encoding`` is how the files store the feature: ``"raw"`` (default: a
        ``bytes_list`` holding the record's little-endian C-order bytes, as
        ``arr.tobytes()`` gives them), ``"int64_list"`` (bool and integer
        dtypes) or ``"float_list"`` (float16/32/64), each with ``prod(shape)``
        values. ``key`` is the ``Example`` key (default: ``name``; use it for
        keys such as ``"image/encoded"`` that are not valid feature names).
        Only the declared keys are read; others in the files are ignored.
    link : {"auto", "hardlink", "copy"}
        How files enter the dataset directory (see the module docstring):
        ``"auto"`` hard-links when the filesystem allows it and copies
        otherwise; ``"hardlink"`` fails instead of copying.
    overwrite : bool
        Replace an existing dataset at ``dest`` (atomically) instead of refusing.
    progress : bool, optional
        Show a progress bar (default: only on a terminal).
    fsync : bool
        Flush files to stable storage before committing (default True).
    metadata : mapping, optional
        JSON-serialisable user metadata for the manifest.

    Returns
    -------
    Dataset
        The committed dataset, opened.

    Raises
    ------
    InvalidInputError
        Bad ``features`` (names, dtypes, shapes, an encoding that cannot hold
        the dtype), missing or duplicate files, a file that is not a valid
        TFRecord file (truncated, CRC mismatch, compressed), a first record
        lacking a declared feature or of the wrong kind or size, or a
        ``"hardlink"`` that the filesystem refuses. Raised before anything is
        committed; nothing is left behind.
    UnsupportedDTypeError
        A dtype shardstore cannot hold.
    DatasetExistsError
        A dataset exists at ``dest`` and ``overwrite`` is False.
    """
    from shardstore.storage import require_local

    require_local(dest, "ingest --tfrecord")
    files = [files] if isinstance(files, (str, os.PathLike)) else list(files)
    for location in files:
        if isinstance(location, (str, os.PathLike)):  # other entries: _check_inputs reports them
            require_local(location, "ingest --tfrecord")
    from shardstore._version import __version__
    from shardstore.reading.reader import Dataset

    if link not in LINK_MODES:
        raise InvalidInputError(
            f"link must be one of {', '.join(LINK_MODES)}, got {link!r}", params=("link",)
        )
    decls = _declare_all(features)
    try:
        meta = json.loads(json.dumps(dict(metadata or {}), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"metadata must be JSON-serialisable: {exc}") from None
    root = Path(dest)
    if root.exists() and not root.is_dir():
        raise InvalidInputError(f"{root} exists and is not a directory")
    if not overwrite and (root / MANIFEST_NAME).exists():
        raise DatasetExistsError(
            f"a dataset already exists at {root}; pass overwrite=True to replace it",
            params=("overwrite",),
        )
    inputs = _check_inputs(files, decls)

    version_id = secrets.token_hex(8)
    prefix = f"v-{version_id}"
    # the commit succeeds only if manifest.json is still what it is now
    txn = Transaction(root, version_id, overwrite=overwrite, fsync=fsync, base=manifest_state(root))
    file_info = {n: {"key": d.key, "encoding": d.encoding} for n, d in decls.items()}
    shards: list[ShardEntry] = []
    linked = 0
    total = sum(i.size for i in inputs)
    bar = progress_bar(total=total, desc="ingest", unit="B", enabled=progress)
    try:
        txn.begin()  # files go to .shardstore/staging/v-<id>/, renamed into place at commit
        for index, src in enumerate(inputs):
            relpath = f"{prefix}/{index:06d}{SUFFIX}"
            count, size, checksum, was_linked = _adopt_file(
                src, txn.shard_root, relpath, below=root, link=link, fsync=fsync, bar=bar
            )
            linked += was_linked
            origin = src.path.name.encode("utf-8", "backslashreplace").decode("utf-8")
            info = {"features": file_info, "origin": origin}
            entry = FileEntry(path=relpath, size=size, checksum=checksum, info=info)
            shards.append(ShardEntry(index, TFRecordSource.name, count, (entry,)))
        manifest = Manifest(
            features={n: d.spec for n, d in decls.items()},
            shards=tuple(shards),
            version_id=version_id,
            metadata=meta,
            created_by=f"shardstore {__version__}",
        )
        Manifest.from_json(manifest.to_json())  # publish only what every reader accepts
        txn.commit(manifest)
    except BaseException:
        txn.abort()  # links and copies only: the originals stay
        raise
    finally:
        bar.close()
    log.info(
        "adopted %d TFRecord file(s) into %s: %d records, %d hard-linked, %d copied (version %s)",
        len(inputs),
        root,
        manifest.num_records,
        linked,
        len(inputs) - linked,
        version_id,
    )
    return Dataset(root, manifest)
