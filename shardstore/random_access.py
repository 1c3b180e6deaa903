"""Random access: map record numbers to shards, gather them with a source.

Used by ``Dataset.__getitem__`` and by ``to_tf(shuffle="global")``. The
source does the I/O (:meth:`~shardstore.sources.base.Source.read_records`,
one call per shard touched); this module only does the bookkeeping: which
shard holds each record, which rows to ask for, and how to put the answers
back in the order the caller asked for.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shardstore.sources.base import ReadContext, Source

__all__ = ["gather_records", "normalize_index"]


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


def gather_records(source: Source, ctx: ReadContext, indices: np.ndarray) -> dict[str, np.ndarray]:
    """Records ``indices`` (any order, repeats allowed) of ``ctx.shards``, in that order."""
    starts = ctx.record_starts
    unique, inverse = np.unique(indices, return_inverse=True)
    positions = np.searchsorted(starts, unique, side="right") - 1
    out = {
        name: np.empty((len(unique), *(int(d or 0) for d in spec.shape)), dtype=spec.dtype)
        for name, spec in ctx.features.items()
    }
    bounds = np.flatnonzero(np.diff(positions)) + 1
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(unique)], strict=True):
        if lo == hi:
            continue
        pos = int(positions[lo])
        rows = unique[lo:hi] - starts[pos]
        got = source.read_records(ctx, pos, rows)
        for name in out:
            out[name][lo:hi] = got[name]
    if len(unique) == len(indices) and np.array_equal(unique, indices):
        return out
    return {name: arr[inverse.reshape(-1)] for name, arr in out.items()}
