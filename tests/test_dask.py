"""Writing with Dask: dask.array input, shards written on a real LocalCluster's workers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import dask.array as da
import distributed
import numpy as np
import pytest

import shardstore
from shardstore.errors import InvalidInputError
from shardstore.sources.base import ShardWriteContext
from shardstore.sources.npy import NpySource
from shardstore.testing import assert_bitwise_equal, assert_same_dataset

N = 300
RPS = 16  # 19 shards, the last one partial; input chunks of 37 and 50 straddle them


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """Two worker processes, one thread each, on loopback (dashboard on a free port)."""
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        host="127.0.0.1",
    )
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    return {
        "image": rng.random((N, 6, 4, 3), dtype=np.float32),
        "label": rng.integers(0, 10, N).astype(np.int64),
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, data: dict[str, np.ndarray]) -> Any:
    """The same data written in this process, serially."""
    path = tmp_path_factory.mktemp("ref") / "ds"
    return shardstore.write(path, data, records_per_shard=RPS, executor="serial")


def dask_inputs(data: dict[str, np.ndarray]) -> dict[str, Any]:
    return {
        "image": da.from_array(data["image"], chunks=(37, 6, 2, 3)),
        "label": da.from_array(data["label"], chunks=50),
    }


def shard_workers(stream: Any) -> set[str]:
    return {t["worker"] for t in stream.data if "write_shard_task" in str(t["key"])}


def test_dask_arrays_written_on_two_workers_equal_a_serial_write(
    tmp_path: Path, client: Any, data: dict[str, np.ndarray], reference: Any
) -> None:
    with distributed.get_task_stream(client) as stream:
        ds = shardstore.write(
            tmp_path / "ds", dask_inputs(data), records_per_shard=RPS, executor=client
        )
    assert shard_workers(stream) == set(client.nthreads())  # both workers wrote shards
    assert_same_dataset(ds, reference)
    ds.verify(progress=False)
    got = ds[0:N]
    assert_bitwise_equal(got["image"], data["image"])
    assert_bitwise_equal(got["label"], data["label"])


def test_numpy_input_through_the_client_executor(
    tmp_path: Path, client: Any, data: dict[str, np.ndarray], reference: Any
) -> None:
    with distributed.get_task_stream(client) as stream:
        ds = shardstore.write(
            tmp_path / "ds", data, records_per_shard=RPS, executor=client.get_executor()
        )
    assert len(shard_workers(stream)) == 2
    assert_same_dataset(ds, reference)


@pytest.mark.parametrize("fmt", ["zarr", "tfrecord"])
def test_other_sources_on_the_cluster(
    tmp_path: Path, client: Any, data: dict[str, np.ndarray], fmt: str
) -> None:
    ref = shardstore.write(
        tmp_path / "ref", data, records_per_shard=RPS, format=fmt, executor="serial"
    )
    ds = shardstore.write(
        tmp_path / "ds", dask_inputs(data), records_per_shard=RPS, format=fmt, executor=client
    )
    assert_same_dataset(ds, ref)


def test_dask_array_without_a_client(
    tmp_path: Path, data: dict[str, np.ndarray], reference: Any
) -> None:
    """The default thread pool computes each shard's slice of a Dask array in its task."""
    ds = shardstore.write(tmp_path / "ds", dask_inputs(data), records_per_shard=RPS)
    assert_same_dataset(ds, reference)


def test_single_dask_array_is_feature_x(tmp_path: Path, client: Any) -> None:
    x = da.arange(100, chunks=30, dtype=np.int32).reshape(50, 2)
    ds = shardstore.write(tmp_path / "ds", x, records_per_shard=8, executor=client)
    assert list(ds.features) == ["x"]
    assert_bitwise_equal(ds[0:50]["x"], np.arange(100, dtype=np.int32).reshape(50, 2))


def _explode(block: np.ndarray, block_info: Any = None) -> np.ndarray:
    if block_info is not None and block_info[0]["chunk-location"][0] == 3:
        raise ValueError("chunk 3 cannot be computed (injected)")
    return block


def test_a_failing_chunk_leaves_nothing_behind(
    tmp_path: Path, client: Any, data: dict[str, np.ndarray]
) -> None:
    inputs = dask_inputs(data)
    inputs["image"] = inputs["image"].map_blocks(_explode, dtype=np.float32)
    path = tmp_path / "ds"
    with pytest.raises(ValueError, match="injected"):
        shardstore.write(path, inputs, records_per_shard=RPS, executor=client)
    assert not path.exists()


def test_unknown_chunk_sizes_are_refused(tmp_path: Path) -> None:
    x = da.arange(10, chunks=5)
    unknown = x[x > 3]  # lengths unknown until computed
    with pytest.raises(InvalidInputError, match="compute_chunk_sizes"):
        shardstore.write(tmp_path / "ds", unknown)
    assert not (tmp_path / "ds").exists()


def _generate(block: int, n: int, log: str) -> dict[str, np.ndarray]:
    with open(log, "a") as f:  # runs in a worker process: count calls through a file
        f.write(f"{block}\n")
    rng = np.random.default_rng(block)
    return {"image": rng.random((n, 4), dtype=np.float32), "label": np.full(n, block)}


def test_each_input_block_is_computed_once_on_the_workers(tmp_path: Path, client: Any) -> None:
    """Features sharing a task are computed together, and the partial last shard is not
    computed on the driver: every block once, on the cluster."""
    import dask

    log = tmp_path / "calls.log"
    images, labels = [], []
    sizes = [RPS] * 5 + [3]
    for block, n in enumerate(sizes):
        batch = dask.delayed(_generate)(block, n, str(log))
        images.append(da.from_delayed(batch["image"], (n, 4), np.float32))
        labels.append(da.from_delayed(batch["label"], (n,), np.int64))
    inputs = {"image": da.concatenate(images), "label": da.concatenate(labels)}
    with distributed.get_task_stream(client) as stream:
        ds = shardstore.write(tmp_path / "ds", inputs, records_per_shard=RPS, executor=client)
    assert sorted(int(b) for b in log.read_text().split()) == list(range(len(sizes)))
    assert sum("write_shard_task" in str(t["key"]) for t in stream.data) == len(sizes)
    assert ds[0 : sum(sizes)]["label"].tolist() == [
        b for b, n in enumerate(sizes) for _ in range(n)
    ]


class _SlowFailing(NpySource):
    """Shard 3 fails once shard 4 is being written; shard 4 then finishes its files late."""

    name: ClassVar[str] = "test-dask-slow-failing"
    started_4 = threading.Event()

    def write_shard(self, shard: ShardWriteContext, arrays: Mapping[str, Any]) -> None:
        if shard.index == 3:
            _SlowFailing.started_4.wait(60)
            raise OSError(28, "No space left on device (injected)")
        if shard.index == 4:
            _SlowFailing.started_4.set()
            time.sleep(0.5)  # still running on its worker when the driver cleans up
        super().write_shard(shard, arrays)


def test_failure_waits_for_running_tasks_before_cleaning_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dask cannot stop a running task: the writer waits for it, then removes its files."""
    from shardstore import registry

    # in-process workers (threads) see it; removed from the registry after the test
    monkeypatch.setitem(registry._registered, _SlowFailing.name, _SlowFailing)
    registry.refresh()
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                 dashboard_address=":0") as cluster,
        distributed.Client(cluster) as client,
    ):  # fmt: skip
        with pytest.raises(OSError, match="injected"):
            shardstore.write(tmp_path / "ds", np.arange(100), records_per_shard=10,
                             format=_SlowFailing.name, executor=client)  # fmt: skip
        time.sleep(1.0)  # had shard 4 not been waited for, its files would appear now
    assert not (tmp_path / "ds").exists()
