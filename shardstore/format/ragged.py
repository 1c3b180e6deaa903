"""Ragged (variable-length) records: values + offsets, NumPy only.

A *ragged* feature's records differ in their first dimension (token
sequences, audio clips, point clouds): record ``i`` is an array of shape
``(length_i, *inner)``. :class:`RaggedArray` holds a run of such records the
way shardstore stores them in every shard: one ``values`` array of shape
``(sum(lengths), *inner)`` and ``offsets`` (``int64``, one more than the
records) so that record ``i`` is ``values[offsets[i]:offsets[i + 1]]``.

Write one with :func:`shardstore.write` from a list of arrays, or build it
from ``values`` plus ``row_lengths`` (or TensorFlow-style ``row_splits``);
``Dataset[...]`` and ``iter_numpy`` return them for ragged features, and
``to_tf`` yields ``tf.RaggedTensor`` batches (or padded ones, ``pad=``).

This module imports NumPy only.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from shardstore.errors import InvalidInputError

__all__ = [
    "LENGTH_BUCKETS",
    "OFFSETS_CACHE_BYTES",
    "RaggedArray",
    "length_stats",
    "merge_length_stats",
    "offsets_problem",
    "value_rows",
]

#: Number of power-of-two buckets in the length histogram of the manifest:
#: bucket ``k`` counts records of length in ``[2**(k-1), 2**k)`` (bucket 0: length 0).
LENGTH_BUCKETS = 48
#: Bytes of shards' offsets tables a random-access source keeps (8 per record).
OFFSETS_CACHE_BYTES = 64 << 20


def offsets_problem(table: np.ndarray, rows: int) -> str | None:
    """What is wrong with a shard's stored offsets (``None``: usable as they are).

    Valid offsets are a 1-D integer table that starts at 0, never decreases
    and ends at ``rows``, the row count of the shard's values. Sources check
    this before using a table read from storage (and raise their own error).
    """
    if table.ndim != 1 or len(table) == 0 or table.dtype.kind not in "iu":
        return f"its offsets table has shape {table.shape} and dtype {table.dtype}"
    if table[0] != 0 or table[-1] != rows or np.any(table[1:] < table[:-1]):
        return f"its offsets do not run from 0, never decreasing, up to the {rows} rows of values"
    return None


def value_rows(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The rows of values that records starting at ``starts``, ``lengths`` long, hold, in order."""
    ends = np.cumsum(lengths)
    total = int(ends[-1]) if len(ends) else 0
    # row r of the result belongs to record k: values[starts[k] + r - (rows before k)]
    return np.repeat(starts - (ends - lengths), lengths) + np.arange(total, dtype=np.int64)


class RaggedArray:
    """Records of varying length along their first axis, stored as values + offsets.

    Parameters
    ----------
    values : the records' rows, concatenated: shape ``(total, *inner)``.
    offsets : ``int64``, non-decreasing, ``len(records) + 1`` entries; record
        ``i`` is ``values[offsets[i]:offsets[i + 1]]``. It need not start at 0
        (a slice of a larger array keeps its offsets).

    Notes
    -----
    Slicing (``r[lo:hi]``) is a view; ``r[i]`` is record ``i`` (a view of
    ``values``); :meth:`compact` gives a copy whose offsets start at 0.
    """

    def __init__(self, values: Any, offsets: Any) -> None:
        values = values if isinstance(values, np.ndarray) else np.asarray(values)
        offsets = np.asarray(offsets)
        if values.ndim == 0:
            raise InvalidInputError("ragged values must have at least one dimension")
        if offsets.ndim != 1 or len(offsets) == 0 or offsets.dtype.kind not in "iu":
            raise InvalidInputError(
                "ragged offsets must be a non-empty 1-D integer array (records + 1 entries)"
            )
        offsets = offsets.astype(np.int64, copy=False)
        if np.any(offsets[1:] < offsets[:-1]):
            raise InvalidInputError("ragged offsets must be non-decreasing")
        if offsets[0] < 0 or offsets[-1] > len(values):
            raise InvalidInputError(
                f"ragged offsets run from {offsets[0]} to {offsets[-1]}, outside the "
                f"{len(values)} rows of values"
            )
        self.values = values
        self.offsets = offsets

    # -- constructors -----------------------------------------------------------------
    @classmethod
    def from_lengths(cls, values: Any, lengths: Any) -> RaggedArray:
        """From ``values`` and each record's length (``row_lengths``); they must add up."""
        lengths = np.asarray(lengths)
        if lengths.ndim != 1 or (lengths.size and lengths.dtype.kind not in "iu"):
            raise InvalidInputError("ragged lengths must be a 1-D integer array")
        if lengths.size and lengths.min() < 0:
            raise InvalidInputError("ragged lengths must be >= 0")
        offsets = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        values = np.asarray(values)
        if values.ndim == 0 or offsets[-1] != len(values):
            rows = len(values) if values.ndim else 0
            raise InvalidInputError(
                f"ragged lengths add up to {offsets[-1]} rows, but values has {rows}"
            )
        return cls(values, offsets)

    @classmethod
    def from_row_splits(cls, values: Any, row_splits: Any) -> RaggedArray:
        """From ``values`` and ``row_splits`` (TensorFlow's name for offsets starting at 0)."""
        splits = np.asarray(row_splits)
        if splits.ndim != 1 or len(splits) == 0 or splits[0] != 0:
            raise InvalidInputError("row_splits must be a 1-D array starting at 0")
        values = np.asarray(values)
        if values.ndim and splits[-1] != len(values):
            raise InvalidInputError(
                f"row_splits end at {splits[-1]}, but values has {len(values)} rows"
            )
        return cls(values, splits)

    @classmethod
    def from_arrays(cls, arrays: Sequence[Any], *, dtype: Any = None) -> RaggedArray:
        """From one array per record; they must share dtype and all but the first dimension."""
        parts = [np.asarray(a, dtype=dtype) for a in arrays]
        if not parts:
            raise InvalidInputError("cannot build a ragged array from an empty list")
        first = parts[0]
        if first.ndim == 0:
            raise InvalidInputError("ragged records must have at least one dimension, got a scalar")
        for i, p in enumerate(parts):
            if p.ndim != first.ndim or p.shape[1:] != first.shape[1:] or p.dtype != first.dtype:
                raise InvalidInputError(
                    f"ragged record {i} has dtype {p.dtype} shape {p.shape}; record 0 has "
                    f"{first.dtype} {first.shape} (only the first dimension may vary)"
                )
        lengths = np.fromiter((len(p) for p in parts), np.int64, len(parts))
        return cls.from_lengths(np.concatenate(parts), lengths)

    @classmethod
    def concatenate(cls, parts: Sequence[RaggedArray]) -> RaggedArray:
        """The records of ``parts``, one after another (a new compact array)."""
        if not parts:
            raise InvalidInputError("nothing to concatenate")
        lengths = np.concatenate([p.lengths for p in parts])
        return cls.from_lengths(np.concatenate([p.flat_values for p in parts]), lengths)

    # -- the array-like surface the writer uses -----------------------------------------
    @property
    def dtype(self) -> np.dtype[Any]:
        """The values' dtype."""
        dtype: np.dtype[Any] = np.dtype(self.values.dtype)
        return dtype

    @property
    def inner_shape(self) -> tuple[int, ...]:
        """The fixed dimensions of every record (after the varying first one)."""
        return tuple(int(d) for d in self.values.shape[1:])

    @property
    def shape(self) -> tuple[int | None, ...]:
        """``(records, None, *inner_shape)``: ``None`` marks the varying dimension."""
        return (len(self), None, *self.inner_shape)

    @property
    def lengths(self) -> np.ndarray:
        """Each record's length (``int64``)."""
        return np.diff(self.offsets)

    @property
    def flat_values(self) -> np.ndarray:
        """The values of these records only (a view), ``(sum(lengths), *inner)``."""
        view: np.ndarray = self.values[int(self.offsets[0]) : int(self.offsets[-1])]
        return view

    @property
    def row_nbytes(self) -> int:
        """Bytes of one row of values (one step along the varying dimension)."""
        return int(self.values.dtype.itemsize * math.prod(self.inner_shape))

    @property
    def nbytes(self) -> int:
        """Bytes of these records' values."""
        return int(self.offsets[-1] - self.offsets[0]) * self.row_nbytes

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise IndexError("a RaggedArray slice must be contiguous (step 1)")
            return RaggedArray(self.values, self.offsets[start : max(start, stop) + 1])
        if isinstance(key, int | np.integer) and not isinstance(key, bool):
            i = int(key)
            n = len(self)
            if not -n <= i < n:
                raise IndexError(f"record {i} is out of range for {n} ragged records")
            i %= n
            return self.values[int(self.offsets[i]) : int(self.offsets[i + 1])]
        raise IndexError(f"index a RaggedArray with an int or a slice, not {key!r}")

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self[i]

    def take(self, indices: Any) -> RaggedArray:
        """Records ``indices`` (any order, repeats allowed), as a new compact array."""
        idx = np.asarray(indices, np.int64).reshape(-1)
        lengths = self.lengths[idx]
        rows = value_rows(self.offsets[:-1][idx], lengths)
        return RaggedArray.from_lengths(self.values[rows], lengths)

    @classmethod
    def empty(cls, dtype: Any, inner_shape: tuple[int, ...] = ()) -> RaggedArray:
        """No records."""
        return cls(np.empty((0, *inner_shape), dtype), np.zeros(1, np.int64))

    def compact(self) -> RaggedArray:
        """A copy whose values hold exactly these records and whose offsets start at 0."""
        return RaggedArray(self.flat_values.copy(), self.offsets - self.offsets[0])

    def to_list(self) -> list[np.ndarray]:
        """One array per record (views of ``values``)."""
        return list(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RaggedArray):
            return NotImplemented
        return (
            self.dtype == other.dtype
            and self.inner_shape == other.inner_shape
            and np.array_equal(self.lengths, other.lengths)
            and self.flat_values.tobytes() == other.flat_values.tobytes()
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        lengths = self.lengths
        spread = f"{lengths.min()}..{lengths.max()}" if len(lengths) else "none"
        shape = (None, *self.inner_shape)
        return f"RaggedArray({len(self)} records of {self.dtype} {shape}, lengths {spread})"


def _log2_bucket(lengths: np.ndarray) -> np.ndarray:
    """Histogram bucket of each length: 0 for 0, else ``floor(log2(length)) + 1``."""
    out = np.zeros(len(lengths), np.int64)
    nz = lengths > 0
    out[nz] = np.floor(np.log2(lengths[nz])).astype(np.int64) + 1
    return np.minimum(out, LENGTH_BUCKETS - 1)


def length_stats(lengths: np.ndarray) -> dict[str, Any]:
    """The manifest's length statistics of one run of records (mergeable).

    ``{"count", "total", "min", "max", "histogram"}``; ``histogram[k]`` counts
    lengths in ``[2**(k-1), 2**k)`` (``histogram[0]``: empty records), trailing
    zeros dropped.
    """
    lengths = np.asarray(lengths, np.int64)
    hist = np.bincount(_log2_bucket(lengths), minlength=1).tolist()
    while len(hist) > 1 and hist[-1] == 0:
        hist.pop()
    return {
        "count": len(lengths),
        "total": int(lengths.sum()),
        "min": int(lengths.min()) if len(lengths) else 0,
        "max": int(lengths.max()) if len(lengths) else 0,
        "histogram": [int(h) for h in hist],
    }


def merge_length_stats(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The statistics of several runs of records together (what :func:`length_stats` gives)."""
    parts = [p for p in parts if p["count"]]
    if not parts:
        return length_stats(np.zeros(0, np.int64))
    width = max(len(p["histogram"]) for p in parts)
    hist = [sum(p["histogram"][k] for p in parts if k < len(p["histogram"])) for k in range(width)]
    return {
        "count": sum(p["count"] for p in parts),
        "total": sum(p["total"] for p in parts),
        "min": min(p["min"] for p in parts),
        "max": max(p["max"] for p in parts),
        "histogram": hist,
    }
