"""Griffe extensions for the documentation build (``mkdocs.yml`` loads them).

**Sphinx roles.** Docstrings name other objects the way Python docstrings
usually do, with Sphinx roles (``:meth:`Dataset.to_tf```,
``:func:`~shardstore.storage.progress.progress_bar```), which mkdocstrings would
print as they are. :class:`SphinxRoles` turns each one
into a cross-reference once the package is loaded: the name is resolved in the
docstring's own scope (its class, its module's imports), and the reference is
*optional*: a link where the target has a page, plain code where it has none
(a private helper, ``numpy.ndarray``). A role naming a shardstore object that
does not exist is a warning, so ``mkdocs build --strict`` fails on it.

**Compact parameters.** Some shardstore docstrings use a compact NumPy style for parameters and
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

import html
import re
from collections.abc import Callable, Iterator
from typing import Any, cast

import griffe

logger = griffe.logger

__all__ = ["CompactNumpyParams", "SphinxRoles", "expand_compact_params", "replace_roles"]

#: ``:role:`target``` and ``:role:`~target``` (``:py:meth:`` too): what Sphinx writes.
ROLE = re.compile(
    r":(?:py:)?(?P<role>meth|func|attr|mod|class|data|exc|obj|const|type):`(?P<target>[^`]+)`"
)

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


def replace_roles(docstring: str, resolve: Callable[[str], str | None]) -> str:
    """Turn the Sphinx roles of ``docstring`` into optional cross-references.

    Parameters
    ----------
    docstring : str
        The docstring's text.
    resolve : callable
        ``target -> full path`` of the object it names (``None``: not an
        object of the documented packages; the role becomes plain code).

    Returns
    -------
    str
        The text with ``<autoref identifier="PATH" optional><code>TITLE</code></autoref>``
        (mkdocs-autorefs: a link when ``PATH`` has a page) in place of each role.
        ``~`` shortens the title to the last name, as in Sphinx.
    """

    def one(match: re.Match[str]) -> str:
        target = match["target"].strip()
        short = target.startswith("~")
        target = target.lstrip("~.")
        title = target.rsplit(".", 1)[-1] if short else target
        code = f"<code>{html.escape(title)}</code>"
        path = resolve(target)
        if path is None:
            return code
        return f'<autoref identifier="{html.escape(path)}" optional>{code}</autoref>'

    return ROLE.sub(one, docstring)


def _resolver(obj: griffe.Object, root: griffe.Module) -> Callable[[str], str | None]:
    """``target -> full path`` in the scope of ``obj``; warns on a missing shardstore object."""

    def exists(path: str) -> bool:
        if path == root.path:
            return True
        try:
            root.get_member(path.removeprefix(f"{root.path}."))
        except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            return False
        return True

    def resolve(target: str) -> str | None:
        first, _, rest = target.partition(".")
        candidates = []
        try:
            scoped = obj.resolve(first)
            candidates.append(f"{scoped}.{rest}" if rest else scoped)
        except griffe.NameResolutionError:
            pass
        scope = obj if obj.is_class or obj.is_module else obj.parent
        while scope is not None:  # a member of the class or module, named without a prefix
            candidates.append(f"{scope.path}.{target}")
            scope = scope.parent
        candidates.append(target)
        for path in candidates:
            if path.split(".", 1)[0] == root.path and exists(path):
                return path
        if target.split(".", 1)[0] == root.path:
            logger.warning("%s: the docstring names %r, which does not exist", obj.path, target)
        return None

    return resolve


def _documented(obj: griffe.Object) -> Iterator[griffe.Object]:
    """``obj`` and every member defined in it (aliases belong to their own module)."""
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _documented(cast(griffe.Object, member))


class SphinxRoles(griffe.Extension):
    """Render Sphinx roles as cross-references (see the module docstring)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        """Rewrite every docstring of the loaded package, now that every name resolves."""
        for obj in _documented(pkg):
            if obj.docstring is not None and ROLE.search(obj.docstring.value):
                obj.docstring.value = replace_roles(obj.docstring.value, _resolver(obj, pkg))
