"""The entry point of the ``shardstore`` command: its parser, ``main``, error wording.

Each command group lives in its own module (:mod:`~shardstore.cli.inspection`,
:mod:`~shardstore.cli.ingest`, :mod:`~shardstore.cli.transform`,
:mod:`~shardstore.cli.measure`); this one builds the parser that routes to them and
turns errors into one line and an exit status.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib.abc
import importlib.util
import logging
import os
import re
import select
import shlex
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from shardstore import __version__
from shardstore.cli.ingest import _cmd_ingest
from shardstore.cli.inspection import _cmd_gc, _cmd_info, _cmd_plugins, _cmd_verify
from shardstore.cli.measure import _cmd_bench, _cmd_demo
from shardstore.cli.output import (
    DATASET_HELP,
    EXIT_DAMAGED,
    EXIT_ERROR,
    EXIT_PIPE_CLOSED,
    PROG,
    _one_line,
)
from shardstore.cli.transform import _cmd_convert, _cmd_merge
from shardstore.errors import ChecksumError, ShardStoreError

__all__ = ["main"]
#: TensorFlow's C++ log threshold (3: fatal only).
_TF_LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL"

_Command = Callable[[argparse.Namespace], int]


# -- library messages in the command line's words ------------------------------------------
#: Library parameters whose option has another name (``members=`` is ``--member``).
_OPTION_ALIASES = {
    "members": "member",
    "label_columns": "label_column",
    "features": "feature",
    "executor": "workers",
}
#: A Python literal as messages spell a value: ``True``, ``'skip'``, ``3``, ``None``.
_PY_VALUE = r"(?:'[^']*'|\"[^\"]*\"|-?[\w.]+)"


def _option_action(command: argparse.ArgumentParser, name: str) -> argparse.Action | None:
    """The ``--option`` of ``command`` that sets the library parameter ``name``, if any.

    Parameters
    ----------
    command : argparse.ArgumentParser
        The subcommand's parser.
    name : str
        A library parameter (``"overwrite"``, ``"on_error"``, ``"members"``).

    Returns
    -------
    argparse.Action or None
        The option storing a value into that parameter's destination (a
        plain ``store`` option is preferred over a constant one, e.g.
        ``--kind`` over ``--tfrecord``), or ``None`` when the command has none.
    """
    dest = _OPTION_ALIASES.get(name, name)
    found = [
        a
        for a in command._actions
        if a.dest == dest and any(o.startswith("--") for o in a.option_strings)
    ]
    found.sort(key=lambda a: isinstance(a, argparse._StoreConstAction))
    return found[0] if found else None


def _long_option(action: argparse.Action) -> str:
    """The first ``--long`` spelling of ``action`` (``--resume`` of ``--resume/--no-resume``)."""
    return next(o for o in action.option_strings if o.startswith("--"))


def _option_setting(action: argparse.Action, value: object) -> str:
    """How the command line sets ``action`` to ``value``.

    Parameters
    ----------
    action : argparse.Action
        The option.
    value : object
        The Python value a message names (``True``, ``'skip'``, ``3``).

    Returns
    -------
    str
        ``--overwrite``, ``--no-resume``, ``--on-error skip``, ``--shuffle true``...
    """
    flag = _long_option(action)
    if isinstance(action, argparse.BooleanOptionalAction):
        return flag if value else f"--no-{flag[2:]}"
    if isinstance(action, argparse._StoreTrueAction):
        return flag if value else f"no {flag}"
    if isinstance(value, bool) and action.choices and str(value).lower() in action.choices:
        text = str(value).lower()
    else:
        text = "none" if value is None else str(value)
    return f"{flag} {shlex.quote(text)}"


def _cli_words(message: str, params: Sequence[str], command: argparse.ArgumentParser) -> str:
    """``message`` with each library parameter it names respelled as ``command``'s option.

    ``pass overwrite=True`` becomes ``pass --overwrite``,
    ``on_error='skip'`` becomes ``--on-error skip``, and a bare
    ``shard_size`` becomes ``--shard-size``. A source option (``-o KEY=VALUE``)
    keeps its ``KEY=VALUE`` spelling behind ``-o``. Parameters the command
    has no option for are left as they are.

    Parameters
    ----------
    message : str
        The error's one-line message.
    params : sequence of str
        The parameters it names (:attr:`shardstore.errors.ShardStoreError.params`).
    command : argparse.ArgumentParser
        The parser of the subcommand that ran.

    Returns
    -------
    str
        The message in the command line's words.
    """
    source_options = _option_action(command, "option") is not None
    for name in params:
        action = _option_action(command, name)
        if action is None and not source_options:
            continue
        setting = re.compile(rf"(?<![\w.-]){re.escape(name)}=({_PY_VALUE})")
        bare = re.compile(rf"(?<![\w.-]){re.escape(name)}\b(?!=)")
        if action is None:  # a source option: -o KEY=VALUE
            message = setting.sub(lambda m: f"-o {m.group(0)}", message)
            message = bare.sub(f"-o {name}", message)
            continue

        def respell(m: re.Match[str], action: argparse.Action = action) -> str:
            try:
                value = ast.literal_eval(m.group(1))
            except (ValueError, SyntaxError):
                value = m.group(1)
            return _option_setting(action, value)

        message = setting.sub(respell, message)
        message = bare.sub(_long_option(action), message)
    return message


class _CliWords(logging.Filter):
    """Respells the parameters a library log record names (``extra={"params": ...}``)."""

    def __init__(self, command: argparse.ArgumentParser) -> None:
        super().__init__()
        self.command = command

    def filter(self, record: logging.LogRecord) -> bool:
        params = getattr(record, "params", None)
        if params:
            record.msg = _cli_words(record.getMessage(), params, self.command)
            record.args = None
        return True


def _error(message: str) -> None:
    """Print ``shardstore: error: <message>`` to stderr.

    Parameters
    ----------
    message : str
        What went wrong, on one line.
    """
    print(f"{PROG}: error: {message}", file=sys.stderr)


# -- parser ---------------------------------------------------------------------------------
class _HelpFormatter(argparse.HelpFormatter):
    """Wraps prose to the terminal but keeps blank lines and indented example lines."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        blocks = []
        for block in textwrap.dedent(text).strip("\n").split("\n\n"):
            if block.startswith(" ") or "\n " in block:  # examples: as written
                blocks.append(textwrap.indent(block, indent))
            else:
                text = " ".join(block.split())
                blocks.append(
                    textwrap.fill(
                        text,
                        width,
                        initial_indent=indent,
                        subsequent_indent=indent,
                        break_on_hyphens=False,
                    )
                )
        return "\n\n".join(blocks)


class _Parser(argparse.ArgumentParser):
    """The parser class of the command and of every subcommand (shared help format)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


_EPILOG = """\
Run 'shardstore COMMAND --help' for the options and examples of a command.

Global options (-v, --debug) go before or after the command. Errors print one
line 'shardstore: error: ...' (--debug shows the traceback). Exit status: 0 on
success, 1 when a file of the dataset is damaged (verify, info), 2 on any other
error, 130 when interrupted."""

#: Examples shown at the end of each command's ``--help``.
_EXAMPLES = {
    "info": """\
examples:
  shardstore info data/train
  shardstore info data/train --json | jq .num_records
  shardstore info data/train --plot shards.png     # needs shardstore[plot]""",
    "verify": """\
examples:
  shardstore verify data/train
  shardstore verify data/train --no-progress && echo intact""",
    "plugins": """\
examples:
  shardstore plugins
  shardstore plugins --json""",
    "ingest": """\
examples:
  shardstore ingest 'raw/*/*.npy' data/train --label-from parent
  shardstore ingest 'raw/*.npy' data/train --labels labels.csv --on-error skip
  shardstore ingest big.npz data/train --member images
  shardstore ingest --tfrecord part-0.tfrecord part-1.tfrecord data/train \\
      --feature image:uint8:64x64x3 --feature label:int64:scalar:int64_list""",
    "merge": """\
examples:
  shardstore merge parts/host-0 parts/host-1 parts/host-2 data/train
  shardstore merge parts/* data/train --link copy --verify""",
    "convert": """\
examples:
  shardstore convert data/train data/train-zarr --format zarr -o compression=lz4
  shardstore convert data/train data/train-tfr --format tfrecord --shard-size 128MiB""",
    "demo": """\
examples:
  shardstore demo --records 2048 --no-train""",
    "bench": """\
examples:
  shardstore bench data/train --epochs 2      # the second epoch reads a warm page cache
  shardstore bench data/train --shuffle global --batch-size 1024 --json""",
    "gc": """\
examples:
  shardstore gc data/train --dry-run        # list what would be deleted
  shardstore gc data/train --grace 0        # delete superseded versions now""",
}


def _add_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar (default: only on a terminal)",
    )


def _add_fsync(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fsync",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="flush to stable storage before committing (default: yes)",
    )


def _add_shard_layout(parser: argparse.ArgumentParser, option_example: str) -> None:
    """``--shard-size`` / ``--records-per-shard`` and repeatable ``-o KEY=VALUE`` options."""
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--shard-size", metavar="SIZE", help="target bytes per shard, e.g. 64MiB")
    size.add_argument("--records-per-shard", metavar="N", type=int, help="records per shard")
    parser.add_argument(
        "-o",
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"a source option, e.g. {option_example} (repeatable)",
    )


def _build_parser() -> argparse.ArgumentParser:
    """Build the argument parser.

    Returns
    -------
    argparse.ArgumentParser
        The ``shardstore`` parser with its ``info``, ``verify`` and ``plugins``
        subcommands; each sets ``func`` to the function that runs it.
    """
    parser = _Parser(
        prog=PROG,
        description="Inspect, verify, convert and ingest shardstore datasets; list source plugins.",
        epilog=_EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")

    def add_globals(parser: argparse.ArgumentParser, default: Any) -> None:
        # On subparsers the default is SUPPRESS so that an option given before
        # the subcommand is not reset by the subparser's own default.
        p = parser.add_argument_group("global options")
        p.add_argument(
            "-v", "--verbose", action="store_true", default=default, help="log at INFO level"
        )
        p.add_argument(
            "--debug",
            action="store_true",
            default=default,
            help="show the full traceback of an error instead of a one-line message, and "
            "TensorFlow's own log messages",
        )

    add_globals(parser, False)
    common = _Parser(add_help=False)
    add_globals(common, argparse.SUPPRESS)

    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_Parser
    )

    info = sub.add_parser(
        "info",
        parents=[common],
        help="summarise a dataset: features, records, shards, sizes, checksums",
        description="Summarise a dataset: its features (dtype, per-record shape), records, "
        "shards, bytes on disk against decoded (the compression ratio), the sources that wrote "
        "it, and whether every file is present with its recorded size (a cheap check; "
        "'shardstore verify' re-hashes every byte). Exits 1 if a file is missing or has the "
        "wrong size.",
    )
    info.add_argument("path", metavar="PATH", help=DATASET_HELP)
    info.add_argument("--json", action="store_true", help="print the summary as JSON")
    info.add_argument(
        "--plot",
        metavar="PNG",
        help="also write a PNG of the bytes and records of every shard (needs matplotlib: "
        "pip install 'shardstore[plot]')",
    )
    info.set_defaults(func=_cmd_info)

    verify = sub.add_parser(
        "verify",
        parents=[common],
        help="re-check every shard file's size and checksum",
        description="Re-check the size and checksum of every shard file. "
        "Exits 1 if a file is damaged.",
    )
    verify.add_argument("path", metavar="PATH", help=DATASET_HELP)
    _add_progress(verify)
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
    gc.add_argument("path", metavar="PATH", help=DATASET_HELP)
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
        description="List installed source plugins and what a dataset written in each format "
        "gets: tf_native (TensorFlow ops only: tf.data service, iterator checkpoints), "
        "random_access (ds[i], shuffle='global'; 'via' names the source that reads it by "
        "index) and supports_ragged (variable-length features).",
    )
    plugins.add_argument("--json", action="store_true", help="print the list as JSON")
    plugins.set_defaults(func=_cmd_plugins)

    ingest = sub.add_parser(
        "ingest",
        parents=[common],
        help="ingest existing files: .npy files, a big .npy/.npz, Zarr, TFRecords",
        description="Turn existing files into a dataset at DEST (the last path). SRC is a "
        "glob of one-array-per-file .npy files ('raw/*.npy', quoted; or a directory, or "
        "several files): one record per file, labels from --labels CSV or --label-from; or one "
        "big .npy (memory-mapped); or an .npz (its arrays as features); or a Zarr array or "
        "group; or TFRecord files of tf.train.Example (--tfrecord, adopted without "
        "re-encoding: hard-linked, or copied when they cannot be). The kind is detected "
        "unless --kind says it. An interrupted ingest resumes when run again.",
    )
    ingest.add_argument("srcs", metavar="SRC", nargs="+", help="the inputs")
    ingest.add_argument("dest", metavar="DEST", help="the dataset directory to write")
    ingest.add_argument(
        "--kind",
        choices=("files", "npy", "npz", "zarr", "tfrecord"),
        default=None,
        help="the input kind (default: detected from SRC)",
    )
    ingest.add_argument(
        "--tfrecord",
        dest="kind",
        action="store_const",
        const="tfrecord",
        help="the inputs are TFRecord files of tf.train.Example (same as --kind tfrecord)",
    )
    ingest.add_argument(
        "--feature",
        action="append",
        default=[],
        metavar="NAME:DTYPE:SHAPE[:ENCODING] | NAME",
        help="TFRecord inputs: a feature to read, e.g. image:uint8:64x64x3 or "
        "label:int64:scalar:int64_list (SHAPE is dimensions joined by 'x' or 'scalar'; "
        "ENCODING is raw (default: the record's bytes in a bytes_list), int64_list or "
        "float_list); repeat for each feature. Other inputs: the data feature's name "
        "(default: x)",
    )
    labels = ingest.add_argument_group("labels (one-array-per-file inputs)")
    labels.add_argument("--labels", metavar="CSV", help="a CSV with a file-name column and labels")
    labels.add_argument(
        "--label-column",
        action="append",
        default=[],
        metavar="COL",
        help="a label column of the CSV (repeatable; default: every column but the file name)",
    )
    labels.add_argument(
        "--filename-column",
        metavar="COL",
        help="the CSV's file-name column (default: filename, file, path, name, fname or image, "
        "else the first)",
    )
    labels.add_argument(
        "--label-from",
        metavar="parent|REGEX",
        help="take the label from the file name: 'parent' (the directory name is the class) "
        "or a regex over the path relative to SRC (group 'label', else group 1)",
    )
    labels.add_argument(
        "--label-feature", default="label", help="the label feature's name (default: label)"
    )
    ingest.add_argument(
        "--member",
        action="append",
        default=[],
        metavar="NAME",
        help="an array of the .npz or Zarr group to ingest (repeatable; default: all)",
    )
    ingest.add_argument(
        "--on-error",
        choices=("fail", "skip"),
        default="fail",
        help="a bad input file (unreadable, object dtype, another shape...): fail and write "
        "nothing (default), or skip it and list it",
    )
    ingest.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue an interrupted ingest of the same inputs (default: yes)",
    )
    ingest.add_argument("--format", default="npy", help="the source that writes DEST (npy)")
    _add_shard_layout(ingest, "-o compression=lz4")
    ingest.add_argument(
        "--workers",
        type=int,
        default=None,
        help="threads writing shards (default: min(4, CPUs); 0 or 1: one at a time)",
    )
    ingest.add_argument(
        "--link",
        choices=("auto", "hardlink", "copy"),
        default=None,
        help="TFRecord inputs: hard-link the files into DEST (hardlink), copy them (copy), or "
        "hard-link when possible and copy otherwise (auto, the default)",
    )
    ingest.add_argument(
        "--overwrite", action="store_true", help="replace an existing dataset at DEST"
    )
    _add_fsync(ingest)
    _add_progress(ingest)
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
    _add_shard_layout(convert, "-o compression=lz4 -o chunk_records=256")
    convert.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    _add_progress(convert)
    convert.set_defaults(func=_cmd_convert)

    merge = sub.add_parser(
        "merge",
        parents=[common],
        help="merge datasets with the same features into one, hard-linking their shards",
        description="Merge the datasets PARTS (written independently, e.g. one per host, with "
        "the same features) into one new dataset at DEST, records in the order of PARTS. Shard "
        "files are hard-linked (copied when they cannot be); checksums are carried over, "
        "copies are hashed and checked. The parts are left as they are.",
    )
    merge.add_argument("parts", metavar="PART", nargs="+", help="the datasets to merge")
    merge.add_argument("dest", metavar="DEST", help="the dataset directory to write")
    merge.add_argument(
        "--link",
        choices=("auto", "hardlink", "copy"),
        default="auto",
        help="hard-link the files (hardlink), copy them (copy), or hard-link when possible "
        "and copy otherwise (auto, the default)",
    )
    merge.add_argument(
        "--verify", action="store_true", help="also re-hash hard-linked files (copies always are)"
    )
    merge.add_argument("--overwrite", action="store_true", help="replace DEST if it exists")
    _add_fsync(merge)
    _add_progress(merge)
    merge.set_defaults(func=_cmd_merge)

    demo = sub.add_parser(
        "demo",
        parents=[common],
        help="write, verify, read and train on a real dataset; print throughput",
        description="End-to-end demo (`make demo`): write a few hundred MB of images, "
        "verify them, read them with to_tf next to the np.load floor, train a small "
        "Keras model for one epoch.",
    )
    demo.add_argument("--out", metavar="DIR", default=".demo-data/images", help="dataset directory")
    demo.add_argument("--records", metavar="N", type=int, default=8192, help="images to write")
    demo.add_argument(
        "--batch-size", metavar="N", type=int, default=256, help="batch size for reading"
    )
    demo.add_argument("--no-train", action="store_true", help="skip the Keras epoch")
    demo.set_defaults(func=_cmd_demo)
    _add_bench_parser(sub, common)
    for name, command in sub.choices.items():
        if command.epilog is None and name in _EXAMPLES:
            command.epilog = _EXAMPLES[name]
    return parser


def _positive(text: str) -> int:
    """An ``argparse`` type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def _add_bench_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """The ``bench`` subcommand's parser."""
    bench = sub.add_parser(
        "bench",
        parents=[common],
        help="measure reading a dataset: records/s, GB/s, time to first batch",
        description="Stream epochs of the dataset at PATH through to_tf, consumed in graph "
        "(as Keras does), with a progress bar; print records/s, decoded GB/s and the time "
        "to first batch of each epoch. Run it twice for a warm page cache.",
    )
    bench.add_argument("path", metavar="PATH", help=DATASET_HELP)
    bench.add_argument(
        "--batch-size", metavar="N", type=_positive, default=256, help="records per batch"
    )
    bench.add_argument(
        "--shuffle",
        choices=("false", "true", "global"),
        default="false",
        help="to_tf's shuffle mode (default: false, records in order)",
    )
    bench.add_argument("--epochs", metavar="N", type=_positive, default=1, help="epochs to stream")
    bench.add_argument(
        "--source", metavar="NAME", default=None, help="read with this source (e.g. memmap)"
    )
    bench.add_argument(
        "--features", default=None, metavar="A,B", help="features to read (default: all)"
    )
    bench.add_argument("--seed", metavar="N", type=int, default=0, help="shuffle seed (default 0)")
    _add_progress(bench)
    bench.add_argument("--json", action="store_true", help="print the results as JSON")
    bench.set_defaults(func=_cmd_bench)


def main(argv: list[str] | None = None) -> int:
    """Run the ``shardstore`` command line.

    Parameters
    ----------
    argv : list of str, optional
        The arguments, without the program name (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status: 0 on success, 1 when the dataset is damaged (a
        ``ChecksumError``: a file that does not match its manifest, an entry
        that is not what belongs there), 2 on any other error, including bad
        arguments.
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
    words = _CliWords(_subcommand(parser, args.command))
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(words)
    try:
        with _quiet_tensorflow(not args.debug):
            status = command(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return status
    except BrokenPipeError as exc:
        if _stdout_is_closed():  # `shardstore info x | head -3`: stop quietly, as Unix tools do
            return EXIT_PIPE_CLOSED
        if args.debug:
            raise
        _error(_one_line(exc))
        return EXIT_ERROR
    except ChecksumError as exc:  # damage, wherever it is found: exit status 1
        if args.debug:
            raise
        _error(_cli_words(_one_line(exc), exc.params, words.command))
        return EXIT_DAMAGED
    except (ShardStoreError, OSError) as exc:
        if args.debug:
            raise
        params = exc.params if isinstance(exc, ShardStoreError) else ()
        _error(_cli_words(_one_line(exc), params, words.command))
        return EXIT_ERROR
    except KeyboardInterrupt:
        if args.debug:
            raise
        _error("interrupted")
        return 130
    except Exception as exc:  # a bug, or an error from a library below us: still one line
        if args.debug:
            raise
        _error(f"{type(exc).__name__}: {_one_line(exc)} (run with --debug for the traceback)")
        return EXIT_ERROR
    finally:
        for handler in handlers:
            handler.removeFilter(words)


def _stdout_is_closed() -> bool:
    """Whether stdout's reader has gone; if so, point stdout at ``/dev/null``.

    After a ``BrokenPipeError`` this tells a closed stdout (``| head``) from
    another pipe breaking: the write end of a pipe whose reader has gone polls
    as an error. Pointing the descriptor at ``/dev/null`` keeps the
    interpreter's last flush at exit from failing again.

    Returns
    -------
    bool
        ``True`` when stdout is a pipe with no reader left.
    """
    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        closed = any(event & select.POLLERR for _, event in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no real descriptor (replaced in-process)
        return False
    if closed:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    return closed


class _QuietImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports TensorFlow with file descriptor 2 pointed at ``/dev/null``.

    TensorFlow's C++ libraries log as they load (oneDNN notices, "could not
    find cuda drivers"), before any setting can silence them; the command
    line does not show that unless ``--debug``. An error in the import still
    raises, and shows once descriptor 2 is back.
    """

    NAME = "tensorflow"

    def __init__(self) -> None:
        self._loader: Any = None

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        """Find ``tensorflow`` with the other finders and load it through this loader."""
        if fullname != self.NAME:
            return None
        self.uninstall()
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        self._loader, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec: Any) -> Any:
        """The module, as the real loader creates it."""
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        """Run ``tensorflow/__init__.py`` with descriptor 2 silenced, then hand back the loader."""
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        try:
            self._loader.exec_module(module)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            module.__loader__ = module.__spec__.loader = self._loader

    def install(self) -> None:
        """Take the next ``import tensorflow`` (nothing if it is imported already)."""
        if self.NAME not in sys.modules and self not in sys.meta_path:
            sys.meta_path.insert(0, self)

    def uninstall(self) -> None:
        """Leave imports alone."""
        if self in sys.meta_path:
            sys.meta_path.remove(self)


@contextlib.contextmanager
def _quiet_tensorflow(enabled: bool) -> Iterator[None]:
    """Keep TensorFlow's C++ logging off the terminal while a command runs (unless ``--debug``).

    ``TF_CPP_MIN_LOG_LEVEL=3`` (errors too: on a CPU machine TensorFlow logs
    a failed CUDA initialisation as an error) and a quiet ``import
    tensorflow``. The environment is the command line's own; the library
    never changes it. Both are undone when the command returns.
    """
    if not enabled:
        yield
        return
    saved = os.environ.get(_TF_LOG_LEVEL)
    os.environ[_TF_LOG_LEVEL] = "3"
    quiet = _QuietImport()
    quiet.install()
    try:
        yield
    finally:
        quiet.uninstall()
        if saved is None:
            os.environ.pop(_TF_LOG_LEVEL, None)
        else:
            os.environ[_TF_LOG_LEVEL] = saved


def _subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The parser of the subcommand ``name`` of ``parser``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            sub: argparse.ArgumentParser = action.choices[name]
            return sub
    raise AssertionError("the parser has no subcommands")  # pragma: no cover
