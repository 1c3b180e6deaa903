"""A script that ends while a pipeline's iterator is alive exits, and promptly.

``it = iter(ds.to_tf(64)); next(it)`` at module level, then the end of the
script: the interpreter must exit 0 after printing the batch, in every
shuffle mode of the gathered pipeline, for the block pipeline, and with a
suspended ``iter_numpy()`` generator (through random access, and through
``tf.data`` for a source without it). Each script runs in a child process
with a timeout (a hang fails the test instead of stopping the suite).

The hang was a race (see :mod:`shardstore.reading.tfexit`): a TensorFlow thread that
asks for the GIL while the interpreter starts finalizing is stopped by
CPython, and the iterator's destructor then waits for its call forever. The
child scripts make the race certain rather than likely: their first
``atexit`` hook (so the last to run) holds the GIL in C code for about a
second, so the pipeline's threads are all waiting for it when finalization
begins. Without the fix every one of these scripts hangs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import shardstore

#: Seconds a child may take (importing TensorFlow included) before it counts as hung.
TIMEOUT = 120

SCRIPT = """
import atexit, sys
# Runs last, in C, holding the GIL until finalization begins (see the module docstring).
atexit.register(sum, range(30_000_000))
import shardstore
ds = shardstore.open(sys.argv[1])
mode = sys.argv[2]
if mode == "iter_numpy":
    it = ds.iter_numpy(batch_size=64)
else:
    shuffle = {"ordered": False, "shuffled": True, "global": "global", "native": True}[mode]
    it = iter(ds.to_tf(batch_size=64, shuffle=shuffle, seed=1, tf_native=mode == "native"))
batch = next(it)
print("BATCH", batch["x"].shape[0], flush=True)
"""


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    data = {"x": np.arange(25_000 * 4, dtype=np.float32).reshape(-1, 4)}
    for fmt in ("npy", "tfrecord"):
        out[fmt] = tmp_path_factory.mktemp(fmt) / "d"
        shardstore.write(out[fmt], data, format=fmt, records_per_shard=5_000, fsync=False)
    return out


@pytest.mark.parametrize(
    ("fmt", "mode"),
    [
        ("npy", "ordered"),
        ("npy", "shuffled"),
        ("npy", "global"),
        ("npy", "native"),
        ("npy", "iter_numpy"),
        ("tfrecord", "iter_numpy"),
        ("tfrecord", "shuffled"),
    ],
)
def test_a_script_keeping_an_iterator_alive_exits(
    datasets: dict[str, Path], tmp_path: Path, fmt: str, mode: str
) -> None:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    try:
        proc = subprocess.run(
            [sys.executable, str(script), str(datasets[fmt]), mode],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            env=env,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the script hung at exit ({fmt}, {mode}); it printed {exc.stdout!r}")
    assert "BATCH 64" in proc.stdout, proc.stderr[-3000:]
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_the_exit_hook_releases_live_iterators(datasets: dict[str, Path]) -> None:
    """In-process: the hook finds a live iterator and destroys it (what it relies on in TF)."""
    from shardstore.reading import tfexit

    it = iter(shardstore.open(datasets["npy"]).to_tf(batch_size=8))
    next(it)
    assert tfexit._registered
    assert tfexit._release_live_iterators() >= 1
    assert "_iterator_resource" not in vars(it)


GARBAGE_SCRIPT = """
import gc, itertools, sys, threading, weakref
import numpy as np
import tensorflow as tf
import shardstore
ds = shardstore.write(sys.argv[1], {"x": np.arange(4096, dtype=np.int64)}, records_per_shard=256,
                      fsync=False)
ready, go, done = threading.Event(), threading.Event(), threading.Event()
calls = itertools.count()
def augment(x):  # a user's numpy code, in a TensorFlow thread
    if next(calls) == 3:
        ready.set()
        go.wait()
        gc.collect()  # the garbage iterator is destroyed here, inside one of its own calls
        done.set()
    return x
pipeline = ds.to_tf(batch_size=64, shuffle=sys.argv[2] == "shuffle", seed=0).map(
    lambda b: tf.numpy_function(augment, [b["x"]], tf.int64), num_parallel_calls=4)
it = iter(pipeline)
next(it)
ready.wait()
alive = weakref.ref(it)
cycle = [it]
cycle.append(cycle)  # the iterator becomes cyclic garbage, its calls in flight
del it, cycle
go.set()
print("done" if done.wait(30) else "deadlocked", "collected" if alive() is None else "alive",
      flush=True)
"""


@pytest.mark.parametrize("shuffle", ["ordered", "shuffle"])
def test_an_iterator_collected_inside_its_own_call_does_not_deadlock(
    tmp_path: Path, shuffle: str
) -> None:
    """A pipeline iterator freed by the garbage collector waits for its in-flight calls;
    freed inside one of them (any code that allocates can run the collector), it would
    wait for itself forever (:mod:`shardstore.reading.tfexit` hands it to a reaper thread)."""
    _collected_without_deadlock(tmp_path, GARBAGE_SCRIPT, shuffle)


LOCKED_GC_SCRIPT = """
import gc, sys, threading, time, weakref
import numpy as np
import tensorflow as tf
import shardstore
ds = shardstore.write(sys.argv[1], {"x": np.arange(4096, dtype=np.int64)}, records_per_shard=256,
                      fsync=False)
lock = threading.Lock()  # e.g. the lock of a cached_property a source's reads go through
def augment(x):  # runs in TensorFlow threads
    with lock:
        return x
pipeline = ds.to_tf(batch_size=64, shuffle=sys.argv[2] == "shuffle", seed=0).map(
    lambda b: tf.numpy_function(augment, [b["x"]], tf.int64), num_parallel_calls=4)
it = iter(pipeline)
next(it)
alive = weakref.ref(it)
with lock:  # the main thread holds the lock when the collector runs
    cycle = [it]
    cycle.append(cycle)
    del it, cycle
    time.sleep(0.5)  # calls in flight now wait for the lock
    gc.collect()
deadline = time.monotonic() + 30
while alive() is not None and time.monotonic() < deadline:
    time.sleep(0.05)
print("done", "collected" if alive() is None else "alive", flush=True)
"""


@pytest.mark.parametrize("shuffle", ["ordered", "shuffle"])
def test_an_iterator_collected_by_the_main_thread_holding_a_lock_does_not_deadlock(
    tmp_path: Path, shuffle: str
) -> None:
    """The main thread runs the collector at any allocation, maybe holding a lock that the
    iterator's in-flight calls wait for: the iterator is destroyed by the reaper thread."""
    _collected_without_deadlock(tmp_path, LOCKED_GC_SCRIPT, shuffle)


def _collected_without_deadlock(tmp_path: Path, source: str, shuffle: str) -> None:
    """Run a garbage-collection script in a child process: it must end, the iterator gone."""
    script = tmp_path / "collect.py"
    script.write_text(source)
    try:
        proc = subprocess.run(
            [sys.executable, str(script), str(tmp_path / "d"), shuffle],
            capture_output=True, text=True, timeout=TIMEOUT + 60,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"a pipeline collected as garbage hung the process: {exc.stdout!r}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-2:] == ["done", "collected"], proc.stdout
