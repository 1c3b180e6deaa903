"""Parallel writing: executors, order, bounded memory, clean failure (writing.parallel)."""

from __future__ import annotations

import concurrent.futures as cf
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

import shardstore
from shardstore.errors import InvalidInputError
from shardstore.sources.base import ArrayLike, ShardWriteContext
from shardstore.sources.npy import NpySource
from shardstore.testing import assert_bitwise_equal, assert_same_dataset
from shardstore.writing.parallel import DEFAULT_MAX_WORKERS, ShardDispatcher, default_workers

N = 100
RPS = 8  # 13 shards, the last one partial


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "image": rng.random((N, 4, 5), dtype=np.float32),
        "label": np.arange(N, dtype=np.int64),
    }


@pytest.fixture(scope="module")
def serial(tmp_path_factory: pytest.TempPathFactory, data: dict[str, np.ndarray]) -> Any:
    path = tmp_path_factory.mktemp("serial") / "ds"
    return shardstore.write(path, data, records_per_shard=RPS, executor="serial", fsync=False)


def test_default_pool_is_small_and_sized_to_the_machine() -> None:
    assert default_workers() == max(1, min(DEFAULT_MAX_WORKERS, os.cpu_count() or 1))
    dispatcher = ShardDispatcher("threads", NpySource())
    assert dispatcher.mode == "threads"
    assert dispatcher.max_in_flight == 2 * default_workers()


@pytest.mark.parametrize("fmt", ["npy", "zarr", "tfrecord"])
def test_default_write_equals_a_serial_write(
    tmp_path: Path, data: dict[str, np.ndarray], fmt: str
) -> None:
    one = shardstore.write(tmp_path / "a", data, records_per_shard=RPS, format=fmt, fsync=False)
    two = shardstore.write(
        tmp_path / "b", data, records_per_shard=RPS, format=fmt, executor="serial", fsync=False
    )
    assert one.num_shards == 13
    assert_same_dataset(one, two)


def test_process_pool(tmp_path: Path, data: dict[str, np.ndarray], serial: Any) -> None:
    """Tasks in other processes: the records travel as plain arrays, the entry comes back."""
    with cf.ProcessPoolExecutor(2) as pool:
        ds = shardstore.write(
            tmp_path / "ds", data, records_per_shard=RPS, executor=pool, fsync=False
        )
    assert_same_dataset(ds, serial)
    ds.verify(progress=False)


def test_streaming_writer_with_an_executor(
    tmp_path: Path, data: dict[str, np.ndarray], serial: Any
) -> None:
    """Batches that straddle shards; each batch buffer is overwritten after write() returns."""
    buffer = {k: np.empty((15, *v.shape[1:]), v.dtype) for k, v in data.items()}
    with (
        cf.ThreadPoolExecutor(3) as pool,
        shardstore.Writer(
            tmp_path / "ds", records_per_shard=RPS, executor=pool, fsync=False
        ) as writer,
    ):
        for start in range(0, N, 15):
            n = min(15, N - start)
            batch = {k: buffer[k][:n] for k in buffer}
            for k, v in data.items():
                batch[k][...] = v[start : start + n]
            writer.write(batch)
            for v in buffer.values():
                v[...] = 0  # reusing the buffer must not change what was written
    assert_same_dataset(shardstore.open(tmp_path / "ds"), serial)


class _Gate:
    """Shard 0 waits until every other shard has finished: completion order is reversed."""

    total = 0
    finished = 0
    order: ClassVar[list[int]] = []
    condition = threading.Condition()


class ReversedNpy(NpySource):
    name: ClassVar[str] = "test-reversed-npy"

    def write_shard(self, shard: ShardWriteContext, arrays: Mapping[str, ArrayLike]) -> None:
        with _Gate.condition:
            if shard.index == 0 and _Gate.total:
                _Gate.condition.wait_for(lambda: _Gate.finished == _Gate.total - 1, timeout=60)
        super().write_shard(shard, arrays)
        with _Gate.condition:
            _Gate.finished += 1
            _Gate.order.append(shard.index)
            _Gate.condition.notify_all()


def test_shard_order_does_not_depend_on_completion_order(
    tmp_path: Path, data: dict[str, np.ndarray]
) -> None:
    shardstore.register_source(ReversedNpy)
    _Gate.total = 0  # no gate for the serial reference
    ref = shardstore.write(
        tmp_path / "ref", data, format=ReversedNpy.name, records_per_shard=20, executor="serial"
    )
    _Gate.total, _Gate.finished, _Gate.order = 5, 0, []
    with cf.ThreadPoolExecutor(5) as pool:
        ds = shardstore.write(
            tmp_path / "ds", data, format=ReversedNpy.name, records_per_shard=20, executor=pool
        )
    order = _Gate.order
    assert order[-1] == 0  # shard 0 really finished last
    assert [s.index for s in ds.shards] == [0, 1, 2, 3, 4]
    assert_same_dataset(ds, ref)


class FailingNpy(NpySource):
    """Shard 3 fails once shard 4 has started; shard 4 then writes its files late."""

    name: ClassVar[str] = "test-failing-npy"
    started_4 = threading.Event()
    failed_3 = threading.Event()

    def write_shard(self, shard: ShardWriteContext, arrays: Mapping[str, ArrayLike]) -> None:
        if shard.index == 3:
            FailingNpy.started_4.wait(60)
            FailingNpy.failed_3.set()
            raise OSError(28, "No space left on device (injected)")
        if shard.index == 4:
            FailingNpy.started_4.set()
            FailingNpy.failed_3.wait(60)
            time.sleep(0.2)  # still writing while the driver handles the failure
        super().write_shard(shard, arrays)


@pytest.mark.parametrize("existing", [False, True])
def test_a_failing_shard_leaves_nothing_behind(
    tmp_path: Path, data: dict[str, np.ndarray], existing: bool
) -> None:
    shardstore.register_source(FailingNpy)
    FailingNpy.started_4.clear()
    FailingNpy.failed_3.clear()
    path = tmp_path / "ds"
    if existing:
        old = shardstore.write(path, {"v": np.arange(5)}, executor="serial")
        before = sorted(p.relative_to(path) for p in path.rglob("*"))
    pool = cf.ThreadPoolExecutor(4)
    with pytest.raises(OSError, match="injected"):
        shardstore.write(
            path,
            data,
            format=FailingNpy.name,
            records_per_shard=RPS,
            overwrite=existing,
            executor=pool,
        )
    pool.shutdown(wait=True)  # if the writer had not waited, shard 4 would write now
    if existing:
        assert sorted(p.relative_to(path) for p in path.rglob("*")) == before
        assert_bitwise_equal(shardstore.open(path)[0:5]["v"], old[0:5]["v"])
    else:
        assert not path.exists()


class CountingExecutor(cf.ThreadPoolExecutor):
    """Records the most tasks submitted and not yet finished."""

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)

        def done(_: cf.Future[Any]) -> None:
            with self.lock:
                self.running -= 1

        future = super().submit(fn, *args, **kwargs)
        future.add_done_callback(done)
        return future


class SliceLog:
    """An array-like that records the records each slice materialises."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.shape = array.shape
        self.dtype = array.dtype
        self.largest = 0
        self.lock = threading.Lock()

    def __getitem__(self, key: slice) -> Any:
        view = self.array[key]
        parent = self

        class Lazy:
            shape = view.shape
            dtype = view.dtype

            def __getitem__(self, k: slice) -> np.ndarray:
                piece = view[k]
                with parent.lock:
                    parent.largest = max(parent.largest, len(piece))
                return piece

            def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
                with parent.lock:
                    parent.largest = max(parent.largest, len(view))
                return np.asarray(view, dtype=dtype)

        return Lazy()


def test_in_flight_shards_are_bounded(tmp_path: Path) -> None:
    """A big lazily sliced input is never materialised beyond a few shards."""
    big = np.arange(4000, dtype=np.float64).reshape(1000, 4)
    logged = SliceLog(big)
    with CountingExecutor(2) as pool:
        ds = shardstore.write(tmp_path / "ds", {"x": logged}, records_per_shard=10, executor=pool)
    assert ds.num_shards == 100
    assert pool.peak <= 4  # 2 x workers
    assert logged.largest <= 10  # one shard at a time per task, never the whole input
    assert_bitwise_equal(ds[0:1000]["x"], big)


class PlainExecutor(cf.Executor):
    """A minimal third-party Executor: runs each task in a new thread."""

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0
        self.lock = threading.Lock()

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        future: cf.Future[Any] = cf.Future()
        with self.lock:
            self.live += 1
            self.peak = max(self.peak, self.live)

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:
                future.set_exception(exc)
            finally:
                with self.lock:
                    self.live -= 1

        threading.Thread(target=run).start()
        return future


def test_any_executor_gets_plain_arrays_and_returns_json(
    tmp_path: Path, data: dict[str, np.ndarray], serial: Any
) -> None:
    pool = PlainExecutor()
    ds = shardstore.write(tmp_path / "ds", data, records_per_shard=RPS, executor=pool, fsync=False)
    assert_same_dataset(ds, serial)
    assert pool.peak <= 2 * default_workers()


@pytest.mark.parametrize(
    ("executor", "message"),
    [("processes", "not one of serial, threads"), (42, "got int"), (object(), "got object")],
)
def test_bad_executor(tmp_path: Path, executor: Any, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        shardstore.write(tmp_path / "ds", np.arange(3), executor=executor)
    assert not (tmp_path / "ds").exists()


def test_a_worker_that_does_not_share_the_filesystem_is_caught(
    tmp_path: Path, data: dict[str, np.ndarray]
) -> None:
    """A task that writes somewhere the driver cannot see: refused before the commit."""

    class ElsewhereExecutor(PlainExecutor):
        def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
            spec, arrays = args
            spec = {**spec, "root": str(tmp_path / "elsewhere")}
            return super().submit(fn, spec, arrays)

    with pytest.raises(InvalidInputError, match=r"not visible .* shared with the driver"):
        shardstore.write(tmp_path / "ds", data, records_per_shard=RPS, executor=ElsewhereExecutor())
    assert not (tmp_path / "ds").exists()
