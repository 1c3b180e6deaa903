"""The benchmark harness (``benchmarks/``): everything that can be checked without timing.

Peers must deliver exactly the records they are given, bit for bit; results
documents must validate; targets, the README block, the chart and the probes
must do what they say. No assertion here depends on how fast anything runs.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import shardstore
from benchmarks import peers, probe, readme, results, run, scaling, write
from benchmarks.chart import save_chart
from benchmarks.peers import PEERS, Peer
from benchmarks.read import VARIANTS, epoch_time, run_read_suite
from benchmarks.workloads import IMAGES, TABULAR, Workload, make_arrays
from shardstore.testing import assert_bitwise_equal, collect

N = 37
TINY = Workload("tiny", N, (4, 4, 3), 8)


@pytest.fixture(scope="module")
def arrays() -> dict[str, np.ndarray]:
    """Records with unique labels, and bit patterns (-0.0, a NaN payload) a copy must keep."""
    x = np.random.default_rng(3).random((N, 4, 4, 3), dtype=np.float32)
    x[0, 0, 0, 0] = -0.0
    x.view(np.uint32)[1, 0, 0, 0] = 0x7FC0_1234
    return {"x": x, "label": np.arange(N, dtype=np.int64) * 3 - 50}


# -- peers --------------------------------------------------------------------------------
@pytest.mark.parametrize("peer", PEERS, ids=lambda p: p.name)
def test_every_peer_yields_exactly_the_records(
    peer: Peer, arrays: dict[str, np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(peers, "FILE_BYTES", 10 * 200)  # several files of 10 records
    x, label = collect(peer.build(arrays, tmp_path, 8))
    assert x.shape == arrays["x"].shape
    if not peer.ordered:  # interleaved files: the same records, in another order
        order = np.argsort(label)
        x, label = x[order], label[order]
    assert_bitwise_equal(label, arrays["label"])
    assert_bitwise_equal(x, arrays["x"])


def test_file_based_peers_write_several_files(
    arrays: dict[str, np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(peers, "FILE_BYTES", 10 * 200)
    assert peers.records_per_file(arrays) == 10
    assert len(peers.write_tfrecords(arrays, tmp_path, 10)) == 4


def test_slow_peers_run_on_a_subset_and_say_so() -> None:
    by_name = {p.name: p for p in PEERS}
    assert peers.subset_size(by_name["from_generator"], "tabular", 4_000_000) == 1 << 15
    assert peers.subset_size(by_name["from_generator"], "tabular", 100) == 100
    assert peers.subset_size(by_name["save_load"], "images", 16384) == 16384
    row = results.read_row(
        "w",
        "peer:x",
        "x",
        "peer",
        records=1000,
        measured_records=100,
        seconds=1.0,
        record_nbytes=10,
    )
    assert row["seconds"] == 10.0 and row["records_per_s"] == 100.0
    assert "on 100 records, scaled" in results._read_cells(row)[0]


def test_workloads_match_the_issue() -> None:
    assert (IMAGES.num_records, IMAGES.shape, IMAGES.batch_size) == (16384, (64, 64, 3), 256)
    assert (TABULAR.num_records, TABULAR.shape, TABULAR.batch_size) == (4_000_000, (16,), 4096)
    assert IMAGES.scaled(0.001).num_records == 256  # never less than one batch
    small = make_arrays(IMAGES.scaled(0.02))
    assert small["x"].shape == (328, 64, 64, 3) and small["x"].dtype == np.float32
    assert small["label"].dtype == np.int64
    assert_bitwise_equal(
        make_arrays(TABULAR.scaled(0.0001))["x"], make_arrays(TABULAR.scaled(0.0001))["x"]
    )


# -- read and write suites ----------------------------------------------------------------
def test_read_suite_measures_floor_every_variant_and_every_peer(
    arrays: dict[str, np.ndarray], tmp_path: Path
) -> None:
    rows = run_read_suite(TINY, arrays, tmp_path, repeats=1, log=lambda _: None)
    ids = [r["id"] for r in rows]
    checks = [
        f"verify:{m}:{v}" for m in ("sequential", "shuffle", "global") for v in ("once", "size")
    ]
    assert ids == (
        ["floor"] + [v[0] for v in VARIANTS] + checks + [f"peer:{p.name}" for p in PEERS]
    )
    assert all(r["records"] == N for r in rows)
    assert all(r["measured_records"] == N for r in rows)  # no row is cut short at this size
    results.finish_read(rows)
    assert rows[0]["vs_floor"] == 1.0
    assert max(r["vs_best_peer"] for r in rows if r["kind"] == "peer") == 1.0
    assert list(tmp_path.iterdir()) == []  # the datasets and peer files are cleaned up


def test_slow_variants_are_measured_on_a_prefix_and_scaled(
    arrays: dict[str, np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks import read

    monkeypatch.setattr(read, "VARIANTS", read.VARIANTS[:1])
    monkeypatch.setattr(read, "SLOW_VARIANTS", {"npy:sequential": {"tiny": 20}})
    datasets = {"npy": shardstore.write(tmp_path / "npy", arrays, fsync=False)}
    (row,) = read.shardstore_rows(TINY, datasets, 1, lambda _: None)
    assert (row["records"], row["measured_records"]) == (N, 16)  # two batches of 8
    assert row["seconds"] == pytest.approx(N / row["records_per_s"])


def test_epoch_time_reads_the_whole_epoch(arrays: dict[str, np.ndarray]) -> None:
    import tensorflow as tf

    seen = []
    tfds = (
        tf.data.Dataset.range(5)
        .map(lambda i: tf.py_function(lambda j: seen.append(int(j)) or j, [i], tf.int64))
        .batch(2)
    )
    assert epoch_time(tfds, 2) > 0
    assert seen == [0, 1, 2, 3, 4] * 3  # warm-up + 2 timed epochs, every element


def test_np_save_floor_writes_the_same_files_as_shardstore(
    arrays: dict[str, np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(peers, "FILE_BYTES", 10 * 200)
    files = write.np_save_files(arrays, tmp_path / "floor", fsync=True)
    assert files == 8  # 4 shards x 2 features
    loaded = [np.load(p) for p in sorted((tmp_path / "floor").glob("*.x.npy"))]
    assert_bitwise_equal(np.concatenate(loaded), arrays["x"])
    seconds, count = write.time_write(
        lambda p: write.shardstore_files(arrays, p, fmt="npy", fsync=False), tmp_path / "s"
    )
    assert count == 2 and seconds > 0  # one 64 MiB shard: shardstore's own shard size
    assert not (tmp_path / "s").exists()


def test_write_suite_rows(arrays: dict[str, np.ndarray], tmp_path: Path) -> None:
    rows = write.run_write_suite(arrays, tmp_path, repeats=1, log=lambda _: None)
    results.finish_write(rows)
    keys = [(r["id"], r["fsync"]) for r in rows]
    assert keys == [
        ("floor", False),
        ("npy", False),
        ("tfrecord", False),
        ("floor", True),
        ("npy", True),
        ("tfrecord", True),
        ("peer:TFRecordWriter", False),
    ]
    assert all(r["nbytes"] == arrays["x"].nbytes + arrays["label"].nbytes for r in rows)
    assert [r["vs_floor"] for r in rows if r["id"] == "floor"] == [1.0, 1.0]


# -- probes (run in-process here; the suites run them in fresh processes) ------------------
def _probe(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert probe.main(list(args)) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    return out


def test_rss_anon_and_peak_sampler() -> None:
    assert probe.rss_anon_mb() > 0
    with probe.peak_anon_mb() as peak:
        block = np.ones(64 << 20, np.uint8)  # 64 MiB of anonymous memory, touched
        del block
    assert peak() >= probe.rss_anon_mb() + 32


def test_write_and_stream_probes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.memory import make_input

    n = make_input(tmp_path / "in.npy", 0.002)
    got = _probe(capsys, "write", str(tmp_path / "in.npy"), str(tmp_path / "ds"), "--no-fsync")
    assert got["records"] == n and got["peak_anon_mb"] >= got["baseline_anon_mb"] > 0
    ds = shardstore.open(tmp_path / "ds")
    assert_bitwise_equal(ds[n - 1]["x"], np.full((64, 64, 3), (n - 1) % 251, np.float32))
    for mode in ("sequential", "shuffle", "global"):
        got = _probe(capsys, "stream", str(tmp_path / "ds"), "--mode", mode, "--batch-size", "3")
        assert got["records"] == n and got["nbytes"] == ds.nbytes


def test_ttfb_and_open_probes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ds = scaling.many_shards(tmp_path / "many", 5)
    assert (ds.num_shards, ds.num_records) == (5, 80)
    for args in (["--mode", "global"], ["--mode", "sequential", "--tf-native"]):
        got = _probe(capsys, "ttfb", str(ds.path), "--batch-size", "7", *args)
        assert got["shards"] == 5 and got["seconds"] >= got["first_batch_s"] > 0
    scaling.simulated_manifest(tmp_path / "sim", 250)
    opened = shardstore.open(tmp_path / "sim")
    assert (opened.num_shards, opened.num_records) == (250, 4000)
    assert list((tmp_path / "sim").iterdir()) == [tmp_path / "sim" / "manifest.json"]
    assert probe.run_probe("open", str(tmp_path / "sim"), "--repeats", "2")["shards"] == 250


# -- results, targets, README, chart -------------------------------------------------------
def _doc() -> dict[str, Any]:
    doc = results.new_document(
        {"cpus": 2, "ram_gb": 23.5},
        {
            "scale": 1.0,
            "repeats": 2,
            "note": "test",
            "workloads": {"images": {"num_records": 100, "batch_size": 10, "record_nbytes": 1000}},
        },
    )
    rate = {
        "floor": 10.0,
        "npy:sequential": 8.0,
        "memmap:sequential": 7.0,
        "npy:global": 5.0,
        "zarr-zstd:sequential": 3.0,
        "peer:save_load": 3.0,
        "peer:from_tensor_slices": 1.0,
    }
    for row_id, per_s in rate.items():
        kind = (
            "floor" if row_id == "floor" else "peer" if row_id.startswith("peer") else "shardstore"
        )
        doc["read"].append(
            results.read_row(
                "images",
                row_id,
                row_id,
                kind,
                records=100,
                measured_records=100,
                seconds=100 / per_s,
                record_nbytes=1000,
            )
        )
    for row_id, kind, fsync, seconds in (
        ("floor", "floor", False, 1.0),
        ("npy", "shardstore", False, 1.25),
        ("floor", "floor", True, 2.0),
        ("npy", "shardstore", True, 4.0),
        ("tfrecord", "shardstore", False, 1.0),
        ("peer:TFRecordWriter", "peer", False, 2.0),
    ):
        doc["write"].append(
            results.write_row(
                row_id, row_id, kind, fsync=fsync, files=2, nbytes=10**9, seconds=seconds
            )
        )
    for what, gb, peak in (("stream", 1.0, 300.0), ("stream", 4.0, 350.0), ("write", 4.0, 900.0)):
        doc["memory"].append(
            {
                "what": what,
                "mode": "sequential",
                "dataset_gb": gb,
                "baseline_anon_mb": 200.0,
                "peak_anon_mb": peak,
            }
        )
    doc["scaling"] = [
        {
            "what": "first batch",
            "mode": "sequential",
            "shards": 10000,
            "seconds": 1.5,
            "detail": {"open": 0.1},
        }
    ]
    results.finish_read(doc["read"])
    results.finish_write(doc["write"])
    doc["targets"] = results.evaluate_targets(doc)
    return doc


def test_targets_are_evaluated_from_the_rows() -> None:
    met = {t["id"]: (t["met"], t["measured"]) for t in _doc()["targets"]}
    assert met["images-seq-floor"] == (False, pytest.approx(0.8))  # the target is 0.9
    assert met["images-seq-load"] == (True, pytest.approx(8 / 3))
    assert met["images-global-floor"] == (False, pytest.approx(0.5))
    assert met["zarr-compressed"] == (False, pytest.approx(3 / 8))
    assert met["write-npy"] == (False, pytest.approx(0.5))  # the worse of fsync on / off
    assert met["write-tfrecord"] == (True, pytest.approx(2.0))
    assert met["memory-stream"] == (True, pytest.approx(50.0))
    assert met["memory-write"] == (True, pytest.approx(900.0))
    assert met["ttfb-10k"] == (False, pytest.approx(1.5))
    assert met["open-100k"] == (None, None)  # not measured is not "met"
    assert met["tabular-seq-rate"] == (None, None)
    assert met["checksum-cost"] == (None, None)


def test_documents_validate_and_survive_json() -> None:
    doc = json.loads(json.dumps(_doc()))
    assert results.validate(doc) is doc


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d.pop("machine"),
        lambda d: d.update(schema="other/1"),
        lambda d: d["read"][0].pop("gb_per_s"),
        lambda d: d["read"][0].update(kind="mystery"),
        lambda d: d["write"][0].update(fsync="yes"),
        lambda d: d["targets"][0].update(met="maybe"),
        lambda d: d["memory"][0].update(peak_anon_mb=True),
        lambda d: d.update(date="yesterday"),
    ],
)
def test_invalid_documents_are_refused(damage: Any) -> None:
    doc = _doc()
    damage(doc)
    with pytest.raises(ValueError):
        results.validate(doc)


def test_report_has_every_table_and_the_caveat() -> None:
    text = results.format_report(_doc())
    for needle in (
        "| approach | records/s | GB/s | vs floor | vs best peer |",
        "| write (images workload) | fsync |",
        "| memory |",
        "| scaling |",
        "| goal | measured |",
        "NOT met",
        "not measured",
        "note: test",
        "2 CPUs, 23.5 GiB RAM",
    ):
        assert needle in text


def test_readme_block_is_replaced_between_the_markers(tmp_path: Path) -> None:
    text = f"intro\n{readme.START}\nold table\n{readme.END}\noutro\n"
    new = readme.replace_block(text, "NEW")
    assert new == f"intro\n{readme.START}\nNEW\n{readme.END}\noutro\n"
    assert readme.replace_block(new, "NEW") == new
    path = tmp_path / "README.md"
    path.write_text(text)
    readme.update_readme(path, _doc())
    body = path.read_text()
    assert body.startswith("intro\n") and body.endswith(f"{readme.END}\noutro\n")
    assert "old table" not in body and "2 CPUs, 23.5 GiB RAM" in body
    readme.update_readme(path, _doc(), chart=tmp_path / "docs" / "assets" / "chart.png")
    assert "![benchmark chart](docs/assets/chart.png)" in path.read_text()  # relative link


@pytest.mark.parametrize("page", ["README.md", "docs/benchmarks.md"])
def test_the_repository_pages_have_the_markers_and_link_the_chart(page: str) -> None:
    path = readme.REPO / page
    text = path.read_text()
    assert readme.replace_block(text, "x").count("x\n" + readme.END) == 1
    if "(no results yet" not in text:  # after a published run: the chart link resolves
        link = re.search(r"!\[benchmark chart\]\(([^)]+)\)", text)
        assert link and (path.parent / link[1]).is_file()


@pytest.mark.parametrize(
    "text",
    [
        "no markers",
        f"{readme.START} only",
        f"{readme.END} x {readme.START}",
        f"{readme.START}{readme.END}{readme.START}{readme.END}",
    ],
)
def test_readme_without_one_marker_pair_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        readme.replace_block(text, "x")


# -- every speed figure on a page comes from the results -------------------------------------
LATEST = readme.REPO / "benchmarks" / "results" / "latest.json"


def _latest() -> dict[str, Any]:
    return results.validate(json.loads(LATEST.read_text()))


def _page_ids() -> list[str]:
    return [str(p.relative_to(readme.REPO)) for p in readme.pages()]


@pytest.mark.parametrize("page", _page_ids())
def test_pages_quote_no_speed_figure_that_is_not_rendered_from_the_results(page: str) -> None:
    assert readme.stray_figures((readme.REPO / page).read_text()) == []


@pytest.mark.parametrize("page", _page_ids())
def test_pages_are_rendered_from_the_latest_results(page: str) -> None:
    path = readme.REPO / page
    text = path.read_text()
    link = Path(os.path.relpath(readme.REPO / readme.CHART, path.parent)).as_posix()
    assert readme.render_page(text, _latest(), link) == text, "run python -m benchmarks.readme"
    assert "n/a" not in "".join(text[a:b] for a, b, _ in readme._marks(text))  # every key known


def _numbers(doc: object) -> list[float]:
    """Every number of a results document, with the ratios of read rows the pages show."""
    out: list[float] = []
    if isinstance(doc, dict):
        for value in doc.values():
            out += _numbers(value)
    elif isinstance(doc, list):
        for value in doc:
            out += _numbers(value)
    elif isinstance(doc, int | float) and not isinstance(doc, bool):
        out.append(float(doc))
    return out


def _matches(token: str, values: list[float]) -> bool:
    """Whether the figure ``token`` (``2.17``, ``1,343,260``, ``19.7M``) rounds from a value."""
    scale = 1e6 if token.endswith("M") else 1.0
    text = token.rstrip("M").replace(",", "")
    decimals = len(text.split(".")[1]) if "." in text else 0
    shown = float(text) * scale
    half = 0.5 * 10.0**-decimals * scale + 1e-9
    return any(abs(v - shown) <= half for v in values)


def test_rendered_figures_round_from_values_of_the_results() -> None:
    doc = _latest()
    values = _numbers(doc)
    for workload in {r["workload"] for r in doc["read"]}:
        rows = [r for r in doc["read"] if r["workload"] == workload]
        for key in ("gb_per_s", "records_per_s"):
            values += [a[key] / b[key] for a in rows for b in rows if b[key]]
    for _, _, results_file in readme.OTHER_BLOCKS:  # blocks rendered from their own results
        other = json.loads((readme.REPO / results_file).read_text())
        values += _numbers(other)
    values += [v * 1e6 for v in values]
    checked = 0
    for path in readme.pages():
        text = path.read_text()
        for _, figure in readme.speed_figures(text):
            for token in re.findall(r"\d[\d,]*(?:\.\d+)?M?", figure):
                assert _matches(token, values), f"{path.name}: {figure!r}"
                checked += 1
    assert checked > 100  # the tables of README, benchmarks, sources and coming-from-tf-data


@pytest.mark.parametrize(
    "claim",
    [
        "GB/s: reads at 2.5 GB/s here",
        "records/s: 686,000 records/s",
        "factor: about 6.7-11x faster",
        "factor: 3 x faster than that",
        "times: 3 times faster than 5",
        "fraction: decodes at 0.64 of the npy source's GB/s",
        "fraction: 0.6 of the floor",
        "table: | approach | GB/s |\n|---|---|\n| mine | 3.21 |",
        "table: | source | vs `np.load` floor |\n|---|---|\n| npy | 0.78 |",
    ],
)
def test_a_speed_figure_typed_into_a_page_is_caught(claim: str) -> None:
    text = "intro\n\n" + claim.split(": ", 1)[1] + "\n"
    assert readme.stray_figures(text), claim


def test_what_is_not_a_speed_claim_is_left_alone() -> None:
    text = (
        "images of 64x64x3 float32, `size = header + 8 \u00d7 (n + 1)`, batch 256, 2 CPUs.\n\n"
        "Run `make bench` to see `3x faster` for yourself.\n\n"
        "```text\nbest epoch: 41,000 records/s, 2.02 GB/s\n```\n\n"
        "| source | files | compression |\n|---|---|---|\n| npy | 26 | none |\n"
    )
    assert readme.stray_figures(text) == []


def test_marked_figures_and_blocks_are_rendered(tmp_path: Path) -> None:
    doc = _doc()
    text = (
        "npy reads <!-- bench:images/npy:sequential/gb_per_s -->old<!-- /bench --> GB/s, "
        "<!-- bench:images/npy:sequential/records_per_s -->x<!-- /bench --> records/s, "
        "<!-- bench:images/npy:sequential/gb_per_s/per/peer:from_tensor_slices -->1"
        "<!-- /bench -->x fts, <!-- bench:write/npy/off/gb_per_s -->?<!-- /bench --> GB/s "
        "written, first batch in "
        "<!-- bench:scaling/first batch/sequential -->?<!-- /bench --> s, goal "
        "<!-- bench:target/images-seq-floor -->?<!-- /bench -->, "
        "<!-- bench:images/npy:sequential/records_per_s|M -->?<!-- /bench --> records/s.\n\n"
        "<!-- bench:start sources -->\nold\n<!-- bench:end -->\n\n"
        "<!-- bench:start tf-data -->\n<!-- bench:end -->\n"
        "`<!-- bench:images/npy:sequential/gb_per_s -->example<!-- /bench -->` stays\n"
    )
    out = readme.render_page(text, doc)
    # 8 records/s of 1000 B; 1e9 B written in 1.25 s
    assert "npy reads <!-- bench:images/npy:sequential/gb_per_s -->0.00<!-- /bench --> GB/s" in out
    assert "-->8<!-- /bench --> records/s" in out
    assert "peer:from_tensor_slices -->8.00<!-- /bench -->x" in out
    assert "-->0.80<!-- /bench --> GB/s written" in out
    assert "sequential -->1.50<!-- /bench --> s" in out
    assert "images-seq-floor -->0.80<!-- /bench -->" in out
    assert "|M -->0.0M<!-- /bench -->" in out
    assert "| `memmap`, in order (what `npy` datasets read through) | 0.00 | 7 | 0.70 |" in out
    assert (
        "| `from_tensor_slices` on in-memory arrays | 0.00 | 0.00 | n/a | 8.00x (faster) |" in out
    )
    assert "| `tf.data.Dataset.save` / `load` | 0.00 | 0.00 | n/a | 2.67x (faster) |" in out
    assert "-->example<!-- /bench -->` stays" in out  # code is an example, never rendered
    assert readme.render_page(out, doc) == out
    assert readme.stray_figures(out) == []
    assert readme.figure(doc, "images/nope/gb_per_s") == "n/a"
    with pytest.raises(ValueError, match="unknown bench figure"):
        readme.figure(doc, "images/npy:sequential")
    with pytest.raises(ValueError, match="unknown bench block"):
        readme.render_page("<!-- bench:start nope -->\n<!-- bench:end -->\n", doc)
    with pytest.raises(ValueError, match="unbalanced"):
        readme.render_page("<!-- bench:start sources -->\n", doc)


def test_the_tf_data_page_says_what_the_results_say() -> None:
    """Its prose: from_tensor_slices loses on small records (on in-memory images the page
    claims no winner), and shardstore beats every other pattern. A run that says otherwise
    fails here."""
    doc = _latest()

    def rate(workload: str, row: str, key: str = "gb_per_s") -> float:
        found = readme._read_row(doc, workload, row)
        assert found is not None
        return float(found[key])

    ours = rate("images", "npy:sequential")
    assert rate("tabular", "peer:from_tensor_slices", "records_per_s") < rate(
        "tabular", "npy:sequential", "records_per_s"
    )
    for peer in ("from_generator", "npy_per_record", "npy_shards", "tfrecord", "save_load"):
        assert rate("images", f"peer:{peer}") < ours, peer


def test_notes_are_shown_in_users_terms() -> None:
    doc = _doc()
    doc["settings"]["note"] = "shared 2-CPU machine; one helper agent may have been running"
    block = readme.readme_block(doc)
    assert f"**Note:** {results.BUSY_MACHINE}" in block
    assert not results.INTERNAL_WORDS.search(block)
    doc["settings"]["note"] = "the disk is a network volume"
    assert "**Note:** the disk is a network volume" in readme.readme_block(doc)
    with pytest.raises(SystemExit):
        run._parser().parse_args(["--note", "each target of issue 4"])
    assert run._parser().parse_args(["--note", "other processes were running"]).note


def test_chart_is_a_png(tmp_path: Path) -> None:
    save_chart(_doc(), tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_writes_json_png_and_publishes_only_when_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = [
        "--suite",
        "write",
        "--scale",
        "0.001",
        "--repeats",
        "1",
        "--out",
        str(tmp_path / "out"),
        "--workdir",
        str(tmp_path / "work"),
        "--readme",
        str(tmp_path / "README.md"),
        "--chart",
        str(tmp_path / "chart.png"),
    ]
    (tmp_path / "README.md").write_text(f"a\n{readme.START}\n{readme.END}\n")
    assert run.main(common) == 0
    assert "| write (images workload) |" in capsys.readouterr().out
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert [Path(n).suffix for n in written] == [".json", ".png"]
    doc = results.validate(json.loads((tmp_path / "out" / written[0]).read_text()))
    assert doc["settings"]["scale"] == 0.001 and len(doc["write"]) == 7
    assert not (tmp_path / "chart.png").exists() and "|" not in (tmp_path / "README.md").read_text()
    assert list((tmp_path / "work").iterdir()) == []  # temporary data removed
    assert run.main([*common, "--publish"]) == 0
    assert {"latest.json", "latest.png"} <= {p.name for p in (tmp_path / "out").iterdir()}
    assert (tmp_path / "chart.png").exists()
    assert "| shardstore.write, npy | on |" in (tmp_path / "README.md").read_text()


def test_service_and_ragged_benchmark_counts_every_record(tmp_path: Path) -> None:
    """A tiny run: every mode's epoch delivers the dataset (through the real tf.data service)."""
    from benchmarks import service_and_ragged

    out = tmp_path / "svc.json"
    assert service_and_ragged.main(["--scale", "0.004", "--repeats", "1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    images = [r for r in rows if not r["what"].startswith("ragged")]
    tokens = [r for r in rows if r["what"].startswith("ragged")]
    assert len(images) == 6 and {r["records"] for r in images} == {256}  # at least one batch
    assert any(r["what"] == "tf.data service, 2 workers" for r in images)
    assert len(tokens) == 6 and {r["records"] for r in tokens} == {262}
    assert all(r["records_per_s"] > 0 for r in rows)


# -- cold suite -------------------------------------------------------------------------------
def test_cold_suite_floors_epochs_and_a_sparse_dataset(tmp_path: Path) -> None:
    """A tiny cold run: every row present, bytes counted, targets evaluated; the simulated
    dataset is valid (verify passes), reads as zeros and takes almost no disk."""
    from benchmarks import cold

    rows = cold.run_cold_suite(
        tmp_path, sizes_gb=[0.01], sparse_tb=0.0002, batch_size=32, log=lambda _: None
    )
    kinds = [(r["what"], r["mode"]) for r in rows]
    assert kinds == [
        ("floor", "cat"),
        ("floor", "pread x16"),
        ("epoch", "sequential"),
        ("epoch", "global"),
        ("first batch", "sequential, simulated"),
        ("first batch", "global, simulated"),
    ]
    for r in rows[2:4]:
        assert r["read_vs_records"] >= 0 and r["vs_floor"] > 0 and r["first_batch_s"] > 0
    doc = results.new_document({"cpus": 2, "ram_gb": 1.0}, {"scale": 1})
    doc["cold"] = rows
    doc["targets"] = results.evaluate_targets(doc)
    results.validate(doc)
    cold_targets = [t for t in doc["targets"] if t["id"].startswith("cold-")]
    assert len(cold_targets) == 7 and all(t["measured"] is not None for t in cold_targets)
    assert "| epoch | global |" in results.cold_table(doc)
    assert list(tmp_path.iterdir()) == []  # datasets removed

    ds = cold.sparse_dataset(tmp_path / "sparse", 0.0002)
    assert ds.num_shards == 2 and all(s.blocks is not None for s in ds.shards)
    ds.verify(progress=False)
    first = next(iter(ds.iter_numpy(8)))
    assert not first["x"].any() and not first["label"].any()
    on_disk = sum(p.stat().st_blocks * 512 for p in (tmp_path / "sparse").rglob("*.npy"))
    assert on_disk < ds.nbytes // 100


def test_checksum_cost_is_the_worst_first_epoch_overhead() -> None:
    def row(row_id: str, seconds: float, workload: str = "images") -> dict[str, Any]:
        return results.read_row(workload, row_id, row_id, "shardstore", records=10,
                                measured_records=10, seconds=seconds, record_nbytes=8)  # fmt: skip

    read = [
        row("verify:sequential:once", 1.05),
        row("verify:sequential:size", 1.0),
        row("verify:global:once", 2.4),
        row("verify:global:size", 2.0),
        row("verify:global:once", 1.0, "tabular"),
        row("verify:global:size", 1.0, "tabular"),
    ]
    assert results._checksum_cost(read) == pytest.approx(20.0)


# -- object-storage suite -----------------------------------------------------------------------
def test_objstore_suite_measures_every_row_against_its_own_server(tmp_path: Path) -> None:
    """A tiny run against the suite's own S3 server: every row, the records of each epoch,
    requests counted, ratios finite, targets evaluated; the data and the server are gone."""
    import math

    from benchmarks import objstore

    n = 1000
    messages: list[str] = []
    rows = objstore.run_objstore_suite(
        tmp_path, num_records=n, repeats=1, random_reads=40, log=messages.append
    )
    kinds = [(r["what"], r["mode"].split(",")[0]) for r in rows]
    assert kinds == [
        ("floor", "GET"),
        ("cache fill", "every shard into an empty cache"),
        ("epoch", "cold cache (empty)"),
        ("epoch", "warm cache"),
        ("epoch", "local dataset"),
        ("random access", "ds[i]"),
        ("floor", "PUT"),
        ("write", "shardstore.write"),
    ]
    by = {k: r for k, r in zip(kinds, rows, strict=True)}
    nbytes = rows[0]["nbytes"]
    assert nbytes > n * objstore.RECORD_NBYTES  # every file of every shard, headers too
    for r in rows:
        assert "loopback" in r["server"] and f"{os.cpu_count()} CPUs" in r["server"]
        assert r["seconds"] > 0 and r["records"] == n and r["shards"] == 4
        if r["what"] != "random access":
            assert r["nbytes"] == nbytes and math.isfinite(r["mb_per_s"]) and r["mb_per_s"] > 0
        if "vs" in r:
            assert math.isfinite(r["vs"]) and r["vs"] > 0
    for kind in (("epoch", "cold cache (empty)"), ("epoch", "warm cache"),
                 ("epoch", "local dataset")):  # fmt: skip
        assert by[kind]["epoch_records"] == n
    # every object is fetched once: GET floor, cache fill and cold epoch (+ the manifest)
    files = 3 * 4  # x, label and block index of each shard
    assert by[("floor", "GET")]["requests"] == {"GET": files}
    assert by[("cache fill", "every shard into an empty cache")]["requests"] == {"GET": files}
    cold = by[("epoch", "cold cache (empty)")]
    assert cold["requests"] == {"GET": files + 1} and cold["downloaded_bytes"] == nbytes
    assert by[("epoch", "warm cache")]["requests_total"] == 0  # served by the cache alone
    assert by[("floor", "PUT")]["requests"] == {"PUT": files}  # each under one part
    assert by[("write", "shardstore.write")]["requests"]["PUT"] >= files + 1  # + manifest
    random = by[("random access", "ds[i]")]
    assert random["epoch_records"] == 40 and random["requests"]["GET"] > 0
    assert 0 < random["median_ms"] <= random["p99_ms"] <= random["max_ms"]
    assert random["mb_per_s"] is None
    # ds[i] fetches the blocks it reads (ranged GETs), no whole shard file
    assert random["files_downloaded"] == 0 and 0 < random["ranged_bytes"] == random["nbytes"]
    assert random["ranged_bytes"] < nbytes

    doc = results.new_document({"cpus": 2, "ram_gb": 1.0}, {"scale": 1})
    doc["objstore"] = rows
    doc["targets"] = results.evaluate_targets(doc)
    results.validate(json.loads(json.dumps(doc)))
    goals = {t["id"]: t for t in doc["targets"] if t["id"].startswith("objstore-")}
    assert sorted(goals) == ["objstore-cold", "objstore-warm", "objstore-write"]
    assert all(math.isfinite(t["measured"]) for t in goals.values())
    table = results.objstore_table(doc)
    assert "loopback" in table and "| random access | ds[i], fresh cache |" in table
    assert "| object storage |" in readme.readme_block({**_doc(), "objstore": rows})
    assert list(tmp_path.iterdir()) == []  # the datasets and caches removed
    assert any("up in" in m for m in messages)


def test_the_goals_table_judges_the_run_against_todays_goals() -> None:
    """A results file judged against older (easier) goals must not show its old verdicts."""
    doc = _latest()
    forged = json.loads(json.dumps(doc))
    for t in forged["targets"]:
        t["met"] = True
    table = results.targets_table(forged)
    assert table == results.targets_table(doc)
    unmet = [t for t in results.evaluate_targets(doc) if t["met"] is False]
    assert unmet and table.count("NOT met") == len(unmet)
