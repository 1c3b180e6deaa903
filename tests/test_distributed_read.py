"""Reading past one process: tf.data service, tf.distribute, resumable epochs, map_fn.

Real parts only: an in-process tf.data service dispatcher with two workers,
``MirroredStrategy`` over two logical CPUs (in a subprocess, since logical
devices must be configured before TensorFlow starts), and iterator
checkpoints with ``tf.train.Checkpoint``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import shardstore
from shardstore.errors import CapabilityError, InvalidInputError
from shardstore.reading.pipeline import LOCAL_ONLY_MESSAGE
from shardstore.testing import assert_bitwise_equal, collect

N = 203


@pytest.fixture(scope="module")
def ds(tmp_path_factory: pytest.TempPathFactory) -> shardstore.Dataset:
    rng = np.random.default_rng(3)
    data = {
        "x": rng.random((N, 3, 2), dtype=np.float32),
        "label": np.arange(N, dtype=np.int64),
    }
    return shardstore.write(tmp_path_factory.mktemp("dist") / "d", data, records_per_shard=19)


@pytest.fixture(scope="module")
def service() -> tuple[str, list[object]]:
    dispatcher = tf.data.experimental.service.DispatchServer()
    address = dispatcher.target.split("://")[1]
    workers = [
        tf.data.experimental.service.WorkerServer(
            tf.data.experimental.service.WorkerConfig(dispatcher_address=address)
        )
        for _ in range(2)
    ]
    return dispatcher.target, [dispatcher, *workers]


def labels(tfds: tf.data.Dataset) -> list[int]:
    return [int(v) for b in tfds for v in np.atleast_1d(b.numpy())]


# -- tf.data service -------------------------------------------------------------------------
@pytest.mark.parametrize("shuffle", [False, True])
def test_service_dynamic_delivers_every_record_once(
    ds: shardstore.Dataset, service: tuple[str, list[object]], shuffle: bool
) -> None:
    target, _ = service
    tfds = ds.to_tf(8, features="label", shuffle=shuffle, seed=1, service=target)
    got = labels(tfds)
    assert sorted(got) == list(range(N))  # once each, across both workers


def test_service_off_gives_every_worker_everything(
    ds: shardstore.Dataset, service: tuple[str, list[object]]
) -> None:
    target, _ = service
    tfds = ds.to_tf(8, features="label", service=target, service_sharding="off")
    assert sorted(labels(tfds)) == sorted(list(range(N)) * 2)  # two workers, all records each


def test_service_refuses_numpy_sources_up_front(
    ds: shardstore.Dataset, service: tuple[str, list[object]]
) -> None:
    target, _ = service
    with pytest.raises(CapabilityError, match="tf_native"):
        shardstore.open(ds.path, source="memmap").to_tf(8, service=target)
    with pytest.raises(CapabilityError, match="global"):
        ds.to_tf(8, shuffle="global", service=target)


def _distribute(tfds: tf.data.Dataset, target: str) -> tf.data.Dataset:
    """What TensorFlow's guide does with an input pipeline: the user's own distribute."""
    policy = tf.data.experimental.service.ShardingPolicy.DYNAMIC
    return tfds.apply(
        tf.data.experimental.service.distribute(processing_mode=policy, service=target)
    )


@pytest.mark.parametrize("shuffle", [False, True])
def test_user_applied_distribute_on_tf_native_delivers_every_record_once(
    ds: shardstore.Dataset, service: tuple[str, list[object]], shuffle: bool
) -> None:
    target, _ = service
    tfds = ds.to_tf(8, features="label", shuffle=shuffle, seed=1, tf_native=True)
    assert sorted(labels(_distribute(tfds, target))) == list(range(N))
    assert sorted(labels(_distribute(tfds, target))) == list(range(N))  # and the next epoch


def _tfrecord_copy(ds: shardstore.Dataset) -> shardstore.Dataset:
    return shardstore.convert(ds.path, ds.path.parent / "tfr", format="tfrecord", overwrite=True)


@pytest.mark.parametrize("fmt", ["npy", "tfrecord"])
def test_user_applied_distribute_refuses_a_default_pipeline_clearly(
    ds: shardstore.Dataset, service: tuple[str, list[object]], fmt: str
) -> None:
    """The default pipeline reads with Python (npy) or counts on reading every shard
    (tfrecord): split among two workers, it fails with a message that says what to use."""
    target, _ = service
    source = ds if fmt == "npy" else _tfrecord_copy(ds)
    tfds = source.to_tf(8, features="label", shuffle=True, seed=1)
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        labels(_distribute(tfds, target))
    assert LOCAL_ONLY_MESSAGE in str(info.value)
    assert "to_tf(..., service=<dispatcher address>)" in LOCAL_ONLY_MESSAGE
    assert "to_tf(..., tf_native=True)" in LOCAL_ONLY_MESSAGE
    # the same pipeline read here is whole, with its number of batches known
    assert sorted(labels(tfds)) == list(range(N))
    assert int(tfds.cardinality()) == -(-N // 8)


_WORKER = """
import sys
import tensorflow as tf
config = tf.data.experimental.service.WorkerConfig(dispatcher_address=sys.argv[1])
worker = tf.data.experimental.service.WorkerServer(config)
print("ready", flush=True)
worker.join()
"""


def test_user_applied_distribute_with_a_worker_in_another_process(
    ds: shardstore.Dataset,
) -> None:
    """As deployed: the worker is another process. tf_native=True works; the default
    pipeline (Python functions of this process) fails with the same clear message."""
    dispatcher = tf.data.experimental.service.DispatchServer()
    worker = subprocess.Popen(
        [sys.executable, "-c", _WORKER, dispatcher.target.split("://")[1]],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
        native = ds.to_tf(8, features="label", tf_native=True)
        assert sorted(labels(_distribute(native, dispatcher.target))) == list(range(N))
        default = ds.to_tf(8, features="label")
        with pytest.raises(tf.errors.InvalidArgumentError) as info:
            labels(_distribute(default, dispatcher.target))
        assert LOCAL_ONLY_MESSAGE in str(info.value)
    finally:
        worker.kill()
        worker.wait(timeout=60)


def test_service_options_are_validated(ds: shardstore.Dataset) -> None:
    with pytest.raises(InvalidInputError, match="service_sharding"):
        ds.to_tf(8, service="grpc://localhost:1", service_sharding="static")
    with pytest.raises(InvalidInputError, match="service"):
        ds.to_tf(8, service="")


# -- resumable epochs --------------------------------------------------------------------------
@pytest.mark.parametrize("shuffle", [False, True, "global"])
@pytest.mark.parametrize("batch", [8, 60])
def test_start_step_resumes_exactly(
    ds: shardstore.Dataset, shuffle: bool | str, batch: int
) -> None:
    """Stop at step k of epoch 2, resume in a fresh pipeline: the streams concatenate."""
    full = ds.to_tf(batch, features="label", shuffle=shuffle, seed=11)
    epochs = [[b.numpy().tolist() for b in full] for _ in range(3)]
    steps = len(epochs[0])
    for k in (0, 1, steps - 1):
        resumed = ds.to_tf(batch, features="label", shuffle=shuffle, seed=11, start_step=steps + k)
        first = [b.numpy().tolist() for b in resumed]
        second = [b.numpy().tolist() for b in resumed]
        assert first == epochs[1][k:]  # the rest of epoch 1, nothing replayed
        assert second == epochs[2]  # then the next epoch, whole
    if shuffle:
        assert epochs[0] != epochs[1]


def test_order_does_not_depend_on_the_global_seed(ds: shardstore.Dataset) -> None:
    tf.random.set_seed(1)
    a = labels(ds.to_tf(8, features="label", shuffle=True, seed=5))
    tf.random.set_seed(2)
    b = labels(ds.to_tf(8, features="label", shuffle=True, seed=5))
    assert a == b


def test_start_step_needs_gathered_batches(ds: shardstore.Dataset) -> None:
    with pytest.raises(CapabilityError, match="Checkpoint"):
        ds.to_tf(8, tf_native=True, start_step=3)


@pytest.mark.parametrize("shuffle", [False, True])
def test_tf_native_iterator_checkpoint_resumes(
    ds: shardstore.Dataset, tmp_path: Path, shuffle: bool
) -> None:
    tfds = ds.to_tf(8, features="label", shuffle=shuffle, seed=3, tf_native=True, prefetch=False)
    it = iter(tfds)
    head = [next(it).numpy().tolist() for _ in range(5)]
    ckpt = tf.train.Checkpoint(iterator=it)
    path = ckpt.write(str(tmp_path / "it"))
    rest = [b.numpy().tolist() for b in it]
    it2 = iter(tfds)
    tf.train.Checkpoint(iterator=it2).read(path).assert_consumed()
    assert [b.numpy().tolist() for b in it2] == rest
    assert sorted(v for b in head + rest for v in b) == list(range(N))


# -- map_fn ------------------------------------------------------------------------------------
def test_map_fn_augments_batches_in_parallel(ds: shardstore.Dataset) -> None:
    def augment(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return tf.image.flip_left_right(x) * 2.0, y

    x, y = collect(ds.to_tf(16, features=("x", "label"), map_fn=augment))
    assert_bitwise_equal(y, np.arange(N, dtype=np.int64))
    assert_bitwise_equal(x, ds[:]["x"][:, ::-1] * np.float32(2.0))  # [B, 3, 2]: one HWC image


def test_map_fn_must_be_callable(ds: shardstore.Dataset) -> None:
    with pytest.raises(InvalidInputError, match="map_fn"):
        ds.to_tf(8, map_fn=3)  # type: ignore[arg-type]


# -- tf.distribute -------------------------------------------------------------------------------
_MIRRORED = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)
import shardstore
ds = shardstore.open(sys.argv[1])
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
seen = []

def dataset_fn(ctx):
    per_replica = ctx.get_per_replica_batch_size(16)
    seen.append((ctx.input_pipeline_id, ctx.num_input_pipelines, per_replica))
    return ds.to_tf(16, features="label", input_context=ctx)

dist = strategy.distribute_datasets_from_function(dataset_fn)
out = []
for batch in dist:
    for part in strategy.experimental_local_results(batch):
        out.extend(int(v) for v in part.numpy())
print(json.dumps({"seen": seen, "labels": out}))
"""


def test_mirrored_strategy_reads_every_record_once(ds: shardstore.Dataset) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _MIRRORED, str(ds.path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["seen"] == [[0, 1, 8]]  # one input pipeline, per-replica batch of 8
    assert sorted(result["labels"]) == list(range(N))


@pytest.mark.parametrize("workers", [2, 3, 4])
def test_multi_worker_input_contexts_split_shards_evenly(
    ds: shardstore.Dataset, workers: int
) -> None:
    """What MultiWorkerMirroredStrategy hands each worker: a context per input pipeline."""
    per_worker: list[list[list[int]]] = []
    for i in range(workers):
        ctx = tf.distribute.InputContext(
            num_input_pipelines=workers, input_pipeline_id=i, num_replicas_in_sync=workers * 2
        )
        tfds = ds.to_tf(48, features="label", input_context=ctx, shuffle=True, seed=2)
        assert tfds.options().experimental_distribute.auto_shard_policy == (
            tf.data.experimental.AutoShardPolicy.OFF
        )
        per_worker.append([b.numpy().tolist() for b in tfds])
    steps = {len(batches) for batches in per_worker}
    assert len(steps) == 1 and steps.pop() > 0  # same number of steps: no rank waits
    flat = [v for batches in per_worker for b in batches for v in b]
    per_replica = 48 // (workers * 2)  # the global batch split over every replica
    assert all(len(b) == per_replica for batches in per_worker for b in batches)
    assert len(flat) == len(set(flat))  # disjoint
    with pytest.raises(InvalidInputError, match="not both"):
        ds.to_tf(8, shard=(0, 2), input_context=ctx)
