"""The documentation site stays true to the code: tables, generated pages, links, nav.

``make docs`` (part of ``make test``) builds the site with ``--strict``; these
tests check what a successful build cannot: that the capability table agrees
with the source classes, that the CLI reference covers every command, that
the README's links resolve, and that every page is in the navigation.
"""

from __future__ import annotations

import importlib.util
import re
from types import ModuleType

import pytest
import yaml
from markdown_blocks import ROOT

import shardstore
from shardstore.cli import app as cli_app
from shardstore.cli import inspection as cli_inspection

DOCS = ROOT / "docs"


def _tool(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- choosing a source: the capability table ----------------------------------------------------
def _capability_table() -> dict[str, dict[str, bool | str]]:
    """``source -> flag -> bool`` from the table under '## Capabilities' in docs/sources.md.

    ``yes, via `memmap``` is recorded as ``"memmap"``: a companion source provides it.
    """
    text = (DOCS / "sources.md").read_text(encoding="utf-8")
    section = text.split("## Capabilities", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    header = [c.strip().strip("`") for c in rows[0].strip("|").split("|")]
    table = {}
    for row in rows[2:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        name = re.match(r"`([^`]+)`", cells[0])
        assert name, row
        flags = {}
        for flag in ("tf_native", "random_access", "supports_ragged"):
            value = cells[header.index(flag)]
            via = re.fullmatch(r"yes, via `(\w+)`", value)
            assert value in ("yes", "no") or via, row
            flags[flag] = via[1] if via else value == "yes"
        table[name[1]] = flags
    return table


def test_capability_table_matches_the_source_classes() -> None:
    table = _capability_table()
    installed = shardstore.available_sources()
    assert set(installed) <= set(table), (
        f"sources missing from the table: {set(installed) - set(table)}"
    )
    for name, flags in table.items():
        assert name in installed, f"{name} is documented but not installed"
        source = shardstore.get_source(name)
        own = {k: v for k, v in flags.items() if isinstance(v, bool)}
        assert {k: source.capabilities()[k] for k in own} == own, name
        for flag, companion in flags.items():
            if isinstance(companion, str):  # what `shardstore plugins` says: yes (via ...)
                assert not source.capabilities()[flag] and source.random_access_source == companion
                assert cli_inspection._describe_plugin(installed[name])["via"] == {flag: companion}


# -- command line: generated reference ----------------------------------------------------------
def test_cli_reference_covers_every_command() -> None:
    hooks = _tool("docs_hooks")
    text = hooks.cli_reference_markdown()
    parser = cli_app._build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, command in sub.choices.items():
        heading = f"### `shardstore {name}`"
        assert heading in text, name
        section = text.split(heading, 1)[1].split("\n### ", 1)[0]
        assert f"usage: shardstore {name} " in section
        assert all(len(line) <= hooks.HELP_COLUMNS for line in section.splitlines())
        for action in command._actions:
            for option in action.option_strings:
                assert option in section, (name, option)
    assert hooks.CLI_MARKER in (DOCS / "cli.md").read_text(encoding="utf-8")
    page = hooks.on_page_markdown(f"# CLI\n\n{hooks.CLI_MARKER}\n")
    assert hooks.CLI_MARKER not in page
    assert "### `shardstore verify`" in page


# -- API reference: compact NumPy-style parameters ---------------------------------------------
def test_compact_parameter_lines_become_descriptions() -> None:
    expand = _tool("docs_griffe").expand_compact_params
    doc = (
        "Summary.\n\nParameters\n----------\npath : the dataset directory.\n"
        'shard_size : target bytes (``"64MiB"``), or\n    more text\n'
        "count : int\n    A count.\nflag : bool, optional\n    A flag.\n"
        "\nReturns\n-------\nout : the result.\n"
    )
    assert expand(doc) == (
        "Summary.\n\nParameters\n----------\npath\n    the dataset directory.\n"
        'shard_size\n    target bytes (``"64MiB"``), or\n    more text\n'
        "count : int\n    A count.\nflag : bool, optional\n    A flag.\n"
        "\nReturns\n-------\nout : the result."  # only parameter and attribute sections
    )


# -- API reference: Sphinx roles become cross-references -----------------------------------------
def test_sphinx_roles_become_optional_cross_references() -> None:
    replace = _tool("docs_griffe").replace_roles
    paths = {"Dataset.to_tf": "shardstore.reading.reader.Dataset.to_tf", "x.y": "shardstore.x.y"}
    doc = (
        "See :meth:`Dataset.to_tf` and :func:`~x.y`, :py:class:`numpy.ndarray`; "
        "``:meth:`` in code stays."
    )
    assert replace(doc, paths.get) == (
        'See <autoref identifier="shardstore.reading.reader.Dataset.to_tf" optional>'
        "<code>Dataset.to_tf</code></autoref> and "
        '<autoref identifier="shardstore.x.y" optional><code>y</code></autoref>, '
        "<code>numpy.ndarray</code>; ``:meth:`` in code stays."
    )


def test_every_docstring_role_resolves(caplog: pytest.LogCaptureFixture) -> None:
    """Load the package as the docs build does: no role is left, none names a missing object."""
    import griffe

    tools = _tool("docs_griffe")
    with caplog.at_level("WARNING"):
        package = griffe.load(
            "shardstore",
            search_paths=[str(ROOT)],
            extensions=griffe.load_extensions(tools.CompactNumpyParams, tools.SphinxRoles),
        )
    assert not [r.getMessage() for r in caplog.records if "does not exist" in r.getMessage()]
    left = [
        obj.path
        for obj in tools._documented(package)
        if obj.docstring is not None and tools.ROLE.search(obj.docstring.value)
    ]
    assert not left
    to_tf = package["reading.reader.Dataset.to_tf"].docstring.value
    assert '<autoref identifier="shardstore.' in package["cli"].docstring.value
    assert ":meth:" not in to_tf and ":func:" not in to_tf


def test_a_raw_role_on_a_page_fails_the_build() -> None:
    from mkdocs.exceptions import PluginError

    hooks = _tool("docs_hooks")

    class Page:
        class file:  # the shape of mkdocs' page.file
            src_path = "api.md"

    html = "<p>Use :meth:<code>Dataset.to_tf</code> and :mod:`shardstore.writing.parallel`</p>"
    assert hooks.raw_roles(html) == [
        ":meth:<code>Dataset.to_tf",
        ":mod:`shardstore.writing.parallel",
    ]
    with pytest.raises(PluginError, match=r"api\.md shows Sphinx roles as text"):
        hooks.on_page_content(html, page=Page)
    fine = '<p><a class="autorefs"><code>Dataset.to_tf</code></a> costs 2:30 min</p>'
    assert hooks.on_page_content(fine, page=Page) == fine
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    python = config["plugins"][1]["mkdocstrings"]["handlers"]["python"]["options"]
    assert "tools/docs_griffe.py:SphinxRoles" in python["extensions"]


# -- user-facing text speaks of the product, not of how it is built --------------------------
def _help_texts() -> dict[str, str]:
    parser = cli_app._build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    texts = {"shardstore --help": parser.format_help()}
    texts.update({f"shardstore {n} --help": c.format_help() for n, c in sub.choices.items()})
    return texts


def _package_strings() -> dict[str, str]:
    """Every string literal of the package and the plugin: messages, docstrings, help."""
    import ast

    out = {}
    for base in (ROOT / "shardstore", ROOT / "plugins"):
        for path in sorted(base.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    out[f"{path.relative_to(ROOT)}:{node.lineno}"] = node.value
    return out


def test_user_facing_text_has_no_internal_notes() -> None:
    """README, docs, CLI help, messages and docstrings: no agents, sessions, issue numbers..."""
    from benchmarks.results import INTERNAL_WORDS

    texts = {
        p.name: p.read_text(encoding="utf-8") for p in [ROOT / "README.md", *DOCS.glob("*.md")]
    }
    texts["plugins/shardstore-hdf5/README.md"] = (
        ROOT / "plugins/shardstore-hdf5/README.md"
    ).read_text(encoding="utf-8")
    texts.update(_help_texts())
    texts.update(_package_strings())
    found = {
        where: match.group(0)
        for where, text in texts.items()
        if (match := INTERNAL_WORDS.search(text))
    }
    assert not found, found
    for sample in ("one helper agent may have been running", "each target of issue 4",
                   "see DESIGN.md", "in this session", "the design study"):  # fmt: skip
        assert INTERNAL_WORDS.search(sample), sample
    for fine in ("the design of the format", "helper functions", "an issue with the disk"):
        assert not INTERNAL_WORDS.search(fine), fine


# -- README and navigation ---------------------------------------------------------------------
def test_readme_links_resolve() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if not re.match(r"[a-z]+:", link)]
    assert "docs/getting-started.md" in local
    for link in local:
        assert (ROOT / link).exists(), f"README links to missing {link}"


def _nav_files(nav: list[object]) -> list[str]:
    out: list[str] = []
    for item in nav:
        values = item.values() if isinstance(item, dict) else [item]
        for value in values:
            out.extend(_nav_files(value) if isinstance(value, list) else [str(value)])
    return out


def test_every_page_is_in_the_nav() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    nav = _nav_files(config["nav"])
    pages = sorted(p.name for p in DOCS.glob("*.md"))
    assert sorted(nav) == sorted(set(nav)), "a page is listed twice"
    missing = [p for p in pages if p not in nav]
    assert not missing, f"add {missing} to the nav of mkdocs.yml"
    assert all((DOCS / p).exists() for p in nav)


@pytest.mark.parametrize("target", ["make test", "make docs"])
def test_make_builds_the_site_strictly(target: str) -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "mkdocs build --strict" in makefile
    rule = target.split()[1]
    body = makefile.split(f"\n{rule}:", 1)[1].split("\n\n", 1)[0]
    assert ("$(MAKE) docs" in body) if rule == "test" else ("mkdocs build --strict" in body)
