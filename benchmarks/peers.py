"""The ``tf.data`` patterns people copy from tutorials, as shardstore's peers.

Each peer is a function ``(arrays, workdir, batch_size) -> tf.data.Dataset``
yielding ``(x, label)`` batches: it writes whatever files it needs into
``workdir`` first (untimed), then builds the pipeline the usual way, with the
usual parallelism (``AUTOTUNE``) and a final ``prefetch``. File-based peers
use files of about 64 MiB, like shardstore's default shards. Peers marked
``ordered=False`` interleave files, so they deliver the same records in
another order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf

__all__ = ["PEERS", "Peer", "records_per_file", "subset_size", "write_tfrecords"]

Arrays = Mapping[str, np.ndarray]
AUTOTUNE = tf.data.AUTOTUNE
FILE_BYTES = 64 << 20


@dataclass(frozen=True)
class Peer:
    """One peer: how to build it, and the subset it is measured on (per workload)."""

    name: str
    label: str
    build: Callable[[Arrays, Path, int], tf.data.Dataset]
    max_records: Mapping[str, int] = field(default_factory=dict)
    ordered: bool = True


def records_per_file(arrays: Arrays) -> int:
    """Records in a file of about ``FILE_BYTES`` (64 MiB, shardstore's default shard size)."""
    record = sum(a[:1].nbytes for a in arrays.values())
    return max(1, FILE_BYTES // record)


def _ranges(n: int, step: int) -> Iterator[tuple[int, int, int]]:
    for k, lo in enumerate(range(0, n, step)):
        yield k, lo, min(n, lo + step)


def _signature(arrays: Arrays) -> tuple[tf.TensorSpec, tf.TensorSpec]:
    return (
        tf.TensorSpec(arrays["x"].shape[1:], tf.float32),
        tf.TensorSpec((), tf.int64),
    )


def from_tensor_slices(arrays: Arrays, workdir: Path, batch: int) -> tf.data.Dataset:
    """``from_tensor_slices`` on the in-memory arrays, then ``batch``."""
    ds = tf.data.Dataset.from_tensor_slices((arrays["x"], arrays["label"]))
    return ds.batch(batch).prefetch(AUTOTUNE)


def from_generator(arrays: Arrays, workdir: Path, batch: int) -> tf.data.Dataset:
    """A Python generator over ``np.load(mmap_mode="r")`` arrays, one record per element."""
    np.save(workdir / "x.npy", arrays["x"])
    np.save(workdir / "label.npy", arrays["label"])
    x = np.load(workdir / "x.npy", mmap_mode="r")
    label = np.load(workdir / "label.npy", mmap_mode="r")

    def records() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for i in range(len(label)):
            yield x[i], label[i]

    ds = tf.data.Dataset.from_generator(records, output_signature=_signature(arrays))
    return ds.batch(batch).prefetch(AUTOTUNE)


def npy_per_record(arrays: Arrays, workdir: Path, batch: int) -> tf.data.Dataset:
    """One ``.npy`` per record, loaded by ``py_function(np.load)`` in a parallel ``map``."""
    paths = [str(workdir / f"{i:08d}.npy") for i in range(len(arrays["label"]))]
    for path, record in zip(paths, arrays["x"], strict=True):
        np.save(path, record)
    shape = arrays["x"].shape[1:]

    def load(path: tf.Tensor) -> np.ndarray:
        record: np.ndarray = np.load(path.numpy().decode(), allow_pickle=False)
        return record

    def read(path: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        x = tf.py_function(load, [path], tf.float32)
        x.set_shape(shape)
        return x, label

    ds = tf.data.Dataset.from_tensor_slices((paths, arrays["label"]))
    return ds.map(read, num_parallel_calls=AUTOTUNE).batch(batch).prefetch(AUTOTUNE)


def npy_shards(arrays: Arrays, workdir: Path, batch: int) -> tf.data.Dataset:
    """``.npy`` shard files, each loaded by ``py_function(np.load)``, interleaved, unbatched."""
    n, shape = len(arrays["label"]), arrays["x"].shape[1:]
    xs, labels = [], []
    for k, lo, hi in _ranges(n, records_per_file(arrays)):
        xs.append(str(workdir / f"{k:05d}.x.npy"))
        labels.append(str(workdir / f"{k:05d}.label.npy"))
        np.save(xs[-1], arrays["x"][lo:hi])
        np.save(labels[-1], arrays["label"][lo:hi])

    def load(x_path: tf.Tensor, label_path: tf.Tensor) -> tuple[np.ndarray, np.ndarray]:
        return (
            np.load(x_path.numpy().decode(), allow_pickle=False),
            np.load(label_path.numpy().decode(), allow_pickle=False),
        )

    def shard(x_path: tf.Tensor, label_path: tf.Tensor) -> tf.data.Dataset:
        x, label = tf.py_function(load, [x_path, label_path], [tf.float32, tf.int64])
        x.set_shape([None, *shape])
        label.set_shape([None])
        return tf.data.Dataset.from_tensor_slices((x, label))

    files = tf.data.Dataset.from_tensor_slices((xs, labels))
    ds = files.interleave(shard, num_parallel_calls=AUTOTUNE)
    return ds.batch(batch).prefetch(AUTOTUNE)


def write_tfrecords(arrays: Arrays, directory: Path, per_file: int) -> list[str]:
    """The usual writer: a ``tf.train.Example`` per record through ``TFRecordWriter``."""
    paths = []
    x, label = arrays["x"], arrays["label"]
    for k, lo, hi in _ranges(len(label), per_file):
        paths.append(str(directory / f"{k:05d}.tfrecord"))
        with tf.io.TFRecordWriter(paths[-1]) as writer:
            for i in range(lo, hi):
                feature = {
                    "x": tf.train.Feature(bytes_list=tf.train.BytesList(value=[x[i].tobytes()])),
                    "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label[i]])),
                }
                example = tf.train.Example(features=tf.train.Features(feature=feature))
                writer.write(example.SerializeToString())
    return paths


def tfrecord(arrays: Arrays, workdir: Path, batch: int) -> tf.data.Dataset:
    """TFRecord read the usual way: interleave, ``batch``, ``parse_example``, ``decode_raw``."""
    files = write_tfrecords(arrays, workdir, records_per_file(arrays))
    shape = arrays["x"].shape[1:]
    spec = {
        "x": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.int64),
    }

    def parse(serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        example = tf.io.parse_example(serialized, spec)
        x = tf.reshape(tf.io.decode_raw(example["x"], tf.float32), [-1, *shape])
        return x, example["label"]

    ds = tf.data.Dataset.from_tensor_slices(files)
    ds = ds.interleave(tf.data.TFRecordDataset, num_parallel_calls=AUTOTUNE)
    return ds.batch(batch).map(parse, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


def save_load(arrays: Arrays, workdir: Path, batch: int) -> tf.data.Dataset:
    """``tf.data.Dataset.save`` of the records (untimed), then ``Dataset.load``, ``batch``."""
    path = str(workdir / "saved")
    tf.data.Dataset.from_tensor_slices((arrays["x"], arrays["label"])).save(path)
    return tf.data.Dataset.load(path).batch(batch).prefetch(AUTOTUNE)


PEERS: tuple[Peer, ...] = (
    Peer(
        "from_tensor_slices",
        "`from_tensor_slices` (in memory)",
        from_tensor_slices,
        {"tabular": 1 << 20},
    ),
    Peer(
        "from_generator",
        "`from_generator` over a memmap",
        from_generator,
        {"images": 4096, "tabular": 1 << 15},
    ),
    Peer(
        "npy_per_record",
        "one `.npy` per record, `py_function(np.load)`",
        npy_per_record,
        {"images": 2048, "tabular": 4096},
    ),
    Peer(
        "npy_shards",
        "`.npy` shards, `py_function` + interleave",
        npy_shards,
        {"tabular": 1 << 18},
        ordered=False,
    ),
    Peer(
        "tfrecord",
        "TFRecord, `parse_example` + `decode_raw`, interleaved",
        tfrecord,
        {"tabular": 1 << 18},
        ordered=False,
    ),
    Peer(
        "save_load",
        "`tf.data.Dataset.save` / `load`",
        save_load,
        {"tabular": 1 << 18},
        ordered=False,
    ),
)


def subset_size(peer: Peer, workload: str, num_records: int) -> int:
    """Records ``peer`` is measured on for ``workload`` (all of them unless it is slow)."""
    return min(num_records, peer.max_records.get(workload, num_records))
