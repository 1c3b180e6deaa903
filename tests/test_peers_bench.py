"""The peer-library suite (``benchmarks/peer_libs.py``, ``benchmarks/peers_bench.py``).

What can be checked without the peer libraries and without a clock: the
records check of the warm-up epoch, the ratios, the summary, the results
document, the docs block between its markers, the zarr adapter (zarr is a
dependency of shardstore) in every mode, and a whole tiny run with zarr and
a PyTorch peer whose interpreter is missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf

from benchmarks import peer_libs, peers_bench, readme
from benchmarks.peers_bench import (
    END,
    START,
    PeerCheckError,
    expectation,
    finish,
    make_row,
    measure,
    summary,
    validate,
)
from benchmarks.workloads import Workload

TINY = Workload("tiny", 37, (4, 4, 3), 8)


@pytest.fixture(scope="module")
def arrays() -> dict[str, np.ndarray]:
    """Records with unique labels and bit patterns (-0.0, a NaN payload) a copy must keep."""
    x = np.random.default_rng(5).random((TINY.num_records, *TINY.shape), dtype=np.float32)
    x[0, 0, 0, 0] = -0.0
    x.view(np.uint32)[1, 0, 0, 0] = 0x7FC0_1234
    return {"x": x, "label": np.arange(TINY.num_records, dtype=np.int64) * 7 - 100}


def _finite(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    x = arrays["x"].copy()
    x[np.isnan(x)] = 0.5
    return {"x": x, "label": arrays["label"]}


def _collect(tfds: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    xs, labels = [], []
    for x, label in tfds.as_numpy_iterator():
        xs.append(x)
        labels.append(label)
    return np.concatenate(xs), np.concatenate(labels), labels


def _sorted_equal(arrays: dict[str, np.ndarray], x: np.ndarray, label: np.ndarray) -> None:
    order = np.argsort(label)
    want = np.argsort(arrays["label"])
    np.testing.assert_array_equal(label[order], arrays["label"][want])
    assert x.dtype == np.float32
    assert x[order].tobytes() == arrays["x"][want].tobytes()  # bit for bit


# -- the records check --------------------------------------------------------------------
def _slices(arrays: dict[str, np.ndarray], batch: int = 8) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices((arrays["x"], arrays["label"])).batch(batch)


def test_measure_accepts_the_records_written_in_any_order(arrays: dict[str, np.ndarray]) -> None:
    a = _finite(arrays)
    shuffled = tf.data.Dataset.from_tensor_slices((a["x"], a["label"])).shuffle(64, seed=1)
    assert measure(shuffled.batch(5), expectation(a), repeats=1, what="t") > 0
    as_dict = tf.data.Dataset.from_tensor_slices({"x": a["x"], "label": a["label"]}).batch(4)
    assert measure(as_dict, expectation(a), repeats=2, what="t") > 0


@pytest.mark.parametrize("damage", ["missing", "duplicate", "value"])
def test_measure_refuses_other_records(arrays: dict[str, np.ndarray], damage: str) -> None:
    a = _finite(arrays)
    x, label = a["x"].copy(), a["label"].copy()
    if damage == "missing":
        x, label = x[1:], label[1:]
    elif damage == "duplicate":  # same count: the check must look at the values
        x[3], label[3] = x[4], label[4]
    else:
        x[10, 1, 1, 1] += 1.0
    tfds = _slices({"x": x, "label": label})
    with pytest.raises(PeerCheckError, match="grain shuffle delivered other records"):
        measure(tfds, expectation(a), repeats=1, what="grain shuffle")


def test_measure_checks_only_the_count_where_asked(arrays: dict[str, np.ndarray]) -> None:
    a = _finite(arrays)
    prefix = _slices(a).take(2)
    assert measure(prefix, (16, None, None), repeats=1, what="t") > 0
    with pytest.raises(PeerCheckError, match="16 records instead of 24"):
        measure(prefix, (24, None, None), repeats=1, what="t")


def test_expectation_sums_in_float64() -> None:
    x = np.full((10_000, 2), 0.1, np.float32)
    n, labels, total = expectation({"x": x, "label": np.arange(10_000, dtype=np.int64)})
    assert (n, labels) == (10_000, 49_995_000)
    assert total == pytest.approx(20_000 * float(np.float32(0.1)), rel=1e-12)


# -- the generic TF wrappers and the zarr adapter ------------------------------------------
def test_from_batches_and_indexed_batches_deliver_what_they_are_given(
    arrays: dict[str, np.ndarray],
) -> None:
    batches = [(arrays["x"][i : i + 8], arrays["label"][i : i + 8]) for i in range(0, 37, 8)]
    x, label, _ = _collect(peer_libs.from_batches(lambda: iter(batches), TINY.shape))
    _sorted_equal(arrays, x, label)
    order = peer_libs.batch_order(37, 8, "shuffle")
    assert sorted(order.tolist()) == list(range(5)) and order.tolist() != list(range(5))
    assert order[-1] == 4  # the short batch last: every prefix of whole batches is full
    assert peer_libs.batch_order(37, 8, "sequential").tolist() == list(range(5))
    x, label, per_batch = _collect(
        peer_libs.indexed_batches(lambda i: batches[i], order, TINY.shape)
    )
    _sorted_equal(arrays, x, label)
    assert [b[0] for b in per_batch] == [batches[i][1][0] for i in order]  # order kept


@pytest.mark.parametrize("mode", peer_libs.MODES)
def test_zarr_slices_deliver_every_record_in_each_mode(
    arrays: dict[str, np.ndarray], tmp_path: Path, mode: str
) -> None:
    (zarr_lib,) = peer_libs.by_name(["zarr"])
    state = zarr_lib.write(arrays, tmp_path, TINY.batch_size)
    x, label, per_batch = _collect(zarr_lib.build(state, mode, TINY.batch_size))
    _sorted_equal(arrays, x, label)
    if mode == "sequential":
        np.testing.assert_array_equal(label, arrays["label"])
    else:
        assert not np.array_equal(label, arrays["label"])
    if mode == "shuffle":  # whole slices in another order: each batch is contiguous
        assert all(np.all(np.diff(b) == 7) for b in per_batch)
    if mode == "global":  # records from all over the dataset in one batch
        assert any(np.any(np.diff(b) != 7) for b in per_batch)
    assert [len(b) for b in per_batch] == [8, 8, 8, 8, 5]


def test_libraries_describe_their_modes_settings_and_interpreter() -> None:
    assert tuple(lib.name for lib in peer_libs.LIBRARIES) == peers_bench.LIBRARY_NAMES
    for lib in peer_libs.LIBRARIES:
        assert lib.modes and set(lib.modes) <= set(peer_libs.MODES), lib.name
        assert "sequential" in lib.modes and lib.settings and lib.distributions
        assert lib.python in ("main", "torch")
        assert set(lib.prefix_records) <= set(lib.modes)
    assert peer_libs.versions(peer_libs.by_name(["zarr"])[0])["zarr"]
    with pytest.raises(ValueError, match=r"unknown peer libraries \['tfds'\]"):
        peer_libs.by_name(["zarr", "tfds"])


# -- ratios, summary, document, page ---------------------------------------------------------
def _row(kind: str, library: str, mode: str | None, rate: float, measured: int = 100) -> Any:
    w = Workload("w", 100, (2,), 10)  # 16 bytes per record
    row = make_row(
        w,
        library=library,
        mode=mode,
        approach=f"{library} {mode}",
        kind=kind,
        records=100,
        measured_records=measured,
        seconds=measured / rate,
    )
    return row


def _rows() -> list[dict[str, Any]]:
    return [
        _row("floor", "floor", None, 1000.0),
        _row("shardstore", "shardstore", "sequential", 500.0),
        _row("shardstore", "shardstore", "shuffle", 400.0),
        _row("shardstore", "shardstore", "global", 300.0),
        _row("peer", "grain", "sequential", 250.0),
        _row("peer", "grain", "global", 600.0, measured=50),
        _row("peer", "zarr", "sequential", 100.0),
    ]


def test_finish_fills_every_ratio_per_mode() -> None:
    rows = _rows()
    finish(rows)
    by = {(r["library"], r["mode"]): r for r in rows}
    assert by[("shardstore", "sequential")]["vs_floor"] == pytest.approx(0.5)
    assert by[("shardstore", "sequential")]["vs_best_peer"] == pytest.approx(2.0)
    assert by[("shardstore", "global")]["vs_best_peer"] == pytest.approx(0.5)
    assert by[("shardstore", "shuffle")]["vs_best_peer"] is None  # no peer shuffles here
    assert by[("grain", "sequential")]["shardstore_x"] == pytest.approx(2.0)
    assert by[("zarr", "sequential")]["shardstore_x"] == pytest.approx(5.0)
    assert by[("grain", "global")]["shardstore_x"] == pytest.approx(0.5)
    assert by[("grain", "global")]["seconds"] == pytest.approx(100 / 600)  # scaled to all
    assert by[("floor", None)]["shardstore_x"] is None
    assert by[("shardstore", "global")]["shardstore_x"] is None


def test_summary_names_the_fastest_peer_of_each_mode() -> None:
    rows = _rows()
    finish(rows)
    got = {s["mode"]: s for s in summary(rows)}
    assert set(got) == {"sequential", "global"}
    assert got["sequential"]["best_peer"] == "grain" and got["sequential"]["ahead"] is True
    assert got["sequential"]["ratio"] == pytest.approx(2.0)
    assert got["global"]["ahead"] is False and got["global"]["ratio"] == pytest.approx(0.5)


def _doc() -> dict[str, Any]:
    rows = _rows()
    finish(rows)
    doc = peers_bench.new_document(
        {"cpus": 2, "ram_gb": 23.5, "python": "3.11", "load_avg": [0.5, 0.4, 0.3]},
        {
            "scale": 1.0,
            "repeats": 2,
            "note": None,
            "workloads": {"w": {"num_records": 100, "batch_size": 10, "record_nbytes": 16}},
        },
    )
    doc["rows"] = rows
    doc["summary"] = summary(rows)
    doc["libraries"] = [
        {"name": "grain", "label": "Grain", "status": "measured", "versions": {"grain": "9"},
         "modes": {"sequential": "in order"}, "settings": "its defaults",
         "errors": {"w shuffle": "PeerCheckError: lost records"}},
        {"name": "streaming", "label": "Streaming", "status": "skipped",
         "reason": "no interpreter for it", "modes": {}, "versions": {}},
    ]  # fmt: skip
    return doc


def test_validate_accepts_a_document_and_its_json_round_trip() -> None:
    doc = _doc()
    assert validate(json.loads(json.dumps(doc))) == doc


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: d.update(schema="shardstore-bench/1"), "not a shardstore-bench-peers/1"),
        (lambda d: d.pop("summary"), "missing 'summary'"),
        (lambda d: d["rows"][1].pop("shardstore_x"), r"rows\[1\]: missing 'shardstore_x'"),
        (lambda d: d["rows"][2].update(kind="rival"), r"rows\[2\].kind"),
        (lambda d: d["rows"][2].update(mode="random"), r"rows\[2\].mode"),
        (lambda d: d["rows"][0].update(records_per_s=True), r"rows\[0\].records_per_s"),
        (lambda d: d["libraries"][0].pop("status"), r"libraries\[0\]: missing 'status'"),
    ],
)
def test_validate_refuses_broken_documents(damage: Any, message: str) -> None:
    doc = _doc()
    damage(doc)
    with pytest.raises(ValueError, match=message):
        validate(doc)


def test_block_renders_rows_ratios_subsets_and_missing_libraries() -> None:
    block = peers_bench.peers_block(_doc())
    assert "load average 0.50 at the start" in block
    assert "| grain global (on 50 records, scaled) | 600 | 0.00 | 0.60 | 0.50 |" in block
    assert "| zarr sequential | 100 | 0.00 | 0.10 | 5.00 |" in block
    assert "| w | sequential | 500 | Grain | 250 | 2.00 |" in block
    assert "| Streaming | - |  | **not measured**: no interpreter for it |" in block
    assert (
        "| Grain | grain 9 | sequential: in order | its defaults; "
        "**w shuffle failed**: PeerCheckError: lost records |" in block
    )


def test_update_page_rewrites_only_its_own_block(tmp_path: Path) -> None:
    page = tmp_path / "benchmarks.md"
    page.write_text(
        f"# B\n\n{readme.START}\nmake bench\n{readme.END}\n\nbetween\n\n{START}\nold\n{END}\ntail\n"
    )
    peers_bench.update_page(page, _doc())
    text = page.read_text()
    assert f"{readme.START}\nmake bench\n{readme.END}\n\nbetween\n\n{START}\n" in text
    assert "old" not in text and text.endswith(f"{END}\ntail\n")
    assert "| zarr sequential | 100 |" in text
    page.write_text("no markers\n")
    with pytest.raises(ValueError, match="bench-peers:start"):
        peers_bench.update_page(page, _doc())


def test_the_docs_page_has_the_peers_markers_once() -> None:
    text = (peers_bench.REPO / peers_bench.PAGE).read_text()
    assert text.count(START) == 1 and text.count(END) == 1
    assert text.index(START) < text.index(END)


# -- whole runs ------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_tiny_run_measures_zarr_and_lists_a_peer_it_cannot_run(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(f"intro\n{START}\n{END}\n")
    out = tmp_path / "results"
    argv = ["--scale", "0.0001", "--workload", "tabular", "--library", "zarr,streaming",
            "--repeats", "1", "--torch-python", str(tmp_path / "none" / "python"),
            "--out", str(out), "--page", str(page), "--publish",
            "--workdir", str(tmp_path)]  # fmt: skip
    assert peers_bench.main(argv) == 0
    doc = validate(json.loads((out / "peers-latest.json").read_text()))
    ids = [r["id"] for r in doc["rows"]]
    assert ids == [
        "floor",
        "shardstore:sequential",
        "shardstore:shuffle",
        "shardstore:global",
        "zarr:sequential",
        "zarr:shuffle",
        "zarr:global",
    ]
    status = {lib["name"]: lib for lib in doc["libraries"]}
    assert status["zarr"]["status"] == "measured" and status["zarr"]["versions"]["zarr"]
    assert status["streaming"]["status"] == "skipped"
    assert "--torch-python" in status["streaming"]["reason"]
    assert all(r["shardstore_x"] for r in doc["rows"] if r["kind"] == "peer")
    assert "| plain zarr slices: `x[lo:hi]` slices in order |" in page.read_text()
    assert not any(p.name.startswith("shardstore-peers-") for p in tmp_path.iterdir())


@pytest.mark.slow
def test_a_library_runs_in_another_interpreter_as_a_child(tmp_path: Path) -> None:
    (zarr_lib,) = peer_libs.by_name(["zarr"])
    args = argparse.Namespace(scale=0.0001, repeats=1)
    workload = Workload("tabular", 4096, (16,), 4096)
    logged: list[str] = []
    rows, versions, errors = peers_bench._child(
        zarr_lib, sys.executable, args, workload, tmp_path, logged.append, timeout_s=300
    )
    assert [r["id"] for r in rows] == ["zarr:sequential", "zarr:shuffle", "zarr:global"]
    assert versions["zarr"] and errors == {}
    assert any("plain zarr slices" in line for line in logged)
    with pytest.raises(RuntimeError, match="exited with 2"):
        peers_bench._child(
            zarr_lib, sys.executable, argparse.Namespace(scale=-1, repeats="x"), workload,
            tmp_path, logged.append, timeout_s=300,
        )  # fmt: skip


def test_a_failing_mode_is_recorded_and_the_other_modes_are_kept(
    arrays: dict[str, np.ndarray], tmp_path: Path
) -> None:
    (zarr_lib,) = peer_libs.by_name(["zarr"])

    def build(state: Any, mode: str, batch_size: int) -> tf.data.Dataset:
        tfds = zarr_lib.build(state, mode, batch_size)
        return tfds.skip(1) if mode == "shuffle" else tfds  # loses a batch

    broken = dataclasses.replace(zarr_lib, build=build)
    errors: dict[str, str] = {}
    rows = peers_bench.library_rows(broken, TINY, arrays, tmp_path, 1, lambda m: None, errors)
    assert [r["mode"] for r in rows] == ["sequential", "global"]
    assert list(errors) == ["tiny shuffle"] and "PeerCheckError" in errors["tiny shuffle"]
    with pytest.raises(PeerCheckError):
        peers_bench.library_rows(broken, TINY, arrays, tmp_path, 1, lambda m: None)
    assert list(tmp_path.iterdir()) == []  # its files are removed either way
