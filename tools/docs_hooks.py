"""mkdocs hooks for the documentation build (``mkdocs.yml`` loads this file).

``<!-- cli-reference -->`` in a page is replaced by the ``--help`` of the
``shardstore`` command and of every subcommand, generated from the argparse
parser in :mod:`shardstore.cli` at build time, so the CLI reference cannot
drift from the code (a new subcommand appears by itself).

Every page's HTML is checked for Sphinx roles printed as text (``:meth:`` and
the like, which the griffe extension in ``tools/docs_griffe.py`` turns into
cross-references): one left over fails the build, naming the page.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = [
    "CLI_MARKER",
    "RAW_ROLE",
    "cli_reference_markdown",
    "on_page_content",
    "on_page_markdown",
    "raw_roles",
]

CLI_MARKER = "<!-- cli-reference -->"
#: A Sphinx role as it shows on a page when nothing rendered it: ``:meth:<code>x</code>``.
RAW_ROLE = re.compile(
    r":(?:py:)?(?:meth|func|attr|mod|class|data|exc|obj|const|type):(?:`|<code>)[^`<]*"
)
HELP_COLUMNS = 88


@contextmanager
def _columns(width: int) -> Iterator[None]:
    """argparse wraps help to ``$COLUMNS``: pin it so the output does not depend on the terminal."""
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        yield
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommand parsers of ``parser``, in the order they were added."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _summaries(parser: argparse.ArgumentParser) -> dict[str, str]:
    """The one-line ``help`` of each subcommand, as listed by ``shardstore --help``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {a.dest: a.help or "" for a in action._choices_actions}
    return {}


def cli_reference_markdown() -> str:
    """Markdown sections with the ``--help`` of ``shardstore`` and each subcommand."""
    from shardstore.cli.app import _build_parser
    from shardstore.cli.output import PROG

    with _columns(HELP_COLUMNS):
        parser = _build_parser()
        parts = [f"### `{PROG}`", "", "```text", parser.format_help().rstrip(), "```", ""]
        summaries = _summaries(parser)
        for name, sub in _subcommands(parser).items():
            summary = summaries.get(name, "")
            parts += [f"### `{PROG} {name}`", ""]
            if summary:
                parts += [summary[:1].upper() + summary[1:] + ".", ""]
            parts += ["```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(parts)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """mkdocs event: expand the CLI reference marker."""
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference_markdown())
    return markdown


def raw_roles(html: str) -> list[str]:
    """The Sphinx roles printed as text in a page's HTML (empty when there are none)."""
    return [m.group(0) for m in RAW_ROLE.finditer(html)]


def on_page_content(html: str, page: Any, **kwargs: Any) -> str:
    """mkdocs event: fail the build when a page shows a raw Sphinx role."""
    from mkdocs.exceptions import PluginError

    found = raw_roles(html)
    if found:
        raise PluginError(
            f"{page.file.src_path} shows Sphinx roles as text: {found[:5]} (write "
            "[`name`][full.path] cross-references, or check tools/docs_griffe.py)"
        )
    return html
