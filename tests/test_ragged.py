"""Ragged (variable-length) features: written, stored, gathered, batched, padded, bucketed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

import shardstore
from shardstore.errors import CapabilityError, ChecksumError, InvalidInputError, ManifestError
from shardstore.format.manifest import Manifest
from shardstore.format.ragged import RaggedArray, length_stats, merge_length_stats
from shardstore.testing import assert_bitwise_equal

LENGTHS = [3, 0, 5, 1, 8, 2, 2, 13, 0, 4, 6, 1, 9, 7, 3, 5, 11]


def records(lengths: list[int] = LENGTHS, inner: tuple[int, ...] = (), seed: int = 0) -> list[Any]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, *inner)).astype(np.float32) for n in lengths]


def write(tmp_path: Path, lengths: list[int] = LENGTHS, **kw: Any) -> shardstore.Dataset:
    data = {"tok": records(lengths), "label": np.arange(len(lengths), dtype=np.int64)}
    kw.setdefault("records_per_shard", 4)
    return shardstore.write(tmp_path / "d", data, fsync=False, **kw)


def assert_records(got: RaggedArray, expected: list[np.ndarray]) -> None:
    assert len(got) == len(expected)
    for record, want in zip(got, expected, strict=True):
        assert_bitwise_equal(record, want)


# -- RaggedArray -------------------------------------------------------------------------------


def test_ragged_array_constructors_agree() -> None:
    parts = records([2, 0, 3], inner=(2,))
    a = RaggedArray.from_arrays(parts)
    b = RaggedArray.from_lengths(np.concatenate(parts), [2, 0, 3])
    c = RaggedArray.from_row_splits(np.concatenate(parts), [0, 2, 2, 5])
    assert a == b == c
    assert a.shape == (3, None, 2) and a.inner_shape == (2,) and a.lengths.tolist() == [2, 0, 3]
    assert_records(a, parts)
    assert a[1:].lengths.tolist() == [0, 3] and a[1:].offsets[0] == 2  # a view
    assert a[1:].compact().offsets.tolist() == [0, 0, 3]
    assert_records(a.take([2, 0, 2]), [parts[2], parts[0], parts[2]])
    assert_records(RaggedArray.concatenate([a[2:], a[:1]]), [parts[2], parts[0]])
    assert len(RaggedArray.empty(np.float32, (2,))) == 0


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: RaggedArray.from_lengths(np.zeros(4), [1, 2]), "add up to 3 rows"),
        (lambda: RaggedArray.from_lengths(np.zeros(4), [5, -1]), ">= 0"),
        (lambda: RaggedArray(np.zeros(4), [0, 3, 2]), "non-decreasing"),
        (lambda: RaggedArray(np.zeros(4), [0, 5]), "outside the 4 rows"),
        (lambda: RaggedArray.from_row_splits(np.zeros(4), [1, 4]), "starting at 0"),
        (lambda: RaggedArray.from_arrays([np.zeros((2, 3)), np.zeros((2, 4))]), "record 1"),
        (lambda: RaggedArray.from_arrays([]), "empty list"),
    ],
)
def test_ragged_array_refuses_inconsistent_parts(build: Any, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        build()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 3000), max_size=30), min_size=1, max_size=5))
def test_length_stats_merge_like_the_whole(runs: list[list[int]]) -> None:
    """Per-shard statistics merge into exactly the statistics of all the records."""
    whole = length_stats(np.array([n for run in runs for n in run], np.int64))
    assert merge_length_stats([length_stats(np.array(r, np.int64)) for r in runs]) == whole
    assert sum(whole["histogram"]) == whole["count"]


# -- writing and the manifest ------------------------------------------------------------------


def test_written_from_a_list_of_arrays_reads_back_bit_for_bit(tmp_path: Path) -> None:
    ds = write(tmp_path)
    spec = ds.features["tok"]
    assert spec.is_ragged and spec.shape == (None,) and spec.dtype == np.float32
    assert_records(ds[:]["tok"], records())
    assert_records(ds[[7, 1, 7, 16]]["tok"], [records()[i] for i in (7, 1, 7, 16)])
    assert_bitwise_equal(ds[4]["tok"], records()[4])
    batches = list(ds.iter_numpy(5))
    assert_records(RaggedArray.concatenate([b["tok"] for b in batches]), records())


def test_manifest_records_length_statistics(tmp_path: Path) -> None:
    ds = write(tmp_path)
    stats = json.loads((ds.path / "manifest.json").read_text())["features"]["tok"]["lengths"]
    assert stats == length_stats(np.array(LENGTHS))
    assert (stats["min"], stats["max"], stats["total"], stats["count"]) == (0, 13, 80, 17)
    assert shardstore.open(ds.path).features["tok"].lengths == stats


def test_values_plus_row_lengths_with_inner_dimensions(tmp_path: Path) -> None:
    """From values + row_lengths, 2-D rows, complex dtype; a streamed Writer cuts mid-shard."""
    rng = np.random.default_rng(2)
    lengths = np.array([4, 1, 0, 6, 2, 3, 5])
    values = (rng.standard_normal((lengths.sum(), 3, 2)) * 1j).astype(np.complex64)
    full = RaggedArray.from_lengths(values, lengths)
    with shardstore.Writer(tmp_path / "d", records_per_shard=3, fsync=False) as w:
        w.write({"v": full[:2]})  # batches that do not line up with shards
        w.write({"v": full[2:5]})
        w.write({"v": full[5:]})
    ds = shardstore.open(tmp_path / "d")
    assert ds.features["v"].shape == (None, 3, 2) and ds.num_shards == 3
    assert ds[:]["v"] == full


def test_shard_size_estimated_from_the_records(tmp_path: Path) -> None:
    """shard_size: records per shard from the first batch's mean record size."""
    tokens = [np.zeros(n, np.int32) for n in [100] * 50]  # 400 bytes of values + 8 of offset
    ds = shardstore.write(tmp_path / "d", {"t": tokens}, shard_size=408 * 10, fsync=False)
    assert [s.num_records for s in ds.shards] == [10] * 5


def test_a_list_of_equal_shapes_stays_fixed(tmp_path: Path) -> None:
    ds = shardstore.write(tmp_path / "d", {"x": [np.zeros(3), np.ones(3)]}, fsync=False)
    assert ds.features["x"].shape == (3,)
    forced = RaggedArray.from_arrays([np.zeros(3), np.ones(3)])
    ds = shardstore.write(tmp_path / "r", {"x": forced}, fsync=False)
    assert ds.features["x"].shape == (None,)


def test_parallel_ragged_write_is_byte_identical(tmp_path: Path) -> None:
    data = {"tok": records(), "label": np.arange(len(LENGTHS))}
    serial = shardstore.write(tmp_path / "s", data, records_per_shard=3, executor="serial")
    threads = shardstore.write(tmp_path / "t", data, records_per_shard=3, executor="threads")
    assert [f.checksum for s in serial.shards for f in s.files] == [
        f.checksum for s in threads.shards for f in s.files
    ]


def test_sources_without_ragged_support_refuse_it(tmp_path: Path) -> None:
    with pytest.raises(shardstore.UnsupportedDTypeError, match=r"variable dimension.*tfrecord"):
        write(tmp_path, format="tfrecord")
    assert not (tmp_path / "d" / "manifest.json").exists()


@pytest.mark.parametrize(
    ("shape", "lengths", "message"),
    [
        ([4, None], None, "variable dimension after the first"),
        ([None], {"count": 2, "total": 3, "min": 1, "max": 2, "histogram": [0, 1]}, "inconsist"),
        ([None], {"count": 1, "total": 3, "min": 1, "max": 2}, "histogram"),
    ],
)
def test_lying_ragged_manifests_are_refused(
    tmp_path: Path, shape: list[Any], lengths: Any, message: str
) -> None:
    ds = write(tmp_path)
    doc = json.loads((ds.path / "manifest.json").read_text())
    doc["features"]["tok"]["shape"] = shape
    if lengths is not None:
        doc["features"]["tok"]["lengths"] = lengths
    with pytest.raises(ManifestError, match=message):
        Manifest.from_dict(doc)


# -- reading damage ----------------------------------------------------------------------------


def offsets_file(ds: shardstore.Dataset, shard: int) -> Path:
    return ds.path / ds.shards[shard].ragged_files("tok")[1].path


def test_lying_offsets_are_refused_naming_the_shard(tmp_path: Path) -> None:
    """Offsets that go backwards or end elsewhere than the values do never reach a reader."""
    ds = write(tmp_path)
    path = offsets_file(ds, 1)
    raw = bytearray(path.read_bytes())
    header = ds.shards[1].ragged_files("tok")[1].info["header_bytes"]
    table = np.frombuffer(raw[header:], "<i8").copy()
    table[2], table[3] = table[3], table[2]  # not monotonic
    raw[header:] = table.tobytes()
    path.write_bytes(bytes(raw))
    with pytest.raises(ChecksumError, match="checksum"):  # the default: hashed first
        shardstore.open(ds.path)[4:8]
    trusting = shardstore.open(ds.path, verify="size")  # size only: the source's own check
    with pytest.raises(ChecksumError, match=r"shard 1: file .*offsets.* do not run from 0") as e:
        trusting[5]
    assert (e.value.shard, e.value.file) == (1, ds.shards[1].ragged_files("tok")[1].path)
    assert_records(trusting[8:12]["tok"], records()[8:12])  # other shards still read


def test_a_manifest_whose_sizes_contradict_the_layout_is_refused(tmp_path: Path) -> None:
    ds = write(tmp_path)
    doc = json.loads((ds.path / "manifest.json").read_text())
    values = doc["shards"][0]["files"][0]
    assert values["info"]["ragged"] == "values"
    values["size"] += 2  # not whole rows (and the file agrees, so only the layout check sees it)
    (ds.path / "manifest.json").write_text(json.dumps(doc))
    with open(ds.path / values["path"], "ab") as f:
        f.write(b"\0\0")
    with pytest.raises(ManifestError, match=r"not header_bytes \+ whole rows"):
        shardstore.open(ds.path, verify="size").to_tf(4)


# -- to_tf -------------------------------------------------------------------------------------


def by_label(batches: list[dict[str, Any]]) -> dict[int, np.ndarray]:
    out: dict[int, np.ndarray] = {}
    for b in batches:
        toks = b["tok"]
        rows = toks.to_list() if isinstance(toks, tf.RaggedTensor) else list(toks.numpy())
        for label, row in zip(b["label"].numpy().tolist(), rows, strict=True):
            assert label not in out, f"record {label} delivered twice"
            out[label] = np.asarray(row, np.float32)
    return out


def test_to_tf_yields_ragged_batches_in_order(tmp_path: Path) -> None:
    ds = write(tmp_path)
    batches = list(ds.to_tf(batch_size=5))
    assert [b["label"].shape[0] for b in batches] == [5, 5, 5, 2]
    assert isinstance(batches[0]["tok"], tf.RaggedTensor)
    assert ds.to_tf(batch_size=5).element_spec["tok"].shape.as_list() == [None, None]
    got = RaggedArray.from_row_splits(
        np.concatenate([b["tok"].flat_values.numpy() for b in batches]),
        np.r_[0, np.cumsum(np.concatenate([b["tok"].row_lengths().numpy() for b in batches]))],
    )
    assert_records(got, records())
    single = list(ds.to_tf(batch_size=None))
    assert_bitwise_equal(single[7]["tok"].numpy(), records()[7])


@pytest.mark.parametrize("shuffle", [True, "global"])
def test_shuffled_ragged_reads_every_record_once(tmp_path: Path, shuffle: Any) -> None:
    ds = write(tmp_path)
    runs = [list(ds.to_tf(batch_size=3, shuffle=shuffle, seed=7)) for _ in range(2)]
    got = by_label(runs[0])
    assert sorted(got) == list(range(len(LENGTHS)))
    for label, row in got.items():
        assert_bitwise_equal(row, records()[label])
    order = [b["label"].numpy().tolist() for b in runs[0]]
    assert order == [b["label"].numpy().tolist() for b in runs[1]]  # seeded
    if shuffle == "global":
        assert [i for batch in order for i in batch] != list(range(len(LENGTHS)))


def test_pad_to_the_longest_in_each_batch(tmp_path: Path) -> None:
    ds = write(tmp_path)
    batches = list(ds.to_tf(batch_size=4, pad=True, pad_value=-1.5, features=("tok", "label")))
    for tok, label in batches:
        assert isinstance(tok, tf.Tensor)
        lengths = [LENGTHS[i] for i in label.numpy()]
        assert tok.shape == (len(lengths), max(lengths))
        for row, n, i in zip(tok.numpy(), lengths, label.numpy(), strict=True):
            assert_bitwise_equal(row[:n], records()[i])
            assert np.all(row[n:] == np.float32(-1.5))


def test_pad_to_a_fixed_length_cuts_longer_records(tmp_path: Path) -> None:
    ds = write(tmp_path)
    tfds = ds.to_tf(batch_size=4, pad={"tok": 6}, drop_remainder=True)
    assert tfds.element_spec["tok"].shape.as_list() == [4, 6]
    for b in tfds:
        for row, i in zip(b["tok"].numpy(), b["label"].numpy(), strict=True):
            want = records()[i][:6]
            assert_bitwise_equal(row[: len(want)], want)
            assert not row[len(want) :].any()


def test_bucketing_batches_records_of_similar_length(tmp_path: Path) -> None:
    ds = write(tmp_path)
    edges = [2, 5, 9]
    batches = list(ds.to_tf(batch_size=3, bucket_boundaries=edges, shuffle=True, seed=1))
    got = by_label(batches)
    assert sorted(got) == list(range(len(LENGTHS)))
    for b in batches:
        buckets = {
            int(np.searchsorted(edges, LENGTHS[i], side="right")) for i in b["label"].numpy()
        }
        assert len(buckets) == 1, f"batch {b['label'].numpy()} mixes length buckets"
    auto = list(ds.to_tf(batch_size=2, bucket_boundaries="auto", pad=True))
    assert sorted(by_label(auto)) == list(range(len(LENGTHS)))
    for b in auto:  # power-of-two buckets: padding at most doubles a record
        lengths = [LENGTHS[i] for i in b["label"].numpy()]
        assert max(lengths) < 2 * max(1, min(lengths)) or min(lengths) == 0


def test_keras_trains_on_padded_ragged_batches(tmp_path: Path) -> None:
    import keras

    ds = write(tmp_path, lengths=[n + 1 for n in LENGTHS])
    tfds = ds.to_tf(batch_size=4, pad=True, features=("tok", "label")).map(
        lambda t, y: (t[..., None], tf.cast(y % 2, tf.float32))
    )
    model = keras.Sequential([keras.layers.Masking(), keras.layers.GRU(4), keras.layers.Dense(1)])
    model.compile("adam", "mse")
    history = model.fit(tfds, epochs=2, verbose=0, shuffle=False)
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"tf_native": True}, CapabilityError, "ragged features are gathered by index"),
        ({"pad": True, "features": "label"}, InvalidInputError, "none of the features read"),
        ({"pad": {"label": 3}}, InvalidInputError, "not ragged features"),
        ({"pad": True, "batch_size": None}, InvalidInputError, "pad needs a batch_size"),
        ({"pad": 0}, InvalidInputError, "pad must be an integer >= 1"),
        ({"bucket_boundaries": [4, 2]}, InvalidInputError, "increasing"),
        ({"bucket_boundaries": "some"}, InvalidInputError, "'auto'"),
        ({"bucket_boundaries": [2], "bucket_by": "label"}, InvalidInputError, "not a ragged"),
        ({"bucket_by": "tok"}, InvalidInputError, "needs bucket_boundaries"),
        ({"bucket_boundaries": [2], "start_step": 1}, InvalidInputError, "start_step"),
    ],
)
def test_bad_ragged_options_are_refused(
    tmp_path: Path, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    ds = write(tmp_path)
    kwargs.setdefault("batch_size", 4)
    with pytest.raises(error, match=message):
        ds.to_tf(**kwargs)


def test_merged_parts_sum_their_length_statistics(tmp_path: Path) -> None:
    a = shardstore.write(tmp_path / "a", {"tok": records(LENGTHS[:9])}, records_per_shard=4)
    b = shardstore.write(tmp_path / "b", {"tok": records(LENGTHS[9:], seed=1)},
                         records_per_shard=4)  # fmt: skip
    merged = shardstore.merge([a.path, b.path], tmp_path / "m")
    assert merged.features["tok"].lengths == length_stats(np.array(LENGTHS))
    assert_records(merged[:]["tok"], records(LENGTHS[:9]) + records(LENGTHS[9:], seed=1))


def test_a_ragged_dataset_claiming_absurd_record_counts_is_refused(tmp_path: Path) -> None:
    """The fixed-shape features of a ragged dataset still bound what a shard may claim."""
    ds = write(tmp_path)
    doc = json.loads((ds.path / "manifest.json").read_text())
    doc["shards"][0]["num_records"] += 10**12
    doc["num_records"] += 10**12
    (ds.path / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ManifestError, match=r"shard 0: claims 8000000000032 bytes"):
        shardstore.open(ds.path, verify="size")[0]
