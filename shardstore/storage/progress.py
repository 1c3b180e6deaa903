"""One progress bar for every long-running operation (write, verify, convert, ingest).

Bars appear on an interactive terminal and stay silent everywhere else (logs,
CI, pipes, notebooks without a terminal) unless asked for explicitly: the
``progress`` argument of :func:`shardstore.write`, :class:`shardstore.Writer`,
:meth:`shardstore.Dataset.verify`, :func:`shardstore.convert` and
:func:`shardstore.index_tfrecords`, and the ``--progress/--no-progress``
options of the command line, all come here.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm.auto import tqdm

__all__ = ["progress_bar"]

#: Size assumed for a terminal that reports none (a fresh pseudo-terminal, some CI
#: runners): tqdm draws nothing on a terminal of 0 columns or 0 rows.
FALLBACK_SIZE = (80, 24)


def _terminal_size() -> dict[str, int]:
    """``ncols``/``nrows`` for tqdm where stderr is a terminal that reports 0 for them."""
    try:
        columns, lines = os.get_terminal_size(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):  # not a terminal, or no real file
        return {}
    size: dict[str, int] = {}
    if columns <= 0:
        size["ncols"] = FALLBACK_SIZE[0]
    if lines <= 0:
        size["nrows"] = FALLBACK_SIZE[1]
    return size


def progress_bar(*, total: int | None, desc: str, unit: str, enabled: bool | None) -> tqdm[Any]:
    """A ``tqdm`` bar, shown only where a person is watching.

    Parameters
    ----------
    total : int or None
        The amount of work (``None``: unknown).
    desc : str
        A short label (``"write"``, ``"verify"``...).
    unit : str
        ``"B"`` for bytes or ``"rec"`` for records; scaled to k/M/G (powers of
        1000: a bar's ``MB`` and ``GB/s`` are 10^6 and 10^9 bytes).
    enabled : bool or None
        ``True`` shows the bar, ``False`` hides it, ``None`` shows it only
        when stderr is a terminal.

    Returns
    -------
    tqdm
        The bar; ``update`` it, then ``close`` it (or use it as a context manager).
    """
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=True,
        unit_divisor=1000,  # bytes in decimal units (kB, MB, GB), as tqdm labels them
        disable=None if enabled is None else not enabled,
        **_terminal_size(),
    )
