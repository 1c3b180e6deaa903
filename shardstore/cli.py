"""The ``shardstore`` command line: inspect, verify, ingest and list plugins.

Usage::

    shardstore info PATH [--json]
    shardstore verify PATH [--progress | --no-progress]
    shardstore gc PATH [--grace SECONDS] [--dry-run] [--json]
    shardstore plugins [--json]
    shardstore ingest --tfrecord DEST FILES... --feature NAME:DTYPE:SHAPE[:ENCODING] ...
    shardstore convert SRC DST --format FORMAT [-o KEY=VALUE ...]
    shardstore demo [--records N] [--no-train]
    shardstore --version

Global options (accepted before or after the subcommand): ``-v/--verbose``
turns library logging up to INFO; ``--debug`` lets errors propagate with a
full traceback instead of the one-line ``shardstore: error: ...`` message.

Exit status: 0 on success, 1 when ``verify`` finds a damaged file, 2 on any
other error (no dataset at the path, an invalid manifest, bad arguments).

This module prints to stdout/stderr because that *is* its user interface;
the library itself reports through :mod:`logging`. Nothing here imports
TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from shardstore import __version__
from shardstore.api import open as open_dataset
from shardstore.errors import ChecksumError, ShardStoreError
from shardstore.manifest import FeatureSpec
from shardstore.registry import SourceInfo, available_sources, get_source

__all__ = ["main"]

PROG = "shardstore"

#: Exit status when ``verify`` finds a file that does not match its manifest.
EXIT_DAMAGED = 1
#: Exit status for any other error.
EXIT_ERROR = 2

_Command = Callable[[argparse.Namespace], int]


# -- formatting helpers -------------------------------------------------------------------
def _human_bytes(n: int) -> str:
    """Format a byte count with binary units.

    Parameters
    ----------
    n : int
        A number of bytes.

    Returns
    -------
    str
        ``"512 B"``, ``"12.3 MiB"``, ...
    """
    if n < 1024:
        return f"{n} B"
    value = float(n)
    units = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    for unit in units:
        value /= 1024
        if round(value, 1) < 1024 or unit == units[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def _plural(n: int, word: str) -> str:
    """``"1 shard"``, ``"2 shards"``.

    Parameters
    ----------
    n : int
        The count.
    word : str
        The singular noun.

    Returns
    -------
    str
        The count followed by the noun, pluralised with ``s`` unless ``n == 1``.
    """
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _format_shape(shape: Sequence[int | None]) -> str:
    """Format a per-record shape like a NumPy shape (``()``, ``(2,)``, ``(None, 3)``).

    Parameters
    ----------
    shape : sequence of int or None
        The per-record shape; ``None`` marks a variable dimension.

    Returns
    -------
    str
        The shape as a tuple literal.
    """
    return str(tuple(shape))


def _one_line(exc: BaseException) -> str:
    """The message of ``exc`` on a single line.

    Parameters
    ----------
    exc : BaseException
        The error to describe.

    Returns
    -------
    str
        ``str(exc)`` with line breaks folded into spaces, or the exception's
        type name when it has no message.
    """
    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    return text or type(exc).__name__


def _error(message: str) -> None:
    """Print ``shardstore: error: <message>`` to stderr.

    Parameters
    ----------
    message : str
        What went wrong, on one line.
    """
    print(f"{PROG}: error: {message}", file=sys.stderr)


# -- subcommands --------------------------------------------------------------------------
def _cmd_info(args: argparse.Namespace) -> int:
    """Print a summary of the dataset at ``args.path``.

    Parameters
    ----------
    args : argparse.Namespace
        ``path`` and ``json``.

    Returns
    -------
    int
        0.
    """
    ds = open_dataset(args.path)
    if args.json:
        print(json.dumps(ds.info(), indent=2))
        return 0
    features: dict[str, FeatureSpec] = dict(ds.features)
    lines = [
        f"path:     {ds.path}",
        f"version:  {ds.manifest.version_id}",
        f"records:  {ds.num_records}",
        f"shards:   {ds.num_shards}",
        f"size:     {_human_bytes(ds.nbytes)} ({ds.nbytes} bytes)",
        f"sources:  {', '.join(ds.manifest.sources) or '-'}",
    ]
    if ds.metadata:
        lines.append(f"metadata: {', '.join(sorted(ds.metadata))}")
    lines.append(f"features: {len(features)}")
    name_width = max((len(n) for n in features), default=0)
    dtype_width = max((len(s.dtype.name) for s in features.values()), default=0)
    for name, spec in features.items():
        lines.append(
            f"  {name:<{name_width}}  {spec.dtype.name:<{dtype_width}}  {_format_shape(spec.shape)}"
        )
    print("\n".join(lines))
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    """Re-check the size and checksum of every file of the dataset at ``args.path``.

    Parameters
    ----------
    args : argparse.Namespace
        ``path``, ``progress`` (``None``: a progress bar only on a terminal)
        and ``debug``.

    Returns
    -------
    int
        0 when every file matches its manifest, 1 when one does not.
    """
    ds = open_dataset(args.path)
    try:
        ds.verify(progress=args.progress)
    except ChecksumError as exc:
        if args.debug:
            raise
        print(f"{PROG}: verify FAILED: {_one_line(exc)}", file=sys.stderr)
        return EXIT_DAMAGED
    print(
        f"OK: {_plural(ds.num_records, 'record')}, {_plural(ds.num_shards, 'shard')}, "
        f"{_human_bytes(ds.nbytes)} verified"
    )
    return 0


def _cmd_gc(args: argparse.Namespace) -> int:
    """Collect the garbage of the dataset directory at ``args.path``.

    Parameters
    ----------
    args : argparse.Namespace
        ``path``, ``grace`` (seconds, or ``None`` for the default), ``dry_run``
        and ``json``.

    Returns
    -------
    int
        0.
    """
    from shardstore.api import gc

    report = gc(args.path, grace=args.grace, dry_run=args.dry_run)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
        return 0
    verb = "would remove" if args.dry_run else "removed"
    lines = [f"{verb} {_plural(len(report.removed), 'item')}"]
    if not args.dry_run:
        lines[0] += f", {_human_bytes(report.bytes_freed)} freed"
    lines += [f"  {path}" for path in report.removed]
    if report.kept_retired:
        left = max(seconds for _, seconds in report.kept_retired)
        lines.append(
            f"kept {_plural(len(report.kept_retired), 'superseded version')} "
            f"(grace period: the last one can go in {left / 3600:.1f} h; --grace 0 removes them)"
        )
    if report.in_progress:
        lines.append(f"left alone: {_plural(len(report.in_progress), 'running writer')}")
    print("\n".join(lines))
    return 0


def _describe_plugin(info: SourceInfo) -> dict[str, Any]:
    """Load one source plugin and describe it, recording a load failure instead of raising.

    Parameters
    ----------
    info : SourceInfo
        The installed source, as listed by :func:`shardstore.available_sources`.

    Returns
    -------
    dict
        ``name``, ``distribution``, ``version``, ``target``, ``conflicts``,
        ``capabilities`` (``None`` when the plugin failed to load) and
        ``error`` (the failure's message, or ``None``).
    """
    entry: dict[str, Any] = {
        "name": info.name,
        "distribution": info.distribution,
        "version": info.version,
        "target": info.target,
        "conflicts": list(info.conflicts),
        "capabilities": None,
        "error": None,
    }
    try:
        entry["capabilities"] = dict(get_source(info.name).capabilities())
    except ShardStoreError as exc:
        entry["error"] = _one_line(exc)
    return entry


def _cmd_plugins(args: argparse.Namespace) -> int:
    """List the installed source plugins and their capabilities.

    Parameters
    ----------
    args : argparse.Namespace
        ``json``.

    Returns
    -------
    int
        0, even when some plugins fail to load (they are listed with their error).
    """
    infos = available_sources()
    plugins = [_describe_plugin(infos[name]) for name in sorted(infos)]
    if args.json:
        print(json.dumps({p["name"]: p for p in plugins}, indent=2))
        return 0
    if not plugins:
        print("no shardstore sources installed (`pip install -e .` registers the built-ins)")
        return 0
    blocks = []
    for p in plugins:
        dist = p["distribution"] or "(registered in-process)"
        if p["version"]:
            dist = f"{dist} {p['version']}"
        lines = [
            p["name"],
            f"  distribution: {dist}",
            f"  target:       {p['target']}",
        ]
        if p["error"] is not None:
            lines.append(f"  error:        {p['error']}")
        else:
            flags = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in p["capabilities"].items())
            lines.append(f"  capabilities: {flags}")
        blocks.append("\n".join(lines))
    print("\n".join(blocks))
    failed = sum(p["error"] is not None for p in plugins)
    if failed:
        print(f"{_plural(failed, 'source')} failed to load", file=sys.stderr)
    return 0


def _cmd_ingest(args: argparse.Namespace) -> int:
    """Adopt existing TFRecord files as a dataset (:func:`shardstore.adopt.index_tfrecords`).

    Parameters
    ----------
    args : argparse.Namespace
        ``dest``, ``files``, ``feature`` (``NAME:DTYPE:SHAPE[:ENCODING]``
        strings), ``link``, ``overwrite``, ``fsync`` and ``progress``.

    Returns
    -------
    int
        0 once the dataset is committed.
    """
    import os

    from shardstore.adopt import index_tfrecords, parse_feature_arg
    from shardstore.errors import InvalidInputError

    features: dict[str, Any] = {}
    for text in args.feature:
        name, decl = parse_feature_arg(text)
        if name in features:
            raise InvalidInputError(f"feature {name!r} is declared twice")
        features[name] = decl
    ds = index_tfrecords(
        args.dest,
        args.files,
        features,
        link=args.link,
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
        same_file(src, shard.files[0].path)
        for src, shard in zip(args.files, ds.shards, strict=True)
    )
    print(
        f"ingested {_plural(ds.num_shards, 'TFRecord file')} into {ds.path}: "
        f"{_plural(ds.num_records, 'record')}, {_human_bytes(ds.nbytes)}, "
        f"{_plural(len(ds.features), 'feature')} ({linked} hard-linked, "
        f"{ds.num_shards - linked} copied)"
    )
    return 0


# -- parser ---------------------------------------------------------------------------------
def _build_parser() -> argparse.ArgumentParser:
    """Build the argument parser.

    Returns
    -------
    argparse.ArgumentParser
        The ``shardstore`` parser with its ``info``, ``verify`` and ``plugins``
        subcommands; each sets ``func`` to the function that runs it.
    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Inspect, verify, convert and ingest shardstore datasets; list source plugins.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")

    def add_globals(p: argparse.ArgumentParser, default: Any) -> None:
        # On subparsers the default is SUPPRESS so that an option given before
        # the subcommand is not reset by the subparser's own default.
        p.add_argument(
            "-v", "--verbose", action="store_true", default=default, help="log at INFO level"
        )
        p.add_argument(
            "--debug",
            action="store_true",
            default=default,
            help="show the full traceback of an error instead of a one-line message",
        )

    add_globals(parser, False)
    common = argparse.ArgumentParser(add_help=False)
    add_globals(common, argparse.SUPPRESS)

    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    info = sub.add_parser(
        "info", parents=[common], help="summarise a dataset", description="Summarise a dataset."
    )
    info.add_argument("path", metavar="PATH", help="the dataset directory")
    info.add_argument("--json", action="store_true", help="print the summary as JSON")
    info.set_defaults(func=_cmd_info)

    verify = sub.add_parser(
        "verify",
        parents=[common],
        help="re-check every shard file's size and checksum",
        description="Re-check the size and checksum of every shard file. "
        "Exits 1 if a file is damaged.",
    )
    verify.add_argument("path", metavar="PATH", help="the dataset directory")
    verify.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar (default: only on a terminal)",
    )
    verify.set_defaults(func=_cmd_verify)

    gc = sub.add_parser(
        "gc",
        parents=[common],
        help="delete what crashed writes and superseded versions left behind",
        description="Delete the leftovers of crashed or killed writes at once, and versions "
        "replaced by an overwrite once their grace period has passed (readers that opened "
        "them keep working until then). Never touches the current version or a running "
        "writer's files.",
    )
    gc.add_argument("path", metavar="PATH", help="the dataset directory")
    gc.add_argument(
        "--grace",
        type=float,
        default=None,
        metavar="SECONDS",
        help="keep superseded versions this long after the overwrite "
        "(default: $SHARDSTORE_GC_GRACE_SECONDS or 86400); 0 removes them now",
    )
    gc.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    gc.add_argument("--json", action="store_true", help="print the report as JSON")
    gc.set_defaults(func=_cmd_gc)

    plugins = sub.add_parser(
        "plugins",
        parents=[common],
        help="list installed source plugins",
        description="List installed source plugins and their capabilities.",
    )
    plugins.add_argument("--json", action="store_true", help="print the list as JSON")
    plugins.set_defaults(func=_cmd_plugins)

    ingest = sub.add_parser(
        "ingest",
        parents=[common],
        help="adopt existing TFRecord files as a dataset, without re-encoding",
        description="Build a dataset at DEST over existing TFRecord files of tf.train.Example, "
        "one shard per file, without re-encoding: records are counted and CRC-checked, "
        "checksums computed, and each file hard-linked into DEST (copied when it cannot be).",
    )
    ingest.add_argument(
        "--tfrecord",
        action="store_true",
        required=True,
        help="the FILES are TFRecord files of tf.train.Example (the supported input format)",
    )
    ingest.add_argument("dest", metavar="DEST", help="the dataset directory to create")
    ingest.add_argument("files", metavar="FILES", nargs="+", help="the TFRecord files, in order")
    ingest.add_argument(
        "--feature",
        action="append",
        required=True,
        metavar="NAME:DTYPE:SHAPE[:ENCODING]",
        help="a feature to read, e.g. image:uint8:64x64x3 or label:int64:scalar:int64_list; "
        "SHAPE is dimensions joined by 'x' or 'scalar'; ENCODING is raw (default: the "
        "record's bytes in a bytes_list), int64_list or float_list. Repeat for each feature",
    )
    ingest.add_argument(
        "--link",
        choices=("auto", "hardlink", "copy"),
        default="auto",
        help="hard-link the files into DEST (hardlink), copy them (copy), or hard-link when "
        "possible and copy otherwise (auto, the default)",
    )
    ingest.add_argument(
        "--overwrite", action="store_true", help="replace an existing dataset at DEST"
    )
    ingest.add_argument(
        "--fsync",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="flush to stable storage before committing (default: yes)",
    )
    ingest.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar (default: only on a terminal)",
    )
    ingest.set_defaults(func=_cmd_ingest)

    convert = sub.add_parser(
        "convert",
        parents=[common],
        help="rewrite a dataset with another source format, bit for bit",
        description="Rewrite the dataset at SRC into DST with another source format "
        "(npy, memmap, zarr, tfrecord, or an installed plugin), keeping records, order "
        "and metadata exactly.",
    )
    convert.add_argument("src", metavar="SRC", help="the dataset to read")
    convert.add_argument("dst", metavar="DST", help="the dataset directory to write")
    convert.add_argument("--format", required=True, help="the source that writes DST")
    size = convert.add_mutually_exclusive_group()
    size.add_argument("--shard-size", help="target bytes per shard, e.g. 64MiB")
    size.add_argument("--records-per-shard", type=int, help="records per shard")
    convert.add_argument(
        "-o",
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a source option, e.g. -o compression=lz4 -o chunk_records=256 (repeatable)",
    )
    convert.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    convert.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar (default: only on a terminal)",
    )
    convert.set_defaults(func=_cmd_convert)

    demo = sub.add_parser(
        "demo",
        parents=[common],
        help="write, verify, read and train on a real dataset; print throughput",
        description="End-to-end demo (`make demo`): write a few hundred MB of images, "
        "verify them, read them with to_tf next to the np.load floor, train a small "
        "Keras model for one epoch.",
    )
    demo.add_argument("--out", default=".demo-data/images", help="dataset directory")
    demo.add_argument("--records", type=int, default=8192, help="images to write")
    demo.add_argument("--batch-size", type=int, default=256, help="batch size for reading")
    demo.add_argument("--no-train", action="store_true", help="skip the Keras epoch")
    demo.set_defaults(func=_cmd_demo)
    return parser


def _cmd_demo(args: argparse.Namespace) -> int:
    """Run :func:`shardstore.demo.run_demo`, printing its report.

    Parameters
    ----------
    args : argparse.Namespace
        ``out``, ``records``, ``batch_size`` and ``no_train``.

    Returns
    -------
    int
        0.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from shardstore.demo import run_demo

    run_demo(
        args.out,
        records=args.records,
        batch_size=args.batch_size,
        train=not args.no_train,
        report=print,
    )
    return 0


def _option_value(text: str) -> Any:
    """``"256"`` -> 256, ``"none"`` -> None, anything else stays a string."""
    if text.lower() in ("none", "null"):
        return None
    try:
        return int(text)
    except ValueError:
        return text


def _cmd_convert(args: argparse.Namespace) -> int:
    """Convert ``args.src`` into ``args.dst`` with ``args.format``.

    Parameters
    ----------
    args : argparse.Namespace
        ``src``, ``dst``, ``format``, ``shard_size``, ``records_per_shard``,
        ``option``, ``overwrite`` and ``progress``.

    Returns
    -------
    int
        0.
    """
    from shardstore.convert import convert
    from shardstore.errors import InvalidInputError

    options: dict[str, Any] = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInputError(f"option {item!r} is not KEY=VALUE")
        options[key] = _option_value(value)
    ds = convert(
        args.src,
        args.dst,
        format=args.format,
        shard_size=args.shard_size,
        records_per_shard=args.records_per_shard,
        overwrite=args.overwrite,
        progress=args.progress,
        **options,
    )
    print(
        f"converted {args.src} -> {ds.path} ({args.format}): "
        f"{_plural(ds.num_records, 'record')}, {_plural(ds.num_shards, 'shard')}, "
        f"{_human_bytes(ds.nbytes)}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the ``shardstore`` command line.

    Parameters
    ----------
    argv : list of str, optional
        The arguments, without the program name (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status: 0 on success, 1 when ``verify`` finds a damaged
        file, 2 on any other error, including bad arguments.
    """
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error
        code = exc.code
        if code is None:
            return 0
        return code if isinstance(code, int) else EXIT_ERROR
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    command: _Command = args.func
    try:
        return command(args)
    except (ShardStoreError, OSError) as exc:
        if args.debug:
            raise
        _error(_one_line(exc))
        return EXIT_ERROR
    except KeyboardInterrupt:
        if args.debug:
            raise
        _error("interrupted")
        return 130
