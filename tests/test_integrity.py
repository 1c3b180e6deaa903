"""Verified reads: block indexes written, blocks verified when read, damage reported.

``tests/test_corruption.py`` damages every file of every source every way;
this module checks the mechanism: what is verified when, what is not read is
not hashed, damaged or missing block indexes, datasets written before block
indexes existed (committed fixtures), ``verify`` reporting every damaged file,
and ``info`` reading nothing but the manifest.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf

import shardstore
from shardstore import cli
from shardstore.cli.summary import summarize
from shardstore.errors import ChecksumError, DamagedFilesError, InvalidInputError, ManifestError
from shardstore.format.blocks import INDEX_SUFFIX, decode_index
from shardstore.format.manifest import Manifest
from shardstore.sources import memmap as memmap_module
from shardstore.sources.base import ShardWriteContext
from shardstore.storage import integrity
from shardstore.testing import (
    assert_bitwise_equal,
    assert_damage_reported,
    collect,
    flip_bit,
)

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
import v1_data  # noqa: E402

WIDTH = 4096  # float32: 16 KiB records, 4 to a 64 KiB block
RPS, SHARDS = 64, 4
N = RPS * SHARDS


def images() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "x": rng.standard_normal((N, WIDTH)).astype(np.float32),
        "y": np.arange(N, dtype=np.int64),
    }


@pytest.fixture()
def ds(tmp_path: Path) -> shardstore.Dataset:
    integrity.forget()
    return shardstore.write(tmp_path / "d", images(), records_per_shard=RPS, fsync=False)


def record_offset(ds: shardstore.Dataset, i: int, feature: str = "x") -> tuple[str, int]:
    """(file, byte offset) of record ``i`` of ``feature``."""
    shard = ds.shards[i // RPS]
    entry = shard.file_for(feature)
    return entry.path, entry.info["header_bytes"] + (i % RPS) * ds.features[feature].record_nbytes


# -- what is written ---------------------------------------------------------------------------
def test_every_shard_lists_an_index_covering_every_file(ds: shardstore.Dataset) -> None:
    for shard in ds.shards:
        assert shard.blocks is not None
        assert shard.blocks.path == f"{ds.shards[0].files[0].path.split('/')[0]}/" + (
            f"{shard.index:06d}{INDEX_SUFFIX}"
        )
        sections = decode_index((ds.path / shard.blocks.path).read_bytes())
        for f in shard.files:
            section = sections[(f.size, int(f.checksum.split(":")[1], 16))]
            header = f.info["header_bytes"]
            assert section.first == header  # the .npy header is a block of its own
            record = ds.features[f.feature].record_nbytes
            assert section.block % record == 0  # blocks of whole records
    doc = json.loads((ds.path / "manifest.json").read_text())
    assert doc["format_version"] == 1  # an optional key, which older readers ignore
    assert set(doc["shards"][0]["blocks"]) == {"path", "size", "checksum"}


def test_manifest_checks_the_blocks_entry(ds: shardstore.Dataset) -> None:
    doc = json.loads((ds.path / "manifest.json").read_text())
    bad = json.loads(json.dumps(doc))
    bad["shards"][1]["blocks"]["path"] = bad["shards"][1]["files"][0]["path"]
    with pytest.raises(ManifestError, match="listed twice"):
        Manifest.from_dict(bad)
    bad = json.loads(json.dumps(doc))
    bad["shards"][0]["blocks"]["path"] = bad["shards"][1]["blocks"]["path"]
    with pytest.raises(ManifestError, match="reused"):
        Manifest.from_dict(bad)
    bad = json.loads(json.dumps(doc))
    bad["shards"][0]["blocks"]["feature"] = "x"
    with pytest.raises(ManifestError, match="no feature"):
        Manifest.from_dict(bad)
    bad = json.loads(json.dumps(doc))
    bad["shards"][0]["blocks"]["checksum"] = "md5:00"
    with pytest.raises(ManifestError, match="checksum"):
        Manifest.from_dict(bad)
    assert Manifest.from_dict(doc).to_dict() == doc


def test_a_source_cannot_take_the_index_name(tmp_path: Path) -> None:
    ctx = ShardWriteContext(tmp_path, "v-0", 3, 1, {})
    with pytest.raises(InvalidInputError, match="reserved"):
        ctx.create(INDEX_SUFFIX)
    ctx.create(INDEX_SUFFIX, feature="x")  # <index>.x.blocks is a feature's file: fine


# -- verified when read ------------------------------------------------------------------------
def test_damage_in_a_block_not_read_is_found_only_when_read(ds: shardstore.Dataset) -> None:
    data = images()
    victim = RPS + 10  # shard 1, block of records 8-11
    path, offset = record_offset(ds, victim)
    flip_bit(ds.path / path, offset + 100)
    fresh = shardstore.open(ds.path)
    # the same file, other blocks: read and verified without complaint
    picks = [0, RPS, RPS + 7, RPS + 12, RPS + 63, 3 * RPS]
    assert_bitwise_equal(fresh[picks]["x"], data["x"][picks])
    assert_bitwise_equal(fresh[RPS + 4 : RPS + 8]["x"], data["x"][RPS + 4 : RPS + 8])
    # the damaged block, however it is read
    with pytest.raises(ChecksumError, match=r"bytes \d+-\d+ \(block 3\) do not match") as exc:
        fresh[victim - 2]
    assert (exc.value.dataset, exc.value.shard, exc.value.file) == (str(ds.path), 1, path)
    with pytest.raises(ChecksumError):
        list(shardstore.open(ds.path).iter_numpy(32))
    for shuffle in (False, True, "global"):
        integrity.forget()
        err = assert_damage_reported(
            lambda s=shuffle: collect(shardstore.open(ds.path).to_tf(16, shuffle=s, seed=1)),
            ds.path,
            1,
            path,
        )
        assert "do not match their checksum" in str(err)
    with pytest.raises(DamagedFilesError) as found:
        shardstore.open(ds.path).verify(progress=False)
    assert [(e.shard, e.file) for e in found.value.errors] == [(1, path)]


def test_zarr_blocks_are_verified_chunk_by_chunk(tmp_path: Path) -> None:
    """Uncompressed 64 KiB chunks: a damaged chunk fails, its neighbours read fine."""
    data = images()
    ds = shardstore.write(tmp_path / "z", data, format="zarr", records_per_shard=RPS,
                          compression=None, chunk_records=4, fsync=False)  # fmt: skip
    entry = next(f for f in ds.shards[2].files if f.feature == "x" and "chunk_records" in f.info)
    flip_bit(ds.path / entry.path, 5 * 4 * WIDTH * 4 + 17)  # inside chunk 5: records 20-23
    fresh = shardstore.open(ds.path)
    ok = [2 * RPS + i for i in (0, 5, 19, 24, 63)]
    assert_bitwise_equal(fresh[ok]["x"], data["x"][ok])
    with pytest.raises(ChecksumError, match="do not match their checksum") as exc:
        fresh[2 * RPS + 21]
    assert (exc.value.shard, exc.value.file) == (2, entry.path)


def test_the_first_batch_hashes_only_what_it_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No pass over the dataset before the first batch: time to it does not grow with it."""
    rng = np.random.default_rng(3)
    data = {"x": rng.standard_normal((2048, WIDTH)).astype(np.float32)}  # 32 MiB
    ds = shardstore.write(tmp_path / "d", data, records_per_shard=16, fsync=False)  # 128 shards
    total = sum(f.size for s in ds.shards for f in s.files)
    hashed = 0
    real = integrity.xxhash.xxh3_64_intdigest

    def counting(buf: Any) -> int:
        nonlocal hashed
        hashed += memoryview(buf).nbytes
        return int(real(buf))

    class Counting:
        xxh3_64 = integrity.xxhash.xxh3_64
        xxh3_64_intdigest = staticmethod(counting)
        xxh3_64_hexdigest = staticmethod(integrity.xxhash.xxh3_64_hexdigest)

    monkeypatch.setattr(integrity, "xxhash", Counting)
    for shuffle in (False, "global"):
        integrity.forget()
        hashed = 0
        tfds = shardstore.open(ds.path).to_tf(
            8, shuffle=shuffle, seed=2, prefetch=False, num_parallel_reads=1
        )
        next(iter(tfds))  # the first gathers: 8 records, then 16, 32 (read ahead)
        assert 0 < hashed <= total // 4, (shuffle, hashed, total)


def test_tf_native_sources_are_hashed_shard_by_shard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files read inside TensorFlow ops are hashed whole, when the reader reaches the shard."""
    data = images()
    ds = shardstore.write(tmp_path / "t", data, format="tfrecord", records_per_shard=16,
                          fsync=False)  # fmt: skip
    integrity.forget()
    hashed: list[str] = []
    real = integrity.hash_file

    def counting(path: Any, **kw: Any) -> tuple[int, str]:
        hashed.append(str(path))
        return real(path, **kw)

    monkeypatch.setattr(integrity, "hash_file", counting)
    it = iter(shardstore.open(ds.path).to_tf(8, num_parallel_reads=1, prefetch=False))
    assert_bitwise_equal(next(it)["x"].numpy(), data["x"][:8])
    assert 1 <= len(hashed) <= 4 < ds.num_shards  # the interleave opens a few ahead
    rest = [b["y"].numpy() for b in it]
    assert_bitwise_equal(np.concatenate([np.arange(8), *rest]), data["y"])
    assert len(hashed) == ds.num_shards  # each shard once


def test_descriptors_stay_open_while_read_from_many_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A descriptor dropped from the cache is closed only once no reader holds it."""
    monkeypatch.setattr(memmap_module, "MAX_OPEN_FILES", 2)
    data = {"v": np.arange(64 * 300, dtype=np.float32).reshape(-1, 64)}
    ds = shardstore.write(tmp_path / "d", data, records_per_shard=10, fsync=False)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(40):
                picks = rng.integers(0, len(data["v"]), 12)
                assert_bitwise_equal(ds[picks]["v"], data["v"][picks])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_verify_range_checks_bytes_the_caller_holds(ds: shardstore.Dataset) -> None:
    """The block API works on bytes from anywhere (e.g. ranges fetched from object storage)."""
    shard = ds.shards[0]
    entry = shard.file_for("x")
    raw = (ds.path / entry.path).read_bytes()
    check = integrity.Verifier(ds.path).file(shard, entry)
    blocks = check.blocks
    assert blocks is not None and blocks.count == 1 + RPS // 4
    lo, hi = 128 + 5 * 16384, 128 + 6 * 16384  # record 5: part of block 2
    assert check.span(lo, hi) == (128 + 4 * 16384, 128 + 8 * 16384)
    with pytest.raises(ValueError, match="partly"):
        check.verify_range(lo, raw[lo:hi])  # a partial block and nothing to fetch the rest
    fetched: list[tuple[int, int]] = []

    def read(at: int, n: int) -> bytes:
        fetched.append((at, n))
        return raw[at : at + n]

    check.verify_range(lo, raw[lo:hi], read)
    assert fetched == [(128 + 4 * 16384, 16384), (hi, 2 * 16384)]
    assert check.span(lo, hi) is None  # verified: nothing more to fetch
    span = check.span(0, 10)
    assert span == (0, 128)
    bad = bytearray(raw[0:128])
    bad[3] ^= 1
    with pytest.raises(ChecksumError, match=r"bytes 0-128 \(block 0\)"):
        check.verify_range(0, bytes(bad))
    check.verify_range(0, raw)  # everything at once
    assert check.done


# -- damaged or missing block indexes ----------------------------------------------------------
@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_a_damaged_index_falls_back_to_whole_files(
    ds: shardstore.Dataset, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    data = images()
    index = ds.shards[1].blocks
    assert index is not None
    target = ds.path / index.path
    if damage == "flip":
        flip_bit(target, index.size - 3)
    elif damage == "truncate":
        os.truncate(target, index.size // 2)
    else:
        target.unlink()
    with caplog.at_level(logging.WARNING, logger="shardstore.storage.integrity"):
        fresh = shardstore.open(ds.path)
        assert_bitwise_equal(collect(fresh.to_tf(32, features="x")), data["x"])
        assert_bitwise_equal(fresh[[RPS + 3, 5]]["x"], data["x"][[RPS + 3, 5]])
    assert index.path in caplog.text and "verified whole" in caplog.text
    with pytest.raises(DamagedFilesError) as found:
        fresh.verify(progress=False)
    assert [(e.shard, e.file) for e in found.value.errors] == [(1, index.path)]
    # data damage in that shard is still caught, by the whole-file checksum
    path, offset = record_offset(ds, RPS + 40)
    flip_bit(ds.path / path, offset)
    integrity.forget()
    with pytest.raises(ChecksumError, match="has checksum") as exc:
        shardstore.open(ds.path)[RPS + 2]
    assert (exc.value.shard, exc.value.file) == (1, path)


def test_an_index_that_lies_about_the_data_is_caught(ds: shardstore.Dataset) -> None:
    """An index consistent with the manifest but not with the data (a hostile or buggy
    writer): reads fail rather than trust it, and verify names the index."""
    shard = ds.shards[0]
    sections = decode_index((ds.path / shard.blocks.path).read_bytes())  # type: ignore[union-attr]
    entry = shard.file_for("x")
    section = sections[(entry.size, int(entry.checksum.split(":")[1], 16))]
    section.hashes[2] ^= np.uint64(1)
    from shardstore.format.blocks import encode_index

    raw = encode_index(list(sections.values()))
    (ds.path / shard.blocks.path).write_bytes(raw)  # type: ignore[union-attr]
    doc = json.loads((ds.path / "manifest.json").read_text())
    import xxhash

    doc["shards"][0]["blocks"]["checksum"] = f"xxh3_64:{xxhash.xxh3_64_hexdigest(raw)}"
    (ds.path / "manifest.json").write_text(json.dumps(doc))
    fresh = shardstore.open(ds.path)
    with pytest.raises(ChecksumError, match="block 2"):
        fresh[6]
    with pytest.raises(DamagedFilesError, match=r"does not match the bytes of .* \(block 2\)"):
        fresh.verify(progress=False)


# -- datasets written before block indexes ------------------------------------------------------
@pytest.mark.parametrize("source", sorted(v1_data.FIXTURES))
def test_datasets_written_before_block_indexes_read_bit_for_bit(
    source: str, tmp_path: Path
) -> None:
    path = tmp_path / source
    shutil.copytree(FIXTURES / f"v1-{source}", path)
    integrity.forget()
    ds = shardstore.open(path)
    assert all(s.blocks is None for s in ds.shards)
    expected = v1_data.records(source)
    fixed = [n for n, s in ds.features.items() if s.is_fixed]
    shuffles: list[bool | str] = [False, True]
    random_access = source != "tfrecord"
    if random_access:
        shuffles.append("global")
    for shuffle in shuffles:
        got = collect(ds.to_tf(4, features=tuple(fixed), shuffle=shuffle, seed=5))
        order = np.argsort(got[fixed.index("label")] if shuffle else np.arange(v1_data.N))
        labels = np.asarray(expected["label"])
        order = np.searchsorted(labels, got[fixed.index("label")]) if shuffle else order
        for name, values in zip(fixed, got, strict=True):
            assert_bitwise_equal(values, np.asarray(expected[name])[order])
    if random_access:
        rec = ds[[12, 0, 7]]
        assert_bitwise_equal(rec["image"], np.asarray(expected["image"])[[12, 0, 7]])
        tokens = expected["tokens"]
        assert [t.tolist() for t in rec["tokens"]] == [tokens[i].tolist() for i in (12, 0, 7)]
        batches = list(ds.iter_numpy(5, features=["image"]))
        assert_bitwise_equal(np.concatenate([b["image"] for b in batches]), expected["image"])
    ds.verify(progress=False)
    assert summarize(ds)["checksums"]["block_indexes"] == 0
    # damage is caught by whole-file checksums, when the file is first read
    victim = max(ds.shards[1].files, key=lambda f: f.size)
    flip_bit(path / victim.path, victim.size // 2)
    integrity.forget()
    assert_damage_reported(lambda: collect(shardstore.open(path).to_tf(4)), path, 1, victim.path)


# -- verify reports everything; info reads nothing ---------------------------------------------
def test_verify_reports_every_damaged_file(
    ds: shardstore.Dataset, capsys: pytest.CaptureFixture[str]
) -> None:
    s0x = ds.shards[0].file_for("x").path
    s2y = ds.shards[2].file_for("y").path
    s3x = ds.shards[3].file_for("x").path
    index1 = ds.shards[1].blocks.path  # type: ignore[union-attr]
    flip_bit(ds.path / s0x, 5000)
    os.truncate(ds.path / s2y, 100)
    (ds.path / s3x).unlink()
    flip_bit(ds.path / index1, 20)
    with pytest.raises(DamagedFilesError) as found:
        shardstore.open(ds.path).verify(progress=False)
    err = found.value
    assert [(e.shard, e.file) for e in err.errors] == [
        (0, s0x), (1, index1), (2, s2y), (3, s3x)
    ]  # fmt: skip
    assert (err.shard, err.file) == (0, s0x)
    assert err.checked == 3 * SHARDS
    assert "4 of 12 files damaged" in str(err)
    assert cli.main(["verify", "--no-progress", str(ds.path)]) == 1
    out = capsys.readouterr()
    lines = out.err.splitlines()
    assert len(lines) == 5 and "OK" not in out.out
    for line, (shard, file) in zip(
        lines, [(0, s0x), (1, index1), (2, s2y), (3, s3x)], strict=False
    ):
        assert line.startswith("shardstore: verify: DAMAGED: ")
        assert f"shard {shard}: file {file!r}" in line
    assert lines[-1] == f"shardstore: verify FAILED: 4 of 12 files damaged in {ds.path}"


INFO_CHILD = textwrap.dedent(
    """
    import os, sys
    root = os.path.realpath(sys.argv[1])
    opened = []

    def audit(event, args):
        if event == "open" and isinstance(args[0], (str, bytes)):
            path = os.path.realpath(os.fsdecode(args[0]))
            if path.startswith(root + os.sep) and not path.endswith("manifest.json"):
                opened.append(path)

    from shardstore import cli

    def rchar():
        with open("/proc/self/io") as f:
            return int(next(line for line in f if line.startswith("rchar")).split()[1])

    sys.addaudithook(audit)
    before = rchar()
    status = cli.main(["info", sys.argv[1], "--json"])
    read = rchar() - before
    print("RESULT", status, read, len(opened), *opened[:3], file=sys.stderr)
    """
)


@pytest.mark.parametrize("damage", [False, True])
def test_info_reads_the_manifest_and_nothing_else(ds: shardstore.Dataset, damage: bool) -> None:
    """In a child process: no file of the dataset but the manifest is opened, and the bytes
    the process reads (/proc/self/io rchar) are about the manifest's size."""
    if damage:
        (ds.path / ds.shards[1].file_for("y").path).unlink()
    proc = subprocess.run(
        [sys.executable, "-c", INFO_CHILD, str(ds.path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    result = next(line for line in proc.stderr.splitlines() if line.startswith("RESULT"))
    _, status, read, opened, *names = result.split()
    assert int(opened) == 0, names
    manifest = (ds.path / "manifest.json").stat().st_size
    data = sum(f.size for s in ds.shards for f in s.stored_files)
    assert int(read) < manifest + 64 * 1024 < data // 10
    assert int(status) == (1 if damage else 0)
    info = json.loads(proc.stdout)
    assert info["checksums"]["block_indexes"] == SHARDS
    assert info["checksums"]["state"] == ("damaged" if damage else "sizes-ok")


def test_pipelines_of_tensorflow_ops_verify_up_front(ds: shardstore.Dataset) -> None:
    path, offset = record_offset(ds, 3 * RPS + 50)
    flip_bit(ds.path / path, offset)
    fresh = shardstore.open(ds.path)
    with pytest.raises(ChecksumError, match="has checksum") as exc:
        fresh.to_tf(8, tf_native=True)  # no Python in the pipeline: hashed before it is built
    assert (exc.value.shard, exc.value.file) == (3, path)
    with pytest.raises(tf.errors.OpError, match="ChecksumError"):
        collect(fresh.to_tf(8))


def test_verify_spans_covers_every_block_of_long_records(tmp_path: Path) -> None:
    """Records over several blocks (100 KiB records, 64 KiB blocks): the middle ones too."""
    data = {"v": np.random.default_rng(1).standard_normal((6, 100 * 256)).astype(np.float32)}
    ds = shardstore.write(tmp_path / "d", data, records_per_shard=6, fsync=False)
    shard = ds.shards[0]
    entry = shard.file_for("v")
    header, record = entry.info["header_bytes"], 100 * 1024
    flip_bit(ds.path / entry.path, header + 3 * record + record // 2)  # record 3, middle block
    raw = (ds.path / entry.path).read_bytes()
    check = integrity.Verifier(ds.path).file(shard, entry)
    starts = np.array([header + record, header + 5 * record])
    check.verify_spans(raw, starts, record)  # records 1 and 5: intact
    with pytest.raises(ChecksumError, match="do not match"):
        check.verify_spans(raw, np.array([header + 3 * record]), record)


def test_verify_spans_checks_a_damaged_block_between_verified_ones(tmp_path: Path) -> None:
    """Scattered small records: blocks already verified around one that is not skip nothing."""
    data = {"v": np.arange(3 * 64 * 1024, dtype=np.int64)}  # 8-byte records, 1.5 MiB
    ds = shardstore.write(tmp_path / "d", data, records_per_shard=len(data["v"]), fsync=False)
    shard = ds.shards[0]
    entry = shard.file_for("v")
    header = entry.info["header_bytes"]
    check = integrity.Verifier(ds.path).file(shard, entry)
    blocks = check._blocks
    assert blocks is not None and blocks.count >= 4
    lo2, hi2 = blocks.block_span(2)
    flip_bit(ds.path / entry.path, lo2 + (hi2 - lo2) // 2)  # block 2: damaged
    raw = (ds.path / entry.path).read_bytes()

    def start_in(block: int) -> int:  # the first whole record inside ``block``
        lo, _ = blocks.block_span(block)
        return header + -(-(lo - header) // 8) * 8

    check.verify_spans(raw, np.array([start_in(1), start_in(3)]), 8)  # 1 and 3: intact
    with pytest.raises(ChecksumError, match="block 2"):
        check.verify_spans(raw, np.array([start_in(1), start_in(2), start_in(3)]), 8)
    again = integrity.Verifier(ds.path).file(shard, entry)
    with pytest.raises(ChecksumError, match="block 2"):  # and again: damage is never remembered
        again.verify_spans(raw, np.array([start_in(1), start_in(2) + 8]), 8)


@pytest.mark.parametrize("length", [8, 72, 70_000, 200_000])
def test_verify_spans_hashes_exactly_the_blocks_records_overlap(
    tmp_path: Path, length: int
) -> None:
    """Which blocks verify_spans marks verified: those any record touches, no other."""
    rng = np.random.default_rng(length)
    size = 4 << 20
    data = {"v": rng.integers(0, 255, size, dtype=np.uint8)}
    ds = shardstore.write(tmp_path / "d", data, records_per_shard=size, fsync=False)
    shard = ds.shards[0]
    entry = shard.file_for("v")
    raw = (ds.path / entry.path).read_bytes()
    check = integrity.Verifier(ds.path).file(shard, entry)
    blocks = check._blocks
    assert blocks is not None
    header = entry.info["header_bytes"]
    for round_ in range(3):  # later rounds start from blocks verified by earlier ones
        count = int(rng.integers(1, 6))
        picked = set((rng.choice(size - length, count, replace=False) + header).tolist())
        edges = rng.choice(np.arange(2, blocks.count - 2), 4, replace=False).tolist()
        for k, edge in zip(edges, ("ends before", "ends in", "starts in", "after"), strict=True):
            lo, hi = blocks.block_span(k)  # one record just outside or just inside block k
            at = {"ends before": lo - length, "ends in": lo - length + 1, "starts in": hi - 1}
            picked.add(at.get(edge, hi))
        starts = np.array(sorted(s for s in picked if 0 <= s <= blocks.size - length))
        state = check._state
        assert state is not None and state.bits is not None
        before = bytes(state.bits)
        check.verify_spans(raw, starts, length)
        expected = set()
        for s in starts.tolist():
            expected |= set(range(blocks.block_at(s), blocks.block_at(s + length - 1) + 1))
        after = state.bits if state.bits is not None else bytes([1]) * blocks.count
        newly = {i for i in range(blocks.count) if after[i] and not before[i]}
        assert newly == expected - {i for i in range(blocks.count) if before[i]}, round_
