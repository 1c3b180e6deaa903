"""TensorFlow building blocks shared by sources: raw bytes to typed blocks.

Imported only when a pipeline is built (it imports TensorFlow). Sources that
store records as raw little-endian bytes (``npy``; third-party plugins too)
use :func:`fixed_record_blocks` to read a byte region of a file as blocks
and :func:`decode_block` to turn each block into a typed tensor, with
TensorFlow ops only.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from shardstore.format.manifest import FeatureSpec

__all__ = ["decode_block", "fixed_record_blocks"]

# decode_raw cannot produce unsigned 32/64-bit ints: decode as the signed
# type of the same width, then bitcast (a free reinterpretation).
_BITCAST: dict[str, tuple[Any, Any]] = {
    "<u4": (tf.int32, tf.uint32),
    "<u8": (tf.int64, tf.uint64),
}


def decode_block(raw: tf.Tensor, spec: FeatureSpec) -> tf.Tensor:
    """Decode a scalar string of ``b`` packed records into ``Tensor[b, *shape]``."""
    decode_as, final = _BITCAST.get(spec.dtype.str, (tf.as_dtype(spec.dtype), None))
    flat = tf.io.decode_raw(raw, decode_as, little_endian=True)
    if final is not None:
        flat = tf.bitcast(flat, final)
    return tf.reshape(flat, [-1, *spec.shape])


def fixed_record_blocks(
    path: tf.Tensor,
    *,
    header_bytes: tf.Tensor,
    num_records: tf.Tensor,
    record_bytes: int,
    block_records: int,
    footer_bytes: tf.Tensor | int = 0,
    buffer_size: int | None = None,
) -> tf.data.Dataset:
    """Raw blocks of ``block_records`` records from a region of one file.

    The region starts at ``header_bytes`` and holds ``num_records`` records of
    ``record_bytes`` each; ``footer_bytes`` bytes follow it to the end of the
    file (0 when the records run to the end). Full blocks come first, then one partial block if
    the count does not divide. ``FixedLengthRecordDataset`` checks that each
    region's length is an exact multiple of its record length, so a truncated
    or padded file fails loudly instead of yielding shifted data.
    """
    num_records = tf.cast(num_records, tf.int64)
    header_bytes = tf.cast(header_bytes, tf.int64)
    block = tf.constant(block_records, tf.int64)
    rb = tf.constant(record_bytes, tf.int64)
    footer = tf.cast(footer_bytes, tf.int64)
    full = num_records // block
    rem = num_records - full * block
    full_blocks = tf.data.FixedLengthRecordDataset(
        path,
        record_bytes=block * rb,
        header_bytes=header_bytes,
        footer_bytes=rem * rb + footer,
        buffer_size=buffer_size,
    )
    tail = tf.data.FixedLengthRecordDataset(
        path,
        record_bytes=tf.maximum(rem, 1) * rb,
        header_bytes=header_bytes + full * block * rb,
        footer_bytes=footer,
        buffer_size=buffer_size,
    ).take(tf.minimum(rem, 1))
    return full_blocks.concatenate(tail)
