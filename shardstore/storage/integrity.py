"""Checksums on the read path: verify what is read, when it is read, and nothing twice.

The policy (``docs/reliability.md`` has the measured cost):

``verify="once"`` (the default)
    No byte reaches the caller from a file that does not match the manifest,
    and no byte is hashed twice in a process. Every shard lists the
    checksum of each ~64 KiB block of its files in a small index
    (:mod:`shardstore.format.blocks`), so a read verifies the blocks it touched,
    when it touches them: the first batch does not wait for a pass over the
    dataset, and the first epoch reads each byte once. Sources that read
    files themselves (``memmap``, ``zarr``: ``Source.verifies_reads``) call
    :meth:`FileCheck.verify_range` (or :meth:`FileCheck.pread_into`) on what
    they read; the files of other sources (read inside TensorFlow ops, or
    by a third-party library) are hashed whole, shard by shard, just before
    the shard is first read. Shards without an index (written before
    indexes existed, or whose index is damaged) are hashed whole when first
    read. A damaged block raises :class:`~shardstore.errors.ChecksumError`
    naming the dataset, the shard, the file and the bytes.

    What was verified is remembered for the life of the process, per file
    (by real path and checksum, valid while the file's device, inode, size,
    ``mtime_ns`` and ``ctime_ns`` stay the same) and per block, so later
    epochs, pipelines and ``Dataset`` objects over the same files only look
    the blocks up.
``verify="size"``
    Only existence and size are checked (the cost of a ``stat``), when each
    file is first opened: for storage you trust.

Set the default for a process with ``SHARDSTORE_VERIFY=size`` (or ``once``);
choose per dataset with ``shardstore.open(path, verify=...)``.
:meth:`Dataset.verify` always re-hashes every file (and every block), and
reports every damaged file, whatever the mode.

The block API does not depend on local files: :meth:`FileCheck.verify_range`
checks the bytes a caller already holds (read from a file, a memory map or an
object store), and asks ``read(offset, length)`` for the rest of the blocks
they only partly cover.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from shardstore.errors import ChecksumError, InvalidInputError
from shardstore.format.blocks import (
    BlockHasher,
    BlockIndexError,
    FileBlocks,
    checksum_int,
    decode_index,
)
from shardstore.format.manifest import MAX_EXPANSION, FileEntry, ShardEntry
from shardstore.storage.caches import LRU
from shardstore.storage.checksum import CHUNK_BYTES, format_digest, hash_file, new_hasher
from shardstore.storage.fsutil import InsideResolver
from shardstore.storage.safefs import open_binary

__all__ = [
    "ENV_VAR",
    "MAX_EXPANSION",
    "VERIFY_MODES",
    "FileCheck",
    "Verifier",
    "default_mode",
    "forget",
    "hash_files",
    "hash_shards",
    "normalize_mode",
    "stat_shards",
]

log = logging.getLogger(__name__)

#: The accepted values of ``verify``.
VERIFY_MODES: tuple[str, ...] = ("once", "size")
#: Environment variable that sets the default mode.
ENV_VAR = "SHARDSTORE_VERIFY"
#: Threads hashing files at once (bounded: beyond the storage's bandwidth it only thrashes).
MAX_THREADS = 8
#: Bytes read then hashed at a time by :meth:`FileCheck.pread_into` while blocks are not
#: verified yet: small enough to hash them while they are still in the CPU cache.
VERIFY_PIECE_BYTES = 512 << 10
#: Block indexes kept parsed per process (each ~8 bytes per 64 KiB of its shard).
MAX_CACHED_INDEXES = 4096

_Signature = tuple[int, int, int, int, int]


def default_mode() -> str:
    """``$SHARDSTORE_VERIFY`` if set to a valid mode, else ``"once"``."""
    value = os.environ.get(ENV_VAR, "").strip().lower()
    return value if value in VERIFY_MODES else "once"


def normalize_mode(mode: str | None) -> str:
    """Validate a ``verify=`` argument (``None``: the default mode)."""
    if mode is None:
        return default_mode()
    if mode not in VERIFY_MODES:
        raise InvalidInputError(
            f"verify must be one of {', '.join(repr(m) for m in VERIFY_MODES)}, got {mode!r}"
        )
    return mode


def _signature(st: os.stat_result) -> _Signature:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


# -- the process-wide memory of what was verified ------------------------------------------
@dataclass
class _FileState:
    """What this process verified of one file (one version of it: ``sig``)."""

    sig: _Signature
    done: bool = False  # every byte verified
    bits: bytearray | None = None  # one byte per block, 1 = verified (None: none yet, or done)
    left: int = 0  # blocks not verified yet (with ``bits``)


_lock = threading.Lock()
_states: dict[tuple[str, str], _FileState] = {}
_indexes: LRU[tuple[str, str], dict[tuple[int, int], FileBlocks]] = LRU(MAX_CACHED_INDEXES)


def forget() -> None:
    """Forget what this process has verified (the next reads hash again)."""
    with _lock:
        _states.clear()
    global _indexes
    _indexes = LRU(MAX_CACHED_INDEXES)


def _state(location: str, checksum: str, sig: _Signature) -> _FileState:
    """The memory of ``location`` (this version of it), created empty if new."""
    key = (location, checksum)
    with _lock:
        state = _states.get(key)
        if state is None or state.sig != sig:  # a new file, or replaced since
            state = _states[key] = _FileState(sig)
        return state


def _mark_done(location: str, checksum: str, sig: _Signature) -> None:
    with _lock:
        state = _states.get((location, checksum))
        if state is None or state.sig != sig:
            state = _states[(location, checksum)] = _FileState(sig)
        state.done, state.bits, state.left = True, None, 0


def _is_done(location: str, checksum: str, sig: _Signature) -> bool:
    with _lock:
        state = _states.get((location, checksum))
        return state is not None and state.done and state.sig == sig


# -- one file ----------------------------------------------------------------------------------
class FileCheck:
    """Verification of one file, as one reader reads it (from :meth:`Verifier.file`).

    Thread-safe: blocks may be verified from several threads at once (a
    block verified twice by two racing threads is harmless).
    """

    def __init__(
        self,
        verifier: Verifier,
        shard: ShardEntry,
        entry: FileEntry,
        location: str,
        state: _FileState | None,
        blocks: FileBlocks | None,
    ) -> None:
        self._verifier = verifier
        self.shard = shard
        self.entry = entry
        #: Where the file is (its real path for local files).
        self.location = location
        # None: nothing to verify (verify="size")
        self._state = state
        self._blocks = blocks
        if state is not None and blocks is not None and not state.done:
            with _lock:
                if state.bits is None and not state.done:
                    state.bits = bytearray(blocks.count)
                    state.left = blocks.count
                    if not blocks.count:
                        state.done = True

    @property
    def done(self) -> bool:
        """True when every byte of the file is verified (or there is nothing to verify)."""
        return self._state is None or self._state.done

    @property
    def blocks(self) -> FileBlocks | None:
        """The file's section of its shard's block index (``None``: verified whole)."""
        return self._blocks

    def damaged(self, what: str) -> ChecksumError:
        """The error naming this file's dataset, shard and path."""
        return self._verifier.damaged(self.shard, self.entry.path, what)

    # -- bytes the caller holds -----------------------------------------------------------
    def verify_range(
        self,
        offset: int,
        data: Any,
        read: Callable[[int, int], Any] | None = None,
    ) -> None:
        """Verify the blocks holding any byte of ``data``, the file's bytes from ``offset``.

        Blocks inside ``data`` are hashed from it (so the bytes checked are the
        bytes the caller got); for a block ``data`` only partly covers, the
        missing bytes come from ``read(offset, length)`` (they must then be
        whole blocks: see :meth:`span`). Blocks verified before are skipped.

        Raises
        ------
        ChecksumError
            A block does not match its checksum (naming the file and the bytes).
        """
        state = self._state
        if state is None or state.done:
            return
        blocks = self._blocks
        if blocks is None:
            self.verify_all()
            return
        view = memoryview(data).cast("B")
        end = offset + len(view)
        if not len(view):
            return
        if offset < 0 or end > blocks.size:
            raise self.damaged(f"has no bytes {offset}-{end} (it holds {blocks.size})")
        b0, b1 = blocks.blocks_of(offset, end)
        bits = state.bits
        if bits is None:  # done meanwhile
            return
        i = bits.find(0, b0, b1)
        if i == -1:
            return
        hashes = blocks.hashes
        first, size, step = blocks.first, blocks.size, blocks.block
        digest_of = xxhash.xxh3_64_intdigest
        verified: list[int] = []
        try:
            while i != -1:
                if first and i == 0:
                    lo, hi = 0, min(first, size)
                else:
                    lo = first + (i - (1 if first else 0)) * step
                    hi = min(size, lo + step)
                if lo >= offset and hi <= end:
                    digest = digest_of(view[lo - offset : hi - offset])
                else:
                    if read is None:
                        raise ValueError(
                            f"block {i} of {self.entry.path!r} is only partly in the data "
                            "given, and no read() fetches the rest"
                        )
                    hasher = xxhash.xxh3_64()
                    if lo < offset:
                        hasher.update(read(lo, offset - lo))
                    hasher.update(view[max(lo, offset) - offset : min(hi, end) - offset])
                    if hi > end:
                        hasher.update(read(end, hi - end))
                    digest = hasher.intdigest()
                if digest != hashes[i]:
                    raise self.damaged(
                        f"is damaged: bytes {lo}-{hi} (block {i}) do not match their checksum "
                        f"in the block index; run Dataset.verify() to check every file"
                    )
                verified.append(i)
                i = bits.find(0, i + 1, b1)
        finally:
            if verified:
                self._mark(verified)

    def verify_spans(self, view: Any, starts: np.ndarray, length: int) -> None:
        """Verify the blocks holding records ``[s, s + length)`` for each ``s`` in ``starts``.

        ``starts`` is sorted. ``view`` is a buffer of the whole file (e.g. a
        memory map): the blocks are hashed from it. Used before records are
        copied out of a map. No pass over the records: for each block between
        the first record and the last that is not verified yet, a binary
        search in ``starts`` says whether a record overlaps it, so the cost
        shrinks as the epoch verifies blocks (one slice test once all are).
        """
        state = self._state
        if state is None or state.done or not len(starts):
            return
        blocks = self._blocks
        if blocks is None:
            self.verify_all()
            return
        bits = state.bits
        if bits is None:
            return
        length = max(1, length)
        seen = np.frombuffer(bits, np.uint8)  # 1 = verified (read without the lock: a block
        # seen unverified is hashed, at worst twice; one seen verified stays verified)
        first_block = blocks.block_at(int(starts[0]))
        last_block = blocks.block_at(int(starts[-1]) + length - 1)
        ids = np.flatnonzero(seen[first_block : last_block + 1] == 0) + first_block
        if not len(ids):
            return
        lo, hi = blocks.block_spans(ids)
        # record [s, s + length) overlaps block [lo, hi) when lo - length < s < hi
        ids = ids[np.searchsorted(starts, hi) > np.searchsorted(starts, lo - length + 1)]
        buf = memoryview(view).cast("B")
        for i in ids.tolist():
            if bits[i]:
                continue
            lo_i, hi_i = blocks.block_span(i)
            self.verify_range(lo_i, buf[lo_i:hi_i])
            if state.bits is None:
                return
            bits = state.bits

    def span(self, lo: int, hi: int) -> tuple[int, int] | None:
        """The byte range of whole blocks to fetch so that ``[lo, hi)`` can be verified.

        ``None`` when every block of ``[lo, hi)`` is verified already. For a
        file verified whole, the whole file. Callers that fetch remote ranges
        widen each request to this span, then call :meth:`verify_range`.
        """
        state = self._state
        if state is None or state.done or hi <= lo:
            return None
        blocks = self._blocks
        if blocks is None:
            return 0, self.entry.size
        b0, b1 = blocks.blocks_of(lo, hi)
        bits = state.bits
        if bits is None or bits.find(0, b0, b1) == -1:
            return None
        return blocks.block_span(b0)[0], blocks.block_span(b1 - 1)[1]

    def _mark(self, verified: list[int]) -> None:
        """Remember blocks ``verified`` (one lock for the lot; the last one marks the file)."""
        state = self._state
        assert state is not None
        with _lock:
            bits = state.bits
            if bits is None:
                return
            for i in verified:
                if not bits[i]:
                    bits[i] = 1
                    state.left -= 1
            if state.left <= 0:
                state.done, state.bits = True, None
                self._blocks = None  # nothing left to check: drop the hashes

    # -- whole files ----------------------------------------------------------------------
    def verify_all(self) -> None:
        """Hash the whole file and compare it with the manifest (once per process)."""
        state = self._state
        if state is None or state.done:
            return
        try:
            size, checksum = hash_file(self.location)
        except OSError as exc:
            raise self.damaged(f"cannot be read ({exc})") from exc
        if size != self.entry.size:
            raise self.damaged(f"has {size} bytes, the manifest records {self.entry.size}")
        if checksum != self.entry.checksum:
            raise self.damaged(
                f"has checksum {checksum}, the manifest records {self.entry.checksum}"
            )
        with _lock:
            state.done, state.bits, state.left = True, None, 0

    # -- local files ----------------------------------------------------------------------
    def pread_into(self, fd: int, buf: Any, offset: int) -> None:
        """Fill ``buf`` with the file's bytes from ``offset`` (read from ``fd``), verified.

        While blocks are not verified yet, the range is read a few hundred KiB
        at a time and each piece is hashed at once, while it is still in the
        CPU cache; once the file is verified this is one ``preadv``. A file
        shorter than the manifest says is damage, never zeros.
        """
        view = memoryview(buf).cast("B")
        n = len(view)
        state = self._state
        if state is None or state.done or self._blocks is None:
            if state is not None and not state.done:
                self.verify_all()
            self._pread(fd, view, offset)
            return
        blocks = self._blocks
        pos = 0

        def read(at: int, length: int) -> bytes:
            data = os.pread(fd, length, at)
            if len(data) != length:
                raise self.damaged(f"ends at byte {at + len(data)}, before its recorded end")
            return data

        while pos < n:
            stop = n
            if n - pos > VERIFY_PIECE_BYTES:  # end the piece on a block boundary
                cut = blocks.block_span(blocks.block_at(offset + pos + VERIFY_PIECE_BYTES))[0]
                if cut - offset > pos:
                    stop = cut - offset
            piece = view[pos:stop]
            self._pread(fd, piece, offset + pos)
            self.verify_range(offset + pos, piece, read)
            pos = stop
            if state.done and pos < n:
                self._pread(fd, view[pos:], offset + pos)
                return

    def _pread(self, fd: int, view: memoryview, offset: int) -> None:
        done = 0
        while done < len(view):
            got = os.preadv(fd, [view[done:]], offset + done)
            if got == 0:
                raise self.damaged(
                    f"ends at byte {offset + done}, before the records the manifest records"
                )
            done += got


# -- one reader's view -------------------------------------------------------------------------
class Verifier:
    """Verification for one reader (one pipeline, one ``Dataset``'s random access).

    Holds the checks of the files this reader has opened (each file is
    ``stat``-ed once per reader, when first used: a file replaced since
    another reader verified it is verified again); the memory of verified
    blocks is shared by the whole process.

    Parameters
    ----------
    root : the dataset directory.
    mode : ``"once"`` or ``"size"``.
    """

    def __init__(self, root: str | os.PathLike[str], mode: str = "once") -> None:
        self.root = Path(root)
        self.mode = normalize_mode(mode)
        self._resolver = InsideResolver(self.root)
        self._lock = threading.Lock()
        self._checks: dict[str, FileCheck] = {}
        self._shards_done: set[tuple[int, tuple[str, ...] | None]] = set()
        self._bad_indexes: set[str] = set()

    def damaged(self, shard: ShardEntry, relpath: str, what: str) -> ChecksumError:
        """A ``ChecksumError`` naming the dataset, ``shard`` and ``relpath``."""
        return ChecksumError.in_file(self.root, shard.index, relpath, what)

    def resolve(self, relpath: str) -> str:
        """The real path of a manifest path (refusing escapes from the dataset)."""
        return self._resolver.resolve_str(relpath)

    def known(self, entry: FileEntry) -> bool:
        """Whether this reader has checked ``entry`` already (see :meth:`file`)."""
        return entry.path in self._checks

    def file(self, shard: ShardEntry, entry: FileEntry, *, fd: int | None = None) -> FileCheck:
        """The check of ``entry`` (a file of ``shard``), created on first use.

        The first use ``stat``-s the file (``fd``: the descriptor the caller
        reads, else its path) and compares its size with the manifest.

        Raises
        ------
        ChecksumError
            The file is missing or has another size than the manifest records.
        ManifestError
            The path leaves the dataset directory.
        """
        check = self._checks.get(entry.path)
        if check is not None:
            return check
        try:
            location, st = self._resolver.resolve_stat(entry.path)
        except ChecksumError as exc:  # damage on the way (a link, a file for a directory)
            if exc.shard is not None or exc.what is None:
                raise
            raise type(exc).in_file(
                self.root, shard.index, entry.path, exc.what, errno=exc.errno
            ) from None
        if fd is not None:
            st = os.fstat(fd)
        if st is None:
            raise self.damaged(shard, entry.path, "is missing")
        if not stat.S_ISREG(st.st_mode):
            raise self.damaged(shard, entry.path, "is not a regular file")
        if st.st_size != entry.size:
            what = f"has {st.st_size} bytes, the manifest records {entry.size}"
            raise self.damaged(shard, entry.path, what)
        state = blocks = None
        if self.mode != "size":
            state = _state(location, entry.checksum, _signature(st))
            if not state.done:
                sections = self._index(shard)
                if sections is not None:
                    blocks = sections.get((entry.size, checksum_int(entry.checksum)))
                    if blocks is None:
                        self._index_problem(shard, f"has no blocks for {entry.path!r}")
        check = FileCheck(self, shard, entry, location, state, blocks)
        with self._lock:
            return self._checks.setdefault(entry.path, check)

    def require_files(self, shard: ShardEntry, entries: Iterable[FileEntry]) -> None:
        """Verify ``entries`` (files of ``shard``) whole, unless verified before."""
        for entry in entries:
            self.file(shard, entry).verify_all()

    def require_shard(self, shard: ShardEntry, features: Sequence[str] | None = None) -> None:
        """Verify the files of ``shard`` whole (of ``features`` and of no feature), once.

        What the reader does before a shard is read by a source that does not
        verify its own reads (its files read inside TensorFlow ops, or by a
        third-party library).
        """
        key = (shard.index, None if features is None else tuple(features))
        if key in self._shards_done:
            return
        wanted = None if features is None else set(features)
        todo = [
            f for f in shard.files if wanted is None or f.feature is None or f.feature in wanted
        ]
        self.require_files(shard, todo)
        self._shards_done.add(key)

    # -- block indexes ----------------------------------------------------------------------
    def _index(self, shard: ShardEntry) -> dict[tuple[int, int], FileBlocks] | None:
        """The sections of ``shard``'s block index, or ``None`` (then files are checked whole)."""
        entry = shard.blocks
        if entry is None or entry.path in self._bad_indexes:
            return None
        location = self.resolve(entry.path)
        key = (location, entry.checksum)
        sections = _indexes.get(key)
        if sections is not None:
            return sections
        try:
            sections = read_index(location, entry, limit=max_index_bytes(shard))
        except (BlockIndexError, OSError) as exc:
            self._index_problem(shard, str(exc))
            return None
        return _indexes.put(key, sections)

    def _index_problem(self, shard: ShardEntry, what: str) -> None:
        entry = shard.blocks
        assert entry is not None
        with self._lock:
            if entry.path in self._bad_indexes:
                return
            self._bad_indexes.add(entry.path)
        log.warning(
            "dataset %r, shard %d: the block index %r %s; the shard's files are verified "
            "whole instead (run 'shardstore verify' to check the dataset)",
            str(self.root),
            shard.index,
            entry.path,
            what,
        )


def max_index_bytes(shard: ShardEntry) -> int:
    """The largest block index a reader accepts for ``shard``.

    An honest index holds 8 bytes per block of at least a record or 64 KiB
    (about 1/8192 of the data) plus a few headers; a claim beyond 1 MiB plus
    1/1024 of the shard's bytes is refused before anything is read.
    """
    return (1 << 20) + shard.nbytes // 1024


def read_index(
    location: str, entry: FileEntry, *, limit: int | None = None
) -> dict[tuple[int, int], FileBlocks]:
    """Read a block index file and check it against its manifest entry, then decode it.

    ``limit``: the most bytes to read (:func:`max_index_bytes`); a manifest
    claiming more is refused before anything is allocated.

    Raises
    ------
    BlockIndexError
        Missing, too big, of another size or checksum than the manifest
        records, or undecodable.
    """
    if limit is not None and entry.size > limit:
        raise BlockIndexError(
            f"is said to hold {entry.size} bytes, more than a block index of this shard can "
            f"({limit})",
            file=entry.path,
        )
    try:  # non-blocking: a FIFO planted at the path must not hang the reader
        fd = os.open(location, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        with open(fd, "rb", buffering=0) as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise BlockIndexError("is not a regular file", file=entry.path)
            size = st.st_size
            if size != entry.size:
                raise BlockIndexError(f"has {size} bytes, the manifest records {entry.size}",
                                      file=entry.path)  # fmt: skip
            data = f.read(entry.size + 1)
    except FileNotFoundError:
        raise BlockIndexError("is missing", file=entry.path) from None
    if len(data) != entry.size:
        raise BlockIndexError(f"has {len(data)} bytes, the manifest records {entry.size}",
                              file=entry.path)  # fmt: skip
    checksum = f"xxh3_64:{xxhash.xxh3_64_hexdigest(data)}"
    if checksum != entry.checksum:
        raise BlockIndexError(
            f"has checksum {checksum}, the manifest records {entry.checksum}", file=entry.path
        )
    return decode_index(data)


# -- whole datasets: info (stat) and verify (hash everything) --------------------------------
Damaged = Callable[[ShardEntry, str, str], ChecksumError]


def stat_shards(
    shards: Iterable[ShardEntry],
    resolve_stat: Callable[[str], tuple[str, os.stat_result | None]],
    damaged: Damaged,
) -> list[ChecksumError]:
    """Every file of ``shards`` (block indexes included) that is missing or resized.

    One ``stat`` per file; nothing is read.
    """
    problems: list[ChecksumError] = []
    for shard in shards:
        for f in shard.stored_files:
            _, st = resolve_stat(f.path)
            if st is None:
                problems.append(damaged(shard, f.path, "is missing"))
            elif st.st_size != f.size:
                what = f"has {st.st_size} bytes, the manifest records {f.size}"
                problems.append(damaged(shard, f.path, what))
    return problems


def hash_shards(
    shards: Iterable[ShardEntry],
    resolve_stat: Callable[[str], tuple[str, os.stat_result | None]],
    damaged: Damaged,
    *,
    rehash: bool = True,
    blocks: bool = True,
    progress: Callable[[int], None] | None = None,
    first_only: bool = False,
) -> list[ChecksumError]:
    """Hash every file of ``shards`` (block indexes included); return every problem found.

    Parameters
    ----------
    rehash : hash files verified before too (``Dataset.verify``); else skip them.
    blocks : also check each file's blocks against its shard's index (the
        index must describe the bytes the file holds).
    progress : called with each file's byte count once it is checked.
    first_only : stop at the first damaged file (in shard order).

    Files that pass are remembered as verified for the life of the process.
    """
    problems: list[ChecksumError] = []
    todo: list[tuple[ShardEntry, FileEntry, str, _Signature, FileBlocks | None]] = []
    for shard in shards:
        sections: dict[tuple[int, int], FileBlocks] | None = None
        if shard.blocks is not None:
            location, st = resolve_stat(shard.blocks.path)
            try:
                sections = read_index(location, shard.blocks, limit=max_index_bytes(shard))
            except BlockIndexError as exc:
                problems.append(damaged(shard, shard.blocks.path, str(exc)))
            except OSError as exc:
                problems.append(damaged(shard, shard.blocks.path, f"cannot be read ({exc})"))
            if progress is not None:
                progress(shard.blocks.size)
        for f in shard.files:
            path, st = resolve_stat(f.path)
            if st is None:
                problems.append(damaged(shard, f.path, "is missing"))
                continue
            if st.st_size != f.size:
                what = f"has {st.st_size} bytes, the manifest records {f.size}"
                problems.append(damaged(shard, f.path, what))
                continue
            sig = _signature(st)
            if not rehash and _is_done(path, f.checksum, sig):
                if progress is not None:
                    progress(f.size)
                continue
            section = None
            if blocks and sections is not None:
                section = sections.get((f.size, checksum_int(f.checksum)))
                if section is None and shard.blocks is not None:
                    what = f"has no blocks for {f.path!r}"
                    problems.append(damaged(shard, shard.blocks.path, what))
            todo.append((shard, f, path, sig, section))
        if first_only and problems:
            return problems[:1]
    results = _hash_many([(path, section) for _, _, path, _, section in todo], progress=progress)
    for (shard, f, path, sig, _section), (size, checksum, bad_block) in zip(
        todo, results, strict=True
    ):
        if isinstance(checksum, BaseException):
            problems.append(damaged(shard, f.path, f"cannot be read ({checksum})"))
        elif size != f.size:
            what = f"has {size} bytes, the manifest records {f.size}"
            problems.append(damaged(shard, f.path, what))
        elif checksum != f.checksum:
            what = f"has checksum {checksum}, the manifest records {f.checksum}"
            problems.append(damaged(shard, f.path, what))
        else:
            if bad_block is not None and shard.blocks is not None:
                what = f"does not match the bytes of {f.path!r} (block {bad_block})"
                problems.append(damaged(shard, shard.blocks.path, what))
            try:
                unchanged = _signature(os.stat(path)) == sig
            except OSError:
                unchanged = False
            if unchanged:  # do not vouch for a file that changed while it was hashed
                _mark_done(path, f.checksum, sig)
        if first_only and problems:
            break
    order = {(s.index, f.path): i for i, (s, f, *_rest) in enumerate(todo)}
    problems.sort(key=lambda e: (e.shard or 0, order.get((e.shard or 0, e.file or ""), -1)))
    return problems[:1] if first_only else problems


def _hash_with_blocks(
    path: str, section: FileBlocks | None
) -> tuple[int, str | BaseException, int | None]:
    """``(size, checksum, first bad block or None)`` of a file, in one read."""
    if section is None:
        try:
            size, checksum = hash_file(path)
        except OSError as exc:
            return 0, exc, None
        return size, checksum, None
    hasher = new_hasher()
    blocks = BlockHasher(section.first, section.block)
    size = 0
    try:
        with open_binary(path, buffering=0) as f:
            buf = bytearray(CHUNK_BYTES)
            view = memoryview(buf)
            while n := f.readinto(buf):
                hasher.update(view[:n])
                blocks.update(view[:n])
                size += n
    except OSError as exc:
        return 0, exc, None
    checksum = format_digest(hasher)
    bad = None
    if size == section.size:
        got = blocks.finish(size, checksum).hashes
        diff = np.flatnonzero(got != section.hashes) if len(got) == len(section.hashes) else [0]
        bad = int(diff[0]) if len(diff) else None
    return size, checksum, bad


def _hash_many(
    jobs: Sequence[tuple[str, FileBlocks | None]],
    *,
    progress: Callable[[int], None] | None = None,
) -> list[tuple[int, str | BaseException, int | None]]:
    """:func:`_hash_with_blocks` of each job, by up to :data:`MAX_THREADS` threads, in order."""

    def one(job: tuple[str, FileBlocks | None]) -> tuple[int, str | BaseException, int | None]:
        result = _hash_with_blocks(*job)
        if progress is not None:
            progress(result[0])
        return result

    threads = min(MAX_THREADS, os.cpu_count() or 1, len(jobs))
    if threads <= 1:
        return [one(j) for j in jobs]
    step = -(-len(jobs) // threads)
    slices = [jobs[i : i + step] for i in range(0, len(jobs), step)]
    with ThreadPoolExecutor(len(slices), thread_name_prefix="shardstore-verify") as pool:
        parts = pool.map(lambda part: [one(j) for j in part], slices)
        return [r for part in parts for r in part]


def hash_files(
    paths: Sequence[str | Path], *, progress: Callable[[int], None] | None = None
) -> list[tuple[int, str | BaseException]]:
    """``(size, checksum)`` of each file, hashed by up to :data:`MAX_THREADS` threads.

    Each thread hashes a contiguous slice of ``paths`` (one task per thread,
    not per file: a dataset of many small files would otherwise spend more
    time queueing futures than hashing). A file that cannot be read gives
    ``(0, the OSError)`` instead of raising, so the caller reports problems
    in its own order.
    """
    results = _hash_many([(str(p), None) for p in paths], progress=progress)
    return [(size, checksum) for size, checksum, _ in results]
