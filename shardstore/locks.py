"""Advisory file locks (``flock``) that the kernel releases when their holder dies.

Two kinds of lock protect a dataset directory (see :mod:`shardstore.commit`):

* the **dataset lock**, ``<dataset>/.shardstore/lock``, held for short
  critical sections: starting a write, publishing a manifest, deciding what
  garbage collection may delete;
* a **writer lock**, ``<dataset>/.shardstore/writers/<version_id>.lock``,
  held by a running writer for its whole life. Garbage collection never
  touches the files of a writer whose lock is held.

``flock`` locks belong to an open file description: a process killed with
``SIGKILL`` loses them at once, so a crashed writer never blocks anyone.
A lock file may be unlinked by its holder (to tidy up); a process that was
waiting for it notices that the path now names another file (or none) and
tries again, so a lock is never held on a file nobody else can find.

Where ``flock`` is unavailable (Windows) or refused (some network or FUSE
file systems), the locks degrade to no-ops with one warning: single-writer
use stays safe, concurrent writers to one path are then not protected.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from shardstore.fsutil import make_dirs

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["FileLock", "locked"]

log = logging.getLogger(__name__)

_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS}
_warned = False


def _warn_unsupported(path: Path, why: str) -> None:
    global _warned
    if not _warned:
        log.warning(
            "file locks are not available for %s (%s): concurrent writers to one dataset "
            "are not protected from each other",
            path,
            why,
        )
        _warned = True


class FileLock:
    """An exclusive ``flock`` on ``path`` (created if missing, with its parents).

    Use :meth:`acquire` / :meth:`release`, or :func:`locked`. Not reentrant.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1
        self.degraded = False

    @property
    def held(self) -> bool:
        """Whether this object holds the lock (or holds its degraded stand-in)."""
        return self._fd >= 0

    def acquire(self, *, blocking: bool = True, create: bool = True) -> bool:
        """Take the lock; return False if ``blocking`` is False and someone holds it.

        With ``create=False`` a missing lock file counts as not held by anyone:
        return True without creating it (and :attr:`held` stays False).
        """
        if self._fd >= 0:
            raise RuntimeError(f"lock {self.path} is already held by this object")
        while True:
            if create:
                make_dirs(self.path.parent)
                flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
            else:
                flags = os.O_RDWR | getattr(os, "O_CLOEXEC", 0)
            try:
                fd = os.open(self.path, flags, 0o644)
            except FileNotFoundError:
                if create:
                    continue  # a directory was tidied away under us: make it again
                return True
            if fcntl is None:  # pragma: no cover - Windows
                _warn_unsupported(self.path, "no fcntl module")
                self._fd, self.degraded = fd, True
                return True
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                return False
            except OSError as exc:
                if exc.errno not in _UNSUPPORTED:
                    os.close(fd)
                    raise
                _warn_unsupported(self.path, os.strerror(exc.errno or 0))
                self._fd, self.degraded = fd, True
                return True
            # The holder before us may have unlinked the file: then this lock
            # guards nothing anyone else can find; start over.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                return True
            os.close(fd)
            if not create:
                return True

    def release(self, *, unlink: bool = False) -> None:
        """Release the lock; with ``unlink``, remove the lock file first (while still held)."""
        if self._fd < 0:
            return
        if unlink:
            from shardstore.fsutil import remove_quietly

            remove_quietly(self.path)
        fd, self._fd = self._fd, -1
        os.close(fd)  # closing the last descriptor releases the flock

    def __del__(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[FileLock]:
    """Hold the exclusive lock ``path`` for the ``with`` block."""
    lock = FileLock(path)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()
