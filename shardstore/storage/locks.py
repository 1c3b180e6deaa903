"""Advisory file locks (``flock``) that the kernel releases when their holder dies.

Two kinds of lock protect a dataset directory (see :mod:`shardstore.storage.commit`):

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

A lock file is opened with ``O_NOFOLLOW | O_NONBLOCK`` in a directory reached
from the dataset root without following links (:mod:`shardstore.storage.safefs`), and
must be a regular file: a symlink planted at a lock's place is refused as
damage, never opened through.

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

from shardstore.errors import from_os_error
from shardstore.storage.fsutil import parent_directory

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["FileLock", "locked"]

log = logging.getLogger(__name__)

_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS}
_warned = False
#: Times a lock whose directory keeps vanishing is tried again before giving up.
_MAX_RETRIES = 100


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

    With ``below`` (an ancestor of ``path``, e.g. the dataset root), the
    directories after it are reached without following links. Use
    :meth:`acquire` / :meth:`release`, or :func:`locked`. Not reentrant.
    """

    def __init__(self, path: Path, *, below: Path | None = None) -> None:
        self.path = path
        self.below = below
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
        retries = 0
        while True:
            try:
                with parent_directory(self.path, below=self.below, create=create) as d:
                    fd = d.open_lock(self.path.name, create=create)
                if fd is None:
                    return True  # no lock file: nobody holds it
            except FileNotFoundError:
                if create and retries < _MAX_RETRIES:
                    retries += 1
                    continue  # a directory was tidied away under us: make it again
                if create:
                    raise
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
                    raise from_os_error(exc, "lock", self.path) from exc
                _warn_unsupported(self.path, os.strerror(exc.errno or 0))
                self._fd, self.degraded = fd, True
                return True
            # The holder before us may have unlinked the file: then this lock
            # guards nothing anyone else can find; start over.
            try:
                with parent_directory(self.path, below=self.below) as d:
                    now = d.lstat(self.path.name)
                same = now is not None and os.path.samestat(os.fstat(fd), now)
            except OSError:
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
            with contextlib.suppress(OSError), parent_directory(self.path, below=self.below) as d:
                d.unlink(self.path.name, missing_ok=True)
        fd, self._fd = self._fd, -1
        os.close(fd)  # closing the last descriptor releases the flock

    def __del__(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)


@contextlib.contextmanager
def locked(path: Path, *, below: Path | None = None) -> Iterator[FileLock]:
    """Hold the exclusive lock ``path`` for the ``with`` block (see :class:`FileLock`)."""
    lock = FileLock(path, below=below)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()
