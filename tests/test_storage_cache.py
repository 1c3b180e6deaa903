"""The shard cache: verified downloads, a size limit, pins, prefetching, several processes."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pytest

from shardstore.errors import ChecksumError, InvalidInputError
from shardstore.format.manifest import FileEntry, ShardEntry
from shardstore.storage.cache import CacheFullError, ShardCache, entry_id
from shardstore.storage.checksum import format_digest, new_hasher
from shardstore.storage.location import parse_location
from shardstore.storage.objects import ObjectStore


def _checksum(data: bytes) -> str:
    h = new_hasher()
    h.update(data)
    return format_digest(h)


def _shards(store: ObjectStore, n: int, size: int, *, seed: int = 0) -> list[ShardEntry]:
    """``n`` one-file shards of ``size`` random bytes each, uploaded to ``store``."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        path = f"v-0123abcd/{i:06d}.x.npy"
        store.put(path, data)
        out.append(ShardEntry(i, "npy", 1, (FileEntry(path, size, _checksum(data), "x"),)))
    return out


@pytest.fixture
def store(memory_url: str) -> ObjectStore:
    return ObjectStore(parse_location(memory_url))


def test_acquire_downloads_verified_files_in_the_dataset_layout(store, tmp_path):
    shards = _shards(store, 3, 1000)
    cache = ShardCache(tmp_path / "c", "1MiB")
    cache.acquire(store, shards[1])
    path = cache.path(store, shards[1].files[0].path)
    got = path.read_bytes()
    assert got == bytes(store.get(shards[1].files[0].path, max_size=1 << 20))
    assert path.relative_to(cache.root(store)).as_posix() == shards[1].files[0].path
    assert cache.downloads == 1
    cache.release(store, shards[1])
    cache.acquire(store, shards[1])  # cached: no second download
    assert cache.downloads == 1
    cache.close()


def test_a_damaged_object_never_reaches_the_cache(store, tmp_path):
    shards = _shards(store, 1, 1000)
    f = shards[0].files[0]
    data = bytearray(store.get(f.path, max_size=1 << 20))
    data[500] ^= 1
    store.put(f.path, bytes(data))
    cache = ShardCache(tmp_path / "c", "1MiB")
    with pytest.raises(ChecksumError, match=r"shard 0.*000000\.x\.npy.*checksum") as err:
        cache.acquire(store, shards[0])
    assert err.value.file == f.path
    assert not cache.path(store, f.path).exists()
    assert list((tmp_path / "c" / ".tmp").iterdir()) == []  # no temporary file left


def test_a_truncated_object_is_a_checksum_error(store, tmp_path):
    shards = _shards(store, 1, 1000)
    f = shards[0].files[0]
    store.put(f.path, bytes(store.get(f.path, max_size=1 << 20))[:999])
    with pytest.raises(ChecksumError, match="999 bytes, the manifest records 1000"):
        ShardCache(tmp_path / "c", "1MiB").acquire(store, shards[0])


def test_least_recently_used_unpinned_shards_are_evicted_first(store, tmp_path):
    shards = _shards(store, 6, 1000)
    cache = ShardCache(tmp_path / "c", 3000)
    cache.keep = 0  # unpin as soon as released
    for s in shards[:3]:
        cache.acquire(store, s)
        cache.release(store, s)
    cache.acquire(store, shards[0])  # shard 0 used again: 1 is now the oldest
    cache.release(store, shards[0])
    cache.acquire(store, shards[3])
    cache.release(store, shards[3])
    present = [cache.path(store, s.files[0].path).exists() for s in shards[:4]]
    assert present == [True, False, True, True]
    assert cache.usage() <= 3000


def test_a_pinned_shard_is_never_evicted(store, tmp_path):
    shards = _shards(store, 3, 1000)
    cache = ShardCache(tmp_path / "c", 2000)
    cache.room_timeout = 0.5
    cache.acquire(store, shards[0])
    cache.acquire(store, shards[1])  # both pinned: no room for a third
    with pytest.raises(CacheFullError, match="every cached shard is in use"):
        cache.acquire(store, shards[2])
    assert cache.path(store, shards[0].files[0].path).exists()
    cache.keep = 0
    cache.release(store, shards[0])
    cache.acquire(store, shards[2])  # shard 0 unpinned: evicted for shard 2
    assert not cache.path(store, shards[0].files[0].path).exists()
    assert cache.path(store, shards[1].files[0].path).exists()


def test_check_room_refuses_a_limit_that_cannot_hold_the_readers_shards(tmp_path):
    cache = ShardCache(tmp_path / "c", "10MiB")
    cache.check_room(1 << 20, 10, what="this reader")
    with pytest.raises(InvalidInputError, match="raise cache_limit to at least 11534336"):
        cache.check_room(1 << 20, 11, what="this reader")


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(InvalidInputError, match="cache_limit 'lots' is not a size"):
        ShardCache(tmp_path, "lots")
    with pytest.raises(InvalidInputError, match="depth"):
        ShardCache(tmp_path, "1GiB", depth=0)


def test_plan_prefetches_ahead_of_the_reader(store, tmp_path):
    shards = _shards(store, 6, 1000)
    cache = ShardCache(tmp_path / "c", "1MiB", depth=3)
    cache.plan(store, shards)
    cache.acquire(store, shards[0])
    deadline = __import__("time").monotonic() + 10
    while cache.downloads < 4 and __import__("time").monotonic() < deadline:
        __import__("time").sleep(0.01)
    assert [cache.path(store, s.files[0].path).exists() for s in shards] == [True] * 4 + [False] * 2
    cache.close()


def _reader(url: str, env: dict[str, str], cache_dir: str, shard_json: str, out: str) -> None:
    os.environ.update(env)
    from shardstore.format.manifest import ShardEntry as SE

    store = ObjectStore(parse_location(url))
    shard = SE.from_json(json.loads(shard_json), where="shard")
    cache = ShardCache(cache_dir, "1MiB")
    cache.acquire(store, shard)
    Path(out).write_text(
        f"{cache.downloads} {cache.path(store, shard.files[0].path).stat().st_size}"
    )


def test_processes_share_one_cache_and_download_once(s3_url, s3_env, tmp_path):
    store = ObjectStore(parse_location(s3_url))
    shards = _shards(store, 1, 300_000)
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(
            target=_reader,
            args=(s3_url, s3_env.env, str(tmp_path / "c"), json.dumps(shards[0].to_json()),
                  str(tmp_path / f"out{i}")),
        )
        for i in range(4)
    ]  # fmt: skip
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    results = [(tmp_path / f"out{i}").read_text().split() for i in range(4)]
    assert sorted(int(d) for d, _ in results) == [0, 0, 0, 1]  # one process downloaded it
    assert all(int(size) == 300_000 for _, size in results)
    assert entry_id(shards[0]) in {p.stem for p in (tmp_path / "c").glob("*/.entries/*.done")}


def test_reservations_count_and_a_dead_readers_private_copy_is_removed(tmp_path):
    cache = ShardCache(tmp_path / "c", limit=1000)
    with cache.room(600, name="scratch-live"):
        assert cache.usage() == 600  # counted before a byte is written
        assert cache.try_room(600) is None  # nothing to evict: no room now
        live = cache.directory / ".scratch" / "live"
        live.mkdir(parents=True)
        dead = cache.directory / ".scratch" / "dead"  # a process died: no reservation left
        (dead / "v").mkdir(parents=True)
        (dead / "v" / "0.npy").write_bytes(b"x" * 100)
        assert cache.usage() == 600
        assert live.is_dir() and not dead.exists()
    assert cache.usage() == 0
    reservation = cache.try_room(1000)
    assert reservation is not None
    with reservation:
        assert cache.usage() == 1000
    # over the limit, a private copy waits a moment for room, then goes ahead
    with cache.room(400, name="scratch-a"), cache.room(800, name="scratch-b"):
        assert cache.usage() == 1200
