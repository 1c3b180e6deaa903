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

The same wait makes a hang mid-run: an iterator that becomes cyclic garbage
(an exception's traceback holding the pipeline that raised it is enough) is
destroyed by whichever thread the garbage collector runs in; if that thread
is running one of the iterator's own calls (a ``numpy_function``), or is a
pool thread such a call waits on, the destructor waits for itself. So an
iterator collected outside the main thread hands its resource to a reaper
thread, which drops the last reference: the destructor then runs there, where
nothing it waits for waits for it.
"""

from __future__ import annotations

import atexit
import gc
import logging
import queue
import sys
import threading
import traceback
from typing import Any

__all__ = ["release_iterators_at_exit"]

log = logging.getLogger(__name__)

_lock = threading.Lock()
_registered = False
_retired: queue.SimpleQueue[Any] = queue.SimpleQueue()
_reaper: threading.Thread | None = None


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
            _defer_destruction_off_the_main_thread()
            _registered = True


def _defer_destruction_off_the_main_thread() -> None:
    """Give eager iterators a finalizer that hands their resource to the reaper thread.

    The finalizer (``__del__``) runs before the garbage collector clears the iterator,
    in whichever thread collects it; outside the main thread, and in the main thread
    while the garbage collector runs, it takes the resource out of the iterator, so
    that the last reference, and the destructor's wait, is the reaper's. A collection
    runs at any allocation, possibly while the main thread holds a lock that the
    iterator's in-flight calls wait for (a ``functools.cached_property`` of a source,
    whose lock Python 3.11 shares between all instances): destroying the iterator
    there would wait for them forever. An iterator dropped by the main thread outside
    a collection (``del it``) is destroyed at once, as before.
    """
    from tensorflow.python.data.ops import iterator_ops

    cls = iterator_ops.OwnedIterator
    if "__del__" in vars(cls):
        return  # already installed (or TensorFlow grew one: leave it alone)
    gc.callbacks.append(_track_collections)
    cls.__del__ = _hand_to_reaper


_collecting = threading.local()


def _track_collections(phase: str, info: dict[str, Any]) -> None:
    """``gc.callbacks`` hook: whether this thread is inside a garbage collection."""
    _collecting.active = phase == "start"


def _hand_to_reaper(iterator: Any) -> None:
    main = threading.current_thread() is threading.main_thread()
    if main and not getattr(_collecting, "active", False):
        return
    state = getattr(iterator, "__dict__", None)
    resource = None if state is None else state.pop("_iterator_resource", None)
    if resource is None:
        return
    global _reaper
    with _lock:
        _retired.put(resource)
        del resource
        if _reaper is None or not _reaper.is_alive():
            _reaper = threading.Thread(target=_reap, name="shardstore-reaper", daemon=True)
            _reaper.start()


def _reap() -> None:
    while True:
        resource = _retired.get()
        del resource  # the iterator's destructor runs here, waiting for its calls


def _release_live_iterators() -> int:
    """Destroy every live eager ``tf.data`` iterator; return how many were released."""
    iterator_ops = sys.modules.get("tensorflow.python.data.ops.iterator_ops")
    owned = getattr(iterator_ops, "OwnedIterator", None)
    if owned is None:
        return 0
    _clear_uncaught_traceback()
    released = 0
    while not _retired.empty():
        _retired.get()  # retired but not yet reaped: destroyed here, while the interpreter is whole
    for obj in gc.get_objects():
        if isinstance(obj, owned):
            state = getattr(obj, "__dict__", None)
            if state is not None and state.pop("_iterator_resource", None) is not None:
                released += 1
    if released:
        log.debug("released %d live tf.data iterator(s) before interpreter exit", released)
    return released


def _clear_uncaught_traceback() -> None:
    """Drop the local variables of the frames of the exception that ended the script.

    A script that dies of an uncaught exception raised by ``next(iterator)`` keeps,
    in that exception's traceback (``sys.last_traceback``), frames whose locals hold
    the iterator's resource: it would outlive this hook and be destroyed during
    finalization, the very hang this module prevents. Chained exceptions too.
    """
    seen: set[int] = set()
    pending: list[Any] = [getattr(sys, "last_value", None), getattr(sys, "last_exc", None)]
    tb = getattr(sys, "last_traceback", None)
    if tb is not None:
        traceback.clear_frames(tb)
    while pending:
        exc = pending.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        if exc.__traceback__ is not None:
            traceback.clear_frames(exc.__traceback__)
        pending += [exc.__cause__, exc.__context__]
