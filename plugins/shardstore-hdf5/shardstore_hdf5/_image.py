"""A sparse in-memory file for h5py to lay out an HDF5 file in.

h5py writes to any seekable binary file object. :class:`SparseImage` keeps
only the pages that were written, so a file whose data regions are allocated
but never written (``H5D_FILL_TIME_NEVER``) costs a few kilobytes of memory
however large its datasets are. Unwritten bytes read as zeros.
"""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

__all__ = ["SparseImage"]

PAGE = 4096


class SparseImage(io.RawIOBase):
    """A seekable, readable, writable in-memory file that stores written pages only.

    Attributes
    ----------
    size : int
        The file's length (the end of the furthest write, or the last
        :meth:`truncate`).
    """

    def __init__(self) -> None:
        super().__init__()
        self._pages: dict[int, bytearray] = {}
        self._written: list[tuple[int, int]] = []
        self._pos = 0
        self.size = 0

    # -- io.RawIOBase ----------------------------------------------------------------------
    def readable(self) -> bool:
        """Always true."""
        return True

    def writable(self) -> bool:
        """Always true."""
        return True

    def seekable(self) -> bool:
        """Always true."""
        return True

    def tell(self) -> int:
        """The position."""
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """Move to ``offset`` relative to the start, the position or the end."""
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        """Read up to ``len(buffer)`` bytes at the position; zeros where nothing was written."""
        out = memoryview(buffer).cast("B")
        n = max(0, min(len(out), self.size - self._pos))
        out[:n] = self.getrange(self._pos, self._pos + n)
        self._pos += n
        return n

    def write(self, data: ReadableBuffer, /) -> int:
        """Write ``data`` at the position (past the end extends the file)."""
        src = memoryview(data).cast("B")
        start = self._pos
        done = 0
        while done < len(src):
            page, at = divmod(start + done, PAGE)
            take = min(PAGE - at, len(src) - done)
            buf = self._pages.setdefault(page, bytearray(PAGE))
            buf[at : at + take] = src[done : done + take]
            done += take
        if done:
            self._written.append((start, start + done))
        self._pos = start + done
        self.size = max(self.size, self._pos)
        return done

    def truncate(self, size: int | None = None) -> int:
        """Set the file's length to ``size`` (default: the position)."""
        self.size = self._pos if size is None else size
        for page in [p for p in self._pages if p * PAGE >= self.size]:
            del self._pages[page]
        last, at = divmod(self.size, PAGE)
        if last in self._pages:  # bytes past the end read as zeros if the file grows again
            self._pages[last][at:] = bytes(PAGE - at)
        self._written = [(lo, min(hi, self.size)) for lo, hi in self._written if lo < self.size]
        return self.size

    # -- extras ----------------------------------------------------------------------------
    def getrange(self, start: int, end: int) -> bytes:
        """The bytes ``[start, end)`` of the image (zeros where nothing was written)."""
        out = bytearray(max(0, end - start))
        pos = start
        while pos < end:
            page, at = divmod(pos, PAGE)
            take = min(PAGE - at, end - pos)
            buf = self._pages.get(page)
            if buf is not None:
                out[pos - start : pos - start + take] = buf[at : at + take]
            pos += take
        return bytes(out)

    def overlaps_written(self, start: int, end: int) -> bool:
        """Whether any write touched the bytes ``[start, end)``."""
        return any(lo < end and start < hi for lo, hi in self._written)
