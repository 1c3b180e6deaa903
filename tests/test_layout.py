"""The package layout: one folder per layer, and lower layers never import higher ones.

Every module of ``shardstore/`` is parsed (never imported) and each ``import`` in it is
checked, wherever it stands: at module level, inside a function (a lazy import is still a
dependency) or under ``if TYPE_CHECKING:`` (an annotation ties the layers together too).

* ``format/`` (what is on disk) imports nothing of shardstore but :mod:`shardstore.errors`;
* ``storage/`` imports only ``format/`` and :mod:`shardstore.errors`;
* ``sources/`` import only ``format/``, ``storage/``, :mod:`shardstore.errors` and the
  shared part of ``sources/`` (:mod:`~shardstore.sources.base`, the contract, and
  :mod:`~shardstore.sources.tfops`, TensorFlow helpers for plugins); the one built-in that
  imports another is ``memmap``, which reads the very files ``npy`` writes
  (``reads = {"npy"}``) and shares its header parsing;
* ``reading/`` never imports ``writing/``, ``cli/``, ``testing/`` or the public surface
  (``api``, the package); like ``writing/``, it may use the plugin registry
  (:mod:`shardstore.registry`) and ``shardstore._version``;
* ``writing/`` never imports ``reading/``, ``cli/`` or ``testing/``, with one exception,
  listed in :data:`HANDS_BACK`: a write returns the dataset it committed, a
  :class:`~shardstore.Dataset` (``reading.reader``), and ``merge`` and ``convert``, which
  read datasets to write another, open them with :func:`shardstore.open` (``api``);
* no import cycle among modules, at import time or through lazy imports.
"""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

from shardstore import _aliases

PACKAGE = Path(__file__).resolve().parent.parent / "shardstore"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _target(name: str) -> str:
    """The module ``name`` stands for: itself, or the longest module that contains it."""
    while name not in MODULES and "." in name:
        name = name.rpartition(".")[0]
    return name


def _imports(module: str) -> list[tuple[str, int, bool]]:
    """``(imported module, line, at module level)`` for every shardstore import in ``module``."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for stmt in child.body:
                    visit_one(stmt, False)
                for stmt in child.orelse:
                    visit_one(stmt, top)
            else:
                visit_one(child, top)

    def visit_one(node: ast.AST, top: bool) -> None:
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".")
                pkg = pkg if is_package else pkg[:-1]
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join([*pkg, base] if base else pkg)
            # `from package import submodule` imports the submodule
            names = [f"{base}.{a.name}" for a in node.names]
        for name in names:
            if name == "shardstore" or name.startswith("shardstore."):
                found.append((_target(name), getattr(node, "lineno", 0), top))
        inner = top and not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        visit(node, inner)

    visit(tree, True)
    return found


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 2 and parts[1] in {"format", "storage", "sources", "reading", "writing"}:
        return parts[1]
    if len(parts) > 1 and parts[1] in {"cli", "testing"}:
        return parts[1]
    if module in {"shardstore.format", "shardstore.storage", "shardstore.sources"}:
        return parts[1]
    if module in {"shardstore.reading", "shardstore.writing"}:
        return parts[1]
    return module  # the public surface: each top-level module on its own


ERRORS = "shardstore.errors"
SOURCES_SHARED = {"shardstore.sources", "shardstore.sources.base", "shardstore.sources.tfops"}
SHARED = {"shardstore.registry", "shardstore._version"}
_DATASET = "shardstore.reading.reader"
#: The write side's imports of the read side: the committed dataset it hands back.
HANDS_BACK = {
    ("shardstore.writing.adopt", _DATASET),
    ("shardstore.writing.ingest", _DATASET),
    ("shardstore.writing.resumable", _DATASET),
    ("shardstore.writing.writer", _DATASET),
    ("shardstore.writing.merge", _DATASET),
    ("shardstore.writing.merge", "shardstore.api"),
    ("shardstore.writing.convert", _DATASET),
    ("shardstore.writing.convert", "shardstore.api"),
}


def _allowed(importer: str, imported: str) -> bool:
    here, there = _layer(importer), _layer(imported)
    if imported == ERRORS or (here == there and here not in {"sources"}):
        return True
    if here == "format":
        return False
    if here == "storage":
        return there == "format"
    if here == "sources":
        if there in {"format", "storage"} or imported in SOURCES_SHARED:
            return True
        return (importer, imported) == ("shardstore.sources.memmap", "shardstore.sources.npy")
    if here == "writing" and (importer, imported) in HANDS_BACK:
        return True
    if here in {"reading", "writing"}:
        return there in {"format", "storage", "sources"} or imported in SHARED
    return True  # the public surface, cli/ and testing/ may use any layer


def test_every_module_lives_in_its_layer() -> None:
    top = sorted(
        m
        for m in MODULES
        if m.count(".") == 1
        and m.rpartition(".")[2]
        not in {"format", "storage", "sources", "reading", "writing", "cli", "testing"}
    )
    assert top == [
        "shardstore.__main__",
        "shardstore._aliases",
        "shardstore._version",
        "shardstore.api",
        "shardstore.errors",
        "shardstore.registry",
    ]


def test_lower_layers_never_import_higher_ones() -> None:
    wrong = [
        f"{MODULES[m].relative_to(PACKAGE.parent)}:{line} imports {imported}"
        for m in MODULES
        for imported, line, _top in _imports(m)
        if not _allowed(m, imported)
    ]
    assert wrong == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append([*stack[stack.index(n) :], n])
            elif n not in state:
                walk(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            walk(m)
    return cycles


def test_no_import_cycle_at_import_time() -> None:
    graph = {m: {i for i, _line, top in _imports(m) if top and i != m} for m in MODULES}
    assert _cycles(graph) == []


def test_no_import_cycle_even_through_lazy_imports() -> None:
    """Modules that import each other inside functions or for annotations only are still
    tangled: each needs the other to be understood. None do."""
    graph = {m: {i for i, _line, _top in _imports(m) if i != m} for m in MODULES}
    assert _cycles(graph) == []


@pytest.mark.parametrize("old", sorted(_aliases.OLD_PATHS))
def test_old_module_paths_are_the_new_modules(old: str) -> None:
    new = _aliases.OLD_PATHS[old]
    assert new in MODULES
    assert importlib.import_module(old) is importlib.import_module(new)
    assert sys.modules[old] is sys.modules[new]
    assert sys.modules[new].__name__ == new
    spec = sys.modules[new].__spec__
    assert spec is not None and spec.name == new


def test_old_paths_in_from_imports_and_attributes() -> None:
    from shardstore.manifest import Manifest  # type: ignore[import-not-found]

    import shardstore
    from shardstore.tfops import decode_block  # type: ignore[import-not-found]

    assert Manifest is shardstore.format.manifest.Manifest
    assert decode_block is shardstore.sources.tfops.decode_block
    assert shardstore.safefs is shardstore.storage.safefs  # attribute access resolves too


def test_old_module_paths_never_hide_the_public_functions() -> None:
    import shardstore

    write, merge, convert, ingest = (
        shardstore.write,
        shardstore.merge,
        shardstore.convert,
        shardstore.ingest,
    )
    for name in ("merge", "convert", "ingest", "writer"):
        importlib.import_module(f"shardstore.{name}")
    assert (shardstore.write, shardstore.merge, shardstore.convert, shardstore.ingest) == (
        write,
        merge,
        convert,
        ingest,
    )
    assert callable(shardstore.merge) and callable(shardstore.ingest)


def test_names_that_left_the_remote_module_name_their_new_place() -> None:
    with pytest.raises(ImportError, match=r"shardstore\.reading\.reader\.open_remote"):
        from shardstore.remote import open_remote  # type: ignore[import-not-found]  # noqa: F401
    with pytest.raises(ImportError, match=r"shardstore\.writing\.remote\.RemoteWrite"):
        from shardstore.reading.remote import RemoteWrite  # noqa: F401


def test_typing_stubs_only_for_old_paths() -> None:
    """Type checkers do not run the alias finder; the few ``.pyi`` stubs at the top level
    (the old paths the plugin guide named) each point at the module the alias names."""
    stubs = sorted(PACKAGE.glob("*.pyi"))
    assert [p.stem for p in stubs] == ["safefs", "tfops"]
    for stub in stubs:
        new = _aliases.OLD_PATHS[f"shardstore.{stub.stem}"]
        assert f"from {new} import *" in stub.read_text()


def test_the_hdf5_plugin_imports_old_paths_and_gets_the_modules() -> None:
    """The third-party plugin (unchanged) imports ``shardstore.safefs`` and
    ``shardstore.tfops``; its own suite runs with the rest of the tests."""
    pytest.importorskip("shardstore_hdf5")
    import shardstore_hdf5.source as hdf5

    from shardstore.storage import safefs

    assert hdf5.check_regular is safefs.check_regular
    assert sys.modules["shardstore.safefs"] is safefs


def test_an_unknown_old_name_is_still_an_error() -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("shardstore.no_such_module")
    import shardstore

    with pytest.raises(AttributeError):
        _ = shardstore.no_such_module
