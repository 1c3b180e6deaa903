"""``python -m benchmarks.peers_bench`` / ``make bench-peers``: shardstore against other loaders.

Usage::

    python -m benchmarks.peers_bench [--scale 1.0] [--workload images,tabular]
        [--library grain,lance,webdataset,zarr,streaming] [--repeats 2]
        [--torch-python .venv-torch/bin/python] [--out benchmarks/results]
        [--note TEXT] [--publish | --no-publish]

Per workload (the two of ``make bench``, ``--scale`` shrinks them), in one
run: write shardstore's npy dataset and each library's own format once
(untimed); measure the ``np.load`` floor (before and after every other row:
the better counts), shardstore in order, with ``shuffle=True`` and with
``shuffle="global"``, then each library in every mode it offers. Every row
is one epoch, the best of ``--repeats`` after a warm-up epoch, batches
delivered as TensorFlow tensors and consumed in graph (``Dataset.reduce``).
The warm-up epoch also checks the records: their count, the sum of the
labels and the sum of ``x`` must match what was written.

Libraries that cannot share this interpreter run in their own
(``--torch-python``): a child process on the same machine, in the same
run, which writes and measures that library's rows on the same generated
records. A library that is not installed, or fails, is listed with the
reason and the run goes on.

Each run writes ``<out>/peers-<date>.json``; a complete run (scale 1, both
workloads, every library), or ``--publish``, also writes
``<out>/peers-latest.json`` and rewrites the block between the
``<!-- bench-peers:start -->`` / ``<!-- bench-peers:end -->`` markers of
``docs/benchmarks.md``. ``--render`` only rewrites that block from
``peers-latest.json``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.metadata
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks.readme import replace_block
from benchmarks.results import machine_line, read_row
from benchmarks.workloads import WORKLOADS, Workload, make_arrays

__all__ = [
    "END",
    "LIBRARY_NAMES",
    "PAGE",
    "SCHEMA",
    "START",
    "Expectation",
    "PeerCheckError",
    "expectation",
    "finish",
    "libraries_table",
    "main",
    "measure",
    "new_document",
    "peers_block",
    "peers_tables",
    "summary",
    "summary_table",
    "update_page",
    "validate",
]

SCHEMA = "shardstore-bench-peers/1"
START = "<!-- bench-peers:start -->"
END = "<!-- bench-peers:end -->"
PAGE = "docs/benchmarks.md"
REPO = Path(__file__).resolve().parent.parent
LATEST = "peers-latest.json"
MODES = ("sequential", "shuffle", "global")
#: shardstore's rows: mode -> (label, to_tf options), npy dataset (global: its memmap path)
SHARDSTORE: dict[str, tuple[str, dict[str, Any]]] = {
    "sequential": ("in order", {}),
    "shuffle": ("`shuffle=True`", {"shuffle": True}),
    "global": ('`shuffle="global"`', {"shuffle": "global"}),
}
Row = dict[str, Any]
Log = Callable[[str], None]
#: (count, sum of labels, sum of x in float64)
Expectation = tuple[int, int | None, float | None]

_ROW_KEYS: dict[str, Any] = {
    "workload": str,
    "id": str,
    "library": str,
    "mode": (str, type(None)),
    "approach": str,
    "kind": str,
    "records": int,
    "measured_records": int,
    "seconds": float,
    "records_per_s": float,
    "gb_per_s": float,
    "vs_floor": (float, type(None)),
    "vs_best_peer": (float, type(None)),
    "shardstore_x": (float, type(None)),
}
_KINDS = ("floor", "shardstore", "peer")


class PeerCheckError(AssertionError):
    """A pipeline delivered other records than the ones written (count or checksums differ)."""


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- measuring -----------------------------------------------------------------------------
def expectation(arrays: Mapping[str, Any]) -> Expectation:
    """What one epoch over ``arrays`` must deliver: record count, label sum, ``x`` sum."""
    import numpy as np

    x = arrays["x"]
    total = 0.0
    for lo in range(0, len(x), 4096):  # float64 sums, chunked: no full-size temporary
        total += float(np.sum(x[lo : lo + 4096], dtype=np.float64))
    return len(arrays["label"]), int(np.sum(arrays["label"], dtype=np.int64)), total


def _pair(element: Any) -> tuple[Any, Any]:
    if isinstance(element, dict):
        return element["x"], element["label"]
    x, label = element
    return x, label


def _checked_epoch(tfds: Any) -> Expectation:
    import tensorflow as tf

    def add(acc: tuple[tf.Tensor, ...], element: Any) -> tuple[tf.Tensor, ...]:
        x, label = _pair(element)
        return (
            acc[0] + tf.cast(tf.shape(label)[0], tf.int64),
            acc[1] + tf.reduce_sum(tf.cast(label, tf.int64)),
            acc[2] + tf.reduce_sum(tf.cast(x, tf.float64)),
        )

    zero = (tf.constant(0, tf.int64), tf.constant(0, tf.int64), tf.constant(0.0, tf.float64))
    count, labels, xs = tfds.reduce(zero, add)
    return int(count.numpy()), int(labels.numpy()), float(xs.numpy())


def _same_sum(got: float, want: float) -> bool:
    """Float64 sums of the same float32 values, added in another order (NaN equals NaN)."""
    if math.isnan(want) or math.isnan(got):
        return math.isnan(want) and math.isnan(got)
    return abs(got - want) <= 1e-9 * max(1.0, abs(want))


def _check(got: Expectation, expect: Expectation, what: str) -> None:
    count, labels, xs = expect
    problems = []
    if got[0] != count:
        problems.append(f"{got[0]:,} records instead of {count:,}")
    if labels is not None and got[1] != labels:
        problems.append(f"label sum {got[1]} instead of {labels}")
    if xs is not None and not _same_sum(float(got[2] or 0.0), xs):
        problems.append(f"x sum {got[2]!r} instead of {xs!r}")
    if problems:
        raise PeerCheckError(f"{what} delivered other records: {'; '.join(problems)}")


def measure(
    tfds: Any, expect: Expectation, *, repeats: int, what: str, budget_s: float = 5.0
) -> float:
    """Best seconds of one epoch of ``tfds``, consumed in graph, after a checked warm-up epoch.

    The warm-up epoch sums the records; a difference from ``expect`` (``None``
    entries are not checked) raises :class:`PeerCheckError`. Then ``repeats``
    timed epochs, or fewer once they have taken ``budget_s`` (one at least).
    """
    import tensorflow as tf

    _check(_checked_epoch(tfds), expect, what)

    def count(acc: tf.Tensor, element: Any) -> tf.Tensor:
        return acc + tf.cast(tf.shape(_pair(element)[1])[0], tf.int64)

    times: list[float] = []
    while len(times) < max(1, repeats) and (not times or sum(times) < budget_s):
        t0 = time.perf_counter()
        tfds.reduce(tf.constant(0, tf.int64), count).numpy()
        times.append(time.perf_counter() - t0)
    return min(times)


def make_row(
    workload: Workload,
    *,
    library: str,
    mode: str | None,
    approach: str,
    kind: str,
    records: int,
    measured_records: int,
    seconds: float,
) -> Row:
    """A row of this suite: :func:`benchmarks.results.read_row` plus library, mode, ratio."""
    row = read_row(
        workload.name,
        f"{library}:{mode}" if mode else library,
        approach,
        kind,
        records=records,
        measured_records=measured_records,
        seconds=seconds,
        record_nbytes=workload.record_nbytes,
    )
    row.update(library=library, mode=mode, shardstore_x=None)
    return row


# -- ratios, summary, document ---------------------------------------------------------------
def finish(rows: list[Row]) -> None:
    """Fill the ratios of every row, per workload.

    ``vs_floor``: GB/s over the floor's; ``vs_best_peer``: records/s over the
    fastest peer's in the same mode; ``shardstore_x`` (peer rows): shardstore's
    records/s in the same mode over this row's (above 1: shardstore is ahead).
    """
    for workload in {r["workload"] for r in rows}:
        mine = [r for r in rows if r["workload"] == workload]
        floor = max((r["gb_per_s"] for r in mine if r["kind"] == "floor"), default=None)
        ours = {r["mode"]: r["records_per_s"] for r in mine if r["kind"] == "shardstore"}
        best: dict[str, float] = {}
        for r in mine:
            if r["kind"] == "peer":
                best[r["mode"]] = max(best.get(r["mode"], 0.0), r["records_per_s"])
        for r in mine:
            r["vs_floor"] = r["gb_per_s"] / floor if floor else None
            peer = best.get(r["mode"])
            r["vs_best_peer"] = r["records_per_s"] / peer if peer else None
            mine_rate = ours.get(r["mode"])
            r["shardstore_x"] = (
                mine_rate / r["records_per_s"] if r["kind"] == "peer" and mine_rate else None
            )


def summary(rows: Sequence[Row]) -> list[Row]:
    """Per workload and mode: shardstore against the fastest peer (``ahead``: ratio > 1)."""
    out = []
    for workload in dict.fromkeys(r["workload"] for r in rows):
        for mode in MODES:
            ours = [
                r
                for r in rows
                if (r["workload"], r["kind"], r["mode"]) == (workload, "shardstore", mode)
            ]
            peers = [
                r for r in rows if (r["workload"], r["kind"], r["mode"]) == (workload, "peer", mode)
            ]
            if not ours or not peers:
                continue
            best = max(peers, key=lambda r: float(r["records_per_s"]))
            ratio = ours[0]["records_per_s"] / best["records_per_s"]
            out.append(
                {
                    "workload": workload,
                    "mode": mode,
                    "shardstore_records_per_s": ours[0]["records_per_s"],
                    "best_peer": best["library"],
                    "best_peer_records_per_s": best["records_per_s"],
                    "ratio": ratio,
                    "ahead": ratio > 1.0,
                }
            )
    return out


def new_document(machine: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """An empty results document of this suite, stamped with the current local time."""
    now = datetime.datetime.now().replace(microsecond=0).isoformat()
    return {
        "schema": SCHEMA,
        "date": now,
        "machine": machine,
        "settings": settings,
        "libraries": [],
        "rows": [],
        "summary": [],
    }


def validate(doc: object) -> dict[str, Any]:
    """Return ``doc`` if it is a results document of this suite, else raise ``ValueError``."""
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ValueError(f"not a {SCHEMA} document")
    for key in ("date", "machine", "settings", "libraries", "rows", "summary"):
        if key not in doc:
            raise ValueError(f"missing {key!r}")
    datetime.datetime.fromisoformat(doc["date"])
    if not isinstance(doc["rows"], list) or not isinstance(doc["libraries"], list):
        raise ValueError("rows and libraries must be lists")
    for i, row in enumerate(doc["rows"]):
        for key, types in _ROW_KEYS.items():
            if key not in row:
                raise ValueError(f"rows[{i}]: missing {key!r}")
            value = row[key]
            ok = (
                isinstance(value, int | float) and not isinstance(value, bool)
                if types is float
                else isinstance(value, types)
            )
            if not ok:
                raise ValueError(f"rows[{i}].{key}: unexpected {type(value).__name__}")
        if row["kind"] not in _KINDS:
            raise ValueError(f"rows[{i}].kind: {row['kind']!r} is not one of {list(_KINDS)}")
        if row["mode"] is not None and row["mode"] not in MODES:
            raise ValueError(f"rows[{i}].mode: {row['mode']!r} is not one of {list(MODES)}")
    for i, lib in enumerate(doc["libraries"]):
        for key in ("name", "label", "status"):
            if not isinstance(lib.get(key), str):
                raise ValueError(f"libraries[{i}]: missing {key!r}")
    return doc


# -- markdown ------------------------------------------------------------------------------
def _md_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _row_cells(r: Row) -> list[str]:
    approach = r["approach"]
    if r["measured_records"] < r["records"]:
        approach += f" (on {r['measured_records']:,} records, scaled)"
    return [
        approach,
        f"{r['records_per_s']:,.0f}",
        f"{r['gb_per_s']:.2f}",
        _x(r["vs_floor"]),
        _x(r["shardstore_x"]),
    ]


def peers_tables(doc: dict[str, Any]) -> str:
    """One table per workload: every row, records/s, GB/s, vs floor, shardstore ÷ row."""
    out = []
    for name, spec in doc["settings"].get("workloads", {}).items():
        rows = [r for r in doc["rows"] if r["workload"] == name]
        if not rows:
            continue
        gb = spec["num_records"] * spec["record_nbytes"] / 1e9
        out.append(
            f"**{name}**: {spec['num_records']:,} records of {spec['record_nbytes']:,} B "
            f"({gb:.2f} GB decoded), batch {spec['batch_size']}"
        )
        out.append(
            _md_table(
                ["approach", "records/s", "GB/s", "vs floor", "shardstore ÷ this"],
                (_row_cells(r) for r in rows),
            )
        )
    return "\n\n".join(out)


def summary_table(doc: dict[str, Any]) -> str:
    """shardstore against the fastest peer of each mode."""
    labels = {lib["name"]: lib["label"] for lib in doc["libraries"]}
    rows = (
        [
            s["workload"],
            s["mode"],
            f"{s['shardstore_records_per_s']:,.0f}",
            labels.get(s["best_peer"], s["best_peer"]),
            f"{s['best_peer_records_per_s']:,.0f}",
            f"{s['ratio']:.2f}",
        ]
        for s in doc["summary"]
    )
    return _md_table(
        [
            "workload",
            "mode",
            "shardstore records/s",
            "fastest peer",
            "its records/s",
            "shardstore ÷ peer",
        ],
        rows,
    )


def libraries_table(doc: dict[str, Any]) -> str:
    """Each library: version, the modes it offers, the settings used (or why it is missing)."""
    rows = []
    for lib in doc["libraries"]:
        version = ", ".join(f"{d} {v}" for d, v in lib.get("versions", {}).items()) or "-"
        modes = "; ".join(f"{m}: {what}" for m, what in lib.get("modes", {}).items())
        detail = lib.get("settings", "")
        if lib["status"] != "measured":
            detail = f"**not measured**: {lib.get('reason', lib['status'])}"
        for where, error in lib.get("errors", {}).items():
            detail += f"; **{where} failed**: {error}"
        rows.append([lib["label"], version, modes, detail])
    return _md_table(["library", "version", "modes", "settings"], rows)


def peers_block(doc: dict[str, Any]) -> str:
    """The docs text for ``doc``: how it was measured, the tables, the libraries."""
    s, m = doc["settings"], doc["machine"]
    load = m.get("load_avg")
    parts = [
        f"Measured {machine_line(doc)} with `make bench-peers` (scale {s.get('scale')}"
        + (f", load average {load[0]:.2f} at the start" if load else "")
        + "): one epoch per row, best of "
        f"{s.get('repeats')} after a warm-up epoch that also checks the records, batches "
        "consumed in graph with `Dataset.reduce`; GB/s counts decoded bytes; the floor is "
        "`np.load` of shardstore's npy shard files in the same run. "
        "\"shardstore ÷ this\" divides shardstore's records/s in the same mode by the row's.",
    ]
    if s.get("note"):
        parts.append(f"**Note:** {s['note']}")
    parts += [peers_tables(doc), summary_table(doc), libraries_table(doc)]
    return "\n\n".join(parts)


def update_page(page: Path, doc: dict[str, Any]) -> None:
    """Rewrite the block between the peers markers of ``page`` from ``doc``."""
    block = peers_block(validate(doc))
    page.write_text(replace_block(page.read_text(), block, start=START, end=END))


# -- running ---------------------------------------------------------------------------------
def _shardstore_rows(
    workload: Workload,
    arrays: Mapping[str, Any],
    root: Path,
    expect: Expectation,
    repeats: int,
    log: Log,
) -> tuple[list[Row], Row, Any]:
    import shardstore
    from benchmarks.read import floor_row

    ds = shardstore.write(root / "npy", dict(arrays), format="npy", fsync=False)
    floor = floor_row(workload, ds)
    rows = []
    for mode, (label, options) in SHARDSTORE.items():
        tfds = ds.to_tf(workload.batch_size, features=("x", "label"), seed=0, **options)
        seconds = measure(tfds, expect, repeats=repeats, what=f"shardstore {mode}")
        rows.append(
            make_row(
                workload,
                library="shardstore",
                mode=mode,
                approach=f"shardstore npy, {label}",
                kind="shardstore",
                records=ds.num_records,
                measured_records=ds.num_records,
                seconds=seconds,
            )
        )
        log(_describe(rows[-1]))
    return rows, floor, ds


def library_rows(
    library: Any,
    workload: Workload,
    arrays: Mapping[str, Any],
    workdir: Path,
    repeats: int,
    log: Log,
    errors: dict[str, str] | None = None,
) -> list[Row]:
    """Write ``library``'s format (untimed) and measure every mode it offers, in this process.

    A mode that fails (its records check included) is left out and its error
    recorded in ``errors`` under ``"<workload> <mode>"``; the other modes go on.
    Without ``errors``, the first failure raises.
    """
    n = min(len(arrays["label"]), library.max_records.get(workload.name, len(arrays["label"])))
    subset = {k: v[:n] for k, v in arrays.items()}
    expect = expectation(subset)
    directory = workdir / f"{library.name}-{workload.name}"
    directory.mkdir(parents=True)
    rows = []
    try:
        t0 = time.perf_counter()
        state = library.write(subset, directory, workload.batch_size)
        log(f"  {workload.name}: {library.label}: written in {time.perf_counter() - t0:.1f} s")
        for mode, what in library.modes.items():
            measured, check = n, expect
            prefix = library.prefix_records.get(mode, {}).get(workload.name, n)
            try:
                tfds = library.build(state, mode, workload.batch_size)
                if prefix < n:  # a prefix of the epoch, whole batches, scaled to the whole
                    batches = max(1, prefix // workload.batch_size)
                    measured = min(n, batches * workload.batch_size)
                    tfds, check = tfds.take(batches), (measured, None, None)
                seconds = measure(tfds, check, repeats=repeats, what=f"{library.label} {mode}")
            except Exception as exc:
                if errors is None:
                    raise
                errors[f"{workload.name} {mode}"] = f"{type(exc).__name__}: {exc}"
                log(f"  {workload.name}: {library.label}, {mode} failed: {exc}")
                continue
            rows.append(
                make_row(
                    workload,
                    library=library.name,
                    mode=mode,
                    approach=f"{library.label}: {what}",
                    kind="peer",
                    records=len(arrays["label"]),
                    measured_records=measured,
                    seconds=seconds,
                )
            )
            log(_describe(rows[-1]))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return rows


def _library_info(library: Any) -> dict[str, Any]:
    return {
        "name": library.name,
        "label": library.label,
        "modes": dict(library.modes),
        "settings": library.settings,
        "python": library.python,
        "max_records": dict(library.max_records),
        "prefix_records": {m: dict(w) for m, w in library.prefix_records.items()},
        "versions": {},
        "status": "measured",
        "errors": {},
    }


def _child(
    library: Any,
    python: str,
    args: argparse.Namespace,
    workload: Workload,
    workdir: Path,
    log: Log,
    *,
    timeout_s: float = 3 * 3600,
) -> tuple[list[Row], dict[str, str], dict[str, str]]:
    """Run one library's rows in another interpreter (its own venv).

    Returns its rows, its versions and the errors of the modes that failed.

    A child that fails, or runs past ``timeout_s``, raises ``RuntimeError`` with the
    last lines it printed.
    """
    out = workdir / f"{library.name}-{workload.name}.json"
    command = [
        python, "-m", "benchmarks.peers_bench", "--worker", library.name,
        "--workload", workload.name, "--scale", str(args.scale), "--repeats", str(args.repeats),
        "--rows-out", str(out), "--workdir", str(workdir),
    ]  # fmt: skip
    command += [f"--preload={module}" for module in library.preload]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    try:
        done = subprocess.run(command, cwd=REPO, env=env, check=False, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=timeout_s)  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{python} ran past {timeout_s:.0f} s: {_tail(exc.stdout)}") from exc
    for line in done.stdout.splitlines():
        if line.startswith(f"  {workload.name}: "):
            log(line)
    if done.returncode != 0:
        raise RuntimeError(f"{python} exited with {done.returncode}: {_tail(done.stdout)}")
    result = json.loads(out.read_text())
    return result["rows"], result["versions"], result["errors"]


def _tail(output: str | bytes | None, lines: int = 3) -> str:
    """The last ``lines`` lines of a child's output, without TensorFlow's start-up chatter."""
    text = output.decode(errors="replace") if isinstance(output, bytes) else output or ""
    noise = ("I0000", "W0000", "E0000", "WARNING: All log messages", "To enable the following")
    kept = [line for line in text.strip().splitlines() if not line.startswith(noise)]
    return " | ".join(kept[-lines:])


def _worker(args: argparse.Namespace) -> int:
    """``--worker NAME``: one library's rows on one workload, into ``--rows-out`` (a child)."""
    for module in args.preload:  # before benchmarks.peer_libs imports TensorFlow
        importlib.import_module(module)
    from benchmarks.peer_libs import by_name, versions

    (library,) = by_name([args.worker])
    (name,) = args.workload
    workload = WORKLOADS[name].scaled(args.scale)
    workdir = Path(tempfile.mkdtemp(prefix="peers-", dir=args.workdir))
    errors: dict[str, str] = {}
    try:
        rows = library_rows(
            library, workload, make_arrays(workload), workdir, args.repeats,
            lambda m: print(m, flush=True), errors,
        )  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result = {"rows": rows, "versions": versions(library), "errors": errors}
    args.rows_out.write_text(json.dumps(result))
    return 0


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    workloads = {name: WORKLOADS[name].scaled(args.scale) for name in args.workload}
    return {
        "scale": args.scale,
        "repeats": args.repeats,
        "note": args.note,
        "workloads": {
            w.name: {
                "num_records": w.num_records,
                "batch_size": w.batch_size,
                "record_nbytes": w.record_nbytes,
            }
            for w in workloads.values()
        },
    }


def _machine() -> dict[str, Any]:
    from benchmarks.results import machine_info

    info = machine_info()
    info["load_avg"] = list(os.getloadavg())
    return info


def run(args: argparse.Namespace, workdir: Path, log: Log = _log) -> dict[str, Any]:
    """Every workload, every library, into a new results document."""
    from benchmarks.peer_libs import by_name, versions

    doc = new_document(_machine(), _settings(args))
    libraries = by_name(args.library)
    info = {lib.name: _library_info(lib) for lib in libraries}
    pythons = {"main": sys.executable, "torch": args.torch_python}
    for lib in libraries:
        python = pythons.get(lib.python)
        if lib.python != "main" and not (python and Path(python).exists()):
            info[lib.name].update(
                status="skipped",
                reason=f"no interpreter for it (--{lib.python}-python; `make bench-peers` "
                "builds one)",
            )
            continue
        if lib.python == "main":
            try:
                info[lib.name]["versions"] = versions(lib)
            except importlib.metadata.PackageNotFoundError as exc:
                info[lib.name].update(
                    status="skipped", reason=f"not installed ({exc}): `make bench-peers`"
                )
    for name in args.workload:
        workload = WORKLOADS[name].scaled(args.scale)
        log(f"{name}: {workload.num_records:,} records, batch {workload.batch_size}")
        arrays = make_arrays(workload)
        expect = expectation(arrays)
        root = workdir / f"shardstore-{name}"
        try:
            rows, floor, ds = _shardstore_rows(workload, arrays, root, expect, args.repeats, log)
            for lib in libraries:
                if info[lib.name]["status"] != "measured":
                    continue
                log(f"  {name}: {lib.label} ...")
                errors = info[lib.name]["errors"]
                try:
                    if lib.python == "main":
                        rows += library_rows(
                            lib, workload, arrays, workdir, args.repeats, log, errors
                        )
                    else:
                        got, vers, errs = _child(
                            lib, pythons[lib.python], args, workload, workdir, log
                        )
                        rows += got
                        info[lib.name]["versions"] = vers
                        errors.update(errs)
                except Exception as exc:  # one library failing must not lose the others' rows
                    info[lib.name].update(status="failed", reason=f"{type(exc).__name__}: {exc}")
                    log(f"  {name}: {lib.label} failed: {exc}")
            from benchmarks.read import floor_row

            again = floor_row(workload, ds)  # a busy moment must not lower the floor
            floor = floor if floor["seconds"] <= again["seconds"] else again
        finally:
            shutil.rmtree(root, ignore_errors=True)
        floor.update(library="floor", mode=None, shardstore_x=None)
        log(_describe(floor))
        doc["rows"] += [floor, *rows]
    doc["machine"]["load_avg_end"] = list(os.getloadavg())
    doc["libraries"] = list(info.values())
    finish(doc["rows"])
    doc["summary"] = summary(doc["rows"])
    return validate(doc)


def _describe(row: Row) -> str:
    subset = (
        ""
        if row["measured_records"] == row["records"]
        else f" (on {row['measured_records']:,} records)"
    )
    return (
        f"  {row['workload']}: {row['approach']}{subset}: {row['records_per_s']:,.0f} rec/s, "
        f"{row['gb_per_s']:.2f} GB/s"
    )


def _csv(choices: Sequence[str] | None) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [part for part in text.split(",") if part]
        if not items or (choices is not None and any(i not in choices for i in items)):
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices or ())}")
        return items

    return parse


#: every library of benchmarks.peer_libs.LIBRARIES (named here: a worker must be able to
#: parse its arguments before TensorFlow is imported, see ``--preload``)
LIBRARY_NAMES = ("grain", "lance", "webdataset", "zarr", "streaming")


def _parser() -> argparse.ArgumentParser:
    names = list(LIBRARY_NAMES)
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.peers_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--scale", type=float, default=1.0, help="multiply the records (default 1)")
    p.add_argument("--workload", type=_csv(tuple(WORKLOADS)), default=list(WORKLOADS))
    p.add_argument("--library", type=_csv(names), default=names)
    p.add_argument("--repeats", type=int, default=2, help="timed epochs after the warm-up")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--workdir", type=Path, default=None, help="temporary data (default: TMPDIR)")
    p.add_argument(
        "--torch-python",
        default=str(REPO / ".venv-torch" / "bin" / "python"),
        help="the interpreter of requirements/peers-torch.txt (PyTorch, Streaming, WebDataset)",
    )
    p.add_argument("--note", default=None, help="a caveat printed with the results")
    p.add_argument("--page", type=Path, default=REPO / PAGE, help="the page with the markers")
    p.add_argument(
        "--publish",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"write {LATEST} and the page's block (default: only after a complete run at scale 1)",
    )
    p.add_argument("--render", action="store_true", help=f"only rewrite the block from {LATEST}")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--rows-out", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--preload", action="append", default=[], help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the suite; print the tables; write the results (and publish them)."""
    args = _parser().parse_args(argv)
    if args.worker:
        return _worker(args)
    if args.render:
        update_page(args.page, json.loads((args.out / LATEST).read_text()))
        _log(f"updated {args.page} from {args.out / LATEST}")
        return 0
    complete = (
        args.scale == 1
        and set(args.workload) == set(WORKLOADS)
        and set(args.library) == set(LIBRARY_NAMES)
    )
    publish = complete if args.publish is None else args.publish
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="shardstore-peers-", dir=args.workdir))
    try:
        doc = run(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(peers_block(doc))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"peers-{doc['date'].replace(':', '-')}.json"
    path.write_text(json.dumps(doc, indent=1) + "\n")
    _log(f"wrote {path}")
    if publish:
        shutil.copyfile(path, args.out / LATEST)
        update_page(args.page, doc)
        _log(f"wrote {args.out / LATEST} and {args.page}")
    else:
        _log(f"partial run: {LATEST} and {args.page} left alone (--publish to write them)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
