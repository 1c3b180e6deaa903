"""What ``shardstore info`` reports: a JSON-ready summary of a dataset.

The summary extends :meth:`shardstore.Dataset.info` with what a person (or a
script) asks first about a dataset: how big the shards are, how much the data
takes decoded against on disk (the compression ratio), and whether every file
the manifest lists is present with its recorded size. That last check reads
no data (one ``stat`` per file; in object storage, one listing of its objects);
:meth:`shardstore.Dataset.verify` re-hashes every byte.
"""

from __future__ import annotations

from typing import Any

from shardstore.format.manifest import CHECKSUM_ALGORITHM
from shardstore.reading.reader import Dataset
from shardstore.storage import integrity
from shardstore.storage.fsutil import InsideResolver

__all__ = ["summarize"]


def _spread(values: list[int]) -> dict[str, float | int | None]:
    """``min``, ``max`` and ``mean`` of ``values`` (``None`` each when empty)."""
    if not values:
        return {"min": None, "max": None, "mean": None}
    return {"min": min(values), "max": max(values), "mean": sum(values) / len(values)}


def decoded_nbytes(ds: Dataset) -> int | None:
    """Bytes the records take in memory (ragged: from the manifest's length statistics).

    ``None`` if a ragged feature has no statistics (a manifest from another writer).
    """
    total = 0
    for spec in ds.features.values():
        if spec.is_fixed:
            total += ds.num_records * spec.record_nbytes
        elif spec.is_ragged and spec.lengths is not None:
            total += int(spec.lengths["total"]) * spec.row_nbytes
        else:
            return None
    return total


def summarize(ds: Dataset) -> dict[str, Any]:
    """A JSON-ready summary of ``ds`` (what ``shardstore info --json`` prints).

    Parameters
    ----------
    ds : Dataset
        An opened dataset.

    Returns
    -------
    dict
        The keys of :meth:`Dataset.info` plus:

        * ``num_files``: files listed by the manifest;
        * ``decoded_nbytes``: bytes of the records in memory (``None`` when a
          feature has a variable dimension);
        * ``compression_ratio``: ``decoded_nbytes / nbytes`` (``None`` when
          either is unknown or zero);
        * ``shard_records`` and ``shard_nbytes``: ``min``/``max``/``mean`` over
          the shards;
        * ``features``: each with ``record_nbytes`` added (``None`` if variable);
        * ``checksums``: ``algorithm``, ``files``, ``block_indexes`` (shards
          with per-block checksums), ``state`` (``"sizes-ok"``: every file,
          block indexes included, present with its recorded size, not
          re-hashed; ``"damaged"``: see ``damaged``), ``error`` (the first
          problem found, or ``None``) and ``damaged`` (every problem found).

    Nothing but the manifest is read: each file is ``stat``-ed once.
    """
    out = ds.info()
    decoded = decoded_nbytes(ds)
    num_files = sum(len(s.files) for s in ds.shards)
    out["num_files"] = num_files
    out["decoded_nbytes"] = decoded
    out["compression_ratio"] = decoded / ds.nbytes if decoded and ds.nbytes else None
    out["shard_records"] = _spread([s.num_records for s in ds.shards])
    out["shard_nbytes"] = _spread([s.nbytes for s in ds.shards])
    for name, feature in out["features"].items():
        spec = ds.features[name]
        feature["record_nbytes"] = spec.record_nbytes if spec.is_fixed else None
    resolve_stat = (
        InsideResolver(ds.path).resolve_stat if ds.remote is None else ds.remote.listed_stat()
    )
    problems = [str(p) for p in integrity.stat_shards(ds.shards, resolve_stat, ds._damaged)]
    out["checksums"] = {
        "algorithm": CHECKSUM_ALGORITHM,
        "files": num_files,
        "block_indexes": sum(s.blocks is not None for s in ds.shards),
        "state": "damaged" if problems else "sizes-ok",
        "error": problems[0] if problems else None,
        "damaged": problems,
    }
    return out
