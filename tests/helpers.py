"""Test helpers: bitwise comparison and reading a whole pipeline."""

from __future__ import annotations

from typing import Any

import numpy as np


def assert_bitwise_equal(actual: np.ndarray, expected: np.ndarray) -> None:
    """Same dtype, same shape, same bytes (NaN payloads and -0.0 included)."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.dtype == expected.dtype.newbyteorder("="), (actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert (
        np.ascontiguousarray(actual).tobytes()
        == np.ascontiguousarray(expected.astype(expected.dtype.newbyteorder("="))).tobytes()
    )


def collect(tfds: Any) -> Any:
    """Read a whole tf.data pipeline and concatenate its batches (dict, tuple or tensor)."""
    batches = [e for e in tfds.as_numpy_iterator()]
    if not batches:
        return None
    first = batches[0]
    if isinstance(first, dict):
        return {k: np.concatenate([b[k] for b in batches]) for k in first}
    if isinstance(first, tuple):
        return tuple(np.concatenate([b[i] for b in batches]) for i in range(len(first)))
    return np.concatenate(batches)
