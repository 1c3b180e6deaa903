"""The conformance suite every source runs, built-in or third party.

Subclass :class:`SourceConformance` in a pytest module and name the source::

    from shardstore.testing import SourceConformance

    class TestMySource(SourceConformance):
        source = "mine"                       # the registered (entry-point) name
        write_options = {"level": 3}          # optional: passed to shardstore.write

pytest then runs every test below against that source: round trips of every
dtype and shape, partial last shards, feature selection, shuffle coverage,
seeded determinism, disjoint and complete worker sharding, corruption
detection, honest capability flags (a ``random_access`` source really
serves ``ds[i]`` and ``shuffle="global"``; a ``tf_native`` one really builds
pipelines without Python functions), and containment: a source reads the
bytes of the files the manifest lists and nothing else (a dataset holding
only ``manifest.json`` and those files, the rest of what the write left
deleted, reads identically, and no other file of the test's tree is opened).
A source whose file format can point elsewhere (links to other files,
external storage) must refuse such a file before reading it, in every read
path and in :meth:`~shardstore.Dataset.verify` (through
:meth:`~shardstore.sources.base.Source.check_shards`); its own tests build
those files. It needs pytest and TensorFlow.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

import shardstore
from shardstore.errors import CapabilityError, ChecksumError
from shardstore.sources.base import ReadContext, Source

__all__ = [
    "ALL_DTYPES",
    "SourceConformance",
    "assert_bitwise_equal",
    "assert_damage_reported",
    "assert_same_dataset",
    "collect",
    "comparable_manifest",
    "flip_bit",
    "random_records",
]

ALL_DTYPES = (
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "complex64", "complex128",
)  # fmt: skip
SHAPES = ((), (5,), (3, 2, 4))
NUM_RECORDS = 103
RECORDS_PER_SHARD = 17


def random_records(dtype: np.dtype[Any], shape: tuple[int, ...], n: int, seed: int) -> np.ndarray:
    """``n`` records using every bit pattern of ``dtype`` (NaN payloads, -0.0, extremes)."""
    rng = np.random.default_rng(seed)
    if dtype == np.bool_:
        return rng.integers(0, 2, (n, *shape)).astype(bool)
    count = n * int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    return rng.integers(0, 256, count, dtype=np.uint8).view(dtype).reshape(n, *shape)


def assert_damage_reported(
    read: Callable[[], Any], dataset: str | os.PathLike[str], shard: int, file: str
) -> BaseException:
    """``read()`` must fail naming the damaged ``file`` of ``shard`` in ``dataset``.

    Outside TensorFlow that is a :class:`ChecksumError` whose ``dataset``,
    ``shard`` and ``file`` are set; inside a running ``tf.data`` pipeline,
    where TensorFlow turns Python errors into its own, a
    ``tf.errors.OpError`` whose message names all three. Returns the error.
    """
    import tensorflow as tf

    try:
        read()
    except ChecksumError as exc:
        assert (exc.dataset, exc.shard, exc.file) == (str(dataset), shard, file), str(exc)
        return exc
    except tf.errors.OpError as exc:
        message = str(exc)
        assert "ChecksumError" in message, message
        assert f"dataset {str(dataset)!r}, shard {shard}: file {file!r}" in message, message
        error: BaseException = exc
        return error
    raise AssertionError(f"reading did not fail on damaged file {file!r} of shard {shard}")


def assert_bitwise_equal(actual: Any, expected: Any) -> None:
    """Same dtype, same shape, same bytes (NaN payloads and -0.0 included).

    ``expected`` may use either byte order; it is compared in native order.
    """
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    native = expected.dtype.newbyteorder("=")
    assert actual.dtype == native, (actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert (
        np.ascontiguousarray(actual).tobytes()
        == np.ascontiguousarray(expected.astype(native)).tobytes()
    )


def collect(tfds: Any) -> Any:
    """Read a whole pipeline and concatenate its batches (dict, tuple or tensor); None if empty."""
    batches = list(tfds.as_numpy_iterator())
    if not batches:
        return None
    first = batches[0]
    if isinstance(first, dict):
        return {k: np.concatenate([b[k] for b in batches]) for k in first}
    if isinstance(first, tuple):
        return tuple(np.concatenate([b[i] for b in batches]) for i in range(len(first)))
    return np.concatenate(batches)


def flip_bit(path: str | os.PathLike[str], offset: int, mask: int = 0x01) -> None:
    """Flip the bits ``mask`` of the byte at ``offset`` of a file (negative: from the end)."""
    with open(path, "r+b") as f:
        f.seek(offset, os.SEEK_SET if offset >= 0 else os.SEEK_END)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ mask]))


def comparable_manifest(manifest: shardstore.Manifest) -> dict[str, Any]:
    """The manifest as a dict, minus what differs between two writes of the same data.

    The version id (and the ``v-<version_id>`` directory in every path) and
    ``created_by`` are blanked; everything else (features, shard boundaries,
    file sizes, checksums, source details, metadata) is kept.
    """
    text = manifest.to_json().replace(manifest.version_id, "<version>")
    out: dict[str, Any] = json.loads(text)
    out["created_by"] = ""
    return out


def assert_same_dataset(actual: shardstore.Dataset, expected: shardstore.Dataset) -> None:
    """Same manifest (see :func:`comparable_manifest`) and the same bytes in every file."""
    assert comparable_manifest(actual.manifest) == comparable_manifest(expected.manifest)
    for got, want in zip(actual.shards, expected.shards, strict=True):
        for f_got, f_want in zip(got.files, want.files, strict=True):
            a = (actual.path / f_got.path).read_bytes()
            b = (expected.path / f_want.path).read_bytes()
            assert a == b, f"shard {got.index}: {f_got.path} differs from {f_want.path}"


_opened: list[str] | None = None
_hooked = False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _opened is not None and event == "open" and args and isinstance(args[0], str | bytes):
        _opened.append(os.fsdecode(args[0]))


@contextlib.contextmanager
def _opened_paths() -> Iterator[list[str]]:
    """Every path Python opens in the block (``open``, ``os.open``: the ``open`` audit event)."""
    global _opened, _hooked
    if not _hooked:  # an audit hook cannot be removed: install one, once, that is cheap when idle
        sys.addaudithook(_audit)
        _hooked = True
    _opened = []
    try:
        yield _opened
    finally:
        _opened = None


class SourceConformance:
    """Tests every source must pass. Subclass it and set :attr:`source`."""

    #: The registered name of the source under test.
    source: ClassVar[str]
    #: Extra options for ``shardstore.write(..., **write_options)``.
    write_options: ClassVar[Mapping[str, Any]] = {}
    #: Dtypes the source claims to hold (all 14 numeric dtypes by default).
    dtypes: ClassVar[tuple[str, ...]] = ALL_DTYPES

    # -- helpers ------------------------------------------------------------------------
    @classmethod
    def write(cls, path: Path | str, arrays: Any, **kwargs: Any) -> shardstore.Dataset:
        """Write with the source under test."""
        return shardstore.write(
            path, arrays, format=cls.source, fsync=False, **{**cls.write_options, **kwargs}
        )

    @classmethod
    def open(cls, path: Path) -> shardstore.Dataset:
        """Open, explicitly reading with the source under test."""
        return shardstore.open(path, source=cls.source)

    @pytest.fixture(scope="class")
    @classmethod
    def data(cls) -> dict[str, np.ndarray]:
        """Three features of different dtypes and shapes, with a 0..N-1 id."""
        rng = np.random.default_rng(0)
        return {
            "image": rng.random((NUM_RECORDS, 4, 3), dtype=np.float32),
            "id": np.arange(NUM_RECORDS, dtype=np.int64),
            "mask": rng.integers(0, 2, (NUM_RECORDS, 5)).astype(bool),
        }

    @pytest.fixture(scope="class")
    @classmethod
    def dataset(
        cls, tmp_path_factory: pytest.TempPathFactory, data: dict[str, np.ndarray]
    ) -> shardstore.Dataset:
        """The shared dataset: 103 records in shards of 17 (the last one partial)."""
        path = tmp_path_factory.mktemp(f"conformance-{cls.source}") / "d"
        cls.write(path, data, records_per_shard=RECORDS_PER_SHARD)
        return cls.open(path)

    @staticmethod
    def ids(tfds: Any) -> list[int]:
        return [int(v) for batch in tfds.as_numpy_iterator() for v in batch]

    # -- registration -------------------------------------------------------------------
    def test_registered_through_the_entry_point(self) -> None:
        info = shardstore.available_sources()[self.source]
        assert info.conflicts == ()
        source = shardstore.get_source(self.source)
        assert isinstance(source, Source)
        assert source.name == self.source

    def test_shards_record_the_source(self, dataset: shardstore.Dataset) -> None:
        assert dataset.num_shards == -(-NUM_RECORDS // RECORDS_PER_SHARD)
        assert [s.num_records for s in dataset.shards][-1] == NUM_RECORDS % RECORDS_PER_SHARD
        assert set(dataset.manifest.sources) == {self.source}
        dataset.verify(progress=False)

    # -- round trips --------------------------------------------------------------------
    @pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"shape{list(s)}")
    def test_round_trip_every_dtype(self, tmp_path: Path, shape: tuple[int, ...]) -> None:
        arrays = {
            f"f_{name}": random_records(np.dtype(name), shape, 23, seed=i)
            for i, name in enumerate(self.dtypes)
        }
        self.write(tmp_path / "d", arrays, records_per_shard=10)
        ds = self.open(tmp_path / "d")
        out = collect(ds.to_tf(batch_size=7))
        for name, expected in arrays.items():
            assert ds.features[name].dtype == expected.dtype
            assert_bitwise_equal(out[name], expected)

    def test_ordered_read(self, dataset: shardstore.Dataset, data: dict[str, Any]) -> None:
        out = collect(dataset.to_tf(batch_size=10))
        for name, expected in data.items():
            assert_bitwise_equal(out[name], expected)

    def test_one_record(self, tmp_path: Path) -> None:
        one = {"v": np.array([[1.5, -0.0, np.nan]], np.float64)}
        self.write(tmp_path / "d", one)
        assert_bitwise_equal(collect(self.open(tmp_path / "d").to_tf(4, features="v")), one["v"])

    def test_streaming_writer(self, tmp_path: Path, data: dict[str, Any]) -> None:
        with shardstore.Writer(
            tmp_path / "d", format=self.source, records_per_shard=16, fsync=False,
            **self.write_options,
        ) as w:  # fmt: skip
            for lo in range(0, NUM_RECORDS, 25):
                w.write({k: v[lo : lo + 25] for k, v in data.items()})
        out = collect(self.open(tmp_path / "d").to_tf(batch_size=32))
        for name, expected in data.items():
            assert_bitwise_equal(out[name], expected)

    def test_parallel_write_is_bit_identical(self, tmp_path: Path, data: dict[str, Any]) -> None:
        """Shards written concurrently by a thread pool equal a serial write, byte for byte."""
        serial = self.write(tmp_path / "serial", data, records_per_shard=7, executor="serial")
        with cf.ThreadPoolExecutor(3) as pool:
            threaded = self.write(tmp_path / "pool", data, records_per_shard=7, executor=pool)
        assert_same_dataset(threaded, serial)
        self.open(threaded.path).verify(progress=False)

    def test_feature_selection(self, dataset: shardstore.Dataset, data: dict[str, Any]) -> None:
        mask, ids = collect(dataset.to_tf(batch_size=9, features=("mask", "id")))
        assert_bitwise_equal(mask, data["mask"])
        assert_bitwise_equal(ids, data["id"])
        assert_bitwise_equal(collect(dataset.to_tf(8, features="image")), data["image"])

    @pytest.mark.parametrize("block_records", [1, 5, 17, 40])
    def test_blocks_have_the_exact_size(
        self, dataset: shardstore.Dataset, block_records: int
    ) -> None:
        """Full blocks of ``block_records``, then the shard's remainder: the reader relies on it."""
        import tensorflow as tf

        source = shardstore.get_source(self.source)
        ctx = ReadContext(dataset.path, dataset.shards, dict(dataset.features), block_records)
        read_shard = source.tf_reader(ctx)
        for position in (0, len(dataset.shards) - 1):
            n = dataset.shards[position].num_records
            sizes = [
                int(block["id"].shape[0]) for block in read_shard(tf.constant(position, tf.int64))
            ]
            full, rest = divmod(n, block_records)
            assert sizes == [block_records] * full + ([rest] if rest else [])

    # -- shuffling and sharding -----------------------------------------------------------
    def test_shuffle_covers_every_record_once(self, dataset: shardstore.Dataset) -> None:
        got = self.ids(dataset.to_tf(batch_size=8, features="id", shuffle=True, seed=1))
        assert sorted(got) == list(range(NUM_RECORDS))
        assert got != list(range(NUM_RECORDS))

    def test_shuffle_keeps_features_aligned(
        self, dataset: shardstore.Dataset, data: dict[str, Any]
    ) -> None:
        image, ids = collect(dataset.to_tf(8, features=("image", "id"), shuffle=True, seed=4))
        assert_bitwise_equal(image, data["image"][ids])

    def test_seeded_shuffle_is_deterministic(self, dataset: shardstore.Dataset) -> None:
        def run(seed: int) -> list[int]:
            return self.ids(dataset.to_tf(batch_size=8, features="id", shuffle=True, seed=seed))

        assert run(7) == run(7)
        assert run(7) != run(8)

    @pytest.mark.parametrize("workers", [2, 3])
    def test_worker_sharding_is_disjoint_and_complete(
        self, dataset: shardstore.Dataset, workers: int
    ) -> None:
        parts = [
            self.ids(
                dataset.to_tf(
                    8, features="id", shard=(i, workers), shuffle=True, seed=0, balance=None
                )
            )
            for i in range(workers)
        ]
        flat = [i for part in parts for i in part]
        assert sorted(flat) == list(range(NUM_RECORDS))
        assert all(parts)

    # -- integrity --------------------------------------------------------------------------
    def _damaged_copy(self, dataset: shardstore.Dataset, tmp_path: Path) -> shardstore.Dataset:
        shutil.copytree(dataset.path, tmp_path / "copy")
        return self.open(tmp_path / "copy")

    def test_flipped_bit_is_detected(self, dataset: shardstore.Dataset, tmp_path: Path) -> None:
        copy = self._damaged_copy(dataset, tmp_path)
        victim = max(copy.shards[1].files, key=lambda f: f.size)
        flip_bit(copy.path / victim.path, victim.size // 2)
        with pytest.raises(ChecksumError) as exc:
            copy.verify(progress=False)
        assert exc.value.file == victim.path
        assert exc.value.shard == 1

    def test_a_flipped_bit_is_detected_when_read(
        self, dataset: shardstore.Dataset, tmp_path: Path
    ) -> None:
        """Whatever reads the damaged bytes fails naming the file (``verifies_reads`` or not)."""
        copy = self._damaged_copy(dataset, tmp_path)
        victim = max(copy.shards[1].files, key=lambda f: f.size)
        flip_bit(copy.path / victim.path, victim.size // 2)
        assert_damage_reported(lambda: collect(copy.to_tf(batch_size=8)), copy.path, 1, victim.path)
        if shardstore.get_source(self.source).random_access:
            start = copy.shards[0].num_records
            assert_damage_reported(
                lambda: copy[start : start + copy.shards[1].num_records], copy.path, 1, victim.path
            )

    def test_truncation_is_detected_when_read(
        self, dataset: shardstore.Dataset, tmp_path: Path
    ) -> None:
        """Reads verify what they read: the epoch fails on the shard, naming the file."""
        copy = self._damaged_copy(dataset, tmp_path)
        victim = copy.shards[2].files[0]
        os.truncate(copy.path / victim.path, victim.size - 1)
        err = assert_damage_reported(
            lambda: collect(copy.to_tf(batch_size=8)), copy.path, 2, victim.path
        )
        assert "bytes" in str(err)
        source = shardstore.get_source(self.source)
        if source.tf_native:  # TensorFlow ops cannot hash: checked up front
            with pytest.raises(ChecksumError, match="bytes"):
                copy.to_tf(batch_size=8, tf_native=True)
        if source.random_access:
            start = sum(s.num_records for s in copy.shards[:2])
            assert_damage_reported(lambda: copy[start : start + 3], copy.path, 2, victim.path)

    # -- capabilities -----------------------------------------------------------------------
    def test_tf_native_flag_is_honest(self, dataset: shardstore.Dataset) -> None:
        """A ``tf_native`` source builds ``tf_native=True`` pipelines of TensorFlow ops only."""
        source = shardstore.get_source(self.source)

        def uses_python(tfds: Any) -> bool:
            graph = tfds._as_serialized_graph().numpy()
            return any(op in graph for op in (b"PyFunc", b"EagerPyFunc", b"NumpyFunction"))

        if source.tf_native:
            native = dataset.to_tf(batch_size=8, shuffle=True, seed=0, tf_native=True)
            assert not uses_python(native)
        else:
            assert uses_python(dataset.to_tf(batch_size=8, shuffle=True, seed=0))
            with pytest.raises(CapabilityError, match="tf_native"):
                dataset.to_tf(batch_size=8, tf_native=True)

    def test_random_access_flag_is_honest(
        self, dataset: shardstore.Dataset, data: dict[str, Any]
    ) -> None:
        source = shardstore.get_source(self.source)
        if not source.random_access:
            with pytest.raises(CapabilityError, match="random_access"):
                dataset[0]
            with pytest.raises(CapabilityError, match="random_access"):
                dataset.to_tf(shuffle="global")
            return
        rec = dataset[5]
        assert_bitwise_equal(rec["image"], data["image"][5])
        assert_bitwise_equal(rec["id"], data["id"][5])
        last = dataset[-1]
        assert_bitwise_equal(last["mask"], data["mask"][-1])
        span = dataset[15:40]
        assert_bitwise_equal(span["image"], data["image"][15:40])
        picks = [90, 3, 3, 50, 16, 17]
        fancy = dataset[picks]
        for name in data:
            assert_bitwise_equal(fancy[name], data[name][picks])
        assert len(dataset) == NUM_RECORDS
        got = self.ids(dataset.to_tf(batch_size=10, features="id", shuffle="global", seed=3))
        assert sorted(got) == list(range(NUM_RECORDS))
        again = self.ids(dataset.to_tf(batch_size=10, features="id", shuffle="global", seed=3))
        assert got == again

    # -- object storage -----------------------------------------------------------------------
    def test_object_storage_round_trip(self, tmp_path: Path, data: dict[str, Any]) -> None:
        """Written to an object store (``memory://``) and read back bit for bit, every way.

        Shards go through the storage layer only: uploaded from the writer's
        scratch space, fetched whole into the reader's cache (or, for ``ds[i]``
        and a global shuffle larger than the cache, as ranged reads into sparse
        copies when the source implements ``record_ranges``), verified on the way.
        """
        url = f"memory://conformance-{self.source}-{os.urandom(6).hex()}/d"
        written = self.write(url, data, records_per_shard=RECORDS_PER_SHARD, cache_dir=tmp_path)
        assert written.location == url
        ds = shardstore.open(url, source=self.source, cache_dir=tmp_path / "c")
        ds.verify(progress=False)
        out = collect(ds.to_tf(batch_size=10))
        for name, expected in data.items():
            assert_bitwise_equal(out[name], expected)
        got = self.ids(ds.to_tf(batch_size=10, features="id", shuffle=True, seed=1))
        assert sorted(got) == list(range(NUM_RECORDS))
        if not shardstore.get_source(self.source).random_access:
            return
        fresh = shardstore.open(url, source=self.source, cache_dir=tmp_path / "r")
        picks = [90, 3, 3, 50, 16, 17]
        for name, expected in data.items():
            assert_bitwise_equal(fresh[picks][name], expected[picks])
        shard_bytes = max(sum(f.size for f in s.stored_files) for s in written.shards)
        small = shardstore.open(
            url, source=self.source, cache_dir=tmp_path / "s", cache_limit=3 * shard_bytes
        )
        try:
            tfds = small.to_tf(batch_size=10, shuffle="global", seed=2)
        except CapabilityError:
            raise
        except shardstore.ShardStoreError as exc:  # a source that needs whole shards
            assert "cache_limit" in str(exc)
            return
        out = collect(tfds)
        order = np.argsort(out["id"])
        assert out["id"][order].tolist() == list(range(NUM_RECORDS))
        for name, expected in data.items():
            assert_bitwise_equal(out[name][order], expected)

    # -- containment ------------------------------------------------------------------------
    def test_reads_only_the_files_the_manifest_lists(
        self, tmp_path: Path, data: dict[str, Any]
    ) -> None:
        """The listed files and ``manifest.json`` are all a dataset is: nothing else is read.

        The dataset is rebuilt from exactly those files in a fresh directory and
        everything else the write produced is deleted; every read path must
        still return the same records, and no file of this test's tree other
        than the listed ones may be opened.
        """
        written = self.write(tmp_path / "w" / "d", data, records_per_shard=RECORDS_PER_SHARD)
        bare = tmp_path / "bare" / "d"
        listed = {os.path.realpath(bare / "manifest.json")}
        for shard in written.shards:
            for f in shard.stored_files:
                (bare / f.path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(written.path / f.path, bare / f.path)
                listed.add(os.path.realpath(bare / f.path))
        shutil.copyfile(written.path / "manifest.json", bare / "manifest.json")
        shutil.rmtree(tmp_path / "w")
        source = shardstore.get_source(self.source)
        ds = self.open(bare)
        with _opened_paths() as opened:
            ds.verify(progress=False)
            reads = [collect(ds.to_tf(batch_size=10))]
            reads.append(collect(ds.to_tf(batch_size=10, shuffle=True, seed=0)))
            if source.random_access:
                reads.append(ds[:])
        for out in reads:
            order = np.argsort(out["id"])
            for name, expected in data.items():
                assert_bitwise_equal(out[name][order], expected)
        tree = os.path.realpath(tmp_path) + os.sep
        strays = {
            real
            for real in map(os.path.realpath, opened)
            if real.startswith(tree) and os.path.isfile(real) and real not in listed
        }
        assert not strays, f"files the manifest does not list were opened: {sorted(strays)}"
