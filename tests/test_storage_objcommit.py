"""The object-store commit and garbage collection, against a real S3 server and in memory."""

from __future__ import annotations

import multiprocessing as mp
import os
import time

import numpy as np
import pytest

from shardstore.errors import CommitConflictError, DatasetExistsError, ManifestError
from shardstore.format.manifest import FeatureSpec, FileEntry, Manifest, ShardEntry
from shardstore.storage import objgc
from shardstore.storage.checksum import format_digest, new_hasher
from shardstore.storage.location import parse_location
from shardstore.storage.objcommit import LEASES, RETIRED, ObjectTransaction, lease_key
from shardstore.storage.objects import ObjectStore


def _write_version(store: ObjectStore, version_id: str, payload: bytes = b"abc") -> Manifest:
    """Upload one shard object for ``version_id``; return its manifest."""
    h = new_hasher()
    h.update(payload)
    path = f"v-{version_id}/000000.x.bin"
    store.put(path, payload)
    entry = FileEntry(path, len(payload), format_digest(h), "x")
    return Manifest(
        features={"x": FeatureSpec(np.dtype("<u1"), (len(payload),))},
        shards=(ShardEntry(0, "npy", 1, (entry,)),),
        version_id=version_id,
    )


def _keys(store: ObjectStore) -> list[str]:
    return sorted(o.key for o in store.list())


@pytest.fixture
def store(memory_url: str) -> ObjectStore:
    return ObjectStore(parse_location(memory_url))


def test_a_first_commit_publishes_the_manifest_and_removes_the_lease(store):
    txn = ObjectTransaction(store, "a" * 16, overwrite=False, base=None)
    txn.begin()
    assert store.head(lease_key("a" * 16)) is not None
    txn.commit(_write_version(store, "a" * 16))
    assert _keys(store) == ["manifest.json", f"v-{'a' * 16}/000000.x.bin"]
    assert Manifest.from_json(store.get("manifest.json", max_size=1 << 20)).version_id == "a" * 16


def test_an_existing_dataset_needs_overwrite(store):
    ObjectTransaction(store, "a" * 16, overwrite=False, base=None).commit(
        _write_version(store, "a" * 16)
    )
    with pytest.raises(DatasetExistsError, match="overwrite=True"):
        ObjectTransaction(store, "b" * 16, overwrite=False, base=store.head("manifest.json"))


def test_a_lost_shard_object_fails_the_commit(store):
    txn = ObjectTransaction(store, "a" * 16, overwrite=False, base=None)
    manifest = _write_version(store, "a" * 16)
    store.delete([manifest.shards[0].files[0].path])
    with pytest.raises(ManifestError, match="is missing"):
        txn.commit(manifest)
    assert store.head("manifest.json") is None


def test_an_overwrite_retires_the_old_version_which_gc_keeps_for_the_grace_period(store):
    ObjectTransaction(store, "a" * 16, overwrite=False, base=None).commit(
        _write_version(store, "a" * 16)
    )
    txn = ObjectTransaction(store, "b" * 16, overwrite=True, base=store.head("manifest.json"))
    txn.commit(_write_version(store, "b" * 16))
    assert f"{RETIRED}v-{'a' * 16}" in _keys(store)
    report = objgc.collect(store, grace=3600)
    assert report.removed == [] and [n for n, _ in report.kept_retired] == [f"v-{'a' * 16}"]
    report = objgc.collect(store, grace=0)
    assert report.removed == [f"{RETIRED}v-{'a' * 16}", f"v-{'a' * 16}/"]
    assert report.bytes_freed == 3
    assert _keys(store) == ["manifest.json", f"v-{'b' * 16}/000000.x.bin"]


def test_two_writers_replacing_one_version_have_one_winner(store):
    ObjectTransaction(store, "a" * 16, overwrite=False, base=None).commit(
        _write_version(store, "a" * 16)
    )
    base = store.head("manifest.json")
    first = ObjectTransaction(store, "b" * 16, overwrite=True, base=base)
    second = ObjectTransaction(store, "c" * 16, overwrite=True, base=base)
    first.begin()
    second.begin()
    first.commit(_write_version(store, "b" * 16))
    with pytest.raises(CommitConflictError, match="replaced the version"):
        second.commit(_write_version(store, "c" * 16))
    second.abort()
    assert Manifest.from_json(store.get("manifest.json", max_size=1 << 20)).version_id == "b" * 16
    assert not [k for k in _keys(store) if "c" * 16 in k]


def _race(url: str, env: dict[str, str], version_id: str, barrier: object, out: object) -> None:
    os.environ.update(env)
    store = ObjectStore(parse_location(url))
    txn = ObjectTransaction(store, version_id, overwrite=False, base=None)
    txn.begin(collect_garbage=False)
    manifest = _write_version(store, version_id, version_id.encode())
    barrier.wait()  # type: ignore[attr-defined]
    try:
        txn.commit(manifest)
        out.put(("won", version_id))  # type: ignore[attr-defined]
    except CommitConflictError:
        txn.abort()
        out.put(("lost", version_id))  # type: ignore[attr-defined]


def test_eight_racing_first_writers_on_s3_have_exactly_one_winner(s3_url, s3_env):
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(8), ctx.Queue()
    ids = [f"{i:016x}" for i in range(1, 9)]
    procs = [ctx.Process(target=_race, args=(s3_url, s3_env.env, v, barrier, out)) for v in ids]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    results = sorted(out.get(timeout=10) for _ in ids)
    winners = [v for what, v in results if what == "won"]
    assert len(winners) == 1
    store = ObjectStore(parse_location(s3_url))
    manifest = Manifest.from_json(store.get("manifest.json", max_size=1 << 20))
    assert manifest.version_id == winners[0]
    assert _keys(store) == ["manifest.json", f"v-{winners[0]}/000000.x.bin"]  # losers cleaned


def test_gc_removes_a_killed_writers_objects_once_its_lease_goes_stale(store, monkeypatch):
    monkeypatch.setenv("SHARDSTORE_WRITER_TIMEOUT_SECONDS", "3600")
    txn = ObjectTransaction(store, "d" * 16, overwrite=False, base=None)
    txn.begin()
    store.put(f"v-{'d' * 16}/000000.x.bin", b"partial")
    txn._stop.set()  # the process dies: nobody refreshes the lease any more
    report = objgc.collect(store, grace=0)
    assert report.in_progress == ["d" * 16] and report.removed == []  # lease still fresh
    monkeypatch.setenv("SHARDSTORE_WRITER_TIMEOUT_SECONDS", "0.001")
    time.sleep(0.01)
    report = objgc.collect(store, grace=3600)
    assert report.removed == [lease_key("d" * 16), f"v-{'d' * 16}/"]
    assert _keys(store) == []


def test_gc_starts_the_clock_on_versions_of_unknown_origin_and_never_touches_referenced_ones(store):
    ObjectTransaction(store, "a" * 16, overwrite=False, base=None).commit(
        _write_version(store, "a" * 16)
    )
    store.put(f"v-{'e' * 16}/000000.x.bin", b"stray")
    report = objgc.collect(store, grace=3600)
    assert [n for n, _ in report.kept_retired] == [f"v-{'e' * 16}"]
    assert f"{RETIRED}v-{'e' * 16}" in _keys(store)
    assert objgc.collect(store, grace=3600, dry_run=True).removed == []
    report = objgc.collect(store, grace=0)
    assert report.removed == [f"{RETIRED}v-{'e' * 16}", f"v-{'e' * 16}/"]
    assert f"v-{'a' * 16}/000000.x.bin" in _keys(store)


def test_gc_collects_nothing_while_the_manifest_cannot_be_read(store):
    store.put(f"v-{'e' * 16}/000000.x.bin", b"stray")
    store.put("manifest.json", b"{not json")
    report = objgc.collect(store, grace=0)
    assert report.removed == []
    assert f"v-{'e' * 16}/000000.x.bin" in _keys(store)


def test_stale_leases_without_objects_are_removed(store, monkeypatch):
    store.put(f"{LEASES}{'f' * 16}.json", b"{}")
    monkeypatch.setenv("SHARDSTORE_WRITER_TIMEOUT_SECONDS", "0.001")
    time.sleep(0.01)
    assert objgc.collect(store).removed == [f"{LEASES}{'f' * 16}.json"]
    assert _keys(store) == []
