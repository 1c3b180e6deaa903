"""Discovery and lazy loading of source plugins.

Sources are registered under the entry-point group ``shardstore.sources``,
built-ins included (see ``pyproject.toml``)::

    [project.entry-points."shardstore.sources"]
    npy = "shardstore.sources.npy:NpySource"

Entry points are *listed* on first use and a plugin is *imported* only when
its name is asked for, so ``import shardstore`` imports no plugin. The rules:

* a name claimed by two distributions is a :class:`PluginConflictError`
  naming both, raised when that name is used (never a silent pick);
* a plugin that fails to import raises :class:`PluginLoadError` naming the
  plugin and its distribution; every other plugin keeps working;
* ``SHARDSTORE_DISABLE_PLUGIN_AUTOLOAD=1`` restricts discovery to the
  sources that ship with shardstore itself.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from types import MappingProxyType
from typing import TYPE_CHECKING

from shardstore.errors import PluginConflictError, PluginLoadError, SourceNotFoundError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from shardstore.sources.base import Source

__all__ = [
    "ENTRY_POINT_GROUP",
    "SourceInfo",
    "available_sources",
    "get_source",
    "refresh",
    "register_source",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "shardstore.sources"
_OWN_DISTRIBUTION = "shardstore"
_DISABLE_ENV = "SHARDSTORE_DISABLE_PLUGIN_AUTOLOAD"


@dataclass(frozen=True)
class SourceInfo:
    """What is known about an installed source without importing it.

    ``conflicts`` lists the other registrations of the same name; a source
    with conflicts cannot be used until one of them is uninstalled.
    """

    name: str
    target: str
    distribution: str | None
    version: str | None
    conflicts: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """``'<target> from <distribution> <version>'`` for messages."""
        dist = self.distribution or "an unknown distribution"
        ver = f" {self.version}" if self.version else ""
        return f"{self.target} (from {dist}{ver})"


_lock = threading.RLock()
_infos: dict[str, SourceInfo] | None = None
_entry_points: dict[str, EntryPoint] = {}
_loaded: dict[str, Source] = {}
_registered: dict[str, type[Source]] = {}


def _describe(ep: EntryPoint) -> tuple[str | None, str | None]:
    dist = ep.dist
    if dist is None:
        return None, None
    return dist.metadata["Name"], dist.version


def _discover() -> dict[str, SourceInfo]:
    global _infos
    with _lock:
        if _infos is not None:
            return _infos
        only_builtin = os.environ.get(_DISABLE_ENV, "").strip() not in ("", "0", "false")
        by_name: dict[str, list[tuple[EntryPoint, str | None, str | None]]] = {}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            dist, version = _describe(ep)
            if only_builtin and dist != _OWN_DISTRIBUTION:
                log.debug("plugin autoload disabled: skipping %s from %s", ep.name, dist)
                continue
            claims = by_name.setdefault(ep.name, [])
            if any(d == dist and e.value == ep.value for e, d, _ in claims):
                continue  # the same distribution seen twice on sys.path
            claims.append((ep, dist, version))
        infos: dict[str, SourceInfo] = {}
        _entry_points.clear()
        for name, claims in by_name.items():
            labels = [SourceInfo(name, e.value, d, v).label for e, d, v in claims]
            ep, dist, version = claims[0]
            infos[name] = SourceInfo(name, ep.value, dist, version, tuple(labels[1:]))
            _entry_points[name] = ep
        for name, cls in _registered.items():
            infos[name] = SourceInfo(name, f"{cls.__module__}:{cls.__qualname__}", None, None)
        _infos = infos
        return infos


def available_sources() -> Mapping[str, SourceInfo]:
    """The installed sources, by name (a read-only view; nothing is imported)."""
    return MappingProxyType(dict(_discover()))


def get_source(name: str) -> Source:
    """The source registered as ``name``, imported and instantiated on first use.

    Raises
    ------
    SourceNotFoundError
        No installed plugin has that name.
    PluginConflictError
        Two distributions claim the name.
    PluginLoadError
        The plugin failed to import or is not a :class:`~shardstore.sources.base.Source`.
    """
    with _lock:
        if name in _loaded:
            return _loaded[name]
        infos = _discover()
        if name not in infos:
            installed = ", ".join(sorted(infos)) or "none"
            hint = ""
            if not infos:
                hint = " (is shardstore installed? `pip install -e .` registers the built-ins)"
            raise SourceNotFoundError(
                f"no shardstore source named {name!r}; installed sources: {installed}{hint}"
            )
        info = infos[name]
        if info.conflicts:
            claims = " and ".join((info.label, *info.conflicts))
            raise PluginConflictError(
                f"source name {name!r} is registered by more than one plugin: {claims}. "
                "Uninstall one of them."
            )
        cls = _registered.get(name) or _import(info)
        try:
            source = cls()
        except Exception as exc:
            raise PluginLoadError(f"source plugin {info.label} failed to start: {exc}") from exc
        _loaded[name] = source
        return source


def _import(info: SourceInfo) -> type[Source]:
    from shardstore.sources.base import Source

    ep = _entry_points[info.name]
    try:
        obj = ep.load()
    except Exception as exc:
        raise PluginLoadError(
            f"source plugin {info.name!r}, {info.label}, failed to import: "
            f"{type(exc).__name__}: {exc}. Reinstall or uninstall "
            f"{info.distribution or 'it'}; other sources are unaffected."
        ) from exc
    if not (isinstance(obj, type) and issubclass(obj, Source)):
        raise PluginLoadError(
            f"source plugin {info.name!r}, {info.label}, is not a shardstore.sources.Source class"
        )
    if obj.name != info.name:
        raise PluginLoadError(
            f"source plugin {info.label} is registered as {info.name!r} but its class "
            f"says name = {obj.name!r}"
        )
    return obj


def register_source(cls: type[Source]) -> type[Source]:
    """Register a source class in-process, without an entry point.

    Meant for tests and notebooks; distributions should use the entry point.
    Usable as a class decorator. Returns ``cls``.
    """
    from shardstore.sources.base import Source

    if not (isinstance(cls, type) and issubclass(cls, Source)):
        raise TypeError(f"{cls!r} is not a Source subclass")
    with _lock:
        _registered[cls.name] = cls
        _loaded.pop(cls.name, None)
        refresh()
    return cls


def refresh() -> None:
    """Forget what was discovered and loaded (after installing a plugin at run time)."""
    global _infos
    with _lock:
        _infos = None
        _loaded.clear()
        _entry_points.clear()
