"""``shardstore convert`` and ``merge``: datasets in, another dataset out."""

from __future__ import annotations

import argparse

from shardstore.cli.output import _plural, _source_options, _summary


def _cmd_merge(args: argparse.Namespace) -> int:
    """Merge the datasets ``args.parts`` into ``args.dest`` (:func:`shardstore.merge`).

    Parameters
    ----------
    args : argparse.Namespace
        ``paths`` (the parts, then DEST), ``link``, ``verify``, ``overwrite``,
        ``fsync`` and ``progress``.

    Returns
    -------
    int
        0 once the merged dataset is committed.
    """
    from shardstore.writing.merge import merge

    parts, dest = args.parts, args.dest
    ds = merge(
        parts,
        dest,
        link=args.link,
        verify=args.verify,
        overwrite=args.overwrite,
        fsync=args.fsync,
        progress=args.progress,
    )
    print(f"merged {_plural(len(parts), 'part')} into {ds.location}: {_summary(ds)}")
    return 0


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
    from shardstore.writing.convert import convert

    options = _source_options(args.option)
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
    print(f"converted {args.src} -> {ds.location} ({args.format}): {_summary(ds)}")
    return 0
