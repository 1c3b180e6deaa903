"""Ingest the data people already have: ``.npy`` files, a big ``.npy``/``.npz``, Zarr.

:func:`ingest` turns existing files into a dataset, without loading them
whole and without decoding Python objects (which would run code from the files):

``kind="files"``
    One array per ``.npy`` file, one record per file (a glob such as
    ``'raw/*.npy'`` or ``'raw/**/*.npy'``, a directory searched recursively,
    or a list of files). Labels come from a CSV (``labels=``) or from the
    file names (``label_from="parent"`` or a regex). Every file's header is
    checked first; bad files (unreadable, truncated, not ``.npy``, object
    dtype, another shape or dtype than the rest) are reported by name, and
    ``on_error`` decides: ``"fail"`` (default: nothing is written) or
    ``"skip"`` (the others are ingested; the skipped files are listed in the
    dataset's metadata and in the log).
``kind="npy"``
    One big ``.npy`` file, records along its first axis, memory-mapped.
``kind="npz"``
    The arrays of an ``.npz`` (all or ``members=``), aligned on their first
    axis; stored members are memory-mapped, compressed ones streamed.
``kind="zarr"``
    A Zarr array, or the arrays of a Zarr group (all or ``members=``).

The kind is detected when not given: a glob, a directory without Zarr
metadata or several paths are ``files``; a single ``.npy`` is ``npy``, a
``.npz`` is ``npz``, a directory with ``zarr.json`` (or ``.zarray``/``.zgroup``)
is ``zarr``. TFRecord files are adopted by :func:`shardstore.index_tfrecords`
(``shardstore ingest --tfrecord`` on the command line).

Ingestion is **resumable**: an interrupted run (Ctrl-C, a kill, a crash)
leaves its finished shards and a journal in the destination's staging
directory, and running the same ingest again continues from there (see
:mod:`shardstore.writing.resumable`). Shards are written in parallel like
:func:`shardstore.write` (``executor=``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from shardstore.errors import InvalidInputError, ManifestError
from shardstore.format.manifest import FeatureSpec, check_feature_name
from shardstore.registry import get_source
from shardstore.storage.checksum import new_hasher
from shardstore.writing.arrayfiles import (
    ArrayColumn,
    fingerprint_tree,
    open_npy,
    open_npz,
    open_zarr,
)
from shardstore.writing.labels import label_from_name, read_label_table, typed_labels
from shardstore.writing.npyfiles import (
    BadFile,
    FileStack,
    RaggedFileColumn,
    check_npy_files,
    expand_inputs,
    has_magic,
)
from shardstore.writing.resumable import Column, write_resumable
from shardstore.writing.writer import ShardLayout

if TYPE_CHECKING:
    from shardstore.reading.reader import Dataset

__all__ = ["KINDS", "MAX_LISTED_SKIPS", "ON_ERROR", "detect_kind", "ingest"]

log = logging.getLogger(__name__)

#: The input kinds :func:`ingest` reads.
KINDS: Final = ("files", "npy", "npz", "zarr")
#: Accepted values of ``on_error``.
ON_ERROR: Final = ("fail", "skip")
#: Skipped files listed in the metadata (all of them are logged at INFO).
MAX_LISTED_SKIPS: Final = 1000
_ZARR_MARKERS: Final = ("zarr.json", ".zarray", ".zgroup")


def _paths(src: object) -> list[str]:
    if isinstance(src, str | os.PathLike):
        return [os.fspath(src)]
    if isinstance(src, Sequence) and src and all(isinstance(s, str | os.PathLike) for s in src):
        return [os.fspath(s) for s in src]
    raise InvalidInputError(
        f"src must be a path, a glob pattern or a non-empty list of paths, got {src!r}"
    )


def detect_kind(paths: Sequence[str]) -> str:
    """The input kind of ``paths`` (see the module docstring)."""
    if len(paths) > 1 or has_magic(paths[0]):
        if any(p.endswith((".tfrecord", ".tfrecords")) for p in paths):
            raise InvalidInputError(
                "TFRecord files are adopted with shardstore.index_tfrecords "
                "(shardstore ingest --tfrecord FILES... DEST --feature ...)"
            )
        return "files"
    path = Path(paths[0])
    if path.suffix.lower() in (".tfrecord", ".tfrecords"):
        raise InvalidInputError(
            "TFRecord files are adopted with shardstore.index_tfrecords "
            "(shardstore ingest --tfrecord FILES... DEST --feature ...)"
        )
    if path.is_dir():
        return "zarr" if any((path / m).exists() for m in _ZARR_MARKERS) else "files"
    if not path.exists():
        raise InvalidInputError(f"{paths[0]!r}: no such file or directory")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return "npz"
    if suffix == ".npy":
        return "npy"
    raise InvalidInputError(
        f"cannot tell what {paths[0]!r} is; give kind (one of {', '.join(KINDS)})",
        params=("kind",),
    )


@dataclass
class _Inputs:
    """What to write: the columns, their length, a fingerprint for resuming, report data."""

    columns: dict[str, Column]
    num_records: int
    plan: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)
    skipped: list[BadFile] = field(default_factory=list)


def _file_inputs(
    paths: list[str],
    *,
    feature: str,
    labels: str | os.PathLike[str] | None,
    filename_column: str | None,
    label_columns: Sequence[str] | None,
    label_from: str | None,
    label_feature: str,
    on_error: str,
) -> _Inputs:
    if labels is not None and label_from is not None:
        raise InvalidInputError(
            "give labels (a CSV) or label_from, not both", params=("labels", "label_from")
        )
    files = expand_inputs(paths)
    bad: list[BadFile] = []
    raw: dict[str, tuple[str, ...]] = {}
    columns: list[str] = []

    def reject(name: str, reason: str) -> None:
        if on_error == "fail":
            raise InvalidInputError(
                f"{name!r} {reason} (on_error='skip' ingests the other files)",
                params=("on_error",),
            )
        bad.append(BadFile(name, reason))

    if labels is not None:
        table = read_label_table(labels, filename_column=filename_column,
                                 label_columns=label_columns)  # fmt: skip
        columns = table.columns
        for path, name in files:
            values = table.lookup(path, name)
            if values is None:
                reject(name, f"has no row in {str(table.path)!r}")
            elif any(v == "" for v in values):
                reject(name, f"has an empty label in {str(table.path)!r}")
            else:
                raw[name] = values
    elif label_from is not None:
        columns = [label_feature]
        for path, name in files:
            value = label_from_name(path, name, label_from)
            if value is None or value == "":
                reject(name, f"has no label in its name (label_from={label_from!r})")
            else:
                raw[name] = (value,)
    candidates = [(p, n) for p, n in files if not columns or n in raw]
    good, bad_headers, spec = check_npy_files(candidates, on_error=on_error) if candidates else (
        [], [], None)  # fmt: skip
    if spec is None:
        raise InvalidInputError(f"none of the {len(files)} input files can be ingested")
    bad += bad_headers
    out: dict[str, Column] = {
        feature: RaggedFileColumn(good, spec)
        if spec.is_ragged
        else ArrayColumn(FileStack(good, spec), spec)
    }
    info: dict[str, Any] = {"files": len(files)}
    label_plan: list[Any] = []
    if columns:
        typed, classes = typed_labels([raw[f.name] for f in good], columns,
                                      label_feature=label_feature)  # fmt: skip
        for name, arr in typed.items():
            if name in out:
                raise InvalidInputError(f"label feature {name!r} clashes with the data feature")
            out[name] = ArrayColumn(arr, FeatureSpec(arr.dtype, ()))
            digest = new_hasher()
            digest.update(arr.tobytes())
            label_plan.append([name, arr.dtype.str, digest.hexdigest()])
        if classes:
            info["classes"] = classes
        info["labels"] = str(labels) if labels is not None else {"from_name": label_from}
    order = {name: i for i, (_, name) in enumerate(files)}
    bad.sort(key=lambda b: order.get(b.name, len(order)))
    listing = new_hasher()  # the inputs as checked, without keeping a second list of them
    for f in good:
        entry = f"{f.name}\0{os.fspath(f.path)}\0{f.size}\0{f.mtime_ns}\n"
        listing.update(entry.encode("utf-8", "surrogateescape"))
    plan = {"kind": "files", "files": listing.hexdigest(), "labels": label_plan}
    return _Inputs(out, len(good), plan, info, bad)


def _array_inputs(kind: str, path: Path, *, feature: str, members: Sequence[str] | None) -> _Inputs:
    info: dict[str, Any] = {}
    columns: dict[str, Column] = {}
    if kind == "npy":
        if members:
            raise InvalidInputError(
                "members applies to an .npz or a Zarr group, not to one .npy",
                params=("members",),
            )
        columns.update(open_npy(path, feature))
    elif kind == "npz":
        npz, how = open_npz(path, list(members) if members is not None else None)
        columns.update(npz)
        info["read"] = how
    else:
        columns.update(open_zarr(path, feature, list(members) if members is not None else None))
    lengths = {name: int(getattr(col, "num_records", 0)) for name, col in columns.items()}
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{n}: {k}" for n, k in lengths.items())
        raise InvalidInputError(
            f"{str(path)!r}: the arrays have different numbers of records ({detail})"
        )
    plan = {"kind": kind, "path": os.path.abspath(path), "members": list(columns),
            "files": fingerprint_tree(path)}  # fmt: skip
    return _Inputs(columns, next(iter(lengths.values())), plan, info)


def ingest(
    src: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    dest: str | os.PathLike[str],
    *,
    kind: str | None = None,
    feature: str = "x",
    labels: str | os.PathLike[str] | None = None,
    label_columns: Sequence[str] | None = None,
    filename_column: str | None = None,
    label_from: str | None = None,
    label_feature: str = "label",
    members: Sequence[str] | None = None,
    on_error: str = "fail",
    resume: bool = True,
    format: str = "npy",
    shard_size: int | str | None = None,
    records_per_shard: int | None = None,
    overwrite: bool = False,
    metadata: Mapping[str, Any] | None = None,
    fsync: bool = True,
    progress: bool | None = None,
    executor: Any = "threads",
    **options: Any,
) -> Dataset:
    """Ingest existing files into a new dataset at ``dest`` (see the module docstring).

    Parameters
    ----------
    src : path, glob pattern, or list of paths
        The input (``'raw/*.npy'``, ``'raw/'``, ``'big.npy'``, ``'arrays.npz'``,
        ``'store.zarr'``).
    dest : path
        The dataset directory.
    kind : {"files", "npy", "npz", "zarr"}, optional
        The input kind; detected when omitted.
    feature : str
        The data feature's name (``files``, ``npy``, a Zarr array); default ``"x"``.
    labels : path, optional
        ``files``: a CSV with a header row, a file-name column and label
        column(s) (see :mod:`shardstore.writing.labels`).
    label_columns, filename_column : optional
        The CSV's label columns (default: all but the file-name column) and
        file-name column (default: ``filename``, ``file``, ``path``, ``name``,
        ``fname`` or ``image``, else the first).
    label_from : str, optional
        ``files``: ``"parent"`` (the directory name is the class) or a regex
        over the file's relative path (group ``label``, else group 1).
    label_feature : str
        The label feature's name when there is one label column (``"label"``).
    members : list of str, optional
        ``npz``/``zarr`` group: the arrays to ingest (default: all).
    on_error : {"fail", "skip"}
        ``files``: what a bad file does: fail (nothing written) or skip it.
    resume : bool
        Continue an interrupted ingest of the same inputs (default True).
    format, shard_size, records_per_shard, overwrite, metadata, fsync,
    progress, executor, **options :
        As for :func:`shardstore.write`. ``metadata`` is stored with an
        ``"ingest"`` entry added (kind, source, skipped files, classes).

    Returns
    -------
    Dataset
        The committed dataset.

    Raises
    ------
    InvalidInputError
        Unknown kind, no input, a bad file with ``on_error="fail"``, labels
        that cannot be matched, arrays of different lengths...
    UnsupportedDTypeError
        Object (Python objects) or other unsupported dtypes in an ``npy``/``npz``/Zarr input.
    DatasetExistsError
        A dataset exists at ``dest`` and ``overwrite`` is False.
    """
    from shardstore.storage import require_local

    for location in (src,) if isinstance(src, (str, os.PathLike)) else src:
        require_local(location, "ingest")
    require_local(dest, "ingest")
    paths = _paths(src)
    if on_error not in ON_ERROR:
        raise InvalidInputError(
            f"on_error must be 'fail' or 'skip', got {on_error!r}", params=("on_error",)
        )
    if kind is None:
        kind = detect_kind(paths)
    elif kind not in KINDS:
        raise InvalidInputError(
            f"kind must be one of {', '.join(KINDS)}, got {kind!r}", params=("kind",)
        )
    for name in (feature, label_feature):
        try:
            check_feature_name(name)
        except ManifestError as exc:
            raise InvalidInputError(str(exc)) from None
    if kind != "files" and (labels is not None or label_from is not None):
        raise InvalidInputError(
            f"labels and label_from apply to kind='files', not kind={kind!r}",
            params=("labels", "label_from", "kind"),
        )
    if kind != "files" and len(paths) != 1:
        raise InvalidInputError(f"kind={kind!r} reads one path, got {len(paths)}", params=("kind",))
    layout = ShardLayout.create(shard_size, records_per_shard)
    source = get_source(format)
    checked = source.check_options(options)
    if kind == "files":
        inputs = _file_inputs(
            paths,
            feature=feature,
            labels=labels,
            filename_column=filename_column,
            label_columns=label_columns,
            label_from=label_from,
            label_feature=label_feature,
            on_error=on_error,
        )
    else:
        inputs = _array_inputs(kind, Path(paths[0]), feature=feature, members=members)
    rps = layout.records_for(sum(c.spec.mean_record_nbytes for c in inputs.columns.values()))
    for bad in inputs.skipped:
        log.info("skipped %s: %s", bad.name, bad.reason)
    if inputs.skipped:
        log.warning(
            "skipped %d bad input file(s), listed in the dataset's metadata['ingest']['skipped']"
            " (first: %s: %s)",
            len(inputs.skipped),
            inputs.skipped[0].name,
            inputs.skipped[0].reason,
        )
    report: dict[str, Any] = {"kind": kind, "source": paths if len(paths) > 1 else paths[0]}
    report.update(inputs.info)
    if inputs.skipped:
        report["skipped_count"] = len(inputs.skipped)
        report["skipped"] = [b.to_json() for b in inputs.skipped[:MAX_LISTED_SKIPS]]
    try:
        meta = json.loads(json.dumps({"ingest": report, **dict(metadata or {})}, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"metadata must be JSON-serialisable: {exc}") from None
    try:
        return write_resumable(
            Path(dest),
            inputs.columns,
            num_records=inputs.num_records,
            records_per_shard=rps,
            source=source,
            options=checked,
            plan=inputs.plan,
            metadata=meta,
            overwrite=overwrite,
            resume=resume,
            fsync=fsync,
            executor=executor,
            progress=progress,
        )
    finally:
        for column in inputs.columns.values():
            close = getattr(column, "close", None)
            if close is not None:
                close()
