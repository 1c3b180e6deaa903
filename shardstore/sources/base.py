"""The source plugin contract.

A *source* knows how to write one shard and how to read one shard back as a
``tf.data.Dataset``; nothing more. The writer owns sharding, naming,
checksums and the atomic commit; the reader owns parallelism, shuffling and
batching. That split keeps a plugin small:

``write_shard(shard, arrays)``
    Write the records ``arrays`` (a mapping ``feature -> array-like`` with one
    shared leading length) as one shard. Create every file through
    ``shard.create(...)``: the core names it, hashes it while it is written,
    records it in the manifest and removes it if anything fails. Several
    shards may be written at once, from threads sharing the instance or from
    other processes (:mod:`shardstore.writing.parallel`): keep no per-shard state.

``tf_reader(ctx)``
    Return a function mapping a scalar ``int64`` tensor (a position in
    ``ctx.shards``) to a ``tf.data.Dataset`` of *blocks*: dicts
    ``feature -> Tensor[b, *shape]`` in record order, covering the shard
    exactly once, where every block holds exactly ``ctx.block_records``
    records except the shard's last one (``1 <= b``). Blocks, not single
    records, because tf.data spends microseconds per element; exact sizes,
    because the ordered reader counts blocks to keep shards in order.

Capability flags describe what the reader may ask for:

``tf_native``
    ``tf_reader`` uses TensorFlow ops only (no ``py_function`` /
    ``numpy_function``), so pipelines serialise (tf.data service, auto-sharding).
``random_access``
    The source implements :meth:`Source.read_records`: it fetches arbitrary
    records of a shard by index, with NumPy, no TensorFlow. The reader uses it
    for ``ds[i]`` and for ``to_tf(shuffle="global")`` (one gather per batch).
``supports_ragged``
    The source can store features with a variable dimension.
``verifies_reads``
    The source checks the bytes it reads against the shard's block
    checksums itself, through ``ctx.verifier``
    (:class:`shardstore.storage.integrity.Verifier`): ``ctx.verifier.file(shard,
    entry)`` gives a :class:`~shardstore.storage.integrity.FileCheck` whose
    ``pread_into`` / ``verify_range`` verify exactly what was read. For a
    source that leaves this ``False`` (files read inside TensorFlow ops or by
    a third-party library), the reader hashes each shard's files whole just
    before the shard is first read in the process. Either way no byte
    reaches the caller unverified.

Blocks are checksummed by the core as files are written (every source gets
them); ``ShardFile.align_blocks`` aligns them to fixed-size records.

Register a source under the entry-point group ``shardstore.sources``; the
entry-point name must equal the class's ``name``. ``docs/plugins.md`` walks
through a complete plugin.
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from shardstore.errors import (
    CapabilityError,
    InvalidInputError,
    ManifestError,
    UnsupportedDTypeError,
)
from shardstore.format.blocks import INDEX_SUFFIX, FileBlocks, choose_layout, encode_index
from shardstore.format.manifest import (
    SUPPORTED_DTYPES,
    FeatureSpec,
    FileEntry,
    ShardEntry,
    check_relative_path,
)
from shardstore.storage.checksum import CHUNK_BYTES
from shardstore.storage.fsutil import HashingFile, InsideResolver, make_dirs

if TYPE_CHECKING:
    import tensorflow as tf

    from shardstore.format.ragged import RaggedArray
    from shardstore.storage.integrity import Verifier

__all__ = [
    "ALIGNMENT",
    "ArrayLike",
    "ReadContext",
    "RemoteFiles",
    "ShardFile",
    "ShardWriteContext",
    "Source",
    "aligned_empty",
    "iter_record_chunks",
]

#: Anything with ``shape``, ``dtype`` and NumPy-style slicing on the first axis.
ArrayLike = Any

#: Byte alignment of the arrays handed to TensorFlow. TensorFlow adopts a
#: NumPy array returned by ``numpy_function`` without copying only when its
#: data is aligned for Eigen (64 bytes on AVX-512 builds); ``np.empty`` of a
#: large array gives 16-byte alignment, which costs a full extra copy (measured:
#: 1 ms per 12 MiB batch).
ALIGNMENT = 64


def aligned_empty(shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on an ``ALIGNMENT`` boundary."""
    dtype = np.dtype(dtype)
    nbytes = dtype.itemsize * math.prod(shape)
    raw = np.empty(nbytes + ALIGNMENT, dtype=np.uint8)
    skip = -raw.ctypes.data % ALIGNMENT
    return raw[skip : skip + nbytes].view(dtype).reshape(shape)


class RemoteFiles(Protocol):
    """Where a remote dataset's shards come from: what the reader asks of them.

    Implemented by :class:`shardstore.reading.remote.RemoteShards`; carried by a
    :class:`ReadContext` for the reader's own use. Sources never need it: they read the
    local files the reader has brought in.
    """

    def fetch(self, shard: ShardEntry) -> None:
        """Bring ``shard`` into the local cache."""

    def hold_for_read(
        self,
        held: contextlib.ExitStack,
        source: Source,
        ctx: ReadContext,
        ranged: ReadContext | None,
        rows: Mapping[int, np.ndarray],
    ) -> dict[int, ReadContext]:
        """Make the bytes that reading ``rows`` touches local; the context for each."""


class ShardFile:
    """A file being written for a shard; see :meth:`ShardWriteContext.create`."""

    def __init__(self, ctx: ShardWriteContext, relpath: str, feature: str | None) -> None:
        self._ctx = ctx
        self.relpath = relpath
        self.feature = feature
        #: Source-specific details stored with the file in the manifest.
        self.info: dict[str, Any] = {}
        self._file = HashingFile(ctx.root / relpath, fsync=ctx.fsync, below=ctx.below)

    def __enter__(self) -> ShardFile:
        self._file.__enter__()
        self._ctx._open_paths.append(self._file.path)
        return self

    def align_blocks(self, start: int, record_bytes: int) -> None:
        """Align the file's checksum blocks to its records (call before the first write).

        The core hashes every file in blocks of about 64 KiB
        (:mod:`shardstore.format.blocks`), so readers verify what they read. A
        source whose records have a fixed size and start at byte ``start``
        (after a header) calls this to make blocks hold whole records: a
        random read of one record then verifies its own bytes and no more.
        """
        self._file.set_block_layout(*choose_layout(start, record_bytes))

    def write(self, data: bytes | bytearray | memoryview | np.ndarray) -> None:
        """Append bytes (or a C-contiguous array's memory) to the file."""
        if isinstance(data, np.ndarray):
            data = np.ascontiguousarray(data).data
        self._file.write(data)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._file.__exit__(exc_type, exc, tb)
        if exc_type is None:
            assert self._file.blocks is not None
            self._ctx._blocks.append(self._file.blocks)
            self._ctx.files.append(
                FileEntry(
                    path=self.relpath,
                    size=self._file.size,
                    checksum=self._file.checksum,
                    feature=self.feature,
                    info=dict(self.info),
                )
            )


@dataclass
class ShardWriteContext:
    """Everything a source needs to write one shard.

    Attributes
    ----------
    root : where files are created: the write's staging area
        (``<dataset>/.shardstore/staging``), moved into the dataset at commit.
        Paths relative to it (``prefix/...``) are the manifest's paths.
    prefix : directory (relative to ``root``) that holds this write's files.
    index : the shard's index.
    num_records : records in this shard.
    features : the spec of every feature, by name.
    options : source-specific write options (e.g. ``compression``).
    fsync : whether files are flushed to stable storage before the commit.
    base : the dataset directory ``root`` lies in: every directory between
        them is reached without following links (a staging directory swapped
        for a symlink mid-write is refused, not written through). ``None``:
        from ``root`` itself.
    """

    root: Path
    prefix: str
    index: int
    num_records: int
    features: Mapping[str, FeatureSpec]
    options: Mapping[str, Any] = field(default_factory=dict)
    fsync: bool = True
    base: Path | None = None
    files: list[FileEntry] = field(default_factory=list)
    #: the shard's block index, once :meth:`write_block_index` has written it
    blocks: FileEntry | None = None
    _open_paths: list[Path] = field(default_factory=list)
    _blocks: list[FileBlocks] = field(default_factory=list)

    def create(self, suffix: str, *, feature: str | None = None) -> ShardFile:
        """A new file for this shard, named ``<prefix>/<index>.<feature><suffix>``.

        ``suffix`` may contain ``/`` to build a directory tree under the shard
        (e.g. ``".zarr/image/zarr.json"``); parent directories are created.
        """
        stem = f"{self.index:06d}" + (f".{feature}" if feature is not None else "")
        try:
            relpath = check_relative_path(f"{self.prefix}/{stem}{suffix}")
        except ManifestError as exc:
            raise InvalidInputError(f"invalid file suffix {suffix!r}: {exc}") from None
        if relpath == self._index_path:
            raise InvalidInputError(
                f"the file suffix {INDEX_SUFFIX!r} without a feature is reserved for the "
                "shard's block index"
            )
        make_dirs((self.root / relpath).parent, below=self.below)
        return ShardFile(self, relpath, feature)

    @property
    def below(self) -> Path:
        """Where the walk to a new file starts: :attr:`base` if ``root`` is inside it."""
        if self.base is not None and self.root.is_relative_to(self.base):
            return self.base
        return self.root

    @property
    def _index_path(self) -> str:
        return f"{self.prefix}/{self.index:06d}{INDEX_SUFFIX}"

    def write_block_index(self) -> None:
        """Write the shard's block index (the core calls this once the source is done)."""
        if not self.files or self.blocks is not None:
            return
        relpath = self._index_path
        index = HashingFile(self.root / relpath, fsync=self.fsync, below=self.below)
        with index:
            self._open_paths.append(index.path)
            index.write(encode_index(self._blocks))
        self.blocks = FileEntry(relpath, index.size, index.checksum)

    def entry(self, source: str) -> ShardEntry:
        """The manifest entry of the finished shard."""
        return ShardEntry(self.index, source, self.num_records, tuple(self.files), self.blocks)


@dataclass(frozen=True)
class ReadContext:
    """Everything a source needs to read shards.

    Attributes
    ----------
    root : the dataset directory.
    shards : the shards to read; ``tf_reader``'s argument indexes this tuple.
    features : the specs of the features asked for, in output order.
    block_records : the largest block the reader wants from one element.
    verifier : checks what is read against the manifest
        (:class:`shardstore.storage.integrity.Verifier`); ``None`` when the caller
        built the context without one (nothing is verified then).
    lazy : ``True`` when the reader calls :meth:`Source.prepare_shard` for
        each shard from Python just before its blocks are read; ``False``
        (pipelines of TensorFlow ops only) when ``tf_reader`` must prepare
        every shard itself, up front.
    remote : where the shards come from when the dataset is in object storage
        (:class:`RemoteFiles`): the reader has them fetched into
        ``root`` (the local cache) before a source touches their files. Sources read
        ``root`` as for a local dataset.
    """

    root: Path
    shards: tuple[ShardEntry, ...]
    features: Mapping[str, FeatureSpec]
    block_records: int
    verifier: Verifier | None = None
    lazy: bool = False
    remote: RemoteFiles | None = None

    def resolve(self, relpath: str) -> Path:
        """Absolute path of a manifest path, refusing escapes from the dataset."""
        return self._resolver.resolve(relpath)

    def resolve_str(self, relpath: str) -> str:
        """:meth:`resolve` as a ``str``: no ``Path`` object, for tables of many paths."""
        return self._resolver.resolve_str(relpath)

    @cached_property
    def _resolver(self) -> InsideResolver:
        return InsideResolver(self.root)

    @cached_property
    def checker(self) -> Verifier:
        """:attr:`verifier`, or one that checks sizes only when the context has none."""
        from shardstore.storage.integrity import Verifier

        return self.verifier if self.verifier is not None else Verifier(self.root, "size")

    @cached_property
    def opened(self) -> np.ndarray:
        """``bool`` per shard: whether the reader has had the source open it (``open_shards``)."""
        return np.zeros(len(self.shards), dtype=bool)

    @cached_property
    def record_starts(self) -> np.ndarray:
        """``int64`` array: index of each shard's first record, plus the total at the end."""
        starts = np.zeros(len(self.shards) + 1, dtype=np.int64)
        np.cumsum([s.num_records for s in self.shards], out=starts[1:])
        return starts


class Source(ABC):
    """Base class of every source plugin (see the module docstring)."""

    #: The registered name; also stored in the manifest of every shard written.
    name: ClassVar[str]
    tf_native: ClassVar[bool] = False
    random_access: ClassVar[bool] = False
    supports_ragged: ClassVar[bool] = False
    #: Write options this source accepts (passed as ``write(..., **options)``).
    write_options: ClassVar[frozenset[str]] = frozenset()
    #: Shards written by these other sources can also be read by this one
    #: (e.g. a memory-mapping reader of ``npy`` shards).
    reads: ClassVar[frozenset[str]] = frozenset()
    #: A source without random access may name one that reads its shards
    #: with it; the reader then uses that one for ``ds[i]`` and
    #: ``shuffle="global"`` unless the user chose a source explicitly.
    random_access_source: ClassVar[str | None] = None
    #: A random-access source whose scattered reads cost about the bytes they
    #: copy (no chunk to decode whole, e.g. uncompressed files) sets this: the
    #: reader then gathers every batch through :meth:`read_records_into`, in
    #: every shuffle mode, instead of reading blocks with :meth:`tf_reader`.
    gather_batches: ClassVar[bool] = False
    #: The source verifies what it reads through ``ctx.verifier`` (module docstring).
    verifies_reads: ClassVar[bool] = False

    def can_read(self, written_by: str) -> bool:
        """Whether this source reads shards written by the source ``written_by``."""
        return written_by == self.name or written_by in self.reads

    def check_features(self, features: Mapping[str, FeatureSpec]) -> None:
        """Refuse features this source cannot store (raise ``UnsupportedDTypeError``)."""
        for fname, spec in features.items():
            if spec.dtype.str not in SUPPORTED_DTYPES:
                raise UnsupportedDTypeError(
                    f"feature {fname!r}: dtype {spec.dtype} cannot be stored by the "
                    f"{self.name!r} source"
                )
            if not spec.is_fixed and not self.supports_ragged:
                raise UnsupportedDTypeError(
                    f"feature {fname!r} has a variable dimension; the {self.name!r} "
                    "source stores fixed-shape records only"
                )

    def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Validate source-specific write options; return them normalised."""
        unknown = sorted(set(options) - self.write_options)
        if unknown:
            accepted = ", ".join(sorted(self.write_options)) or "none"
            raise InvalidInputError(
                f"the {self.name!r} source does not take option(s) {', '.join(unknown)} "
                f"(it accepts: {accepted})"
            )
        return dict(options)

    @abstractmethod
    def write_shard(self, shard: ShardWriteContext, arrays: Mapping[str, ArrayLike]) -> None:
        """Write ``arrays`` (one shard's records) through ``shard.create``."""

    def check_shards(self, ctx: ReadContext) -> None:  # noqa: B027 (an optional hook)
        """Check ``ctx.shards`` against the manifest before a pipeline is built.

        Called by the reader once per pipeline, with the shards it will read,
        so that what can be refused from the manifest alone (a lying header
        length, a size that contradicts the layout) fails at ``to_tf`` time
        with a ``ManifestError``, not mid-epoch. The default checks nothing.
        """

    def open_shards(self, ctx: ReadContext, positions: Sequence[int]) -> None:  # noqa: B027
        """Get ready to read shards ``positions`` of ``ctx`` (called before a gather).

        The reader calls this with the shards a gather is about to read that
        it has not read before in this context, so a source can open their
        files all at once (e.g. from threads: opening a shard on cold storage
        costs a few reads, latency that parallel opens hide). The default does
        nothing.
        """

    def gathering(self) -> contextlib.AbstractContextManager[None]:
        """A block around one gather's reads (:meth:`read_records_into` of many shards).

        The reader enters it before reading the shards of a gather and leaves
        it before using what was read, so a source may put reads off until
        the block ends and issue them together (many reads in flight, as
        random reads from storage need). The default does nothing.
        """
        return contextlib.nullcontext()

    def prepare_shard(self, ctx: ReadContext, position: int) -> None:  # noqa: B027
        """Check shard ``ctx.shards[position]`` before ``tf_reader``'s dataset first reads it.

        Called from Python, once per shard per pipeline: by the reader just
        before the shard is read when ``ctx.lazy`` is set (after its files
        were verified), else by the source's own ``tf_reader`` for every
        shard up front. For checks of a file's contents that protect the
        reading code (e.g. record framing TensorFlow would trust). The
        default checks nothing.
        """

    @abstractmethod
    def tf_reader(self, ctx: ReadContext) -> Callable[[tf.Tensor], tf.data.Dataset]:
        """Return ``position -> tf.data.Dataset`` of blocks (see module docstring)."""

    def read_records(self, ctx: ReadContext, position: int, rows: np.ndarray) -> dict[str, Any]:
        """Records ``rows`` of shard ``ctx.shards[position]``, for each of ``ctx.features``.

        ``rows`` is a sorted ``int64`` array of unique row numbers local to the
        shard (``0 <= row < num_records``). Return ``feature -> array`` of shape
        ``(len(rows), *shape)`` with the feature's dtype (a
        :class:`~shardstore.format.ragged.RaggedArray` for a ragged feature). Sources with
        ``random_access = True`` implement this; it may be called from several
        threads at once (keep per-shard handles thread-safe, e.g. read-only maps).
        """
        raise CapabilityError(f"the {self.name!r} source does not support random_access")

    def record_ranges(
        self, ctx: ReadContext, position: int, rows: np.ndarray
    ) -> dict[str, list[tuple[int, int]]] | None:
        """The bytes :meth:`read_records_into` reads for ``rows``: ``path -> [(lo, hi), ...]``.

        Lets the reader fetch only those bytes of a dataset in object storage
        (``ds[i]`` without downloading whole shards): it brings the blocks
        covering each range, verified, into a local sparse copy of the file,
        then calls :meth:`read_records_into` on it. Paths are the manifest's;
        every byte the read touches must be covered (headers included).
        ``None`` (the default): the source needs whole shards.
        """
        return None

    def read_records_into(
        self,
        ctx: ReadContext,
        position: int,
        rows: np.ndarray,
        out: Mapping[str, np.ndarray],
    ) -> None:
        """Like :meth:`read_records`, but into ``out`` (``feature -> array``).

        Each ``out[feature]`` is a C-contiguous array of shape
        ``(len(rows), *shape)`` to fill; ``out`` names fixed-shape features
        only (ragged ones are read with :meth:`read_ragged`). The reader
        gathers every batch through this method, so a source that can read
        straight into the caller's memory (e.g. with ``os.preadv``) should
        override it and save a copy; this default copies what
        :meth:`read_records` returns.
        """
        got = self.read_records(ctx, position, rows)
        for feature, dest in out.items():
            dest[...] = got[feature]

    def read_ragged(
        self, ctx: ReadContext, position: int, feature: str, rows: np.ndarray
    ) -> RaggedArray:
        """Records ``rows`` (sorted, unique, local) of the ragged ``feature`` of one shard.

        Sources with ``random_access`` and ``supports_ragged`` implement this;
        the reader gathers ragged features with it (any thread).
        """
        raise CapabilityError(
            f"the {self.name!r} source cannot read ragged features by index "
            "(random_access and supports_ragged)"
        )

    def require(self, capability: str) -> None:
        """Raise ``CapabilityError`` unless this source has ``capability``."""
        if not getattr(type(self), capability, False):
            raise CapabilityError(f"the {self.name!r} source does not support {capability}")

    @classmethod
    def capabilities(cls) -> dict[str, bool]:
        """The capability flags, by name."""
        return {
            "tf_native": cls.tf_native,
            "random_access": cls.random_access,
            "supports_ragged": cls.supports_ragged,
        }


def iter_record_chunks(
    array: ArrayLike,
    dtype: np.dtype[Any],
    *,
    chunk_bytes: int = CHUNK_BYTES,
) -> Iterator[np.ndarray]:
    """Yield ``array`` as C-contiguous ``dtype`` pieces of about ``chunk_bytes``.

    Only one piece is in memory at a time, so a memory-mapped (or any lazily
    sliced) input is never loaded whole.
    """
    n = int(array.shape[0])
    record_bytes = max(1, dtype.itemsize * math.prod(int(d) for d in array.shape[1:]))
    step = max(1, chunk_bytes // record_bytes)
    for start in range(0, n, step):
        piece = np.asarray(array[start : min(n, start + step)])
        yield np.ascontiguousarray(piece, dtype=dtype)
