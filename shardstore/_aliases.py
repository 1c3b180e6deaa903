"""The module paths of earlier releases, kept as aliases of the modules' places today.

Code written against the flat package (``import shardstore.manifest``,
``from shardstore.tfops import decode_block``) keeps working: a finder on
``sys.meta_path`` answers each old dotted name with the very module object that
lives at the new one, so ``shardstore.manifest is shardstore.format.manifest``.
Nothing is imported until an old name is asked for.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import Sequence

__all__ = ["OLD_PATHS", "install"]

_LAYERS = {
    "format": ("blocks", "manifest", "ragged"),
    "storage": (
        "caches",
        "checksum",
        "commit",
        "faults",
        "fsutil",
        "garbage",
        "integrity",
        "locks",
        "progress",
        "safefs",
    ),
    "writing": (
        "adopt",
        "arrayfiles",
        "convert",
        "ingest",
        "labels",
        "merge",
        "npyfiles",
        "parallel",
        "resumable",
        "writer",
    ),
    "reading": ("pipeline", "random_access", "reader", "remote", "tfexit"),
    "sources": ("tfops",),
    "cli": ("bench", "demo", "plot", "summary"),
}

#: old dotted name -> the module's place today
OLD_PATHS: dict[str, str] = {
    f"shardstore.{name}": f"shardstore.{layer}.{name}"
    for layer, names in _LAYERS.items()
    for name in names
}


class _AliasLoader(importlib.abc.Loader):
    """Hands the module at the new path to the import system, unchanged."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = importlib.import_module(self.target)
        self.spec = module.__spec__
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        # The import system has just stamped the old name's spec on the module; the
        # module keeps its own (its name, its file), so it stays one module, not two.
        module.__spec__ = self.spec


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        new = OLD_PATHS.get(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(new))


class _Package(types.ModuleType):
    """The ``shardstore`` package: an old module path imported never hides an attribute.

    ``import shardstore.merge`` would otherwise replace the function
    ``shardstore.merge`` by the module (the import system sets every imported
    submodule on its parent). Old names are resolved by the package's
    ``__getattr__`` instead.
    """

    def __setattr__(self, name: str, value: object) -> None:
        if isinstance(value, types.ModuleType) and OLD_PATHS.get(f"shardstore.{name}") == (
            value.__name__
        ):
            return
        super().__setattr__(name, value)


def install(package: types.ModuleType) -> None:
    """Put the finder on ``sys.meta_path`` (once) and guard ``package``'s attributes."""
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.append(_AliasFinder())
    package.__class__ = _Package


def resolve(name: str) -> types.ModuleType | None:
    """The module an old top-level name (``"manifest"``) stands for, or ``None``."""
    new = OLD_PATHS.get(f"shardstore.{name}")
    return importlib.import_module(new) if new is not None else None
