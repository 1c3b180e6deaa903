"""Convert a dataset from one source format to another, bit for bit."""

from __future__ import annotations

import os
from typing import Any

from shardstore.api import open as open_dataset
from shardstore.reading.reader import Dataset
from shardstore.writing.writer import Writer

__all__ = ["convert"]


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    format: str,
    shard_size: int | str | None = None,
    records_per_shard: int | None = None,
    overwrite: bool = False,
    fsync: bool = True,
    progress: bool | None = None,
    **options: Any,
) -> Dataset:
    """Rewrite the dataset at ``src`` into ``dst`` with the source ``format``.

    Records, features, order and user metadata are preserved exactly. Without
    ``shard_size``/``records_per_shard``, the new shards hold as many records
    as the largest shard of ``src``. Records stream through in batches, so
    datasets larger than memory convert fine. ``dst`` must differ from ``src``.
    """
    source = open_dataset(src)
    if os.path.realpath(src) == os.path.realpath(dst):
        from shardstore.errors import InvalidInputError

        raise InvalidInputError("convert needs a destination different from the source")
    if shard_size is None and records_per_shard is None:
        records_per_shard = max((s.num_records for s in source.shards), default=1)
    writer = Writer(
        dst,
        format=format,
        shard_size=shard_size,
        records_per_shard=records_per_shard,
        overwrite=overwrite,
        metadata=dict(source.metadata),
        fsync=fsync,
        progress=progress,
        total=source.num_records,
        **options,
    )
    with writer:
        if source.num_records == 0:
            import numpy as np

            writer.write({n: np.zeros((0, *s.shape), s.dtype) for n, s in source.features.items()})
        for batch in source.iter_numpy():
            writer.write(batch)
    return open_dataset(dst)
