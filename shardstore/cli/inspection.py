"""``shardstore info``, ``verify``, ``gc`` and ``plugins``: look at a dataset, check it, tidy it."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from shardstore.api import open as open_dataset
from shardstore.cli.output import (
    EXIT_DAMAGED,
    PROG,
    _format_shape,
    _human_bytes,
    _one_line,
    _plural,
    _summary,
)
from shardstore.cli.summary import summarize
from shardstore.errors import DamagedFilesError, ShardStoreError
from shardstore.format.manifest import FeatureSpec
from shardstore.registry import SourceInfo, available_sources, get_source


def _cmd_info(args: argparse.Namespace) -> int:
    """Print a summary of the dataset at ``args.path`` (and plot its shards).

    Parameters
    ----------
    args : argparse.Namespace
        ``path``, ``json`` and ``plot`` (a PNG path, or ``None``).

    Returns
    -------
    int
        0, or 1 when a file is missing or has the wrong size (the summary is
        still printed, and one line on stderr names the file).
    """
    ds = open_dataset(args.path)
    summary = summarize(ds)
    if args.plot is not None:
        from shardstore.cli.plot import plot_shards

        summary["plot"] = str(plot_shards(ds, args.plot))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(_format_info(summary, dict(ds.features)))
    checks = summary["checksums"]
    if checks["state"] == "damaged":
        more = len(checks["damaged"]) - 1
        extra = f" (and {_plural(more, 'more problem')}: 'shardstore verify' lists them)"
        print(
            f"{PROG}: info: dataset is DAMAGED: {checks['error']}{extra if more else ''}",
            file=sys.stderr,
        )
        return EXIT_DAMAGED
    return 0


def _format_info(summary: dict[str, Any], features: dict[str, FeatureSpec]) -> str:
    """The human-readable ``info`` report.

    Parameters
    ----------
    summary : dict
        :func:`shardstore.cli.summary.summarize` of the dataset.
    features : dict
        The dataset's feature specs, by name.

    Returns
    -------
    str
        Aligned ``label: value`` lines, then one line per feature.
    """
    nbytes, files = summary["nbytes"], summary["num_files"]
    recs, sizes = summary["shard_records"], summary["shard_nbytes"]
    rows = [
        ("path", summary["path"]),
        ("version", f"{summary['version_id']} (format v{summary['format_version']})"),
        ("records", str(summary["num_records"])),
    ]
    shards = str(summary["num_shards"])
    if summary["num_shards"]:
        per = str(recs["min"]) if recs["min"] == recs["max"] else f"{recs['min']} to {recs['max']}"
        shards += (
            f" ({per} records each; {_human_bytes(sizes['min'])} to "
            f"{_human_bytes(sizes['max'])}, mean {_human_bytes(round(sizes['mean']))})"
        )
    rows.append(("shards", shards))
    rows.append(("on disk", f"{_human_bytes(nbytes)} ({nbytes} bytes) in {_plural(files, 'file')}"))
    decoded = summary["decoded_nbytes"]
    if decoded is None:
        rows.append(("decoded", "unknown (a ragged feature has no length statistics)"))
    elif summary["compression_ratio"] is not None:
        ratio = summary["compression_ratio"]
        rows.append(
            ("decoded", f"{_human_bytes(decoded)}; compression ratio {ratio:.2f} (decoded/on disk)")
        )
    rows.append(("sources", ", ".join(summary["sources"]) or "-"))
    checks = summary["checksums"]
    if checks["state"] == "damaged":
        state = f"DAMAGED: {checks['error']}"
    else:
        state = "sizes OK ('shardstore verify' re-hashes every byte)"
    if checks["block_indexes"] == summary["num_shards"]:
        kind = "per file and per block"
    elif checks["block_indexes"]:
        kind = f"per file, per block in {checks['block_indexes']} shards"
    else:
        kind = "per file (no block index: files are verified whole when first read)"
    rows.append(("checksums", f"{checks['algorithm']} {kind}; {state}"))
    if summary["metadata"]:
        rows.append(("metadata", ", ".join(sorted(summary["metadata"]))))
    if "plot" in summary:
        rows.append(("plot", summary["plot"]))
    rows.append(("features", str(len(features))))
    width = max(len(label) for label, _ in rows) + 2
    lines = [f"{label + ':':<{width}}{value}" for label, value in rows]
    name_width = max((len(n) for n in features), default=0)
    dtype_width = max((len(s.dtype.name) for s in features.values()), default=0)
    shapes = {n: _format_shape(s.shape) for n, s in features.items()}
    shape_width = max((len(s) for s in shapes.values()), default=0)
    for name, spec in features.items():
        if spec.is_fixed:
            per_record = f"{_human_bytes(spec.record_nbytes)} per record"
        elif spec.lengths and spec.lengths["count"]:
            stats = spec.lengths
            per_record = (
                f"ragged: lengths {stats['min']} to {stats['max']}, "
                f"mean {stats['total'] / stats['count']:.1f}"
            )
        else:
            per_record = "ragged"
        lines.append(
            f"  {name:<{name_width}}  {spec.dtype.name:<{dtype_width}}  "
            f"{shapes[name]:<{shape_width}}  {per_record}"
        )
    return "\n".join(lines)


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
    except DamagedFilesError as exc:
        if args.debug:
            raise
        for err in exc.errors:  # every damaged file, one line each, then the summary
            print(f"{PROG}: verify: DAMAGED: {_one_line(err)}", file=sys.stderr)
        damaged = len({(e.shard, e.file) for e in exc.errors})
        print(
            f"{PROG}: verify FAILED: {damaged} of {_plural(exc.checked, 'file')} damaged "
            f"in {ds.location}",
            file=sys.stderr,
        )
        return EXIT_DAMAGED
    print(f"OK: {_summary(ds)} verified")
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
    if report.damaged:
        lines.append(f"left alone, never followed: {_plural(len(report.damaged), 'damaged item')}")
        lines += [f"  {line}" for line in report.damaged]
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
        ``capabilities`` (what a dataset written in this format gets; ``None``
        when the plugin failed to load), ``via`` (capability -> the companion
        source that provides it, e.g. ``{"random_access": "memmap"}`` for
        ``npy``) and ``error`` (the failure's message, or ``None``).
    """
    entry: dict[str, Any] = {
        "name": info.name,
        "distribution": info.distribution,
        "version": info.version,
        "target": info.target,
        "conflicts": list(info.conflicts),
        "capabilities": None,
        "via": {},
        "error": None,
    }
    try:
        source = get_source(info.name)
    except ShardStoreError as exc:
        entry["error"] = _one_line(exc)
        return entry
    capabilities = dict(source.capabilities())
    companion = source.random_access_source
    if not capabilities.get("random_access") and companion is not None:
        # A dataset of this format reads by index through the companion (npy -> memmap).
        try:
            alt = get_source(companion)
        except ShardStoreError:
            alt = None
        if alt is not None and alt.random_access and alt.can_read(info.name):
            capabilities["random_access"] = True
            entry["via"] = {"random_access": companion}
    entry["capabilities"] = capabilities
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
            flags = ", ".join(
                f"{k}={'yes' if v else 'no'}" + (f" (via {p['via'][k]})" if k in p["via"] else "")
                for k, v in p["capabilities"].items()
            )
            lines.append(f"  capabilities: {flags}")
        blocks.append("\n".join(lines))
    print("\n".join(blocks))
    failed = sum(p["error"] is not None for p in plugins)
    if failed:
        print(f"{_plural(failed, 'source')} failed to load", file=sys.stderr)
    return 0
