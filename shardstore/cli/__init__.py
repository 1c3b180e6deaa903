"""The ``shardstore`` command line: inspect, verify, ingest and list plugins.

Usage::

    shardstore info PATH [--json] [--plot PNG]
    shardstore verify PATH [--progress | --no-progress]
    shardstore gc PATH [--grace SECONDS] [--dry-run] [--json]
    shardstore plugins [--json]
    shardstore ingest SRC [SRC ...] DEST [--kind files|npy|npz|zarr|tfrecord] [--labels CSV] ...
    shardstore ingest --tfrecord FILE [FILE ...] DEST --feature NAME:DTYPE:SHAPE[:ENCODING] ...
    shardstore convert SRC DST --format FORMAT [-o KEY=VALUE ...]
    shardstore merge PART [PART ...] DEST [--link auto|hardlink|copy] [--verify]
    shardstore demo [--records N] [--no-train]
    shardstore bench PATH [--batch-size N] [--shuffle false|true|global] [--epochs N] ...
    shardstore --version

Global options (accepted before or after the subcommand): ``-v/--verbose``
turns library logging up to INFO; ``--debug`` lets errors propagate with a
full traceback instead of the one-line ``shardstore: error: ...`` message.

Exit status: 0 on success, 1 when ``verify`` (or ``info``) finds a damaged
file, 2 on any other error (no dataset at the path, an invalid manifest, bad
arguments), 130 when interrupted.

Progress bars (``verify``, ``convert``, ``ingest``, ``bench``) show on a terminal only;
``--progress``/``--no-progress`` force them on or off
(:func:`shardstore.storage.progress.progress_bar`).

This module prints to stdout/stderr because that *is* its user interface;
the library itself reports through :mod:`logging`. Nothing here imports
TensorFlow.
"""

from shardstore.cli.app import main

__all__ = ["main"]
