"""Fault injection for crash tests: die with ``SIGKILL`` after the k-th storage operation.

Every operation that changes the dataset directory (creating a file or a
directory, writing a chunk, ``fsync``, ``link``, ``rename``, ``unlink``,
``rmdir``, touching a marker) calls :func:`storage_op` right after it
succeeds. Normally that is one comparison. When armed, the process counts
the operations and kills itself with ``SIGKILL`` (no clean-up, no
``finally``, no ``atexit``: a real crash) right after operation ``k``.

Arm it from the environment, for a writer started as a subprocess::

    SHARDSTORE_FAULT_AFTER_OPS=12 python my_writer.py   # dies after its 12th operation

or in-process with :func:`arm` (the crash tests fork a child per trial and
arm it there). ``SHARDSTORE_FAULT_AFTER_OPS=0`` counts without killing,
which is how a test learns how many operations a clean write performs.

This module is a test hook: it is inert unless armed, imports nothing heavy,
and never changes what a write does when it is not armed.
"""

from __future__ import annotations

import logging
import os
import signal

__all__ = ["ENV_VAR", "arm", "armed", "count", "disarm", "storage_op", "trace"]

log = logging.getLogger(__name__)

#: The environment variable read at import: kill after this many storage operations.
ENV_VAR = "SHARDSTORE_FAULT_AFTER_OPS"

_target: int | None = None
_count = 0
_trace: list[str] = []


def arm(after_ops: int) -> None:
    """Count storage operations from now on; ``SIGKILL`` this process after ``after_ops``.

    ``after_ops == 0`` counts (see :func:`count`, :func:`trace`) and never kills.
    """
    global _target, _count
    if isinstance(after_ops, bool) or not isinstance(after_ops, int) or after_ops < 0:
        raise ValueError(f"after_ops must be an integer >= 0, got {after_ops!r}")
    _target = after_ops
    _count = 0
    _trace.clear()


def disarm() -> None:
    """Stop counting (the counters keep their values)."""
    global _target
    _target = None


def armed() -> bool:
    """Whether operations are being counted."""
    return _target is not None


def count() -> int:
    """Storage operations performed since :func:`arm`."""
    return _count


def trace() -> list[str]:
    """The kinds of the operations performed since :func:`arm`, in order."""
    return list(_trace)


def storage_op(kind: str) -> None:
    """Record one completed storage operation of ``kind``; die here if it is the k-th."""
    global _count
    if _target is None:
        return
    _count += 1
    _trace.append(kind)
    if _count == _target:
        os.kill(os.getpid(), signal.SIGKILL)


def _arm_from_environment() -> None:
    value = os.environ.get(ENV_VAR, "").strip()
    if not value:
        return
    try:
        arm(int(value))
    except ValueError:
        log.warning("ignoring %s=%r: not an integer >= 0", ENV_VAR, value)


_arm_from_environment()
