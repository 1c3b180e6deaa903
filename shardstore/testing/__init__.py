"""Test kit for source plugins: the conformance suite (needs pytest and TensorFlow).

>>> from shardstore.testing import SourceConformance
>>> class TestMySource(SourceConformance):  # doctest: +SKIP
...     source = "mine"
"""

from shardstore.testing.conformance import (
    ALL_DTYPES,
    SourceConformance,
    assert_bitwise_equal,
    assert_damage_reported,
    assert_same_dataset,
    collect,
    comparable_manifest,
    flip_bit,
    random_records,
)

__all__ = [
    "ALL_DTYPES",
    "SourceConformance",
    "assert_bitwise_equal",
    "assert_damage_reported",
    "assert_same_dataset",
    "collect",
    "comparable_manifest",
    "flip_bit",
    "random_records",
]
