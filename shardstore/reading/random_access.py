"""Random access: map record numbers to shards, gather them with a source.

Used by ``Dataset.__getitem__`` and by ``to_tf(shuffle="global")``. The
source does the I/O (:meth:`~shardstore.sources.base.Source.read_records`,
one call per shard touched); this module only does the bookkeeping: which
shard holds each record, which rows to ask for, and how to put the answers
back in the order the caller asked for.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import numpy as np

from shardstore.format.ragged import RaggedArray
from shardstore.sources.base import ALIGNMENT, ReadContext, Source, aligned_empty

__all__ = ["ALIGNMENT", "aligned_empty", "gather_records", "normalize_index"]


def normalize_index(key: Any, n: int) -> tuple[np.ndarray, bool]:
    """Indices (int64, in range) for an int, slice, sequence or boolean mask.

    Returns the indices and whether ``key`` was a scalar (one record).
    """
    if isinstance(key, int | np.integer) and not isinstance(key, bool | np.bool_):
        i = int(key)
        if not -n <= i < n:
            raise IndexError(f"record {i} is out of range for a dataset of {n} records")
        return np.array([i % n], dtype=np.int64), True
    if isinstance(key, slice):
        return np.arange(*key.indices(n), dtype=np.int64), False
    arr = np.asarray(key)
    if arr.dtype == np.bool_:
        if arr.shape != (n,):
            raise IndexError(f"a boolean mask must have shape ({n},), got {arr.shape}")
        return np.flatnonzero(arr).astype(np.int64), False
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise IndexError(
            f"index with an int, a slice, a 1-D integer sequence or a boolean mask, not {key!r}"
        )
    idx = arr.astype(np.int64)
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise IndexError(f"index out of range for a dataset of {n} records")
    return idx % n if n else idx, False


def gather_records(
    source: Source,
    ctx: ReadContext,
    indices: np.ndarray,
    *,
    ranged: ReadContext | None = None,
    contiguous: bool = False,
) -> dict[str, np.ndarray | RaggedArray]:
    """Records ``indices`` (any order, repeats allowed) of ``ctx.shards``, in that order.

    ``contiguous``: the caller knows ``indices`` is ``arange(a, b)`` (an
    in-order read), so shards are found from its two ends, not record by record.

    Sorted unique indices (what the reader asks for) are read straight into
    the returned arrays, one :meth:`~shardstore.sources.base.Source.read_records_into`
    call per shard touched; any other order costs one more copy. Ragged
    features come back as :class:`~shardstore.format.ragged.RaggedArray`, read with
    :meth:`~shardstore.sources.base.Source.read_ragged`.

    Sources that verify what they read (``verifies_reads``) do it as they
    read; for any other, each shard's files are hashed whole (once per
    process) before the shard is first read, through ``ctx.verifier``.

    For a dataset in object storage (``ctx.remote``), the shards touched are
    brought into the local cache first; with ``ranged`` (a context over sparse
    copies, :meth:`~shardstore.reading.remote.RemoteShards.ranged_context`), only the
    blocks the source reads are fetched, where the source can say which.
    """
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    starts = ctx.record_starts
    if contiguous and len(indices):  # consecutive records: shards found at their ends only
        first, end = int(indices[0]), int(indices[0]) + len(indices)
        p0, p1 = (np.searchsorted(starts, [first, end - 1], side="right") - 1).tolist()
        counts = np.diff(np.r_[0, starts[p0 + 1 : p1 + 1] - first, len(indices)])
        touched = np.arange(p0, p1 + 1, dtype=np.int64)[counts > 0]  # no empty shard
        counts = counts[counts > 0]
        bounds = np.cumsum(counts)[:-1]
        positions = np.repeat(touched, counts)
        unique, inverse = indices, None
    else:
        in_order = bool(np.all(indices[1:] > indices[:-1]))
        unique, inverse = (indices, None) if in_order else np.unique(indices, return_inverse=True)
        positions = np.searchsorted(starts, unique, side="right") - 1
        bounds = np.flatnonzero(np.diff(positions)) + 1
        touched = positions[np.r_[0, bounds]] if len(unique) else positions[:0]
    ragged = [name for name, spec in ctx.features.items() if spec.is_ragged]
    out = {
        name: aligned_empty((len(unique), *(int(d or 0) for d in spec.shape)), spec.dtype)
        for name, spec in ctx.features.items()
        if not spec.is_ragged
    }
    pieces: dict[str, list[RaggedArray]] = {name: [] for name in ragged}
    with contextlib.ExitStack() as held:
        ctx_of = None
        if ctx.remote is not None:  # object storage: the bytes to read, in the local cache
            starts_at = np.r_[0, bounds].tolist()
            rows = {
                int(positions[lo]): unique[lo:hi] - starts[int(positions[lo])]
                for lo, hi in zip(starts_at, [*starts_at[1:], len(unique)], strict=True)
            }
            ctx_of = ctx.remote.hold_for_read(held, source, ctx, ranged, rows)
        _read_touched(source, ctx, unique, positions, bounds, touched, out, pieces, ctx_of)
    result: dict[str, np.ndarray | RaggedArray] = dict(out)
    for name in ragged:
        parts = pieces[name]
        spec = ctx.features[name]
        result[name] = (
            parts[0] if len(parts) == 1
            else RaggedArray.concatenate(parts) if parts
            else RaggedArray.empty(spec.dtype, spec.inner_shape)
        )  # fmt: skip
    if inverse is None:
        return {name: result[name] for name in ctx.features}
    inverse = inverse.reshape(-1)
    return {
        name: arr.take(inverse)
        if isinstance(arr, RaggedArray)
        else np.take(
            arr, inverse, axis=0, out=aligned_empty((len(inverse), *arr.shape[1:]), arr.dtype)
        )
        for name, arr in ((n, result[n]) for n in ctx.features)
    }


def _read_touched(
    source: Source,
    ctx: ReadContext,
    unique: np.ndarray,
    positions: np.ndarray,
    bounds: np.ndarray,
    touched: np.ndarray,
    out: dict[str, np.ndarray],
    pieces: dict[str, list[RaggedArray]],
    ctx_of: dict[int, ReadContext] | None = None,
) -> None:
    """Read the records ``unique`` (sorted) of the shards ``touched`` into ``out``/``pieces``.

    ``ctx_of``: the context to read each shard with, where it is not ``ctx``.
    """
    names = tuple(ctx.features)
    ragged = list(pieces)
    starts = ctx.record_starts
    contexts = [ctx] if ctx_of is None else list({id(c): c for c in ctx_of.values()}.values())
    for each in contexts:  # shards read for the first time: let the source open them together
        mine = (
            touched
            if ctx_of is None
            else np.array([p for p in touched.tolist() if ctx_of[p] is each], dtype=np.int64)
        )
        new = mine[~each.opened[mine]]
        if ctx.remote is not None:  # object storage: the layout checks, now the files are here
            for p in new.tolist():
                source.check_shards(dataclasses.replace(each, shards=(each.shards[p],)))
        if len(new) > 1:
            source.open_shards(each, new.tolist())
        each.opened[new] = True
    with source.gathering():  # the source may read the shards' records together at the end
        for lo, hi in zip(
            np.r_[0, bounds].tolist(), np.r_[bounds, len(unique)].tolist(), strict=True
        ):
            if lo == hi:
                continue
            pos = int(positions[lo])
            here = ctx if ctx_of is None else ctx_of[pos]
            if here.verifier is not None and not source.verifies_reads:
                here.verifier.require_shard(ctx.shards[pos], names)
            rows = unique[lo:hi] - starts[pos]
            if out:
                source.read_records_into(
                    here, pos, rows, {name: arr[lo:hi] for name, arr in out.items()}
                )
            for name in ragged:
                pieces[name].append(source.read_ragged(here, pos, name, rows))
