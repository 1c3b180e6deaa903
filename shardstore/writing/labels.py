"""Labels for one-file-per-record inputs: from a CSV table or from the file names.

Raw label values are strings (a CSV cell, a directory name, a regex match);
:func:`typed_labels` turns each label column into a feature: ``int64`` when
every value is an integer, ``float64`` when every value is a number, else
class indices (``int64``, classes numbered in sorted order of their names,
the names kept in the dataset's metadata).
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shardstore.errors import InvalidInputError, ManifestError
from shardstore.format.manifest import check_feature_name
from shardstore.storage.safefs import open_binary

__all__ = [
    "FILENAME_COLUMNS",
    "LabelTable",
    "label_from_name",
    "read_label_table",
    "typed_labels",
]

#: Column names recognised as the file-name column (case-insensitive), in this order.
FILENAME_COLUMNS = ("filename", "file", "path", "name", "fname", "image")


def _norm(text: str) -> str:
    text = text.strip().replace("\\", "/")
    while text.startswith("./"):
        text = text[2:]
    return text


@dataclass
class LabelTable:
    """A CSV of labels: ``lookup`` finds a file's row by name, path or base name."""

    path: Path
    filename_column: str
    columns: list[str]
    rows: dict[str, tuple[str, ...]] = field(default_factory=dict)
    by_basename: dict[str, list[str]] = field(default_factory=dict)

    def lookup(self, path: Path, name: str) -> tuple[str, ...] | None:
        """The label values of the file ``path`` (reported as ``name``), or ``None``.

        Tried in order: ``name`` (the path relative to the input pattern or
        directory), the path relative to the CSV's directory, the path as
        given, the base name (when no two rows share it).
        """
        candidates = [_norm(name), _norm(str(path))]
        with_csv = os.path.relpath(os.path.abspath(path), os.path.abspath(self.path.parent))
        candidates.insert(1, _norm(with_csv))
        for key in candidates:
            if key in self.rows:
                return self.rows[key]
        keys = self.by_basename.get(path.name, [])
        return self.rows[keys[0]] if len(keys) == 1 else None


def read_label_table(
    path: str | os.PathLike[str],
    *,
    filename_column: str | None = None,
    label_columns: Sequence[str] | None = None,
) -> LabelTable:
    """Read a labels CSV (with a header row); raise ``InvalidInputError`` naming any problem."""
    csv_path = Path(path)
    try:
        raw = open_binary(csv_path, follow_symlinks=True, damage=False)  # never a FIFO
        with io.TextIOWrapper(raw, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            body = list(enumerate(reader, start=2))
    except OSError as exc:
        raise InvalidInputError(f"labels file {str(csv_path)!r}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InvalidInputError(f"labels file {str(csv_path)!r} is not a CSV: {exc}") from None
    if not header:
        raise InvalidInputError(f"labels file {str(csv_path)!r} is empty (no header row)")
    header = [h.strip() for h in header]
    where = f"labels file {str(csv_path)!r}"
    if filename_column is None:
        lower = {h.lower(): h for h in header}
        filename_column = next((lower[c] for c in FILENAME_COLUMNS if c in lower), header[0])
    if filename_column not in header:
        raise InvalidInputError(f"{where} has no column {filename_column!r}; it has {header}")
    columns = [h for h in header if h != filename_column] if label_columns is None else list(
        label_columns)  # fmt: skip
    for column in columns:
        if column not in header or column == filename_column:
            raise InvalidInputError(
                f"{where}: {column!r} is not a label column; the columns are {header}"
            )
    if not columns:
        raise InvalidInputError(f"{where} has no label column besides {filename_column!r}")
    key_at = header.index(filename_column)
    value_at = [header.index(c) for c in columns]
    table = LabelTable(csv_path, filename_column, columns)
    for line, row in body:
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise InvalidInputError(
                f"{where}, line {line}: {len(row)} fields, the header has {len(header)}"
            )
        key = _norm(row[key_at])
        values = tuple(row[i].strip() for i in value_at)
        if key in table.rows and table.rows[key] != values:
            raise InvalidInputError(f"{where}, line {line}: {key!r} is listed again, differently")
        table.rows[key] = values
        table.by_basename.setdefault(key.rsplit("/", 1)[-1], []).append(key)
    return table


def label_from_name(path: Path, name: str, rule: str) -> str | None:
    """The label in a file's name: ``"parent"`` (its directory's name) or a regex.

    A regex is searched in ``name`` (the path relative to the input pattern
    or directory, ``/``-separated); the label is its group ``label`` if it
    has one, else its first group, else the whole match; ``None`` if it does
    not match.
    """
    if rule == "parent":
        return path.absolute().parent.name
    m = re.search(rule, name)
    if m is None:
        return None
    if "label" in m.re.groupindex:
        return m.group("label")
    return m.group(1) if m.re.groups else m.group(0)


def _as_int(values: Sequence[str]) -> np.ndarray | None:
    try:
        ints = [int(v) for v in values]
    except ValueError:
        return None
    if any(not -(2**63) <= v < 2**63 for v in ints):
        return None
    return np.array(ints, dtype=np.int64)


def _as_float(values: Sequence[str]) -> np.ndarray | None:
    try:
        return np.array([float(v) for v in values], dtype=np.float64)
    except ValueError:
        return None


def typed_labels(
    values: Sequence[tuple[str, ...]], columns: Sequence[str], *, label_feature: str
) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """Label features from per-file raw values: ``(feature -> array, feature -> classes)``.

    One column becomes the feature ``label_feature``; several keep their
    column names (which must be valid feature names).
    """
    names = [label_feature] if len(columns) == 1 else list(columns)
    for name in names:
        try:
            check_feature_name(name)
        except ManifestError as exc:
            raise InvalidInputError(f"label column {name!r}: {exc}") from None
    arrays: dict[str, np.ndarray] = {}
    classes: dict[str, list[str]] = {}
    for j, name in enumerate(names):
        raw = [v[j] for v in values]
        typed = _as_int(raw)
        if typed is None:
            typed = _as_float(raw)
        if typed is None:
            names_sorted = sorted(set(raw))
            index = {c: i for i, c in enumerate(names_sorted)}
            typed = np.array([index[v] for v in raw], dtype=np.int64)
            classes[name] = names_sorted
        arrays[name] = typed
    return arrays, classes
