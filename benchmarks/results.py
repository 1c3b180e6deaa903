"""The results document: rows, ratios, targets, validation and markdown tables.

One JSON document per run (schema ``shardstore-bench/1``)::

    {"schema", "date", "machine": {cpus, ram_gb, ...}, "settings": {...},
     "read": [row], "write": [row], "memory": [row], "scaling": [row], "cold": [row],
     "objstore": [row], "targets": [{"id", "target", "measured", "goal", "met"}]}

Read rows carry ``records_per_s``, ``gb_per_s`` (decoded bytes), ``vs_floor``
and ``vs_best_peer``; a row measured on a subset says so (``measured_records``
< ``records``) and its ``seconds`` is scaled to the full epoch.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = [
    "SCHEMA",
    "Row",
    "cold_table",
    "evaluate_targets",
    "finish_read",
    "finish_write",
    "format_report",
    "goal_label",
    "machine_info",
    "machine_line",
    "memory_table",
    "new_document",
    "objstore_table",
    "read_row",
    "read_tables",
    "scaling_table",
    "targets_table",
    "user_note",
    "validate",
    "write_row",
    "write_table",
]

SCHEMA = "shardstore-bench/1"
Row = dict[str, Any]

_READ_KEYS = {
    "workload": str,
    "id": str,
    "approach": str,
    "kind": str,
    "records": int,
    "measured_records": int,
    "seconds": float,
    "records_per_s": float,
    "gb_per_s": float,
    "vs_floor": (float, type(None)),
    "vs_best_peer": (float, type(None)),
}
_WRITE_KEYS = {
    "id": str,
    "approach": str,
    "kind": str,
    "fsync": bool,
    "files": int,
    "nbytes": int,
    "seconds": float,
    "gb_per_s": float,
    "vs_floor": (float, type(None)),
}
_MEMORY_KEYS = {
    "what": str,
    "mode": str,
    "dataset_gb": float,
    "baseline_anon_mb": float,
    "peak_anon_mb": float,
}
_SCALING_KEYS = {"what": str, "mode": str, "shards": int, "seconds": float}
_COLD_KEYS = {
    "what": str,
    "mode": str,
    "dataset_gb": float,
    "seconds": float,
    "gb_per_s": float,
    "read_bytes": int,
}
_OBJSTORE_KEYS = {
    "what": str,
    "mode": str,
    "seconds": float,
    "nbytes": int,
    "mb_per_s": (float, type(None)),
    "requests": dict,
    "requests_total": int,
    "server": str,
}
_TARGET_KEYS = {
    "id": str,
    "target": str,
    "measured": (float, type(None)),
    "goal": float,
    "met": (bool, type(None)),
}
_KINDS = {"floor", "shardstore", "peer"}
_VERDICT = {True: "met", False: "NOT met", None: "not measured"}


def machine_info() -> dict[str, Any]:
    """CPU count, RAM and software versions of this machine."""
    import numpy
    import tensorflow

    import shardstore

    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    return {
        "cpus": os.cpu_count() or 0,
        "ram_gb": round(ram / 2**30, 1),
        "platform": platform.platform(terse=True),
        "python": platform.python_version(),
        "tensorflow": tensorflow.__version__,
        "numpy": numpy.__version__,
        "shardstore": shardstore.__version__,
    }


def new_document(machine: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """An empty results document stamped with the current local time."""
    now = datetime.datetime.now().replace(microsecond=0).isoformat()
    return {
        "schema": SCHEMA,
        "date": now,
        "machine": machine,
        "settings": settings,
        "read": [],
        "write": [],
        "memory": [],
        "scaling": [],
        "cold": [],
        "objstore": [],
        "targets": [],
    }


def read_row(
    workload: str,
    row_id: str,
    approach: str,
    kind: str,
    *,
    records: int,
    measured_records: int,
    seconds: float,
    record_nbytes: int,
) -> Row:
    """A read measurement: ``measured_records`` read in ``seconds``, scaled to ``records``."""
    rate = measured_records / seconds
    return {
        "workload": workload,
        "id": row_id,
        "approach": approach,
        "kind": kind,
        "records": records,
        "measured_records": measured_records,
        "seconds": seconds * records / measured_records,
        "records_per_s": rate,
        "gb_per_s": rate * record_nbytes / 1e9,
        "vs_floor": None,
        "vs_best_peer": None,
    }


def write_row(
    row_id: str, approach: str, kind: str, *, fsync: bool, files: int, nbytes: int, seconds: float
) -> Row:
    """A write measurement: ``nbytes`` of records into ``files`` files in ``seconds``."""
    return {
        "id": row_id,
        "approach": approach,
        "kind": kind,
        "fsync": fsync,
        "files": files,
        "nbytes": nbytes,
        "seconds": seconds,
        "gb_per_s": nbytes / 1e9 / seconds,
        "vs_floor": None,
    }


def finish_read(rows: list[Row]) -> None:
    """Fill ``vs_floor`` and ``vs_best_peer`` of every read row, per workload."""
    for workload in {r["workload"] for r in rows}:
        mine = [r for r in rows if r["workload"] == workload]
        floor = max((r["gb_per_s"] for r in mine if r["kind"] == "floor"), default=None)
        peer = max((r["gb_per_s"] for r in mine if r["kind"] == "peer"), default=None)
        for r in mine:
            r["vs_floor"] = r["gb_per_s"] / floor if floor else None
            r["vs_best_peer"] = r["gb_per_s"] / peer if peer else None


def finish_write(rows: list[Row]) -> None:
    """Fill ``vs_floor`` of every write row: against the floor with the same ``fsync``."""
    for r in rows:
        floor = [f["gb_per_s"] for f in rows if f["kind"] == "floor" and f["fsync"] == r["fsync"]]
        r["vs_floor"] = r["gb_per_s"] / floor[0] if floor else None


# -- targets ------------------------------------------------------------------------------
def _find(rows: Iterable[Row], **match: Any) -> Row | None:
    for r in rows:
        if all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def _value(row: Row | None, key: str, scale: float = 1.0) -> float | None:
    value = row.get(key) if row else None
    return None if value is None else float(value) * scale


def _ratio(a: Row | None, b: Row | None, key: str = "gb_per_s") -> float | None:
    return a[key] / b[key] if a and b and b[key] else None


def _best(rows: Iterable[Row | None], key: str = "gb_per_s") -> Row | None:
    present = [r for r in rows if r is not None]
    return max(present, key=lambda r: float(r[key])) if present else None


def _target(
    tid: str, text: str, measured: float | None, goal: float, *, below: bool = False
) -> Row:
    met = None if measured is None else (measured < goal if below else measured >= goal)
    return {"id": tid, "target": text, "measured": measured, "goal": goal, "met": met}


def _read_targets(read: list[Row]) -> list[Row]:
    def img(row_id: str) -> Row | None:
        return _find(read, workload="images", id=row_id)

    seq = _best([img("npy:sequential"), img("memmap:sequential")])
    tab = _best(
        [_find(read, workload="tabular", id=i) for i in ("npy:sequential", "memmap:sequential")],
        "records_per_s",
    )
    fts = _find(read, workload="tabular", id="peer:from_tensor_slices")
    return [
        _target(
            "images-seq-floor",
            "images, sequential (npy or memmap) >= 0.9 x floor",
            _value(seq, "vs_floor"),
            0.9,
        ),
        _target(
            "images-seq-load",
            "images, sequential (npy or memmap) >= 2 x Dataset.load",
            _ratio(seq, img("peer:save_load")),
            2.0,
        ),
        _target(
            "images-global-floor",
            "images, shuffle='global' (memmap) >= 0.75 x floor",
            _value(img("npy:global"), "vs_floor"),
            0.75,
        ),
        _target(
            "tabular-seq-rate",
            "tabular, sequential >= 25M records/s (batch 4096)",
            _value(tab, "records_per_s", 1e-6),
            25.0,
        ),
        _target(
            "checksum-cost",
            "checksum cost, first epoch verify='once' vs 'size', worst mode and workload < 10%",
            _checksum_cost(read),
            10.0,
            below=True,
        ),
        _target(
            "tabular-seq-fts",
            "tabular, sequential ~30 x from_tensor_slices (of the same run)",
            _ratio(tab, fts, "records_per_s"),
            30.0,
        ),
        _target(
            "zarr-compressed",
            "images, zarr zstd >= 0.5 x npy (decoded GB/s, in order)",
            _ratio(img("zarr-zstd:sequential"), img("npy:sequential")),
            0.5,
        ),
    ]


def _checksum_cost(read: list[Row]) -> float | None:
    """Worst extra time (%) of a first epoch that hashes every block it reads, over size-only."""
    costs = []
    for r in read:
        if r["id"].startswith("verify:") and r["id"].endswith(":once"):
            size = _find(read, workload=r["workload"], id=r["id"].removesuffix(":once") + ":size")
            if size:
                costs.append(100.0 * (r["seconds"] / size["seconds"] - 1.0))
    return max(costs) if costs else None


def _cold_targets(cold: list[Row]) -> list[Row]:
    epochs = [r for r in cold if r["what"] == "epoch"]
    sizes = sorted({r["dataset_gb"] for r in epochs})
    out = []
    for gb in sizes:
        seq = _find(epochs, mode="sequential", dataset_gb=gb)
        glob = _find(epochs, mode="global", dataset_gb=gb)
        out += [
            _target(
                f"cold-ttfb-{gb:g}",
                f"cold, {gb:.1f} GB: time to first batch < 1 s (worse of in order and global)",
                max((r["first_batch_s"] for r in (seq, glob) if r), default=None),
                1.0,
                below=True,
            ),
            _target(
                f"cold-read-seq-{gb:g}",
                f"cold, {gb:.1f} GB, in order: bytes read <= 1.05 x the dataset",
                _value(seq, "read_vs_dataset"),
                1.05,
                below=True,
            ),
            _target(
                f"cold-read-global-{gb:g}",
                f"cold, {gb:.1f} GB, shuffle='global': bytes read <= 1.5 x the records' bytes",
                _value(glob, "read_vs_records"),
                1.5,
                below=True,
            ),
            _target(
                f"cold-seq-{gb:g}",
                f"cold, {gb:.1f} GB, in order >= 0.9 x cat",
                _value(seq, "vs_floor"),
                0.9,
            ),
            _target(
                f"cold-global-{gb:g}",
                f"cold, {gb:.1f} GB, shuffle='global' >= 0.8 x 16-thread pread",
                _value(glob, "vs_floor"),
                0.8,
            ),
        ]
    for r in cold:
        if r["what"] == "first batch":
            out.append(
                _target(
                    f"cold-ttfb-sparse-{r['mode'].split(',')[0]}",
                    f"time to first batch, simulated {r['dataset_gb'] / 1000:.1f} TB "
                    f"({r['shards']:,} shards), {r['mode'].split(',')[0]} < 1 s",
                    r["seconds"],
                    1.0,
                    below=True,
                )
            )
    return out


def _write_targets(write: list[Row]) -> list[Row]:
    npy = [_find(write, id="npy", fsync=f) for f in (True, False)]
    ours = _find(write, id="tfrecord", fsync=False)
    usual = _find(write, id="peer:TFRecordWriter")
    worst_npy = min((r["vs_floor"] for r in npy if r and r["vs_floor"]), default=None)
    return [
        _target(
            "write-npy",
            "write npy >= 0.7 x np.save floor (same fsync; worse of on/off)",
            worst_npy,
            0.7,
        ),
        _target(
            "write-tfrecord",
            "write tfrecord (fsync off) > TFRecordWriter loop (ratio > 1)",
            _ratio(ours, usual),
            1.0,
        ),
    ]


def _memory_targets(memory: list[Row]) -> list[Row]:
    streams = [r for r in memory if r["what"] == "stream"]
    growth = []
    for mode in sorted({r["mode"] for r in streams}):
        sizes = sorted((r for r in streams if r["mode"] == mode), key=lambda r: r["dataset_gb"])
        if len(sizes) >= 2:
            growth.append(sizes[-1]["peak_anon_mb"] - sizes[0]["peak_anon_mb"])
    writes = [r for r in memory if r["what"] == "write"]
    biggest = max(writes, key=lambda r: r["dataset_gb"], default=None)
    return [
        _target(
            "memory-stream",
            "streaming: peak anon RSS, largest - smallest dataset < 100 MB (worst mode)",
            max(growth) if growth else None,
            100.0,
            below=True,
        ),
        _target(
            "memory-write",
            "write() from the largest memmap: peak anon RSS < 1024 MB",
            _value(biggest, "peak_anon_mb"),
            1024.0,
            below=True,
        ),
    ]


def _scaling_targets(scaling: list[Row]) -> list[Row]:
    ttfb = _find(scaling, what="first batch", mode="sequential")
    opened = _find(scaling, what="open")
    return [
        _target(
            "ttfb-10k",
            f"time to first batch, {ttfb['shards'] if ttfb else 10000} shards, sequential < 1 s",
            _value(ttfb, "seconds"),
            1.0,
            below=True,
        ),
        _target(
            "open-100k",
            f"open() of a {opened['shards'] if opened else 100000}-shard manifest < 2 s",
            _value(opened, "seconds"),
            2.0,
            below=True,
        ),
    ]


def _objstore_targets(objstore: list[Row]) -> list[Row]:
    if not objstore:
        return []
    cold = _find(objstore, what="epoch", vs_what="GET floor")
    warm = _find(objstore, what="epoch", vs_what="local dataset")
    write = _find(objstore, what="write")
    return [
        _target(
            "objstore-cold",
            "object storage, first epoch from an empty cache (shuffle=True) >= 0.8 x GET floor",
            _value(cold, "vs"),
            0.8,
        ),
        _target(
            "objstore-warm",
            "object storage, epoch from the warm cache >= 0.9 x the same dataset local",
            _value(warm, "vs"),
            0.9,
        ),
        _target(
            "objstore-write",
            "object storage, shardstore.write >= 0.7 x multipart PUT floor",
            _value(write, "vs"),
            0.7,
        ),
    ]


def evaluate_targets(doc: dict[str, Any]) -> list[Row]:
    """Every goal with its measured value and whether it is met (None: not measured)."""
    return (
        _read_targets(doc["read"])
        + _write_targets(doc["write"])
        + _memory_targets(doc["memory"])
        + _scaling_targets(doc["scaling"])
        + _cold_targets(doc.get("cold", []))
        + _objstore_targets(doc.get("objstore", []))
    )


# -- validation ---------------------------------------------------------------------------
def _check_rows(rows: object, keys: dict[str, Any], where: str) -> None:
    if not isinstance(rows, list):
        raise ValueError(f"{where}: expected a list")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{where}[{i}]: expected an object")
        for key, types in keys.items():
            value = row.get(key, KeyError)
            if value is KeyError:
                raise ValueError(f"{where}[{i}]: missing {key!r}")
            if isinstance(value, bool) and types in (int, float):
                raise ValueError(f"{where}[{i}].{key}: expected a number, got {value!r}")
            ok = isinstance(value, int | float) if types is float else isinstance(value, types)
            if not ok:
                raise ValueError(f"{where}[{i}].{key}: unexpected {type(value).__name__}")
        if "kind" in keys and row["kind"] not in _KINDS:
            raise ValueError(f"{where}[{i}].kind: {row['kind']!r} is not one of {sorted(_KINDS)}")


def validate(doc: object) -> dict[str, Any]:
    """Return ``doc`` if it is a results document of this schema, else raise ``ValueError``."""
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ValueError(f"not a {SCHEMA} document")
    for key in ("date", "machine", "settings"):
        if key not in doc:
            raise ValueError(f"missing {key!r}")
    datetime.datetime.fromisoformat(doc["date"])
    for key in ("cpus", "ram_gb"):
        if not isinstance(doc["machine"].get(key), int | float):
            raise ValueError(f"machine.{key}: expected a number")
    _check_rows(doc.get("read"), _READ_KEYS, "read")
    _check_rows(doc.get("write"), _WRITE_KEYS, "write")
    _check_rows(doc.get("memory"), _MEMORY_KEYS, "memory")
    _check_rows(doc.get("scaling"), _SCALING_KEYS, "scaling")
    _check_rows(doc.get("cold", []), _COLD_KEYS, "cold")
    _check_rows(doc.get("objstore", []), _OBJSTORE_KEYS, "objstore")
    _check_rows(doc.get("targets"), _TARGET_KEYS, "targets")
    return doc


# -- markdown -----------------------------------------------------------------------------
def _md_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _read_cells(r: Row) -> list[str]:
    label = r["approach"]
    if r["measured_records"] < r["records"]:
        label += f" (on {r['measured_records']:,} records, scaled)"
    return [
        label,
        f"{r['records_per_s']:,.0f}",
        f"{r['gb_per_s']:.2f}",
        _x(r["vs_floor"]),
        _x(r["vs_best_peer"]),
    ]


def read_tables(doc: dict[str, Any]) -> str:
    """One markdown table per workload: records/s, GB/s, vs floor, vs best peer."""
    out = []
    for workload, spec in doc["settings"].get("workloads", {}).items():
        rows = [r for r in doc["read"] if r["workload"] == workload]
        if not rows:
            continue
        gb = spec["num_records"] * spec["record_nbytes"] / 1e9
        out.append(
            f"**{workload}**: {spec['num_records']:,} records of {spec['record_nbytes']:,} B "
            f"({gb:.2f} GB decoded), batch {spec['batch_size']}"
        )
        out.append(
            _md_table(
                ["approach", "records/s", "GB/s", "vs floor", "vs best peer"],
                (_read_cells(r) for r in rows),
            )
        )
    return "\n\n".join(out)


def write_table(doc: dict[str, Any]) -> str:
    """Write throughput: GB/s and ratio to the np.save floor with the same fsync setting."""
    rows = (
        [
            r["approach"],
            "on" if r["fsync"] else "off",
            str(r["files"]),
            f"{r['gb_per_s']:.2f}",
            _x(r["vs_floor"]),
        ]
        for r in doc["write"]
    )
    return _md_table(["write (images workload)", "fsync", "files", "GB/s", "vs floor"], rows)


def memory_table(doc: dict[str, Any]) -> str:
    """Anonymous RSS (baseline after setup, peak during the run) per size and mode."""
    rows = (
        [
            r["what"],
            r["mode"],
            f"{r['dataset_gb']:.2f}",
            f"{r['baseline_anon_mb']:.0f}",
            f"{r['peak_anon_mb']:.0f}",
        ]
        for r in doc["memory"]
    )
    return _md_table(
        ["memory", "mode", "dataset GB", "anon RSS before MB", "peak anon RSS MB"], rows
    )


def scaling_table(doc: dict[str, Any]) -> str:
    """Time to first batch on many shards, open() of a huge manifest."""
    rows = (
        [
            r["what"],
            r["mode"],
            f"{r['shards']:,}",
            f"{r['seconds']:.3f}",
            ", ".join(f"{k} {v:.3f}" for k, v in r.get("detail", {}).items()),
        ]
        for r in doc["scaling"]
    )
    return _md_table(["scaling", "mode", "shards", "seconds", "detail (s)"], rows)


#: How the pages name each goal (by id; a goal not listed shows its stored text).
_GOALS = {
    "images-seq-floor": "images, in order (npy or memmap): at least 0.9 of the floor",
    "images-seq-load": "images, in order (npy or memmap): at least 2x `tf.data.Dataset.load`",
    "images-global-floor": 'images, `shuffle="global"`: at least 0.75 of the floor',
    "tabular-seq-rate": "tabular, in order: at least 25M records/s (batch 4096)",
    "checksum-cost": 'checksum cost (first epoch, verify on vs `verify="size"`): under 10% '
    "in every mode",
    "tabular-seq-fts": "tabular, in order: 30x `from_tensor_slices` of the same run",
    "zarr-compressed": "images, zarr zstd: at least 0.5 of the npy dataset's speed (in order)",
    "write-npy": "writing npy: at least 0.7 of `np.save` (same fsync; the worse of on and off)",
    "write-tfrecord": "writing tfrecord (fsync off): faster than a `TFRecordWriter` loop",
    "memory-stream": "streaming: peak memory grows by less than 100 MB from the smallest "
    "dataset to the largest",
    "memory-write": "write() from the largest memmap: peak memory under 1024 MB",
    "ttfb-10k": "time to first batch on {shards:,} shards, in order: under 1 s",
    "open-100k": "open() of a {manifest_shards:,}-shard manifest: under 2 s",
    "objstore-cold": "object storage, first epoch from an empty cache (`shuffle=True`): at "
    "least 0.8 of the GET floor",
    "objstore-warm": "object storage, an epoch from the warm cache: at least 0.9 of the same "
    "dataset read locally",
    "objstore-write": "object storage, `shardstore.write`: at least 0.7 of the multipart PUT floor",
}
#: The unit of each goal's measured value, as the pages show it.
_GOAL_UNITS = {
    "images-seq-load": "x",
    "tabular-seq-rate": "M records/s",
    "checksum-cost": "",
    "tabular-seq-fts": "x",
    "write-tfrecord": "x",
    "memory-stream": " MB",
    "memory-write": " MB",
    "ttfb-10k": " s",
    "open-100k": " s",
}


def goal_label(target: Row, doc: dict[str, Any]) -> str:
    """How a page names the goal ``target`` (shard counts from the run's settings)."""
    label = _GOALS.get(target["id"])
    if label is None:
        return str(target["target"])
    s = doc["settings"]
    return label.format(
        shards=s.get("shards", 10_000), manifest_shards=s.get("manifest_shards", 100_000)
    )


def cold_table(doc: dict[str, Any]) -> str:
    """Cold cache: floors, first batch, epoch throughput against its floor, bytes read."""
    rows = []
    for r in doc.get("cold", []):
        read = (
            f"{r['read_vs_dataset']:.3f} x dataset, {r['read_vs_records']:.3f} x records"
            if "read_vs_dataset" in r
            else (f"{r['read_bytes'] / 1e9:.2f} GB" if r["read_bytes"] >= 0 else "-")
        )
        rows.append(
            [
                r["what"],
                r["mode"],
                f"{r['dataset_gb']:,.1f}",
                f"{r['first_batch_s']:.2f}" if "first_batch_s" in r else "-",
                f"{r['gb_per_s']:.2f}" if r["gb_per_s"] else "-",
                _x(r.get("vs_floor")),
                read,
            ]
        )
    return _md_table(
        ["cold cache", "mode", "dataset GB", "first batch s", "GB/s", "vs floor", "read from disk"],
        rows,
    )


def objstore_table(doc: dict[str, Any]) -> str:
    """Object storage: floors, write, cold and warm epochs, local epoch, ``ds[i]``, requests."""
    rows = []
    for r in doc.get("objstore", []):
        if r["what"] == "random access":
            detail = (
                f"median {r['median_ms']:.2f} ms, p99 {r['p99_ms']:.1f} ms, max "
                f"{r['max_ms']:.0f} ms per call; {r['epoch_records']:,} calls, "
                f"{r['records_per_s']:,.0f} records/s; {r['files_downloaded']} files downloaded"
            )
        elif "epoch_records" in r:
            detail = f"{r['epoch_records']:,} records, {r['records_per_s']:,.0f} records/s"
            if "to_tf_s" in r:
                detail += (
                    f"; open {r['open_s']:.2f} s, to_tf {r['to_tf_s']:.2f} s, "
                    f"epoch {r['reduce_s']:.2f} s"
                )
        else:
            detail = ""
        requests = ", ".join(f"{k} {v:,}" for k, v in r["requests"].items()) or "none"
        rows.append(
            [
                r["what"],
                r["mode"],
                "-" if r["mb_per_s"] is None else f"{r['mb_per_s']:,.0f}",
                "-" if r.get("vs") is None else f"{r['vs']:.2f} x {r['vs_what']}",
                f"{r['requests_total']:,} ({requests})",
                detail,
            ]
        )
    table = _md_table(["object storage", "mode", "MB/s", "ratio", "requests", "detail"], rows)
    servers = sorted({r["server"] for r in doc.get("objstore", [])})
    return "\n\n".join([*(f"Object storage: {s}." for s in servers), table])


def targets_table(doc: dict[str, Any]) -> str:
    """Each goal, its measured value and whether it is met.

    Verdicts are judged again from the run's rows against today's goals
    (:func:`evaluate_targets`), not read from the file: a goal raised since
    the run must not show the verdict of the old one.
    """
    rows = (
        [
            goal_label(t, doc),
            _x(t["measured"]) + ("" if t["measured"] is None else _GOAL_UNITS.get(t["id"], "")),
            _VERDICT[t["met"]],
        ]
        for t in evaluate_targets(doc)
    )
    return _md_table(["goal", "measured", ""], rows)


#: Words of how the product is built, not of what it does: never on a user's page.
INTERNAL_WORDS = re.compile(
    r"\b(?:agents?|helper agents?|sessions?|worktrees?|issue\s*#?\d+|issues?\s+\d+|"
    r"(?-i:DESIGN)(?:\.md|'s)?|design study)\b",
    re.IGNORECASE,
)
#: What a page says about the machine's load when a run's note is not for users.
BUSY_MACHINE = (
    "other processes were running on the machine during this run, so absolute figures "
    "may be low; compare the ratios"
)


def user_note(note: str | None) -> str | None:
    """The run's ``note`` as a page shows it: in the words of a user's machine.

    A note that speaks of how the product is built (:data:`INTERNAL_WORDS`)
    is shown as :data:`BUSY_MACHINE`, which is what such notes were about.
    """
    if not note:
        return None
    return BUSY_MACHINE if INTERNAL_WORDS.search(note) else note


def machine_line(doc: dict[str, Any]) -> str:
    """``2026-11-21, 2 CPUs, 23.4 GiB RAM, Linux, Python 3.11.7, TensorFlow 2.21.0``."""
    m = doc["machine"]
    return (
        f"{doc['date'][:10]}, {m['cpus']} CPUs, {m['ram_gb']} GiB RAM, {m.get('platform', '?')}, "
        f"Python {m.get('python', '?')}, TensorFlow {m.get('tensorflow', '?')}"
    )


def format_report(doc: dict[str, Any]) -> str:
    """The whole run as markdown: settings, every table, the targets."""
    s = doc["settings"]
    parts = [
        f"shardstore benchmark, {machine_line(doc)}",
        f"scale {s.get('scale')}, best of {s.get('repeats')} epoch(s) after a warm-up, "
        "warm page cache, consumed in graph",
    ]
    if s.get("note"):
        parts.append(f"note: {user_note(s['note'])}")
    if isinstance(doc.get("elapsed_s"), dict) and doc["elapsed_s"]:
        took = ", ".join(f"{k} {v:.0f} s" for k, v in doc["elapsed_s"].items())
        parts.append(f"wall time per suite: {took}")
    for table, present in (
        (read_tables, doc["read"]),
        (write_table, doc["write"]),
        (memory_table, doc["memory"]),
        (scaling_table, doc["scaling"]),
        (cold_table, doc.get("cold")),
        (objstore_table, doc.get("objstore")),
        (targets_table, doc["targets"]),
    ):
        if present:
            parts.append(table(doc))
    return "\n\n".join(parts) + "\n"
