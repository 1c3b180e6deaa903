"""Write the latest results into the README between the bench markers.

The block between ``<!-- bench:start -->`` and ``<!-- bench:end -->`` is
replaced; the rest of the README is left alone.

``python -m benchmarks.readme [--results benchmarks/results/latest.json] [--readme FILE ...]``
(default: ``README.md`` and ``docs/benchmarks.md``); ``make bench`` does it
after a complete run.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from benchmarks.results import machine_line, read_tables, targets_table, validate, write_table

__all__ = ["END", "START", "readme_block", "replace_block", "update_readme"]

START = "<!-- bench:start -->"
END = "<!-- bench:end -->"
CHART = "docs/assets/benchmark.png"
REPO = Path(__file__).resolve().parent.parent
PAGES = ("README.md", "docs/benchmarks.md")


def readme_block(doc: dict[str, Any], chart_link: str = CHART) -> str:
    """The README text for ``doc``: date, machine, read and write tables, targets, chart."""
    s = doc["settings"]
    parts = [
        f"Measured {machine_line(doc)} with `make bench` (scale {s.get('scale')}): one "
        "process, warm page cache, one epoch per row (best of "
        f"{s.get('repeats')} after a warm-up epoch), every pipeline consumed in graph "
        "with `Dataset.reduce`; GB/s counts decoded bytes; the floor is `np.load` of "
        "the npy dataset's shard files in the same run.",
    ]
    if s.get("note"):
        parts.append(f"**Note:** {s['note']}")
    parts += [
        read_tables(doc),
        write_table(doc),
        targets_table(doc),
        f"![benchmark chart]({chart_link})",
    ]
    return "\n\n".join(parts)


def replace_block(text: str, block: str, *, start: str = START, end: str = END) -> str:
    """``text`` with everything between the ``start`` and ``end`` markers replaced by ``block``."""
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise ValueError(f"the README needs exactly one {start} ... {end} pair, in that order")
    head, rest = text.split(start)
    _, tail = rest.split(end)
    return f"{head}{start}\n{block}\n{end}{tail}"


def update_readme(readme: Path, doc: dict[str, Any], *, chart: Path | None = None) -> None:
    """Rewrite the marked block of ``readme`` with ``doc``, linking the chart at ``chart``.

    The link is relative to the README's directory (default chart: ``docs/assets``).
    """
    link = os.path.relpath(chart if chart is not None else REPO / CHART, readme.parent)
    block = readme_block(validate(doc), Path(link).as_posix())
    readme.write_text(replace_block(readme.read_text(), block))


def main(argv: list[str] | None = None) -> int:
    """Command line: rewrite the README block from a results JSON file."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.readme", description=__doc__)
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/latest.json"))
    parser.add_argument("--readme", type=Path, action="append", help="a file with the markers")
    args = parser.parse_args(argv)
    doc = json.loads(args.results.read_text())
    for page in args.readme or [REPO / p for p in PAGES]:
        update_readme(page, doc)
        print(f"updated {page} from {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
