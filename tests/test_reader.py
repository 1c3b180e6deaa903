"""The reader: open(), metadata, to_tf() order/shuffle/sharding/batching, verify()."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf

import shardstore
from shardstore.errors import (
    CapabilityError,
    ChecksumError,
    DatasetNotFoundError,
    InvalidInputError,
    ManifestError,
    SourceNotFoundError,
)
from shardstore.testing import assert_bitwise_equal, assert_damage_reported, collect, flip_bit

N = 203


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "image": rng.random((N, 6, 5, 3), dtype=np.float32),
        "label": np.arange(N, dtype=np.int64),
        "mask": rng.integers(0, 2, (N, 4)).astype(bool),
    }


@pytest.fixture(scope="module")
def ds(tmp_path_factory: pytest.TempPathFactory, data: dict[str, np.ndarray]) -> shardstore.Dataset:
    return shardstore.write(tmp_path_factory.mktemp("r") / "d", data, records_per_shard=19)


def labels(tfds: tf.data.Dataset) -> np.ndarray:
    return np.concatenate([b.numpy() for b in tfds])


def test_open_and_metadata(ds: shardstore.Dataset) -> None:
    opened = shardstore.open(ds.path)
    assert (opened.num_records, opened.num_shards, len(opened)) == (N, 11, N)
    assert opened.features["image"].dtype == np.dtype("float32")
    assert opened.features["image"].shape == (6, 5, 3)
    assert opened.features["label"].shape == ()
    assert opened.nbytes == sum(f.size for s in opened.shards for f in s.files)
    assert "records=203" in repr(opened)


def test_open_missing_dataset(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="not a directory"):
        shardstore.open(tmp_path / "nothing")
    with pytest.raises(DatasetNotFoundError, match=r"manifest\.json"):
        shardstore.open(tmp_path)


def test_ordered_read_is_bit_exact(ds: shardstore.Dataset, data: dict[str, np.ndarray]) -> None:
    tfds = ds.to_tf(batch_size=16)
    assert tfds.cardinality().numpy() == 13
    out = collect(tfds)
    assert set(out) == set(data)
    for k in data:
        assert_bitwise_equal(out[k], data[k])


def test_tuple_and_single_feature_outputs(ds: shardstore.Dataset, data: dict[str, Any]) -> None:
    x, y = collect(ds.to_tf(batch_size=32, features=("image", "label")))
    assert_bitwise_equal(x, data["image"])
    assert_bitwise_equal(y, data["label"])
    assert_bitwise_equal(collect(ds.to_tf(batch_size=50, features="mask")), data["mask"])
    (only,) = collect(ds.to_tf(batch_size=50, features=["label"]))
    assert_bitwise_equal(only, data["label"])


def test_element_spec_and_drop_remainder(ds: shardstore.Dataset) -> None:
    tfds = ds.to_tf(batch_size=16, features=("image", "label"), drop_remainder=True)
    assert tfds.element_spec[0].shape.as_list() == [16, 6, 5, 3]
    assert tfds.element_spec[1].dtype == tf.int64
    assert tfds.cardinality().numpy() == N // 16
    assert_bitwise_equal(labels(ds.to_tf(16, features="label", drop_remainder=True)),
                         np.arange(N // 16 * 16, dtype=np.int64))  # fmt: skip


def test_unbatched_records(ds: shardstore.Dataset, data: dict[str, Any]) -> None:
    tfds = ds.to_tf(batch_size=None, features="image")
    assert tfds.cardinality().numpy() == N
    assert tfds.element_spec.shape.as_list() == [6, 5, 3]
    assert_bitwise_equal(np.stack(list(tfds.as_numpy_iterator())), data["image"])


@pytest.mark.parametrize("batch_size", [1, 7, 19, 64, 500])
def test_batch_sizes_that_do_not_divide(ds: shardstore.Dataset, batch_size: int) -> None:
    tfds = ds.to_tf(batch_size, features="label")
    sizes = [int(b.shape[0]) for b in tfds]
    assert sum(sizes) == N
    assert all(s == batch_size for s in sizes[:-1])
    assert tfds.cardinality().numpy() == len(sizes)


def test_shuffle_covers_every_record_once(ds: shardstore.Dataset) -> None:
    got = labels(ds.to_tf(batch_size=10, features="label", shuffle=True, seed=3))
    assert sorted(got.tolist()) == list(range(N))
    assert got.tolist() != list(range(N))


def test_shuffle_mixes_across_shards(ds: shardstore.Dataset) -> None:
    """The first batch must not simply be one shard's records in a new order."""
    first = next(iter(ds.to_tf(batch_size=19, features="label", shuffle=True, seed=0)))
    assert len({int(v) // 19 for v in first.numpy()}) > 2


def test_shuffle_pairs_features_consistently(ds: shardstore.Dataset, data: dict[str, Any]) -> None:
    x, y = collect(ds.to_tf(batch_size=8, features=("image", "label"), shuffle=True, seed=1))
    assert_bitwise_equal(x, data["image"][y])


def test_seeded_shuffle_is_reproducible_and_reshuffles_each_epoch(ds: shardstore.Dataset) -> None:
    a = ds.to_tf(batch_size=10, features="label", shuffle=True, seed=11)
    b = ds.to_tf(batch_size=10, features="label", shuffle=True, seed=11)
    epoch1_a, epoch2_a = labels(a), labels(a)
    epoch1_b, epoch2_b = labels(b), labels(b)
    assert epoch1_a.tolist() == epoch1_b.tolist()
    assert epoch2_a.tolist() == epoch2_b.tolist()
    assert epoch1_a.tolist() != epoch2_a.tolist()
    other = labels(ds.to_tf(batch_size=10, features="label", shuffle=True, seed=12))
    assert other.tolist() != epoch1_a.tolist()


def test_small_shuffle_buffer_still_covers(ds: shardstore.Dataset) -> None:
    got = labels(ds.to_tf(batch_size=4, features="label", shuffle=True, seed=5, shuffle_buffer=3))
    assert sorted(got.tolist()) == list(range(N))


@pytest.mark.parametrize("workers", [1, 2, 3, 11])
def test_worker_shards_are_disjoint_and_complete(ds: shardstore.Dataset, workers: int) -> None:
    parts = [
        labels(
            ds.to_tf(
                batch_size=8,
                features="label",
                shard=(i, workers),
                shuffle=True,
                seed=2,
                balance=None,
            )
        )
        for i in range(workers)
    ]
    flat = np.concatenate(parts).tolist()
    assert sorted(flat) == list(range(N))
    assert len(set(flat)) == N


@pytest.mark.parametrize(
    ("shuffle", "tf_native"),
    [(False, False), (True, False), ("global", False), (False, True), (True, True)],
)
def test_balanced_workers_get_equal_full_steps(
    ds: shardstore.Dataset, shuffle: bool | str, tf_native: bool
) -> None:
    """11 shards of 19 (the last 13) over 3 workers: shares of 76, 70 and 57 records."""
    shares = [sum(s.num_records for s in ds.shards[i::3]) for i in range(3)]
    assert shares == [76, 70, 57]
    for balance, steps in (("drop", 57 // 8), ("repeat", -(-76 // 8))):
        seen: list[int] = []
        for i in range(3):
            tfds = ds.to_tf(
                batch_size=8,
                features="label",
                shard=(i, 3),
                shuffle=shuffle,
                seed=4,
                balance=balance,
                tf_native=tf_native,
            )
            batches = [b.numpy() for b in tfds]
            assert tfds.cardinality().numpy() == steps
            assert [len(b) for b in batches] == [8] * steps  # every rank: same full steps
            mine = {
                r
                for s in ds.shards[i::3]
                for r in range(19 * s.index, 19 * s.index + s.num_records)
            }
            flat = np.concatenate(batches).tolist()
            assert set(flat) <= mine
            if balance == "drop":
                assert len(set(flat)) == len(flat)  # nothing twice
            else:
                assert set(flat) == mine  # every record at least once
            seen += flat
        if balance == "repeat":
            assert sorted(set(seen)) == list(range(N))


def test_more_workers_than_shards_is_refused(ds: shardstore.Dataset) -> None:
    with pytest.raises(InvalidInputError, match="12 workers"):
        ds.to_tf(shard=(0, 12))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": True}, "batch_size"),
        ({"features": ("image", "nope")}, "nope"),
        ({"features": ()}, "features"),
        ({"shuffle": "yes"}, "shuffle"),
        ({"seed": -1}, "seed"),
        ({"shard": (2, 2)}, "worker_index"),
        ({"shard": (0,)}, "shard"),
        ({"num_parallel_reads": 0}, "num_parallel_reads"),
        ({"shuffle_buffer": 0}, "shuffle_buffer"),
        ({"prefetch": -1}, "prefetch"),
    ],
)
def test_bad_read_options(ds: shardstore.Dataset, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        ds.to_tf(**kwargs)


def test_npy_dataset_gets_random_access_through_memmap(
    ds: shardstore.Dataset, data: dict[str, Any]
) -> None:
    opened = shardstore.open(ds.path)  # no source named: the reader may pick memmap
    assert opened.source_for("random_access").name == "memmap"
    rec = opened[7]
    assert_bitwise_equal(rec["image"], data["image"][7])
    assert rec["label"] == 7
    mask = np.zeros(N, bool)
    mask[[0, 19, 200]] = True
    assert_bitwise_equal(opened[mask]["label"], np.array([0, 19, 200], np.int64))
    x, y = collect(opened.to_tf(batch_size=16, features=("image", "label"), shuffle="global",
                                seed=2))  # fmt: skip
    assert sorted(y.tolist()) == list(range(N))
    assert_bitwise_equal(x, data["image"][y])


def test_global_shuffle_batches_mix_the_whole_dataset(ds: shardstore.Dataset) -> None:
    tfds = ds.to_tf(batch_size=20, features="label", shuffle="global", seed=9)
    epochs = [labels(tfds).tolist() for _ in range(2)]
    first = epochs[0][:20]
    assert max(first) - min(first) > N // 2  # drawn from the whole dataset, not a window
    assert epochs[0] != epochs[1]  # a new permutation every epoch
    again = labels(ds.to_tf(batch_size=20, features="label", shuffle="global", seed=9))
    assert again.tolist() == epochs[0]  # and the same sequence of epochs run to run


def test_global_shuffle_drop_remainder_and_unbatched(ds: shardstore.Dataset) -> None:
    tfds = ds.to_tf(batch_size=16, features="label", shuffle="global", seed=0,
                    drop_remainder=True)  # fmt: skip
    assert tfds.element_spec.shape.as_list() == [16]
    assert sum(int(b.shape[0]) for b in tfds) == N // 16 * 16
    single = ds.to_tf(batch_size=None, features="label", shuffle="global", seed=0)
    assert sorted(int(v) for v in single) == list(range(N))


def test_explicit_source_without_random_access_says_so(ds: shardstore.Dataset) -> None:
    explicit = shardstore.open(ds.path, source="npy")
    with pytest.raises(CapabilityError, match="random_access"):
        explicit.to_tf(shuffle="global")
    with pytest.raises(CapabilityError, match="random_access"):
        explicit[0]


@pytest.mark.parametrize("key", [N, -N - 1, [0, N], "a", 1.5, [[0, 1]], np.ones(3, bool)])
def test_bad_indices(ds: shardstore.Dataset, key: Any) -> None:
    with pytest.raises(IndexError):
        ds[key]


def test_slices_and_fancy_indices(ds: shardstore.Dataset, data: dict[str, Any]) -> None:
    for key in [slice(None), slice(5, 150, 7), slice(None, None, -1), [202, 0, 0, 101], []]:
        got = ds[key]
        for name in data:
            assert_bitwise_equal(got[name], data[name][key])


def test_unknown_source_at_open(ds: shardstore.Dataset) -> None:
    with pytest.raises(SourceNotFoundError):
        shardstore.open(ds.path, source="nope")


def _py_ops(tfds: tf.data.Dataset) -> set[bytes]:
    serialized = tfds._as_serialized_graph().numpy()
    return {op for op in (b"PyFunc", b"EagerPyFunc", b"NumpyFunction") if op in serialized}


@pytest.mark.parametrize("shuffle", [False, True])
def test_tf_native_pipeline_has_no_python(ds: shardstore.Dataset, shuffle: bool) -> None:
    """tf_native=True: no py_function/numpy_function, so the graph serialises (tf.data service)."""
    tfds = ds.to_tf(batch_size=16, shuffle=shuffle, seed=0, tf_native=True)
    assert _py_ops(tfds) == set()
    got = collect(tfds)
    order = np.argsort(got["label"])  # labels are the record numbers
    assert order.tolist() != list(range(len(order))) if shuffle else True
    for name, expected in ds[:].items():
        assert_bitwise_equal(got[name][order], expected)


def test_default_pipeline_gathers_batches_in_numpy(ds: shardstore.Dataset) -> None:
    """By default an npy dataset is read by index through memmap: one numpy_function per batch."""
    assert _py_ops(ds.to_tf(batch_size=16)) == {b"PyFunc"}


def test_tf_native_refused_for_numpy_sources(ds: shardstore.Dataset) -> None:
    with pytest.raises(CapabilityError, match="tf_native"):
        shardstore.open(ds.path, source="memmap").to_tf(batch_size=4, tf_native=True)
    with pytest.raises(CapabilityError, match="global"):
        ds.to_tf(batch_size=4, shuffle="global", tf_native=True)


def test_empty_dataset_reads_nothing(tmp_path: Path) -> None:
    ds = shardstore.write(tmp_path / "e", {"a": np.zeros((0, 2), np.int32)})
    tfds = ds.to_tf(batch_size=4, shuffle=True, seed=0)
    assert tfds.cardinality().numpy() == 0
    assert list(tfds) == []


def test_one_record_dataset(tmp_path: Path) -> None:
    ds = shardstore.write(tmp_path / "one", {"a": np.array([[1.5, -2.0]], np.float64)})
    out = collect(ds.to_tf(batch_size=32, features="a", shuffle=True, seed=0))
    assert_bitwise_equal(out, np.array([[1.5, -2.0]], np.float64))


# --- integrity ----------------------------------------------------------------------------


def copy_dataset(src: shardstore.Dataset, dst: Path) -> shardstore.Dataset:
    import shutil

    shutil.copytree(src.path, dst)
    return shardstore.open(dst)


def test_verify_passes_on_a_good_dataset(ds: shardstore.Dataset) -> None:
    ds.verify(progress=False)


def test_verify_names_the_flipped_file(ds: shardstore.Dataset, tmp_path: Path) -> None:
    bad = copy_dataset(ds, tmp_path / "bad")
    victim = bad.shards[4].file_for("image")
    flip_bit(bad.path / victim.path, victim.size // 2, 0x10)
    with pytest.raises(ChecksumError) as exc:
        bad.verify(progress=False)
    assert exc.value.shard == 4
    assert exc.value.file == victim.path
    assert victim.path in str(exc.value) and "shard 4" in str(exc.value)


def test_truncated_or_missing_file_fails_when_read(ds: shardstore.Dataset, tmp_path: Path) -> None:
    """Sizes are checked when a file is first opened (lazily); TF-native pipelines up front."""
    bad = copy_dataset(ds, tmp_path / "bad")
    victim = bad.shards[2].file_for("label")
    os.truncate(bad.path / victim.path, victim.size - 8)
    for what in ("bytes", "missing"):
        err = assert_damage_reported(
            lambda: collect(bad.to_tf(batch_size=8)), bad.path, 2, victim.path
        )
        assert what in str(err)
        with pytest.raises(ChecksumError, match=what):
            bad.to_tf(batch_size=8, tf_native=True)
        with pytest.raises(ChecksumError, match=what):
            shardstore.open(bad.path)[bad.shards[2].num_records * 2 + 1]
        if what == "bytes":
            os.remove(bad.path / victim.path)


def test_symlink_escaping_the_dataset_is_refused(ds: shardstore.Dataset, tmp_path: Path) -> None:
    bad = copy_dataset(ds, tmp_path / "bad")
    victim = bad.shards[0].file_for("label")
    outside = tmp_path / "outside.npy"
    (bad.path / victim.path).rename(outside)
    (bad.path / victim.path).symlink_to(outside)
    with pytest.raises(
        tf.errors.OpError, match=r"(UnsafeLinkError|ManifestError).*outside the dataset"
    ):
        collect(bad.to_tf(batch_size=8))  # refused when the reader reaches the file
    with pytest.raises(ManifestError, match="outside the dataset"):
        bad.to_tf(batch_size=8, tf_native=True)  # TensorFlow ops only: checked up front
    with pytest.raises(ManifestError, match="outside the dataset"):
        bad[0]
    with pytest.raises(ManifestError, match="outside the dataset"):
        bad.verify(progress=False)


def test_manifest_symlink_escaping_is_refused(tmp_path: Path, ds: shardstore.Dataset) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "manifest.json").symlink_to(ds.path / "manifest.json")
    with pytest.raises(ManifestError, match="outside the dataset"):
        shardstore.open(d)


def test_manifest_with_escaping_path_is_refused_at_open(
    ds: shardstore.Dataset, tmp_path: Path
) -> None:
    bad = copy_dataset(ds, tmp_path / "bad")
    raw = json.loads((bad.path / "manifest.json").read_text())
    raw["shards"][0]["files"][0]["path"] = "../../etc/passwd"
    (bad.path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match="etc/passwd"):
        shardstore.open(bad.path)


def test_lying_header_length_is_refused(ds: shardstore.Dataset, tmp_path: Path) -> None:
    bad = copy_dataset(ds, tmp_path / "bad")
    raw = json.loads((bad.path / "manifest.json").read_text())
    raw["shards"][0]["files"][0]["info"]["header_bytes"] = 10**12
    (bad.path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match="header_bytes"):
        shardstore.open(bad.path).to_tf(batch_size=4)


def test_size_that_contradicts_the_npy_layout_is_refused(
    ds: shardstore.Dataset, tmp_path: Path
) -> None:
    bad = copy_dataset(ds, tmp_path / "bad")
    raw = json.loads((bad.path / "manifest.json").read_text())
    raw["shards"][1]["num_records"] -= 1
    raw["num_records"] -= 1
    (bad.path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match="does not match"):
        shardstore.open(bad.path).to_tf(batch_size=4)


def test_seeded_order_is_identical_across_processes(ds: shardstore.Dataset) -> None:
    """ "Reproducible run to run" means in a fresh interpreter too, not just in this one."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np, shardstore\n"
        "ds = shardstore.open(sys.argv[1])\n"
        "t = ds.to_tf(batch_size=10, features='label', shuffle=True, seed=21)\n"
        "print(','.join(str(v) for b in t for v in b.numpy()))\n"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    runs = [
        subprocess.run([sys.executable, "-c", code, str(ds.path)], capture_output=True,
                       text=True, check=True, env=env).stdout.strip().splitlines()[-1]
        for _ in range(2)
    ]  # fmt: skip
    assert runs[0] == runs[1]
    assert sorted(int(v) for v in runs[0].split(",")) == list(range(N))


def test_shard_directory_symlink_escaping_the_dataset_is_refused(
    ds: shardstore.Dataset, tmp_path: Path
) -> None:
    bad = copy_dataset(ds, tmp_path / "bad")
    version_dir = bad.path / bad.shards[0].files[0].path.split("/")[0]
    outside = tmp_path / "outside"
    version_dir.rename(outside)
    version_dir.symlink_to(outside)
    with pytest.raises(
        tf.errors.OpError, match=r"(UnsafeLinkError|ManifestError).*outside the dataset"
    ):
        collect(bad.to_tf(batch_size=8))
    with pytest.raises(ManifestError, match="outside the dataset"):
        bad.to_tf(batch_size=8, tf_native=True)
    with pytest.raises(ManifestError, match="outside the dataset"):
        bad.check_files()


@pytest.mark.parametrize("shuffle", [False, True, "global"])
def test_an_epochs_first_group_is_read_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shuffle: bool | str
) -> None:
    """No other group of records is read until an epoch's first one is out (first batch fast)."""
    import threading
    import time

    from shardstore.reading import random_access

    data = {"x": np.arange(20_000, dtype=np.int64)}
    ds = shardstore.write(tmp_path / "d", data, records_per_shard=500, fsync=False)
    calls: list[tuple[float, float]] = []
    started = [0]
    lock = threading.Lock()
    real = random_access.gather_records

    def logged(*args: Any, **kwargs: Any) -> Any:
        start = time.monotonic()
        with lock:
            started[0] += 1
            first = started[0] == 1
        if first:
            time.sleep(0.3)  # a slow first group: others would start meanwhile
        try:
            return real(*args, **kwargs)
        finally:
            with lock:
                calls.append((start, time.monotonic()))

    monkeypatch.setattr(random_access, "gather_records", logged)
    pipeline = ds.to_tf(64, shuffle=shuffle, seed=1, features="x")
    for epoch in range(2):
        calls.clear()
        started[0] = 0
        got = np.concatenate([b.numpy() for b in pipeline])
        assert np.array_equal(np.sort(got), data["x"]), epoch
        assert len(calls) > 3
        calls.sort()
        first_end = calls[0][1]
        assert all(start >= first_end for start, _ in calls[1:]), epoch


@pytest.mark.parametrize("source", ["memmap", "zarr"])
def test_consecutive_records_gathered_from_their_ends_equal_the_general_gather(
    tmp_path: Path, source: str
) -> None:
    """An in-order group found by its two ends reads what the record-by-record gather reads."""
    from shardstore.reading.random_access import gather_records

    rng = np.random.default_rng(7)
    data = {"x": rng.standard_normal((200, 3)).astype(np.float32), "y": np.arange(200)}
    fmt = "zarr" if source == "zarr" else "npy"
    ds = shardstore.write(tmp_path / "d", data, records_per_shard=7, format=fmt, fsync=False)
    reader = shardstore.open(ds.path, source=source)
    src = reader.source_for("random_access")
    reader[0]  # builds the reader's random-access context
    ctx = reader._random_ctx
    assert ctx is not None
    for a, b in [(0, 200), (0, 1), (6, 8), (7, 14), (13, 190), (199, 200), (50, 51)]:
        idx = np.arange(a, b, dtype=np.int64)
        quick = gather_records(src, ctx, idx, contiguous=True)
        full = gather_records(src, ctx, idx)
        for name in ("x", "y"):
            assert_bitwise_equal(quick[name], full[name])
            assert_bitwise_equal(quick[name], data[name][a:b])
