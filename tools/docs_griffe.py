"""A griffe extension for the documentation build (``mkdocs.yml`` loads it).

Some shardstore docstrings use a compact NumPy style for parameters and
attributes, a description on the name's line::

    path : the dataset directory.
    shard_size : target bytes per shard (default ``"64MiB"``), or

NumPy-style parsers read the text after ``:`` as a *type*. This extension
rewrites such lines to the long form before griffe parses the docstring::

    path
        the dataset directory.

A line is left alone when the text after ``:`` looks like a type
(``int``, ``str, optional``, ``sequence of int or None``, ``argparse.Namespace``).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

__all__ = ["CompactNumpyParams", "expand_compact_params"]

_SECTIONS = {"parameters", "other parameters", "attributes"}
_ITEM = re.compile(r"^(?P<indent>\s*)(?P<name>\*{0,2}[A-Za-z_][A-Za-z0-9_]*) : (?P<text>.+)$")
_TYPE_WORDS = re.compile(r"^[A-Za-z_][\w.\[\], |]*$")


def _is_sentence(text: str) -> bool:
    """Whether ``text`` (after ``name :``) is a description rather than a type."""
    text = text.strip()
    if "``" in text or ";" in text or "(" in text or text.endswith((".", ":", " or")):
        return True
    if not _TYPE_WORDS.match(text):
        return True
    words = [w for w in re.split(r"[\s,]+", text) if w]
    return len(words) > 5


def expand_compact_params(docstring: str) -> str:
    """Rewrite ``name : description`` items of NumPy parameter sections to the long form."""
    lines = docstring.splitlines()
    out: list[str] = []
    section: str | None = None
    for i, line in enumerate(lines):
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if nxt.strip() and set(nxt.strip()) == {"-"} and line.strip():
            section = line.strip().lower()
            out.append(line)
            continue
        match = _ITEM.match(line)
        if section in _SECTIONS and match and _is_sentence(match["text"]):
            indent = match["indent"]
            out.append(f"{indent}{match['name']}")
            out.append(f"{indent}    {match['text'].strip()}")
            continue
        out.append(line)
    return "\n".join(out)


class CompactNumpyParams(griffe.Extension):
    """Expand compact ``name : description`` parameter lines (see the module docstring)."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite the docstring of every loaded object before it is parsed."""
        if obj.docstring is not None:
            obj.docstring.value = expand_compact_params(obj.docstring.value)
