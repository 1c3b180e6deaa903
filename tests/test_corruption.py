"""Corruption: damaged shard files are refused with a ChecksumError, never read as wrong arrays.

For every source (npy, memmap, zarr, tfrecord) a dataset is damaged in one
way per trial, on a fresh copy (so no verification is remembered between
trials): a bit flipped anywhere in any file (headers, metadata and indexes
included), the file truncated at many offsets, garbage appended, two
shards' files swapped. Then ``verify()``, ``to_tf()`` and random access must
each raise ``ChecksumError`` naming the dataset, the shard and the file.

``SHARDSTORE_STRESS=1`` (``make stress``) multiplies the trials.
"""

from __future__ import annotations

import os
import random
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf

import shardstore
from shardstore.errors import ChecksumError
from shardstore.storage import integrity
from shardstore.testing import assert_bitwise_equal, assert_damage_reported, collect, flip_bit

STRESS = os.environ.get("SHARDSTORE_STRESS", "") not in ("", "0")
FLIPS = 200 if STRESS else 12  # per source
TRUNCATIONS = 60 if STRESS else 6  # per source
SOURCES = ["npy", "memmap", "zarr", "tfrecord"]
N, RPS = 24, 6  # 4 shards


def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    return {
        "a": rng.integers(-1000, 1000, size=(N, 3), dtype=np.int32),
        "b": rng.standard_normal(N),
    }


@pytest.fixture(scope="module", params=SOURCES)
def original(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp(request.param) / "d"
    shardstore.write(path, data(), format=request.param, records_per_shard=RPS, fsync=False)
    return path


def fresh_copy(original: Path, tmp_path: Path, name: str) -> shardstore.Dataset:
    dest = tmp_path / name
    shutil.copytree(original, dest)
    return shardstore.open(dest)


def random_access(ds: shardstore.Dataset) -> bool:
    try:
        ds.source_for("random_access")
    except shardstore.CapabilityError:
        return False
    return True


def assert_refused(
    path: Path, shard: int, file: str, *, also: tuple[int, str] | None = None
) -> None:
    """Every way of reading ``path`` fails naming ``shard`` and ``file`` (or ``also``).

    ``verify()``, ``ds[...]`` and ``iter_numpy()`` raise ``ChecksumError``; a
    running ``to_tf`` pipeline (which verifies what it reads, when it reads
    it) fails with a ``tf.errors.OpError`` naming the same; a ``tf_native``
    pipeline is checked when it is built.
    """
    accepted = {(shard, file)} | ({also} if also else set())
    attempts: list[tuple[str, Callable[[shardstore.Dataset], Any]]] = [
        ("verify", lambda ds: ds.verify(progress=False)),
        ("to_tf", lambda ds: collect(ds.to_tf(batch_size=5))),
        ("to_tf shuffled", lambda ds: collect(ds.to_tf(batch_size=5, shuffle=True, seed=1))),
    ]
    probe = shardstore.open(path)
    if probe.source.tf_native:
        attempts.append(("to_tf tf_native", lambda ds: ds.to_tf(batch_size=5, tf_native=True)))
    if random_access(probe):
        attempts += [
            ("to_tf global", lambda ds: collect(ds.to_tf(batch_size=5, shuffle="global"))),
            ("ds[...]", lambda ds: ds[np.arange(N)]),
            ("iter_numpy", lambda ds: list(ds.iter_numpy(7))),
        ]
    for what, read in attempts:
        integrity.forget()  # nothing verified yet in this process
        ds = shardstore.open(path)
        try:
            read(ds)
        except ChecksumError as err:
            assert (err.dataset, (err.shard, err.file)) in {
                (str(path), pair) for pair in accepted
            }, (what, str(err))
            assert str(path) in str(err) and err.file in str(err), (what, str(err))
        except tf.errors.OpError as err:
            message = str(err)
            named = [
                f"dataset {str(path)!r}, shard {s}: file {f!r}" in message for s, f in accepted
            ]
            assert "ChecksumError" in message and any(named), (what, message)
        else:
            raise AssertionError(f"{what}: damage to {file!r} was not reported")


def files_of(ds: shardstore.Dataset) -> list[tuple[int, str, int]]:
    return [(s.index, f.path, f.size) for s in ds.shards for f in s.files]


def test_intact_copy_reads_bit_for_bit(original: Path, tmp_path: Path) -> None:
    """The control: an undamaged copy reads back exactly."""
    ds = fresh_copy(original, tmp_path, "ok")
    ds.verify(progress=False)
    got = collect(ds.to_tf(batch_size=5))
    for name, expected in data().items():
        assert_bitwise_equal(got[name], expected)


def test_flipped_bits_anywhere(original: Path, tmp_path: Path) -> None:
    rng = random.Random(11)
    files = files_of(shardstore.open(original))
    for trial in range(FLIPS):
        shard, rel, size = files[trial % len(files)]
        # the first trials hit the very first bytes (magic numbers, headers), then anywhere
        offset = trial if trial < 8 else rng.randrange(size)
        ds = fresh_copy(original, tmp_path, f"flip{trial}")
        flip_bit(ds.path / rel, offset, 1 << rng.randrange(8))
        assert_refused(ds.path, shard, rel)
        shutil.rmtree(ds.path)


def test_truncated_at_many_offsets(original: Path, tmp_path: Path) -> None:
    rng = random.Random(12)
    files = files_of(shardstore.open(original))
    for trial in range(TRUNCATIONS):
        shard, rel, size = files[rng.randrange(len(files))]
        keep = [0, 1, size // 2, size - 1][trial] if trial < 4 else rng.randrange(size)
        ds = fresh_copy(original, tmp_path, f"cut{trial}")
        os.truncate(ds.path / rel, keep)
        assert_refused(ds.path, shard, rel)
        shutil.rmtree(ds.path)


def test_garbage_appended(original: Path, tmp_path: Path) -> None:
    for i, (shard, rel, _) in enumerate(files_of(shardstore.open(original))[:3]):
        ds = fresh_copy(original, tmp_path, f"append{i}")
        with open(ds.path / rel, "ab") as f:
            f.write(b"\x00garbage" * (i + 1))
        assert_refused(ds.path, shard, rel)


def test_two_shards_swapped(original: Path, tmp_path: Path) -> None:
    ds = fresh_copy(original, tmp_path, "swap")
    # the first pair of same-role files whose contents differ (zarr's metadata files are
    # identical from shard to shard: swapping those changes nothing)
    first, second = next(
        (f, g)
        for f, g in zip(ds.shards[0].files, ds.shards[1].files, strict=True)
        if f.checksum != g.checksum
    )
    a, b = ds.path / first.path, ds.path / second.path
    tmp = a.with_name("swap.tmp")
    os.rename(a, tmp)
    os.rename(b, a)
    os.rename(tmp, b)
    # both are damaged: shards are read in parallel, either may be reported first
    assert_refused(ds.path, 0, first.path, also=(1, second.path))


def test_a_file_replaced_after_verification_is_hashed_again(original: Path, tmp_path: Path) -> None:
    """The per-process memory of verified files is keyed by inode, size and times."""
    ds = fresh_copy(original, tmp_path, "replaced")
    collect(ds.to_tf(batch_size=5))  # verified and remembered
    victim = ds.shards[2].files[0]
    damaged = bytearray((ds.path / victim.path).read_bytes())
    damaged[len(damaged) // 2] ^= 0x40
    tmp = ds.path / "new-file"
    tmp.write_bytes(bytes(damaged))
    os.replace(tmp, ds.path / victim.path)  # a new inode at the same path
    assert_damage_reported(lambda: collect(ds.to_tf(batch_size=5)), ds.path, 2, victim.path)


class HashCounter:
    """Counts the bytes ``shardstore.storage.integrity`` hashes (blocks, and whole files)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.nbytes = 0
        real_xxhash, real_hash_file = integrity.xxhash, integrity.hash_file
        counter = self

        class CountingHasher:
            def __init__(self) -> None:
                self._h = real_xxhash.xxh3_64()

            def update(self, data: Any) -> None:
                counter.nbytes += memoryview(data).nbytes
                self._h.update(data)

            def intdigest(self) -> int:
                return int(self._h.intdigest())

        class CountingXXHash:
            xxh3_64 = CountingHasher

            @staticmethod
            def xxh3_64_intdigest(data: Any) -> int:
                counter.nbytes += memoryview(data).nbytes
                return int(real_xxhash.xxh3_64_intdigest(data))

            xxh3_64_hexdigest = staticmethod(real_xxhash.xxh3_64_hexdigest)

        def counting_hash_file(path: Any, **kw: Any) -> tuple[int, str]:
            size, checksum = real_hash_file(path, **kw)
            counter.nbytes += size
            return size, checksum

        real_with_blocks = integrity._hash_with_blocks

        def counting_with_blocks(path: str, section: Any) -> Any:  # what verify() hashes
            result = real_with_blocks(path, section)
            counter.nbytes += result[0]
            return result

        monkeypatch.setattr(integrity, "xxhash", CountingXXHash)
        monkeypatch.setattr(integrity, "hash_file", counting_hash_file)
        monkeypatch.setattr(integrity, "_hash_with_blocks", counting_with_blocks)


def test_each_block_is_hashed_once_per_process(
    original: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three pipelines of three epochs, random access and another Dataset: every byte once."""
    ds = fresh_copy(original, tmp_path, "once")
    integrity.forget()
    counter = HashCounter(monkeypatch)
    data_bytes = sum(f.size for s in ds.shards for f in s.files)
    for shuffle in (False, True, "global") if random_access(ds) else (False, True):
        tfds = ds.to_tf(batch_size=5, shuffle=shuffle, seed=3, num_parallel_reads=1)
        for _ in range(3):
            collect(tfds)
    if random_access(ds):
        ds[np.arange(N)]
        list(ds.iter_numpy(7))
    collect(shardstore.open(ds.path).to_tf(batch_size=5, num_parallel_reads=1))
    assert counter.nbytes == data_bytes  # every block of every file, exactly once
    ds.verify(progress=False)  # verify() always hashes everything
    assert counter.nbytes == 2 * data_bytes
    integrity.forget()
    before = counter.nbytes
    collect(ds.to_tf(batch_size=5, num_parallel_reads=1))
    # hashed again (all but what the source does not read again, e.g. parsed .npy headers)
    assert 0 < counter.nbytes - before <= data_bytes
    size_only = shardstore.open(ds.path, verify="size")
    integrity.forget()
    before = counter.nbytes
    collect(size_only.to_tf(batch_size=5))
    assert counter.nbytes == before


def test_only_the_features_read_are_hashed(tmp_path: Path) -> None:
    ds = shardstore.write(tmp_path / "d", data(), records_per_shard=RPS)
    for shard in ds.shards:
        victim = shard.file_for("a")
        flip_bit(ds.path / victim.path, victim.size - 1)
    ds = shardstore.open(tmp_path / "d")
    assert_bitwise_equal(collect(ds.to_tf(batch_size=5, features="b")), data()["b"])
    assert_bitwise_equal(ds.iter_numpy(7, features=["b"]).__next__()["b"], data()["b"][:7])
    with pytest.raises(tf.errors.OpError, match="ChecksumError"):
        collect(ds.to_tf(batch_size=5, features="a"))


def test_verify_option() -> None:
    with pytest.raises(shardstore.InvalidInputError, match="verify"):
        shardstore.open(".", verify="sometimes")


def test_environment_sets_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = shardstore.write(tmp_path / "d", data(), records_per_shard=RPS)
    monkeypatch.setenv("SHARDSTORE_VERIFY", "size")
    assert shardstore.open(ds.path).verify_mode == "size"
    monkeypatch.setenv("SHARDSTORE_VERIFY", "once")
    assert shardstore.open(ds.path).verify_mode == "once"


@pytest.mark.parametrize("source", SOURCES)
def test_to_tf_raises_not_hangs_when_a_shard_breaks_mid_epoch(tmp_path: Path, source: str) -> None:
    """A shard truncated after the pipeline was built (and its files verified) fails the epoch."""
    # 16 shards: the last one is read long after the first batch. Records of 16 KiB, so
    # that the gathering reader (about 4 MiB of records per call) has many calls to make.
    n, rps, width = 512, 32, 4096
    values = np.arange(n * width, dtype=np.float32).reshape(n, width)
    shardstore.write(tmp_path / "d", {"v": values}, format=source, records_per_shard=rps,
                     fsync=False)  # fmt: skip
    ds = shardstore.open(tmp_path / "d")
    tfds = ds.to_tf(batch_size=8, features="v", num_parallel_reads=2, prefetch=False)
    it = iter(tfds)
    assert_bitwise_equal(next(it).numpy(), values[:8])
    # the last shard's data file (for zarr: its chunk file, not the metadata)
    last = max(ds.shards[-1].files, key=lambda f: ("chunk_records" in f.info, f.size))
    os.truncate(ds.path / last.path, last.size // 2 + 3)
    outcome: dict[str, Any] = {}

    def drain() -> None:
        got = [values[:8]]
        try:
            got += [b.numpy() for b in it]
        except tf.errors.OpError as exc:
            outcome["error"] = exc
        else:
            outcome["data"] = np.concatenate(got)

    worker = threading.Thread(target=drain, daemon=True)
    worker.start()
    worker.join(timeout=300)
    assert not worker.is_alive(), "to_tf hung on a truncated shard"
    assert "data" not in outcome, "a truncated shard was read as if it were whole"
    assert isinstance(outcome["error"], tf.errors.OpError)
