"""``shardstore ingest``: existing files (``.npy``, ``.npz``, Zarr, TFRecord) in as a dataset."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from shardstore.cli.output import PROG, _human_bytes, _plural, _source_options, _summary


def _ingest_tfrecords(args: argparse.Namespace, paths: list[str]) -> int:
    """Adopt TFRecord files (:func:`~shardstore.writing.adopt.index_tfrecords`).

    ``paths`` is FILES... DEST.

    The old argument order ``--tfrecord DEST FILES...`` is still understood
    (the last path is then an existing file, which a destination never is).
    """
    from shardstore.errors import InvalidInputError
    from shardstore.writing.adopt import index_tfrecords, parse_feature_arg

    if os.path.isfile(paths[-1]) and not os.path.isfile(paths[0]):
        print(
            f"{PROG}: note: 'ingest --tfrecord DEST FILES...' is the old argument order; "
            "write 'ingest --tfrecord FILES... DEST'",
            file=sys.stderr,
        )
        dest, files = paths[0], paths[1:]
    else:
        *files, dest = paths
    if not args.feature:
        raise InvalidInputError(
            "TFRecord files need --feature NAME:DTYPE:SHAPE[:ENCODING] for each feature"
        )
    for flag, value in (("--labels", args.labels), ("--label-from", args.label_from),
                        ("--member", args.member)):  # fmt: skip
        if value:
            raise InvalidInputError(f"{flag} does not apply to TFRecord files")
    features: dict[str, Any] = {}
    for text in args.feature:
        name, decl = parse_feature_arg(text)
        if name in features:
            raise InvalidInputError(f"feature {name!r} is declared twice")
        features[name] = decl
    ds = index_tfrecords(
        dest,
        files,
        features,
        link=args.link or "auto",
        overwrite=args.overwrite,
        progress=args.progress,
        fsync=args.fsync,
    )

    def same_file(src: str, relpath: str) -> bool:
        try:
            return os.path.samefile(src, ds.path / relpath)
        except OSError:  # the original is gone already: count it as copied
            return False

    linked = sum(
        same_file(src, shard.files[0].path) for src, shard in zip(files, ds.shards, strict=True)
    )
    print(
        f"ingested {_plural(ds.num_shards, 'TFRecord file')} into {ds.location}: "
        f"{_plural(ds.num_records, 'record')}, {_human_bytes(ds.nbytes)}, "
        f"{_plural(len(ds.features), 'feature')} ({linked} hard-linked, "
        f"{ds.num_shards - linked} copied)"
    )
    return 0


def _cmd_ingest(args: argparse.Namespace) -> int:
    """Ingest existing files ``args.srcs`` into ``args.dest`` (:func:`shardstore.ingest`).

    Parameters
    ----------
    args : argparse.Namespace
        ``paths``, ``kind``, ``feature``, the label options, ``member``,
        ``on_error``, ``resume``, the write options, ``link`` (TFRecord only),
        ``overwrite``, ``fsync`` and ``progress``.

    Returns
    -------
    int
        0 once the dataset is committed.
    """
    from shardstore.errors import InvalidInputError
    from shardstore.writing.ingest import ingest

    paths: list[str] = [*args.srcs, args.dest]
    kind = args.kind
    if kind is None and all(p.endswith((".tfrecord", ".tfrecords")) for p in paths[:-1]):
        kind = "tfrecord"
    if kind == "tfrecord":
        return _ingest_tfrecords(args, paths)
    if args.link is not None:
        raise InvalidInputError("--link applies to TFRecord files only")
    feature = "x"
    if args.feature:
        if len(args.feature) > 1 or ":" in args.feature[0]:
            raise InvalidInputError(
                "--feature NAME names the data feature (once); NAME:DTYPE:SHAPE declarations "
                "are for --tfrecord"
            )
        feature = args.feature[0]
    options = _source_options(args.option)
    if args.workers is not None and args.workers < 0:
        raise InvalidInputError(f"--workers must be >= 0, got {args.workers}")
    executor: Any = "threads"
    pool = None
    if args.workers is not None:
        from concurrent.futures import ThreadPoolExecutor

        if args.workers <= 1:
            executor = "serial"
        else:
            executor = pool = ThreadPoolExecutor(args.workers)
    *srcs, dest = paths
    try:
        ds = ingest(
            srcs if len(srcs) > 1 else srcs[0],
            dest,
            kind=kind,
            feature=feature,
            labels=args.labels,
            label_columns=args.label_column or None,
            filename_column=args.filename_column,
            label_from=args.label_from,
            label_feature=args.label_feature,
            members=args.member or None,
            on_error=args.on_error,
            resume=args.resume,
            format=args.format,
            shard_size=args.shard_size,
            records_per_shard=args.records_per_shard,
            overwrite=args.overwrite,
            fsync=args.fsync,
            progress=args.progress,
            executor=executor,
            **options,
        )
    finally:
        if pool is not None:
            pool.shutdown()
    report = ds.metadata.get("ingest", {})
    skipped = report.get("skipped", [])
    count = report.get("skipped_count", 0)
    what = _plural(report["files"], "file") if "files" in report else srcs[0]
    print(
        f"ingested {what} into {ds.location}: {_summary(ds)}, "
        f"{_plural(len(ds.features), 'feature')}"
        + (f"; skipped {_plural(count, 'bad file')}" if count else "")
    )
    for item in skipped:
        print(f"  skipped {item['file']}: {item['reason']}", file=sys.stderr)
    if count > len(skipped):
        print(f"  ... and {count - len(skipped)} more (see the log)", file=sys.stderr)
    return 0
