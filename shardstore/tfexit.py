"""Let a process exit while one of its ``tf.data`` iterators is still alive.

The hang this prevents: a script keeps an iterator of a pipeline that calls
Python (``numpy_function``: shardstore gathers batches that way) and ends,
e.g. ``it = iter(ds.to_tf(64)); next(it)`` at module level. At interpreter
exit CPython first runs the ``atexit`` hooks, then marks the runtime as
finalizing, then tears the modules down, which destroys ``it``; destroying a
``tf.data`` iterator waits for its in-flight function calls. TensorFlow's
background threads keep filling the pipeline's buffers meanwhile, and each
call into Python first takes the GIL. A thread that asks for the GIL after
the runtime is marked finalizing is stopped for good by CPython
(``PyThread_exit_thread``) instead of being given it; TensorFlow checks
``Py_IsInitialized()`` before the call, but a thread that passed that check
and was waiting for the GIL when finalization began is lost. Its call never
completes, so the iterator's destructor waits forever (the main thread sits
in ``ParallelMapDatasetOp::Dataset::Iterator::~Iterator``). Whether a thread is
caught in that window is a race: it happens whenever the pipeline is still
filling its buffers when the script ends, which shardstore's pipelines (growing
gather groups, autotuned prefetch) often are.

The fix: :func:`release_iterators_at_exit` registers an ``atexit`` hook (once
per process, when the first pipeline is built) that destroys every live
``tf.data`` iterator while the interpreter is still whole: in-flight calls get
the GIL and finish, the destructors return. ``atexit`` hooks run before the
runtime is marked finalizing, and this one is registered after TensorFlow's
own, so it runs before them. An iterator is destroyed by dropping its
resource handle (``OwnedIterator._iterator_resource``, TensorFlow's
attribute: the test of this hang fails if a TensorFlow release renames it);
nothing uses an iterator once the interpreter is exiting. An iterator that a
non-daemon thread is using at exit is not affected (that thread has been
joined before ``atexit`` runs).
"""

from __future__ import annotations

import atexit
import gc
import logging
import sys
import threading

__all__ = ["release_iterators_at_exit"]

log = logging.getLogger(__name__)

_lock = threading.Lock()
_registered = False


def release_iterators_at_exit() -> None:
    """Make sure live ``tf.data`` iterators are destroyed before interpreter finalization.

    Idempotent and cheap; called whenever a pipeline is built.
    """
    global _registered
    if _registered:
        return
    with _lock:
        if not _registered:
            atexit.register(_release_live_iterators)
            _registered = True


def _release_live_iterators() -> int:
    """Destroy every live eager ``tf.data`` iterator; return how many were released."""
    iterator_ops = sys.modules.get("tensorflow.python.data.ops.iterator_ops")
    owned = getattr(iterator_ops, "OwnedIterator", None)
    if owned is None:
        return 0
    released = 0
    for obj in gc.get_objects():
        if isinstance(obj, owned):
            state = getattr(obj, "__dict__", None)
            if state is not None and state.pop("_iterator_resource", None) is not None:
                released += 1
    if released:
        log.debug("released %d live tf.data iterator(s) before interpreter exit", released)
    return released
