"""Hypothesis: any supported dtype, shape, record count, shard and batch size round-trips."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import shardstore
from shardstore.format.manifest import SUPPORTED_DTYPES
from shardstore.testing import assert_bitwise_equal, collect

dtypes = st.sampled_from(sorted(SUPPORTED_DTYPES)).map(np.dtype)
record_shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=4)


@st.composite
def datasets(draw: st.DrawFn) -> dict[str, np.ndarray]:
    n = draw(st.integers(1, 60))
    names = draw(st.lists(st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True),
                          min_size=1, max_size=3, unique=True))  # fmt: skip
    out = {}
    for name in names:
        dtype = draw(dtypes)
        shape = draw(record_shapes)
        out[name] = draw(hnp.arrays(dtype, (n, *shape)))
    return out


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=datasets(),
    records_per_shard=st.integers(1, 70),
    batch_size=st.integers(1, 17),
    shuffle=st.booleans(),
)
def test_write_then_read_is_identity(
    data: dict[str, np.ndarray], records_per_shard: int, batch_size: int, shuffle: bool
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d"
        ds = shardstore.write(path, data, records_per_shard=records_per_shard, fsync=False)
        n = len(next(iter(data.values())))
        assert ds.num_records == n
        assert ds.num_shards == -(-n // records_per_shard)
        reopened = shardstore.open(path)
        reopened.verify(progress=False)
        out = collect(reopened.to_tf(batch_size=batch_size, shuffle=shuffle, seed=0))
        if shuffle:  # same multiset of records, features still aligned
            order = [
                bytes(r)
                for r in np.ascontiguousarray(out[next(iter(data))]).reshape(n, -1).view(np.uint8)
            ]
            expected = [
                bytes(r)
                for r in np.ascontiguousarray(data[next(iter(data))]).reshape(n, -1).view(np.uint8)
            ]
            assert sorted(order) == sorted(expected)
        else:
            for name, arr in data.items():
                assert_bitwise_equal(out[name], arr)
