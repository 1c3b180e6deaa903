"""The ``memmap`` source: random access to ``.npy`` shards through memory maps.

It reads the very files the ``npy`` source writes (``reads = {"npy"}``), via
read-only ``np.memmap`` maps, after parsing each file's header and checking
it against the manifest (never ``np.load``): nothing is copied until records are
gathered. That gives ``ds[i]``, ``ds[i:j]``, ``ds[[i, k]]`` without
TensorFlow, and the exact global shuffle of ``to_tf(shuffle="global")``,
where each batch is one sorted gather per shard it touches.

Reading goes through ``tf.numpy_function`` (one call per block or batch,
never per record), so pipelines built on it are not serialisable:
``tf_native = False``.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from shardstore.errors import ChecksumError, ManifestError
from shardstore.manifest import FeatureSpec, ShardEntry
from shardstore.sources.base import ArrayLike, ReadContext, ShardWriteContext, Source
from shardstore.sources.npy import NpySource, read_npy_header

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = ["MemmapSource"]

#: Memory maps kept open at once (each costs a virtual memory area, not RAM).
MAX_OPEN_MAPS = 1024


def _open_map(path: Path, shard: ShardEntry, relpath: str, size: int, spec: FeatureSpec) -> Any:
    """A read-only map of one ``.npy`` shard file, after checking its header against the manifest.

    The header is parsed (never executed, never trusted): its dtype, shape and
    order must be the manifest's and the file exactly as long as they say,
    before anything is mapped. No ``np.load``: object dtypes cannot even be
    described here, and no size a header claims is ever allocated.
    """
    expected = (shard.num_records, *(int(d) for d in spec.shape if d is not None))
    where = f"shard {shard.index}, file {relpath!r}"
    try:
        with open(path, "rb") as f:
            try:
                header = read_npy_header(f)
            except ValueError as exc:
                raise ChecksumError(
                    f"{where}: not a valid .npy file ({exc})", shard=shard.index, file=relpath
                ) from None
            if (
                header.shape != expected
                or header.dtype != spec.dtype
                or header.fortran_order
                or header.dtype.hasobject
            ):
                order = "Fortran order" if header.fortran_order else "C order"
                raise ManifestError(
                    f"{where}: holds {header.dtype} {header.shape} in {order}, "
                    f"the manifest says {spec.dtype} {expected}"
                )
            data_bytes = spec.record_nbytes * shard.num_records
            actual = os.fstat(f.fileno()).st_size
            if header.data_offset + data_bytes != actual or actual != size:
                raise ChecksumError(
                    f"{where}: has {actual} bytes; its header and the manifest say "
                    f"{header.data_offset + data_bytes}",
                    shard=shard.index,
                    file=relpath,
                )
            if data_bytes == 0:
                return np.empty(expected, spec.dtype)
            return np.memmap(f, dtype=spec.dtype, mode="r", offset=header.data_offset,
                             shape=expected)  # fmt: skip
    except (ChecksumError, ManifestError):
        raise
    except (OSError, ValueError) as exc:  # the file changed under us, or cannot be mapped
        raise ChecksumError(
            f"{where}: cannot be mapped ({exc})", shard=shard.index, file=relpath
        ) from None


class MemmapSource(Source):
    """Random-access reader (and writer) of ``.npy`` shards."""

    name: ClassVar[str] = "memmap"
    tf_native: ClassVar[bool] = False
    random_access: ClassVar[bool] = True
    reads: ClassVar[frozenset[str]] = frozenset({"npy"})

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._maps: OrderedDict[tuple[Path, str], np.ndarray] = OrderedDict()

    def write_shard(self, shard: ShardWriteContext, arrays: Mapping[str, ArrayLike]) -> None:
        """Write standard ``.npy`` files, exactly as the ``npy`` source does."""
        NpySource().write_shard(shard, arrays)

    def _map(self, ctx: ReadContext, position: int, feature: str) -> np.ndarray:
        shard = ctx.shards[position]
        entry = shard.file_for(feature)
        path = ctx.resolve(entry.path)
        key = (path, entry.checksum)  # another file at the same path is mapped anew
        with self._lock:
            cached = self._maps.get(key)
            if cached is not None:
                self._maps.move_to_end(key)
                return cached
        mm: np.ndarray = _open_map(path, shard, entry.path, entry.size, ctx.features[feature])
        with self._lock:
            self._maps[key] = mm
            while len(self._maps) > MAX_OPEN_MAPS:
                self._maps.popitem(last=False)
        return mm

    def read_records(
        self, ctx: ReadContext, position: int, rows: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Gather ``rows`` (sorted) of one shard from its memory maps."""
        out = {}
        for feature in ctx.features:
            mm = self._map(ctx, position, feature)
            if len(rows) and rows[-1] - rows[0] + 1 == len(rows):  # a contiguous run
                out[feature] = np.array(mm[rows[0] : rows[-1] + 1])
            else:
                out[feature] = np.take(mm, rows, axis=0)
        return out

    def tf_reader(self, ctx: ReadContext) -> Callable[[tf.Tensor], tf.data.Dataset]:
        """Blocks of records, each copied out of the maps by one ``numpy_function``."""
        import tensorflow as tf

        counts = tf.constant([s.num_records for s in ctx.shards], tf.int64)
        names = list(ctx.features)
        dtypes = [tf.as_dtype(ctx.features[n].dtype) for n in names]
        shapes = [[None, *ctx.features[n].shape] for n in names]
        block = ctx.block_records

        def fetch(position: Any, start: Any, stop: Any) -> list[np.ndarray]:
            pos, lo, hi = int(position), int(start), int(stop)
            return [np.array(self._map(ctx, pos, n)[lo:hi]) for n in names]

        def read_shard(position: tf.Tensor) -> tf.data.Dataset:
            n = counts[position]
            starts = tf.data.Dataset.range(0, n, block)

            def read_block(start: tf.Tensor) -> dict[str, tf.Tensor]:
                stop = tf.minimum(start + block, n)
                parts = tf.numpy_function(fetch, [position, start, stop], dtypes, stateful=False)
                return {
                    name: tf.ensure_shape(part, shape)
                    for name, part, shape in zip(names, parts, shapes, strict=True)
                }

            return starts.map(read_block)

        return read_shard
