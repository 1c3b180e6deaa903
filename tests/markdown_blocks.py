"""Fenced code blocks of the Markdown documentation, for the tests that run them."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ROOT", "Block", "blocks", "doc_files", "parse_blocks", "shardstore_commands"]

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^```[ \t]*$", re.M | re.S)


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown file."""

    lang: str
    line: int  # 1-based line of the block's first code line
    code: str


def parse_blocks(text: str) -> list[Block]:
    """The fenced code blocks of a Markdown text, in order (fences at the start of a line)."""
    return [
        Block(m["lang"], text.count("\n", 0, m.start("body")) + 1, m["body"])
        for m in FENCE.finditer(text)
    ]


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of the file ``path``, in order."""
    return parse_blocks(path.read_text(encoding="utf-8"))


def doc_files() -> list[Path]:
    """README.md and every page of docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def shardstore_commands(block: Block) -> list[tuple[int, list[str]]]:
    """``(line, argv)`` of every ``$ shardstore ...`` line (``\\`` continuations joined)."""
    out: list[tuple[int, list[str]]] = []
    lines = block.code.splitlines()
    i = 0
    while i < len(lines):
        start = i
        line = lines[i]
        while line.endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line[:-1] + " " + lines[i].strip()
        if line.startswith("$ shardstore "):
            argv = shlex.split(line[2:], comments=True)
            out.append((block.line + start, argv[1:]))
        i += 1
    return out
