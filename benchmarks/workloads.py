"""The two workloads of issue 4: images and tabular, sizes configurable.

Arrays are generated in memory, deterministically (seeded), so every approach
reads exactly the same records.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from shardstore.cli.bench import IMAGE_SHAPE, synthetic_images

__all__ = ["IMAGES", "TABULAR", "WORKLOADS", "Workload", "make_arrays"]

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class Workload:
    """A named dataset shape: ``x`` (float32, per-record ``shape``) and an int64 ``label``."""

    name: str
    num_records: int
    shape: tuple[int, ...]
    batch_size: int

    @property
    def record_nbytes(self) -> int:
        """Decoded bytes per record (``x`` + ``label``)."""
        return 4 * math.prod(self.shape) + 8

    @property
    def nbytes(self) -> int:
        """Decoded bytes of one epoch."""
        return self.num_records * self.record_nbytes

    def scaled(self, factor: float) -> Workload:
        """The same workload with ``factor`` times the records (at least one batch)."""
        return replace(self, num_records=max(self.batch_size, round(self.num_records * factor)))


IMAGES = Workload("images", 16_384, IMAGE_SHAPE, 256)
TABULAR = Workload("tabular", 4_000_000, (16,), 4096)
WORKLOADS = {w.name: w for w in (IMAGES, TABULAR)}


def make_arrays(workload: Workload, *, seed: int = 0) -> Arrays:
    """``{"x": float32 (n, *shape), "label": int64 (n,)}`` for ``workload``."""
    n = workload.num_records
    if workload.shape == IMAGE_SHAPE:
        x = np.empty((n, *IMAGE_SHAPE), np.float32)
        label = np.empty(n, np.int64)
        pos = 0
        for batch in synthetic_images(n, 1024, seed=seed):
            m = len(batch["label"])
            x[pos : pos + m], label[pos : pos + m] = batch["image"], batch["label"]
            pos += m
        return {"x": x, "label": label}
    rng = np.random.default_rng(seed)
    return {
        "x": rng.random((n, *workload.shape), dtype=np.float32),
        "label": rng.integers(0, 10, n, dtype=np.int64),
    }
