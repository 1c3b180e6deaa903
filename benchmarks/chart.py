"""The PNG bar chart of a results document (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["COLOURS", "save_chart"]

COLOURS = {"floor": "#8c8c8c", "shardstore": "#1f77b4", "peer": "#ff7f0e"}


def _panel(ax: Any, rows: list[dict[str, Any]], key: str, title: str, unit: str) -> None:
    rows = sorted(rows, key=lambda r: float(r[key]))
    labels = [r["approach"].replace("`", "") for r in rows]
    values = [float(r[key]) for r in rows]
    ax.barh(labels, values, color=[COLOURS[r["kind"]] for r in rows])
    for y, value in enumerate(values):
        ax.text(value, y, f" {value:,.3g}", va="center", fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(unit, fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    ax.margins(x=0.18)


def save_chart(doc: dict[str, Any], path: Path) -> None:
    """Draw read (per workload) and write throughput panels into ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.results import machine_line

    panels = []
    for workload in dict.fromkeys(r["workload"] for r in doc["read"]):
        rows = [r for r in doc["read"] if r["workload"] == workload]
        if workload == "tabular":
            rows = [{**r, "mrec": r["records_per_s"] / 1e6} for r in rows]
            panels.append((rows, "mrec", f"read: {workload}", "million records/s"))
        else:
            panels.append((rows, "gb_per_s", f"read: {workload}", "GB/s (decoded)"))
    if doc["write"]:
        rows = [
            {**r, "approach": f"{r['approach']} (fsync {'on' if r['fsync'] else 'off'})"}
            for r in doc["write"]
        ]
        panels.append((rows, "gb_per_s", "write: images", "GB/s"))
    if not panels:
        return
    heights = [max(2.0, 0.28 * len(p[0]) + 1.0) for p in panels]
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(10, sum(heights)),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    for ax, (rows, key, title, unit) in zip(axes[:, 0], panels, strict=True):
        _panel(ax, rows, key, title, unit)
    fig.suptitle(
        f"shardstore benchmark: {machine_line(doc)}\n"
        "grey: np.load / np.save floor, blue: shardstore, orange: tf.data peers",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
