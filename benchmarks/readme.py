"""Render the latest results into the pages: every speed figure users read comes from here.

Two kinds of marks in a page (README, docs) are rewritten from a results
document; the rest of the page is left alone:

* **blocks**, ``<!-- bench:start -->`` (the full results: tables, goals,
  chart) or ``<!-- bench:start NAME -->`` (a table made for one page:
  :data:`BLOCKS`), up to ``<!-- bench:end -->``;
* **inline figures**, ``<!-- bench:KEY -->2.17<!-- /bench -->``: the value
  between the marks is rewritten from ``KEY`` (see :func:`figure`), e.g.
  ``images/npy:sequential/gb_per_s`` or
  ``images/npy:sequential/gb_per_s/per/peer:from_tensor_slices`` (a ratio).

:func:`stray_figures` finds speed figures (GB/s, records/s, "3x faster",
"0.6 of the floor", speed columns of tables) outside those marks: the test
suite fails on any, so a page can only quote what the results file holds.

``python -m benchmarks.readme [--results benchmarks/results/latest.json] [--readme FILE ...]``
rewrites every page (:data:`PAGES`; ``make bench`` does it after a complete run);
``--check`` only reports stray or stale figures (exit 1 if any).
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchmarks.results import (
    Row,
    cold_table,
    machine_line,
    objstore_table,
    read_tables,
    targets_table,
    user_note,
    validate,
    write_table,
)

__all__ = [
    "BLOCKS",
    "END",
    "PAGES",
    "START",
    "figure",
    "pages",
    "readme_block",
    "render_page",
    "replace_block",
    "speed_figures",
    "stray_figures",
    "update_readme",
]

START = "<!-- bench:start -->"
END = "<!-- bench:end -->"
CHART = "docs/assets/benchmark.png"
REPO = Path(__file__).resolve().parent.parent
#: The pages users read: every one is rendered after a complete run and checked for strays.
PAGES = ("README.md", "docs/*.md")


def pages() -> list[Path]:
    """The files :data:`PAGES` names, in order."""
    return [p for pattern in PAGES for p in sorted(REPO.glob(pattern))]


#: A block: ``<!-- bench:start [NAME] -->`` ... ``<!-- bench:end -->``.
_BLOCK = re.compile(
    r"<!-- bench:start(?: (?P<name>[\w-]+))? -->\n(?P<body>.*?)<!-- bench:end -->", re.DOTALL
)
#: An inline figure: ``<!-- bench:KEY -->VALUE<!-- /bench -->``.
_INLINE = re.compile(
    r"<!-- bench:(?!start|end)(?P<key>[^\n>]+?) -->(?P<value>[^<\n]*)<!-- /bench -->"
)


# -- figures --------------------------------------------------------------------------------
_DEFAULT_FORMAT = {
    "gb_per_s": ".2f",
    "records_per_s": ",.0f",
    "vs_floor": ".2f",
    "vs_best_peer": ".2f",
    "seconds": ".2f",
}


def _format(value: float, spec: str) -> str:
    """``value`` with ``spec``: a format spec, or ``M`` (millions, one decimal: ``19.7M``)."""
    if spec == "M":
        return f"{value / 1e6:.1f}M"
    return format(value, spec)


def _read_row(doc: dict[str, Any], workload: str, row_id: str) -> Row | None:
    return next((r for r in doc["read"] if r["workload"] == workload and r["id"] == row_id), None)


def _value(doc: dict[str, Any], key: str) -> tuple[float | None, str]:
    """The number ``key`` names in ``doc`` and its default format (see :func:`figure`)."""
    parts = key.split("/")
    if parts[0] == "target" and len(parts) == 2:
        goal = next((t for t in doc["targets"] if t["id"] == parts[1]), None)
        return (None if goal is None else goal["measured"]), ".2f"
    if parts[0] == "write" and len(parts) == 4:
        fsync = {"on": True, "off": False}.get(parts[2])
        row = next((r for r in doc["write"] if r["id"] == parts[1] and r["fsync"] is fsync), None)
        return (None if row is None else row.get(parts[3])), _DEFAULT_FORMAT.get(parts[3], ".2f")
    if parts[0] == "scaling" and len(parts) == 3:
        row = next(
            (r for r in doc["scaling"] if r["what"] == parts[1] and r["mode"] == parts[2]), None
        )
        return (None if row is None else row["seconds"]), ".2f"
    if len(parts) == 3:
        row = _read_row(doc, parts[0], parts[1])
        return (None if row is None else row.get(parts[2])), _DEFAULT_FORMAT.get(parts[2], ".2f")
    if len(parts) == 5 and parts[3] == "per":
        a, b = _read_row(doc, parts[0], parts[1]), _read_row(doc, parts[0], parts[4])
        if a is None or b is None or not b.get(parts[2]):
            return None, ".2f"
        return a[parts[2]] / b[parts[2]], ".2f"
    raise ValueError(f"unknown bench figure {key!r}")


def figure(doc: dict[str, Any], key: str) -> str:
    """The text of the figure ``key`` names in ``doc`` (``n/a`` when the run lacks it).

    Keys: ``WORKLOAD/ROW/FIELD`` (a read row: ``gb_per_s``, ``records_per_s``,
    ``vs_floor``, ``vs_best_peer``); ``WORKLOAD/ROW_A/FIELD/per/ROW_B`` (the
    ratio of two read rows); ``write/ROW/on|off/FIELD`` (fsync on or off);
    ``scaling/WHAT/MODE`` (seconds); ``target/ID`` (a goal's measured value).
    ``KEY|SPEC`` formats with ``SPEC`` (a format spec, or ``M`` for millions).
    """
    key, _, spec = key.partition("|")
    value, default = _value(doc, key)
    return "n/a" if value is None else _format(float(value), spec or default)


# -- blocks ---------------------------------------------------------------------------------
def readme_block(doc: dict[str, Any], chart_link: str = CHART) -> str:
    """The full results: date, machine, read and write tables, goals, chart."""
    s = doc["settings"]
    parts = [
        f"Measured {machine_line(doc)} with `make bench` (scale {s.get('scale')}): one "
        "process, warm page cache, one epoch per row (best of "
        f"{s.get('repeats')} after a warm-up epoch), every pipeline consumed in graph "
        "with `Dataset.reduce`; GB/s counts decoded bytes; the floor is `np.load` of "
        "the npy dataset's shard files in the same run.",
    ]
    note = user_note(s.get("note"))
    if note:
        parts.append(f"**Note:** {note}")
    parts += [read_tables(doc), write_table(doc)]
    if doc.get("cold"):
        parts += [
            "**Cold cache**: the pages of each dataset's own files evicted "
            "(`posix_fadvise(DONTNEED)`), each row in a fresh process; bytes read from "
            "disk are the process's `read_bytes`; the floors are `cat` of the shard files "
            "(in order) and 16 threads `pread`-ing the records of a global shuffle, in the "
            "same run.",
            cold_table(doc),
        ]
    if doc.get("objstore"):
        parts += [
            "**Object storage**: one dataset in a local S3-compatible server started by "
            "the run; MB/s counts the dataset's objects (every file of every shard); the "
            "floors are raw obstore GETs and multipart PUTs of the same objects with the "
            "concurrency shardstore uses, in the same run; the server's own files' pages are "
            "evicted before each GET floor and cold epoch.",
            objstore_table(doc),
        ]
    parts += [
        targets_table(doc),
        f"![benchmark chart]({chart_link})",
    ]
    return "\n\n".join(parts)


def _times(ratio: float) -> str:
    """A ratio to three significant figures or so: ``0.43x``, ``13.4x``, ``6,991x``."""
    if ratio >= 100:
        return f"{ratio:,.0f}x"
    return f"{ratio:.1f}x" if ratio >= 10 else f"{ratio:.2f}x"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _measured_on(doc: dict[str, Any], workload: str) -> str:
    spec = doc["settings"]["workloads"][workload]
    gb = spec["num_records"] * spec["record_nbytes"] / 1e9
    return (
        f"{spec['num_records']:,} records of {spec['record_nbytes']:,} B ({gb:.2f} GB "
        f"decoded), batch {spec['batch_size']}; `make bench` of {doc['date'][:10]} on "
        f"{doc['machine']['cpus']} CPUs, warm page cache"
    )


#: The per-source table of docs/sources.md: (row id, label).
_SOURCE_ROWS = (
    ("memmap:sequential", "`memmap`, in order (what `npy` datasets read through)"),
    ("npy:shuffle", "`npy` dataset, `shuffle=True`"),
    ("npy:global", '`npy` dataset, `shuffle="global"`'),
    ("zarr:sequential", "`zarr`, no compression, in order"),
    ("zarr:shuffle", "`zarr`, no compression, `shuffle=True`"),
    ("zarr-zstd:sequential", "`zarr` zstd, in order"),
    ("tfrecord:sequential", "`tfrecord`, in order"),
    ("tfrecord:shuffle", "`tfrecord`, `shuffle=True`"),
)


def sources_block(doc: dict[str, Any], chart_link: str = CHART) -> str:
    """Read speed of each source and shuffle mode, on the images workload."""
    rows = []
    for row_id, label in _SOURCE_ROWS:
        r = _read_row(doc, "images", row_id)
        if r is not None:
            rows.append(
                [
                    label,
                    f"{r['gb_per_s']:.2f}",
                    f"{r['records_per_s']:,.0f}",
                    f"{r['vs_floor']:.2f}",
                ]
            )
    head = f"Images workload: {_measured_on(doc, 'images')}."
    return head + "\n\n" + _table(["source, read mode", "GB/s", "records/s", "vs floor"], rows)


#: The tutorial patterns of docs/coming-from-tf-data.md: (row id, label).
_PATTERNS = (
    ("peer:from_tensor_slices", "`from_tensor_slices` on in-memory arrays"),
    ("peer:from_generator", "`from_generator` over a memmap"),
    ("peer:npy_per_record", "one `.npy` per record + `py_function(np.load)`"),
    ("peer:npy_shards", "`.npy` shards via `py_function(np.load)`, interleaved"),
    ("peer:tfrecord", "TFRecord + `parse_example`, interleaved"),
    ("peer:save_load", "`tf.data.Dataset.save` / `load`"),
)


def tf_data_block(doc: dict[str, Any], chart_link: str = CHART) -> str:
    """Each tutorial pattern next to shardstore (npy dataset), per workload, one run."""
    out = []
    for workload, unit, key, fmt in (
        ("images", "GB/s", "gb_per_s", ".2f"),
        ("tabular", "records/s", "records_per_s", ",.0f"),
    ):
        ours = _read_row(doc, workload, "npy:sequential")
        shuffled = _read_row(doc, workload, "npy:shuffle")
        if ours is None:
            continue
        rows = []
        for row_id, label in _PATTERNS:
            r = _read_row(doc, workload, row_id)
            if r is None:
                continue
            ratio = ours[key] / r[key]
            verdict = "faster" if ratio >= 1 else "slower"
            if r["measured_records"] < r["records"]:
                label += f" (on {r['measured_records']:,} records, scaled)"
            rows.append(
                [
                    label,
                    format(r[key], fmt),
                    format(ours[key], fmt),
                    "n/a" if shuffled is None else format(shuffled[key], fmt),
                    f"{_times(ratio)} ({verdict})",
                ]
            )
        out.append(f"**{workload}**: {_measured_on(doc, workload)}.")
        out.append(
            _table(
                [
                    f"tutorial pattern ({workload})",
                    f"pattern {unit}",
                    f"shardstore {unit}, in order",
                    f"shardstore {unit}, `shuffle=True`",
                    "shardstore vs pattern (in order)",
                ],
                rows,
            )
        )
    return "\n\n".join(out)


#: Named blocks: ``name -> (doc, chart link) -> markdown``.
BLOCKS: dict[str, Callable[[dict[str, Any], str], str]] = {
    "results": readme_block,
    "sources": sources_block,
    "tf-data": tf_data_block,
}


def replace_block(text: str, block: str, *, start: str = START, end: str = END) -> str:
    """``text`` with everything between the ``start`` and ``end`` markers replaced by ``block``.

    Markers inside code (an example of them) do not count.
    """
    masked = _mask_code(text)
    if (
        masked.count(start) != 1
        or masked.count(end) != 1
        or masked.index(start) > masked.index(end)
    ):
        raise ValueError(f"the README needs exactly one {start} ... {end} pair, in that order")
    lo, hi = masked.index(start), masked.index(end)
    return f"{text[:lo]}{start}\n{block}\n{end}{text[hi + len(end) :]}"


def _mask_code(text: str) -> str:
    """``text`` with code (fenced blocks, inline spans) blanked out, offsets unchanged.

    Marks and figures inside code are examples, not claims: they are neither
    rendered nor checked.
    """

    def blank(m: re.Match[str]) -> str:
        return re.sub(r"[^\n]", " ", m.group(0))

    text = re.sub(r"^[ \t]*(```|~~~).*?^[ \t]*\1[^\n]*$", blank, text, flags=re.M | re.S)
    return re.sub(r"(`+)(?!`).+?(?<!`)\1(?!`)", blank, text)


def _marks(text: str) -> list[tuple[int, int, str]]:
    """``(start, end, replacement key)`` of every mark outside code: ``block:NAME`` or a key."""
    masked = _mask_code(text)
    starts = len(re.findall(r"<!-- bench:start(?: [\w-]+)? -->", masked))
    blocks = list(_BLOCK.finditer(masked))
    if starts != masked.count(END) or starts != len(blocks):
        raise ValueError(
            f"unbalanced bench block markers ({starts} starts, {masked.count(END)} ends)"
        )
    found = [(m.start(), m.end(), "block:" + (m["name"] or "results")) for m in blocks]
    found += [(m.start(), m.end(), m["key"]) for m in _INLINE.finditer(masked)]
    return sorted(found)


def render_page(text: str, doc: dict[str, Any], chart_link: str = CHART) -> str:
    """``text`` with every bench block and inline figure rewritten from ``doc``."""
    out, pos = [], 0
    for start, end, what in _marks(text):
        out.append(text[pos:start])
        if what.startswith("block:"):
            name = what.removeprefix("block:")
            if name not in BLOCKS:
                raise ValueError(f"unknown bench block {name!r}; known: {sorted(BLOCKS)}")
            opening = text[start:end].split("\n", 1)[0]
            out.append(f"{opening}\n{BLOCKS[name](doc, chart_link)}\n{END}")
        else:
            out.append(f"<!-- bench:{what} -->{figure(doc, what)}<!-- /bench -->")
        pos = end
    out.append(text[pos:])
    return "".join(out)


def update_readme(readme: Path, doc: dict[str, Any], *, chart: Path | None = None) -> bool:
    """Rewrite the bench marks of the page ``readme`` from ``doc``, linking the chart at ``chart``.

    The link is relative to the page's directory (default chart: ``docs/assets``).
    Returns whether the page changed (it is written only then).
    """
    link = os.path.relpath(chart if chart is not None else REPO / CHART, readme.parent)
    text = readme.read_text()
    new = render_page(text, validate(doc), Path(link).as_posix())
    if new != text:
        readme.write_text(new)
    return new != text


# -- stray figures --------------------------------------------------------------------------
_NUMBER = r"\d[\d,]*(?:\.\d+)?"
#: Speed figures in prose: a number with a throughput unit, "N x faster", "6.7-11x",
#: "0.64 of the npy source's GB/s", "N times faster".
_SPEED = re.compile(
    rf"(?P<a>{_NUMBER})\s?(?:[kKM]\s)?(?:GB/s|MB/s|GiB/s|MiB/s|KB/s|TB/s|records/s|rec/s|samples/s)"
    rf"|(?<![\dx.])(?P<b>{_NUMBER}(?:\s?[-\u2013]\s?{_NUMBER})?)[x\u00d7](?![\w\d])"
    rf"|(?<![\dx.])(?P<e>{_NUMBER})\s[x\u00d7]\s(?=faster|slower|as\s+fast|the\s+speed)"
    rf"|(?P<c>{_NUMBER})\s+times\s+(?:faster|slower|as\s+fast)"
    rf"|(?P<d>{_NUMBER})\s+of\s+the\s+[^.;:\n|]{{0,50}}?(?:floor|speed|GB/s|records/s|throughput)",
    re.IGNORECASE,
)
#: A table column whose cells are speed figures.
_SPEED_HEADER = re.compile(
    r"GB/s|MB/s|records/s|speed|vs floor|vs best peer|vs `?np\.load|ratio to|throughput",
    re.IGNORECASE,
)


def _cells(line: str, masked: str, at: int) -> list[tuple[int, str]]:
    """``(offset, text)`` of the cells of a table row (split where ``masked`` has pipes)."""
    out, start = [], masked.index("|") + 1
    for end in [i for i, c in enumerate(masked) if c == "|" and i >= start]:
        out.append((at + start, line[start:end]))
        start = end + 1
    return out


def speed_figures(text: str) -> Iterator[tuple[int, str]]:
    """``(offset, figure)`` of every speed figure in a markdown page (outside code)."""
    masked = _mask_code(text)
    for m in _SPEED.finditer(masked):
        yield m.start(), text[m.start() : m.end()]
    offset = 0
    header: list[bool] | None = None
    for line, blanked in zip(
        text.splitlines(keepends=True), masked.splitlines(keepends=True), strict=True
    ):
        if blanked.strip().startswith("|"):
            cells = _cells(line, blanked, offset)
            if header is None:
                header = [bool(_SPEED_HEADER.search(cell)) for _, cell in cells]
            elif not all(set(cell.strip()) <= set("-: ") for _, cell in cells):
                for speed, (at, cell) in zip(header, cells, strict=False):
                    if speed and re.search(r"\d", _mask_code(cell)):
                        yield at, cell.strip()
        else:
            header = None
        offset += len(line)


#: Blocks another renderer writes from its own results file: ``(start, end, results file)``
#: (``make bench-peers``: ``benchmarks/peers_bench.py`` from ``peers-latest.json``).
OTHER_BLOCKS = (
    (
        "<!-- bench-peers:start -->",
        "<!-- bench-peers:end -->",
        "benchmarks/results/peers-latest.json",
    ),
)


def _other_regions(text: str) -> list[tuple[int, int]]:
    masked = _mask_code(text)
    out = []
    for start, end, _ in OTHER_BLOCKS:
        lo = masked.find(start)
        if lo >= 0 and (hi := masked.find(end, lo)) >= 0:
            out.append((lo, hi + len(end)))
    return out


def stray_figures(text: str) -> list[str]:
    """The speed figures of ``text`` that no bench mark rendered (each must come from results)."""
    regions = [(start, end) for start, end, _ in _marks(text)] + _other_regions(text)
    return [
        f"line {text.count(chr(10), 0, pos) + 1}: {found!r}"
        for pos, found in speed_figures(text)
        if not any(a <= pos < b for a, b in regions)
    ]


def main(argv: list[str] | None = None) -> int:
    """Command line: rewrite (or ``--check``) the pages' bench marks from a results file."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.readme", description=__doc__)
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks/results/latest.json")
    parser.add_argument("--readme", type=Path, action="append", help="a page with bench marks")
    parser.add_argument(
        "--check", action="store_true", help="report stray or stale figures; change nothing"
    )
    args = parser.parse_args(argv)
    doc = validate(json.loads(args.results.read_text()))
    problems = 0
    for page in args.readme or pages():
        if not args.check:
            if update_readme(page, doc):
                print(f"updated {page} from {args.results}")
            continue
        text = page.read_text()
        link = Path(os.path.relpath(REPO / CHART, page.parent)).as_posix()
        for stray in stray_figures(text):
            print(f"{page}: {stray}: a speed figure not rendered from the results")
            problems += 1
        if render_page(text, doc, link) != text:
            print(f"{page}: out of date with {args.results} (run python -m benchmarks.readme)")
            problems += 1
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
