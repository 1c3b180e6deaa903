"""Pictures of a dataset (``shardstore info --plot``), drawn with matplotlib.

matplotlib is an optional dependency (``pip install 'shardstore[plot]'``),
imported only when a plot is asked for; without it the call raises
:class:`~shardstore.errors.MissingDependencyError` naming the install command.
The figure is drawn on an Agg canvas (no ``pyplot``, no display, no global state).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from shardstore.errors import MissingDependencyError
from shardstore.reading.reader import Dataset

__all__ = ["plot_shards"]

_INSTALL_HINT = "pip install 'shardstore[plot]'"
_UNITS = (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10), ("B", 1))


def _matplotlib() -> tuple[Any, Any, Any]:
    """``(Figure, FigureCanvasAgg, MaxNLocator)``, or a clear error when matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError as exc:
        raise MissingDependencyError(
            f"plotting needs matplotlib, which is not installed ({exc}); "
            f"install it with: {_INSTALL_HINT}"
        ) from None
    return Figure, FigureCanvasAgg, MaxNLocator


def plot_shards(ds: Dataset, path: str | os.PathLike[str], *, dpi: int = 110) -> Path:
    """Write a PNG of the shard sizes of ``ds``: bytes on disk and records, per shard.

    Parameters
    ----------
    ds : Dataset
        An opened dataset.
    path : str or path-like
        The PNG to write (replaced if it exists).
    dpi : int
        Resolution of the image.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    MissingDependencyError
        matplotlib is not installed.
    """
    figure_cls, canvas_cls, locator_cls = _matplotlib()
    sizes = [s.nbytes for s in ds.shards]
    records = [s.num_records for s in ds.shards]
    unit, scale = next(((u, s) for u, s in _UNITS if max(sizes, default=0) >= s), ("B", 1))
    index = list(range(len(sizes)))

    fig = figure_cls(figsize=(8, 5), dpi=dpi, layout="constrained")
    canvas_cls(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.bar(index, [s / scale for s in sizes], width=1.0, color="#3b75af", edgecolor="white")
    if sizes:
        mean = sum(sizes) / len(sizes) / scale
        top.axhline(mean, color="#d62728", linewidth=1, label=f"mean {mean:.3g} {unit}")
        top.legend(loc="lower right", fontsize="small")
    top.set_ylabel(f"on disk ({unit})")
    top.set_title(
        f"{ds.path.resolve().name}: {ds.num_records:,} records in {ds.num_shards:,} shards "
        f"({', '.join(ds.manifest.sources) or 'no shards'})",
        fontsize="medium",
    )
    bottom.bar(index, records, width=1.0, color="#519e3e", edgecolor="white")
    bottom.set_ylabel("records")
    bottom.set_xlabel("shard")
    bottom.xaxis.set_major_locator(locator_cls(integer=True))
    bottom.yaxis.set_major_locator(locator_cls(integer=True))
    out = Path(path)
    fig.savefig(out, format="png")
    return out
