"""``shardstore bench`` and ``demo``: how fast a dataset reads, end to end."""

from __future__ import annotations

import argparse
import json

from shardstore.api import open as open_dataset
from shardstore.cli.output import _plural


def _cmd_bench(args: argparse.Namespace) -> int:
    """Stream ``args.epochs`` epochs of ``args.path``; print throughput and first-batch times.

    Parameters
    ----------
    args : argparse.Namespace
        ``path``, ``batch_size``, ``shuffle``, ``epochs``, ``source``,
        ``features``, ``seed``, ``progress`` and ``json``.

    Returns
    -------
    int
        0.
    """
    import time

    import tensorflow  # noqa: F401  (imported first: a training job has it loaded already)

    from shardstore.cli.bench import stream_epochs

    t0 = time.perf_counter()
    ds = open_dataset(args.path, source=args.source)
    t1 = time.perf_counter()
    names = tuple(args.features.split(",")) if args.features else tuple(ds.features)
    shuffle: bool | str = "global" if args.shuffle == "global" else args.shuffle == "true"
    tfds = ds.to_tf(args.batch_size, features=names, shuffle=shuffle, seed=args.seed)
    t2 = time.perf_counter()
    record_nbytes = round(sum(ds.features[n].mean_record_nbytes for n in names))
    stats = stream_epochs(
        tfds,
        record_nbytes=record_nbytes,
        epochs=args.epochs,
        total_records=ds.num_records,
        progress=args.progress,
    )
    result = {
        "path": ds.location,
        "source": ds.source_for("random_access").name if shuffle == "global" else ds.source.name,
        "features": list(names),
        "batch_size": args.batch_size,
        "shuffle": shuffle,
        "open_s": t1 - t0,
        "to_tf_s": t2 - t1,
        "epochs": [
            {
                "epoch": s.epoch,
                "records": s.records,
                "seconds": s.seconds,
                "records_per_s": s.records_per_s,
                "gb_per_s": s.gb_per_s,
                "first_batch_s": s.first_batch_s,
            }
            for s in stats
        ],
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    gb = ds.num_records * record_nbytes / 1e9
    lines = [
        f"bench {ds.location}: {_plural(ds.num_records, 'record')} in "
        f"{_plural(ds.num_shards, 'shard')}, {gb:.3f} GB decoded per epoch "
        f"({', '.join(names)}), source {result['source']}, batch {args.batch_size}, "
        f"shuffle={args.shuffle}",
        f"open {t1 - t0:.3f} s, to_tf {t2 - t1:.3f} s",
    ]
    for s in stats:
        lines.append(
            f"epoch {s.epoch}: {s.records_per_s:,.0f} records/s, {s.gb_per_s:.3f} GB/s, "
            f"{s.seconds:.3f} s, time to first batch {s.first_batch_s:.3f} s"
        )
    best = max(stats, key=lambda s: s.records_per_s)
    first = stats[0]
    lines.append(
        f"best epoch (epoch {best.epoch}): {best.records_per_s:,.0f} records/s, "
        f"{best.gb_per_s:.3f} GB/s; epoch {first.epoch}'s time to first batch "
        f"{first.first_batch_s:.3f} s, {t2 - t0 + first.first_batch_s:.3f} s with open and to_tf"
    )
    print("\n".join(lines))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """Run :func:`shardstore.cli.demo.run_demo`, printing its report.

    Parameters
    ----------
    args : argparse.Namespace
        ``out``, ``records``, ``batch_size`` and ``no_train``.

    Returns
    -------
    int
        0.
    """
    from shardstore.cli.demo import run_demo

    run_demo(
        args.out,
        records=args.records,
        batch_size=args.batch_size,
        train=not args.no_train,
        report=print,
    )
    return 0
