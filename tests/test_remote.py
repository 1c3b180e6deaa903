"""Datasets in object storage, end to end: a real S3 server on 127.0.0.1 and memory://.

Every source writes to the store and reads back bit for bit (to_tf in each shuffle
mode, iter_numpy, ds[...]); commits race; damage, a missing object, a cache too small
and a killed writer end in clear errors or a clean state.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import shardstore
from shardstore.errors import (
    CapabilityError,
    ChecksumError,
    CommitConflictError,
    DamagedFilesError,
    DatasetExistsError,
    DatasetNotFoundError,
    InvalidInputError,
)
from shardstore.storage import open_store
from shardstore.storage.cache import CacheFullError

N = 3000


@pytest.fixture(params=["s3", "memory"])
def url(request: pytest.FixtureRequest) -> str:
    """A fresh, empty dataset location on the S3 server, or in memory."""
    fixture = "s3_url" if request.param == "s3" else "memory_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture
def arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "image": rng.integers(0, 255, (N, 6, 5), dtype=np.uint8),
        "value": rng.standard_normal((N, 3)).astype(np.float32),
        "label": np.arange(N, dtype=np.int64),
    }


def _all(ds: shardstore.Dataset, shuffle: bool | str) -> dict[str, np.ndarray]:
    batches = list(ds.to_tf(batch_size=256, shuffle=shuffle, seed=3).as_numpy_iterator())
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


@pytest.mark.parametrize("fmt", ["npy", "zarr", "tfrecord"])
def test_every_source_round_trips_bit_for_bit(
    url: str, fmt: str, arrays: dict[str, np.ndarray], tmp_path: Path
) -> None:
    written = shardstore.write(
        url, arrays, format=fmt, records_per_shard=400, cache_dir=tmp_path / "c"
    )
    assert written.location == url
    ds = shardstore.open(url, cache_dir=tmp_path / "cache")
    assert ds.num_records == N and ds.location == url
    ordered = _all(ds, False)
    for name, arr in arrays.items():
        assert ordered[name].tobytes() == arr.tobytes(), name
    for shuffle in (True, "global") if fmt == "npy" else (True,):
        got = _all(ds, shuffle)
        order = np.argsort(got["label"])
        assert got["label"][order].tolist() == list(range(N))
        for name, arr in arrays.items():
            assert got[name][order].tobytes() == arr.tobytes(), (shuffle, name)
    together = {k: np.concatenate([b[k] for b in ds.iter_numpy(batch_size=700)]) for k in arrays}
    for name, arr in arrays.items():
        assert together[name].tobytes() == arr.tobytes()
    if fmt == "npy":  # random access (memmap over the cached shards)
        idx = np.array([2999, 0, 1234, 400, 399])
        got = ds[idx]
        for name, arr in arrays.items():
            assert got[name].tobytes() == arr[idx].tobytes()
    ds.verify()
    # nothing of the write is left in the scratch folder
    assert not any((tmp_path / "c" / ".writes").iterdir())


def test_the_store_holds_the_dataset_layout(s3_url: str, tmp_path: Path) -> None:
    ds = shardstore.write(s3_url, {"x": np.arange(1000)}, records_per_shard=300, cache_dir=tmp_path)
    keys = {o.key for o in open_store(s3_url).list()}
    assert "manifest.json" in keys
    files = {f.path for s in ds.shards for f in s.stored_files}
    assert files <= keys
    assert all(k.startswith(f"v-{ds.manifest.version_id}/") for k in files)
    assert not any(k.startswith(".shardstore/writers/") for k in keys)  # the lease is gone


def test_a_url_is_never_taken_for_a_local_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidInputError, match=r"unknown storage scheme 'foo'.*s3://"):
        shardstore.write("foo://bucket/x", {"x": np.arange(3)})
    with pytest.raises(InvalidInputError, match="unknown storage scheme"):
        shardstore.open("foo://bucket/x")
    assert list(tmp_path.iterdir()) == []  # no directory named "foo:" appeared


def test_storage_options_are_refused_for_a_local_path(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="storage_options apply to object-store URLs"):
        shardstore.write(tmp_path / "d", {"x": np.arange(3)}, storage_options={"region": "x"})
    assert not (tmp_path / "d").exists()


def test_file_urls_are_local_datasets(tmp_path: Path) -> None:
    x = np.arange(100, dtype=np.int32)
    shardstore.write(f"file://{tmp_path}/d", {"x": x})
    assert (tmp_path / "d" / "manifest.json").is_file()
    assert shardstore.open(f"file://{tmp_path}/d")[:]["x"].tobytes() == x.tobytes()


def test_opening_a_prefix_without_a_dataset(url: str, tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"no shardstore dataset at .*manifest.json"):
        shardstore.open(url, cache_dir=tmp_path)


def test_overwrite_replaces_and_gc_removes_the_old_version(url: str, tmp_path: Path) -> None:
    first = shardstore.write(url, {"x": np.zeros(500)}, records_per_shard=100, cache_dir=tmp_path)
    with pytest.raises(DatasetExistsError, match="overwrite=True"):
        shardstore.write(url, {"x": np.ones(500)}, cache_dir=tmp_path)
    second = shardstore.write(url, {"x": np.ones(500)}, overwrite=True, cache_dir=tmp_path)
    assert shardstore.open(url, cache_dir=tmp_path)[:]["x"].tolist() == [1.0] * 500
    old = f"v-{first.manifest.version_id}/"
    store = open_store(url)
    assert any(o.key.startswith(old) for o in store.list())  # kept for the grace period
    report = shardstore.gc(url, grace=0)
    assert any(r.startswith(old) for r in report.removed)
    keys = {o.key for o in store.list()}
    assert not any(k.startswith(old) for k in keys)
    assert {f.path for s in second.shards for f in s.stored_files} <= keys


def test_racing_writers_have_exactly_one_winner(url: str, tmp_path: Path) -> None:
    a = shardstore.Writer(url, records_per_shard=100, cache_dir=tmp_path)
    b = shardstore.Writer(url, records_per_shard=100, cache_dir=tmp_path)
    a.write({"x": np.zeros(300)})
    b.write({"x": np.ones(300)})
    a.close()
    with pytest.raises(CommitConflictError, match="another writer committed"):
        b.close()
    assert shardstore.open(url, cache_dir=tmp_path)[:]["x"].tolist() == [0.0] * 300
    keys = {o.key for o in open_store(url).list()}
    assert not any(k.startswith(f"v-{b.version_id}/") for k in keys)  # the loser's objects


def _flip_first_byte(url: str, key: str) -> None:
    store = open_store(url)
    data = bytearray(store.get(key, max_size=1 << 30))
    data[-1] ^= 0xFF
    store.put(key, bytes(data))


def test_a_damaged_object_is_a_checksum_error(url: str, tmp_path: Path) -> None:
    x = np.arange(4000, dtype=np.float64)
    ds = shardstore.write(url, {"x": x}, records_per_shard=1000, cache_dir=tmp_path / "w")
    damaged = ds.shards[2].file_for("x").path
    _flip_first_byte(url, damaged)
    fresh = shardstore.open(url, cache_dir=tmp_path / "r")
    assert fresh[10]["x"] == x[10]  # other shards read fine
    with pytest.raises(ChecksumError, match=damaged.split("/")[-1]):
        fresh[2500]
    with pytest.raises(DamagedFilesError) as info:
        shardstore.open(url, cache_dir=tmp_path / "v").verify()
    assert [e.file for e in info.value.errors] == [damaged]
    with pytest.raises(Exception) as caught:
        _all(shardstore.open(url, cache_dir=tmp_path / "t"), False)
    typed = shardstore.from_tf_error(caught.value)
    assert isinstance(typed, ChecksumError), caught.value
    # nothing damaged stays in the cache: no whole copy, and the sparse copy holds no data
    copies = list((tmp_path / "r").rglob(damaged.split("/")[-1]))
    assert all(".ranges" in p.parts for p in copies), copies
    header = ds.shards[2].file_for("x").info["header_bytes"]
    assert all(not p.read_bytes()[header:].strip(b"\0") for p in copies)


def test_a_cache_too_small_fails_at_to_tf_not_mid_epoch(url: str, tmp_path: Path) -> None:
    ds = shardstore.write(
        url, {"x": np.zeros((4000, 128))}, records_per_shard=100, cache_dir=tmp_path
    )
    shard_bytes = max(sum(f.size for f in s.stored_files) for s in ds.shards)  # with index
    small = shardstore.open(url, cache_dir=tmp_path / "c", cache_limit=2 * shard_bytes)
    with pytest.raises(InvalidInputError, match="raise cache_limit"):
        small.to_tf(batch_size=10)
    # room for the shards being read and prefetched, not for all 40 at once
    roomy = shardstore.open(url, cache_dir=tmp_path / "d", cache_limit=20 * shard_bytes)
    # an exact global shuffle of a dataset larger than the cache: ranged reads of records
    got = np.concatenate(
        [b.numpy() for b in roomy.to_tf(batch_size=100, shuffle="global", seed=1, features="x")]
    )
    assert got.shape == (4000, 128) and roomy.remote.cache.downloads == 0
    assert sorted(got[:, 0].tolist()) == [0.0] * 4000  # every record once (the data are zeros)
    assert roomy.remote.partial.bytes_fetched > 0
    assert sum(len(b) for b in roomy.to_tf(batch_size=100, shuffle=True, features="x")) == 4000
    roomy.remote.cache.close()  # downloads still in flight count twice for an instant
    assert roomy.remote.cache.usage() <= 20 * shard_bytes


def test_tf_native_on_a_url_is_refused(memory_url: str, tmp_path: Path) -> None:
    shardstore.write(memory_url, {"x": np.arange(10)}, cache_dir=tmp_path)
    with pytest.raises(CapabilityError, match="tf_native"):
        shardstore.open(memory_url, cache_dir=tmp_path).to_tf(batch_size=2, tf_native=True)


def test_later_epochs_read_the_cache_not_the_store(s3_url: str, tmp_path: Path) -> None:
    x = np.arange(20000, dtype=np.int64)
    shardstore.write(s3_url, {"x": x}, records_per_shard=2000, cache_dir=tmp_path)
    ds = shardstore.open(s3_url, cache_dir=tmp_path / "c")
    store = ds.remote.store
    first = np.concatenate([b.numpy() for b in ds.to_tf(batch_size=1000, features="x")])
    gets = store.requests.get("GET", 0)
    assert gets >= 10  # every shard's files were fetched
    second = np.concatenate([b.numpy() for b in ds.to_tf(batch_size=1000, features="x")])
    assert first.tobytes() == second.tobytes() == x.tobytes()
    assert store.requests.get("GET", 0) == gets


WRITER = textwrap.dedent(
    """
    import sys, numpy as np, shardstore
    w = shardstore.Writer(sys.argv[1], records_per_shard=1000, cache_dir=sys.argv[2])
    for i in range(10_000):
        w.write({"x": np.full((1000, 256), i, dtype=np.float32)})
        print("wrote", i, flush=True)
    """
)


def test_a_killed_writer_leaves_the_old_dataset_and_gc_cleans_up(
    s3_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = shardstore.write(s3_url, {"x": np.zeros((10, 256), np.float32)}, cache_dir=tmp_path)
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    proc = subprocess.Popen(
        [sys.executable, str(script), s3_url + "-new", str(tmp_path / "w")],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("wrote 5"):
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    store = open_store(s3_url + "-new")
    keys = {o.key for o in store.list()}
    assert "manifest.json" not in keys and any(k.startswith("v-") for k in keys)
    with pytest.raises(DatasetNotFoundError):
        shardstore.open(s3_url + "-new", cache_dir=tmp_path)
    # a fresh lease protects the write; once stale, gc removes everything it left
    assert shardstore.gc(s3_url + "-new").removed == []
    monkeypatch.setenv("SHARDSTORE_WRITER_TIMEOUT_SECONDS", "0.5")
    time.sleep(1)
    report = shardstore.gc(s3_url + "-new")
    assert report.removed
    assert list(store.list()) == []
    assert shardstore.open(s3_url, cache_dir=tmp_path)[:]["x"].tobytes() == old[:]["x"].tobytes()


def test_dask_workers_write_to_the_bucket(s3_url: str, tmp_path: Path) -> None:
    import dask.array as da
    from distributed import Client, LocalCluster

    x = np.arange(6000 * 4, dtype=np.float32).reshape(6000, 4)
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        shardstore.write(
            s3_url, {"x": da.from_array(x, chunks=1000)}, records_per_shard=1000,
            executor=client, cache_dir=tmp_path,
        )  # fmt: skip
    got = shardstore.open(s3_url, cache_dir=tmp_path / "r")[:]["x"]
    assert got.tobytes() == x.tobytes()


def test_the_cli_takes_urls(s3_url: str, tmp_path: Path) -> None:
    shardstore.write(s3_url, {"x": np.arange(1000)}, records_per_shard=300, cache_dir=tmp_path)
    env = {**os.environ, "SHARDSTORE_CACHE_DIR": str(tmp_path / "cli"), "TF_CPP_MIN_LOG_LEVEL": "3"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "shardstore", *args],
            capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip

    info = cli("info", s3_url)
    assert info.returncode == 0 and f"path:      {s3_url}" in info.stdout, info.stderr
    assert "sizes OK" in info.stdout
    verify = cli("verify", s3_url)
    assert verify.returncode == 0 and "OK: 1000 records, 4 shards" in verify.stdout, verify.stderr
    assert cli("gc", "--dry-run", s3_url).returncode == 0
    # damage: info (sizes, one listing) and verify (every byte) exit 1 naming the object
    ds = shardstore.open(s3_url, cache_dir=tmp_path)
    key = ds.shards[1].file_for("x").path
    open_store(s3_url).put(key, b"short")
    info = cli("info", s3_url)
    assert info.returncode == 1 and key in info.stderr
    verify = cli("verify", s3_url)
    assert verify.returncode == 1 and key in verify.stderr and s3_url in verify.stderr


def test_convert_between_a_directory_and_a_bucket(s3_url: str, tmp_path: Path) -> None:
    x = np.arange(2000 * 3, dtype=np.float32).reshape(2000, 3)
    shardstore.write(tmp_path / "local", {"x": x}, records_per_shard=500)
    up = shardstore.convert(tmp_path / "local", s3_url, format="zarr", records_per_shard=400)
    assert up.location == s3_url and up.manifest.sources == ("zarr",)
    down = shardstore.convert(s3_url, tmp_path / "back", format="npy")
    assert down[:]["x"].tobytes() == x.tobytes()


def test_a_missing_object_is_damage_named_by_verify(url: str, tmp_path: Path) -> None:
    ds = shardstore.write(url, {"x": np.arange(900)}, records_per_shard=300, cache_dir=tmp_path)
    key = ds.shards[0].file_for("x").path
    open_store(url).delete([key])
    with pytest.raises(DamagedFilesError) as info:
        shardstore.open(url, cache_dir=tmp_path / "v").verify()
    assert [(e.file, e.errno) for e in info.value.errors] == [(key, errno.ENOENT)]
    with pytest.raises(FileNotFoundError, match="is missing"):  # a ChecksumError too
        shardstore.open(url, cache_dir=tmp_path / "r")[0]


def test_local_only_operations_refuse_urls_and_create_nothing(
    memory_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    part = tmp_path / "part"
    shardstore.write(part, {"x": np.arange(10)})
    np.save(tmp_path / "a.npy", np.arange(4))
    calls = {
        "merge": lambda: shardstore.merge([part, part], memory_url),
        "merge from": lambda: shardstore.merge([memory_url, part], tmp_path / "m"),
        "ingest": lambda: shardstore.ingest(str(tmp_path / "a.npy"), memory_url),
        "ingest --tfrecord": lambda: shardstore.index_tfrecords(
            memory_url, ["x.tfrecord"], {"x": ("int64", ())}
        ),
    }
    for what, call in calls.items():
        with pytest.raises(
            CapabilityError,
            match=rf"^{what.removesuffix(' from')} works on local directories.*convert",
        ):
            call()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "part"]


def test_random_access_fetches_only_the_blocks_it_reads(s3_url: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    x = rng.integers(0, 1 << 60, (40_000, 64), dtype=np.int64)  # 512-byte records
    y = np.arange(40_000, dtype=np.int32)
    written = shardstore.write(
        s3_url, {"x": x, "y": y}, records_per_shard=10_000, cache_dir=tmp_path
    )
    dataset_bytes = sum(s.nbytes for s in written.shards)
    ds = shardstore.open(s3_url, cache_dir=tmp_path / "c")
    store, partial = ds.remote.store, ds.remote.partial
    got = ds[12345]
    assert got["x"].tobytes() == x[12345].tobytes() and int(got["y"]) == 12345
    one = partial.bytes_fetched
    assert 0 < one < 2 << 20  # a few blocks and the block index, not a 5 MB shard
    assert ds.remote.cache.downloads == 0  # no whole shard was downloaded
    pick = np.sort(rng.choice(40_000, 300, replace=False))
    many = ds[pick]
    assert many["x"].tobytes() == x[pick].tobytes() and many["y"].tolist() == pick.tolist()
    assert partial.bytes_fetched < dataset_bytes
    again = store.requests.get("GET", 0)
    assert ds[pick]["x"].tobytes() == x[pick].tobytes()  # blocks already here: no request
    assert store.requests.get("GET", 0) == again
    # another process's Dataset reads the same sparse copies without fetching them again
    other = shardstore.open(s3_url, cache_dir=tmp_path / "c")
    assert other[pick]["y"].tolist() == pick.tolist()
    assert other.remote.partial.bytes_fetched == 0
    # an epoch brings whole shards; ds[i] then reads them, with no ranged request
    assert sum(len(b) for b in other.to_tf(batch_size=5000, features="y")) == 40_000
    fetched = other.remote.partial.bytes_fetched
    assert other[39_999]["x"].tobytes() == x[39_999].tobytes()
    assert other.remote.partial.bytes_fetched == fetched


def test_sparse_copies_count_against_the_cache_limit(memory_url: str, tmp_path: Path) -> None:
    x = np.arange(200_000 * 16, dtype=np.int64).reshape(200_000, 16)  # 128-byte records
    written = shardstore.write(memory_url, {"x": x}, records_per_shard=20_000, cache_dir=tmp_path)
    shard_bytes = max(s.nbytes for s in written.shards)
    ds = shardstore.open(memory_url, cache_dir=tmp_path / "c", cache_limit=shard_bytes)
    rng = np.random.default_rng(1)
    for _ in range(40):  # 10 records of one shard per read: 10 blocks of 64 KiB at most
        shard = int(rng.integers(10))
        pick = np.sort(rng.choice(20_000, 10, replace=False)) + shard * 20_000
        assert ds[pick]["x"].tobytes() == x[pick].tobytes()
        assert ds.remote.cache.usage() <= shard_bytes + (10 << 16) + 4096
    assert ds.remote.partial.bytes_fetched > 4 * shard_bytes  # room was made by evicting


def _disk_bytes(directory: Path) -> int:
    """Bytes the files under ``directory`` take on disk (reservations are holes: nothing)."""
    total = 0
    for root, _, files in os.walk(directory):
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # evicted meanwhile
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def test_readers_in_flight_never_grow_the_cache_past_its_limit(
    memory_url: str, tmp_path: Path
) -> None:
    x = np.arange(200_000 * 16, dtype=np.int64).reshape(200_000, 16)  # 128-byte records
    written = shardstore.write(memory_url, {"x": x}, records_per_shard=20_000, cache_dir=tmp_path)
    shard_bytes = max(s.nbytes for s in written.shards)
    limit = 2 * shard_bytes  # a fifth of the dataset
    ds = shardstore.open(memory_url, cache_dir=tmp_path / "c", cache_limit=limit)
    cache, store = ds.remote.cache, ds.remote.store
    disk: list[int] = []  # bytes on disk while fetching
    get_ranges = store.get_ranges

    def watched(path: str, starts: list[int], ends: list[int]) -> list[object]:
        out = get_ranges(path, starts, ends)
        time.sleep(0.01)  # the other threads' fills run meanwhile
        disk.append(_disk_bytes(cache.directory))
        return out

    store.get_ranges = watched  # type: ignore[method-assign]
    rng = np.random.default_rng(2)
    # 8 readers at once, 6 random records each: every shard is always held by one of them
    picks = [np.sort(rng.choice(200_000, 6, replace=False)) for _ in range(200)]

    def read(pick: np.ndarray) -> bool:
        return ds[pick]["x"].tobytes() == x[pick].tobytes()

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(read, picks))
    assert len(disk) > 200 and ds.remote.partial.bytes_fetched > 2 * limit  # it evicted
    # the cache holds at most its limit plus the blocks of the reads in flight (a block of
    # 64 KiB per record, and a page either side), not the whole dataset's blocks
    in_flight = 8 * 6 * ((64 << 10) + 8192)
    assert max(disk) <= limit + in_flight + (64 << 10)  # markers and block indexes
    assert not any((cache.directory / ".scratch").iterdir())  # private copies are gone
    assert cache.usage() <= limit


def test_global_shuffle_beyond_the_cache_reads_ranges_bit_for_bit(
    memory_url: str, tmp_path: Path
) -> None:
    x = np.arange(6000 * 32, dtype=np.int32).reshape(6000, 32)
    written = shardstore.write(memory_url, {"x": x}, records_per_shard=500, cache_dir=tmp_path)
    shard_bytes = max(s.nbytes for s in written.shards)
    ds = shardstore.open(memory_url, cache_dir=tmp_path / "c", cache_limit=10 * shard_bytes)
    batches = list(ds.to_tf(batch_size=64, shuffle="global", seed=4).as_numpy_iterator())
    got = np.concatenate([b["x"] for b in batches])
    order = got[:, 0] // 32
    assert sorted(order.tolist()) == list(range(6000))
    assert got.tobytes() == x[order].tobytes()
    assert not np.array_equal(order, np.arange(6000))
    assert ds.remote.cache.downloads == 0
    ds.remote.cache.close()
    assert ds.remote.cache.usage() <= 10 * shard_bytes + (64 << 16)
    # a source that needs whole shards (zarr) cannot: a clear error at to_tf
    zarr_url = memory_url + "-zarr"
    z = shardstore.write(
        zarr_url, {"x": x}, format="zarr", records_per_shard=500, cache_dir=tmp_path
    )
    limit = sum(s.nbytes for s in z.shards) // 2
    small = shardstore.open(zarr_url, cache_dir=tmp_path / "z", cache_limit=limit)
    with pytest.raises(CacheFullError, match=r"whole dataset .* must fit"):
        small.to_tf(batch_size=64, shuffle="global")


OUTAGE = textwrap.dedent(
    """
    import sys, threading, time, numpy as np, shardstore
    from shardstore.testing.s3server import S3Server

    mode, cache = sys.argv[1], sys.argv[2]
    x = np.arange(40 * 2000, dtype=np.int64)
    with S3Server() as server:
        url = f"s3://{server.bucket}/outage"
        opts = {**server.storage_options, "retry_timeout": 20 if mode == "back" else 3,
                "max_retries": 100, "timeout": "2s", "connect_timeout": "1s"}
        shardstore.write(url, {"x": x}, records_per_shard=2000, storage_options=opts,
                         cache_dir=cache + "/w")
        ds = shardstore.open(url, storage_options=opts, cache_dir=cache + "/r")
        it = iter(ds.to_tf(batch_size=1000, features="x", num_parallel_reads=1))
        got = [next(it).numpy()]
        server.stop(keep_data=True)
        print("stopped", flush=True)
        if mode == "back":
            threading.Timer(3.0, server.start).start()
        if mode == "uncaught":  # the script dies of the error: it must still exit
            got += [b.numpy() for b in it]
        try:
            got += [b.numpy() for b in it]
        except Exception as exc:
            typed = shardstore.from_tf_error(exc)
            print("error", type(typed).__name__, typed, flush=True)
            sys.exit(3)
        out = np.concatenate(got)
        print("epoch", len(out), out.tobytes() == x.tobytes(), flush=True)
    """
)


@pytest.mark.parametrize("mode", ["back", "gone", "uncaught"])
def test_a_server_going_away_mid_epoch(mode: str, tmp_path: Path) -> None:
    """Back within the retry window: the epoch completes bit for bit; gone: a clear error
    (typed, naming the URL) within the retry timeout, and a script that does not catch it
    still exits."""
    script = tmp_path / "outage.py"
    script.write_text(OUTAGE)
    proc = subprocess.run(
        [sys.executable, str(script), mode, str(tmp_path)],
        capture_output=True, text=True, timeout=240,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )  # fmt: skip
    assert "stopped" in proc.stdout, proc.stderr[-3000:]
    if mode == "back":
        assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
        assert "epoch 80000 True" in proc.stdout
    elif mode == "gone":
        assert proc.returncode == 3, proc.stdout + proc.stderr[-3000:]
        assert "error StorageUnavailableError cannot read s3://shardstore-test/outage/" in (
            proc.stdout
        ), proc.stdout
    else:
        assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
        assert "StorageUnavailableError: cannot read s3://shardstore-test/outage/" in proc.stderr


def test_reading_many_datasets_leaves_no_threads_behind(memory_url: str, tmp_path: Path) -> None:
    shardstore.write(
        memory_url, {"x": np.arange(20_000)}, records_per_shard=1000, cache_dir=tmp_path
    )

    def ours() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name.startswith("shardstore-fetch")]

    for seed in range(4):  # TensorFlow may keep each pipeline (and so its dataset) alive
        ds = shardstore.open(memory_url, cache_dir=tmp_path / "c")
        batches = ds.to_tf(batch_size=100, shuffle=True, seed=seed, features="x")
        assert sum(len(b) for b in batches) == 20_000
        del ds
    deadline = time.monotonic() + 10
    while ours() and time.monotonic() < deadline:  # the last downloads finishing
        time.sleep(0.05)
    assert ours() == []
