"""``python -m benchmarks`` / ``make bench``: run the suites, write JSON, PNG, README.

Usage::

    python -m benchmarks [--scale 1.0] [--suite read,write,memory,scaling,cold,objstore]
                         [--workload images,tabular] [--repeats 2] [--out benchmarks/results]
                         [--memory-gb 1,4] [--shards 10000] [--manifest-shards 100000]
                         [--objstore-mb 320] [--objstore-random-reads 1000]
                         [--note TEXT] [--publish | --no-publish]

Every run writes ``<out>/<date>.json`` and ``<out>/<date>.png`` and prints the
tables. A complete run (scale 1, every suite and workload), or ``--publish``,
also writes ``<out>/latest.json``/``latest.png``, copies the chart to
``docs/assets/benchmark.png`` and rewrites every bench block and figure of
the pages (``benchmarks.readme.PAGES``: README and docs). ``--scale`` shrinks
everything (records, memory sizes, shard counts) for a quick try.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks.chart import save_chart
from benchmarks.readme import CHART, PAGES, pages, update_readme
from benchmarks.results import (
    INTERNAL_WORDS,
    Row,
    evaluate_targets,
    finish_read,
    finish_write,
    format_report,
    machine_info,
    new_document,
    validate,
)
from benchmarks.workloads import IMAGES, WORKLOADS, make_arrays

__all__ = ["SUITES", "main", "run"]

SUITES = ("read", "write", "memory", "scaling", "cold", "objstore")
MODES = ("sequential", "shuffle", "global")
REPO = Path(__file__).resolve().parent.parent


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _csv(kind: type, choices: tuple[str, ...] | None = None) -> Any:
    def parse(text: str) -> list[Any]:
        items = [kind(part) for part in text.split(",") if part]
        if choices is not None and any(i not in choices for i in items):
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)}")
        return items

    return parse


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--scale", type=float, default=1.0, help="multiply every size (default 1)")
    p.add_argument("--suite", type=_csv(str, SUITES), default=list(SUITES))
    p.add_argument("--workload", type=_csv(str, tuple(WORKLOADS)), default=list(WORKLOADS))
    p.add_argument("--repeats", type=int, default=2, help="timed epochs after the warm-up")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--workdir", type=Path, default=None, help="temporary data (default: TMPDIR)")
    p.add_argument("--memory-gb", type=_csv(float), default=[1.0, 4.0])
    p.add_argument("--memory-modes", type=_csv(str, MODES), default=list(MODES))
    p.add_argument("--shards", type=int, default=10_000, help="shards for time to first batch")
    p.add_argument("--manifest-shards", type=int, default=100_000, help="shards for open()")
    p.add_argument(
        "--cold-gb", type=_csv(float), default=[2.0, 20.0], help="datasets read cold (GB)"
    )
    p.add_argument("--sparse-tb", type=float, default=1.0, help="simulated dataset (TB)")
    p.add_argument(
        "--objstore-mb",
        type=float,
        default=320.0,
        help="the object-storage suite's dataset (MB of objects, times --scale)",
    )
    p.add_argument(
        "--objstore-random-reads",
        type=int,
        default=1000,
        help="ds[i] calls of the object-storage suite (not scaled)",
    )
    p.add_argument(
        "--note",
        type=_user_note,
        default=None,
        help="a caveat shown with the results on the pages users read: describe the machine "
        "(e.g. 'other processes were running'), not who ran the benchmark or why",
    )
    p.add_argument(
        "--readme",
        type=Path,
        action="append",
        help="a page with the bench markers to update (repeatable; default: "
        f"{' and '.join(PAGES)})",
    )
    p.add_argument("--chart", type=Path, default=REPO / CHART, help="where to copy the chart")
    p.add_argument(
        "--publish",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write latest.*, docs/assets/benchmark.png and the pages' bench figures "
        "(default: only after a complete run at scale 1)",
    )
    return p


def _user_note(text: str) -> str:
    """An ``argparse`` type: a note fit for users' pages (no words of how we build things)."""
    found = INTERNAL_WORDS.search(text)
    if found:
        raise argparse.ArgumentTypeError(
            f"the note is shown on the pages users read; {found.group(0)!r} speaks of how "
            "the product is built: describe the machine's load instead (e.g. 'other "
            "processes were running')"
        )
    return text


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    workloads = {name: WORKLOADS[name].scaled(args.scale) for name in args.workload}
    return {
        "scale": args.scale,
        "repeats": args.repeats,
        "suites": args.suite,
        "note": args.note,
        "workloads": {
            w.name: {
                "num_records": w.num_records,
                "batch_size": w.batch_size,
                "record_nbytes": w.record_nbytes,
            }
            for w in workloads.values()
        },
        "memory_gb": [round(g * args.scale, 4) for g in args.memory_gb],
        "memory_modes": args.memory_modes,
        "shards": max(2, round(args.shards * args.scale)),
        "manifest_shards": max(2, round(args.manifest_shards * args.scale)),
        "cold_gb": _cold_sizes(args),
        "sparse_tb": round(args.sparse_tb * args.scale, 4),
        "objstore_mb": round(args.objstore_mb * args.scale, 3),
        "objstore_random_reads": args.objstore_random_reads,
    }


def _cold_sizes(args: argparse.Namespace) -> list[float]:
    """The cold datasets' sizes, scaled, and shrunk to what the disk can hold (said in the log)."""
    sizes = [round(g * args.scale, 3) for g in args.cold_gb]
    where = args.workdir or Path(tempfile.gettempdir())
    free_gb = shutil.disk_usage(where).free / 1e9
    fitted = [min(g, round(free_gb / 2, 1)) for g in sizes]
    if fitted != sizes:
        _log(f"cold: {free_gb:.0f} GB free in {where}: datasets of {fitted} GB instead of {sizes}")
    return fitted


def _read(args: argparse.Namespace, settings: dict[str, Any], workdir: Path) -> list[Row]:
    from benchmarks.read import run_read_suite

    rows = []
    for name in args.workload:
        w = WORKLOADS[name].scaled(args.scale)
        rows += run_read_suite(w, make_arrays(w), workdir, repeats=args.repeats, log=_log)
    finish_read(rows)
    return rows


def _write(args: argparse.Namespace, settings: dict[str, Any], workdir: Path) -> list[Row]:
    from benchmarks.write import run_write_suite

    arrays = make_arrays(IMAGES.scaled(args.scale))
    # writes into the page cache are noisier than reads: one more round than --repeats
    rows = run_write_suite(arrays, workdir, repeats=args.repeats + 1, log=_log)
    finish_write(rows)
    return rows


def _memory(args: argparse.Namespace, settings: dict[str, Any], workdir: Path) -> list[Row]:
    from benchmarks.memory import run_memory_suite

    return run_memory_suite(settings["memory_gb"], args.memory_modes, workdir, log=_log)


def _scaling(args: argparse.Namespace, settings: dict[str, Any], workdir: Path) -> list[Row]:
    from benchmarks.scaling import run_scaling_suite

    return run_scaling_suite(
        workdir,
        shards=settings["shards"],
        modes=MODES,
        log=_log,
        manifest_shards=settings["manifest_shards"],
    )


def _cold(args: argparse.Namespace, settings: dict[str, Any], workdir: Path) -> list[Row]:
    from benchmarks.cold import run_cold_suite

    return run_cold_suite(
        workdir,
        sizes_gb=settings["cold_gb"],
        sparse_tb=settings["sparse_tb"],
        batch_size=IMAGES.batch_size,
        log=_log,
    )


def _objstore(args: argparse.Namespace, settings: dict[str, Any], workdir: Path) -> list[Row]:
    from benchmarks.objstore import RECORD_NBYTES, run_objstore_suite

    return run_objstore_suite(
        workdir,
        num_records=max(256, round(settings["objstore_mb"] * 1e6 / RECORD_NBYTES)),
        repeats=args.repeats,
        random_reads=settings["objstore_random_reads"],
        log=_log,
    )


_RUNNERS = {
    "read": _read,
    "write": _write,
    "memory": _memory,
    "scaling": _scaling,
    "cold": _cold,
    "objstore": _objstore,
}


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Run the chosen suites into a new results document (with each suite's wall time)."""
    settings = _settings(args)
    doc = new_document(machine_info(), settings)
    elapsed: dict[str, float] = {}
    for suite in SUITES:
        if suite in args.suite:
            _log(f"{suite} suite ...")
            t0 = time.perf_counter()
            doc[suite] = _RUNNERS[suite](args, settings, workdir)
            elapsed[suite] = round(time.perf_counter() - t0, 1)
            _log(f"{suite} suite: {elapsed[suite]} s")
    doc["targets"] = evaluate_targets(doc)
    doc["elapsed_s"] = elapsed
    return validate(doc)


def save(
    doc: dict[str, Any], out: Path, *, publish: bool, pages: list[Path], chart: Path
) -> list[Path]:
    """Write the dated JSON and PNG into ``out`` (and publish them); return what was written."""
    out.mkdir(parents=True, exist_ok=True)
    stem = doc["date"].replace(":", "-")
    written = [out / f"{stem}.json", out / f"{stem}.png"]
    written[0].write_text(json.dumps(doc, indent=1) + "\n")
    save_chart(doc, written[1])
    if publish:
        for src, name in ((written[0], "latest.json"), (written[1], "latest.png")):
            shutil.copyfile(src, out / name)
            written.append(out / name)
        chart.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(written[1], chart)
        written.append(chart)
        for page in pages:
            update_readme(page, doc, chart=chart)
            written.append(page)
    return written


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the tables; write the results."""
    args = _parser().parse_args(argv)
    complete = (
        args.scale == 1 and set(args.suite) == set(SUITES) and set(args.workload) == set(WORKLOADS)
    )
    publish = complete if args.publish is None else args.publish
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="shardstore-bench-", dir=args.workdir))
    try:
        doc = run(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(format_report(doc))
    for path in save(
        doc, args.out, publish=publish, pages=args.readme or pages(), chart=args.chart
    ):
        _log(f"wrote {path}")
    if not publish:
        _log(
            "partial run: latest.*, docs/assets/benchmark.png and the pages left alone "
            "(--publish to write them)"
        )
    return 0
