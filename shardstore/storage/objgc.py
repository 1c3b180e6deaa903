"""Garbage collection on an object store: decided from one listing, no locks.

What it removes, and when (``docs/format.md`` has the protocol; the local-directory
rules in :mod:`shardstore.storage.garbage` are the same, with leases instead of file locks):

===========================================  =============================================
what                                         removed
===========================================  =============================================
``v-<id>/`` whose writer's lease is stale    at once (a writer killed before its commit)
(not refreshed for ``writer_timeout``)
``v-<id>/`` superseded by an overwrite       once ``grace`` seconds have passed since the
(marker in ``.shardstore/retired/``)         overwrite (default 24 h)
``v-<id>/`` of unknown origin (not           marked retired on first sight, then as above
referenced, no marker, no lease)
stale leases, markers of removed versions    at once
===========================================  =============================================

Never removed: anything ``manifest.json`` references (read again just before each
deletion), a version whose lease is fresh, and anything at all while ``manifest.json``
exists but cannot be read.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict

from shardstore.errors import InvalidInputError
from shardstore.format.manifest import MANIFEST_NAME, Manifest
from shardstore.storage.base import ObjectInfo, Store
from shardstore.storage.garbage import GcReport
from shardstore.storage.layout import (
    LEASES,
    RETIRED,
    VERSION_DIR,
    default_grace,
    referenced_prefixes,
    writer_timeout,
)

__all__ = ["collect"]

log = logging.getLogger(__name__)

_MANIFEST_LIMIT = 1 << 30


def _current(store: Store) -> tuple[bool, set[str] | None]:
    """``(exists, referenced prefixes)``; ``None`` when a manifest exists but cannot be read."""
    try:
        data = store.get(MANIFEST_NAME, max_size=_MANIFEST_LIMIT)
    except FileNotFoundError:
        return False, set()
    try:
        return True, referenced_prefixes(Manifest.from_json(data))
    except Exception as exc:
        log.warning("cannot read the manifest of %s (%s): collecting nothing", store.url, exc)
        return True, None


def collect(store: Store, *, grace: float | None = None, dry_run: bool = False) -> GcReport:
    """Remove what killed writers and superseded versions left under ``store``.

    Parameters
    ----------
    store : the dataset's object store.
    grace : seconds a superseded version is kept after the overwrite that replaced it
        (default ``$SHARDSTORE_GC_GRACE_SECONDS`` or 24 hours); ``0`` removes every
        superseded version now.
    dry_run : only report.
    """
    if grace is None:
        grace = default_grace()
    if isinstance(grace, bool) or not isinstance(grace, int | float) or not grace >= 0:
        raise InvalidInputError(f"grace must be a number of seconds >= 0, got {grace!r}")
    report = GcReport()
    now = time.time()
    timeout = writer_timeout()
    versions: dict[str, list[ObjectInfo]] = defaultdict(list)
    leases: dict[str, ObjectInfo] = {}
    markers: dict[str, ObjectInfo] = {}
    for info in store.list():
        head, _, rest = info.key.partition("/")
        if VERSION_DIR.fullmatch(head) and rest:
            versions[head].append(info)
        elif info.key.startswith(LEASES) and info.key.endswith(".json"):
            leases[info.key[len(LEASES) : -len(".json")]] = info
        elif info.key.startswith(RETIRED):
            markers[info.key[len(RETIRED) :]] = info
    _, referenced = _current(store)
    if referenced is None:
        return report
    doomed: dict[str, list[str]] = {}  # version (or "") -> keys
    retire: list[str] = []
    for name in sorted(versions):
        if name in referenced:
            continue
        version_id = name[2:]
        lease = leases.get(version_id)
        if lease is not None and now - lease.mtime < timeout:
            report.in_progress.append(version_id)
            continue
        keys = [o.key for o in versions[name]]
        marker = markers.get(name)
        if marker is not None:
            age = now - marker.mtime
            if age >= grace:
                doomed[name] = [*keys, marker.key]
            else:
                report.kept_retired.append((name, grace - age))
        elif lease is not None or grace == 0:
            doomed[name] = keys  # a writer killed before its commit, or all asked for
        else:
            report.kept_retired.append((name, grace))  # unknown origin: start the clock
            retire.append(name)
    for version_id, lease in leases.items():
        if f"v-{version_id}" not in versions and now - lease.mtime >= timeout:
            doomed.setdefault("", []).append(lease.key)
        elif f"v-{version_id}" in doomed:
            doomed[f"v-{version_id}"].append(lease.key)
    for name, marker in markers.items():
        if name in referenced or (name not in versions and name not in doomed):
            doomed.setdefault("", []).append(marker.key)  # stale: nothing to retire
    report.removed = sorted(
        {f"{v}/" if k.startswith(f"{v}/") else k for v, ks in doomed.items() for k in ks}
    )
    if dry_run:
        return report
    for name in retire:
        store.put(f"{RETIRED}{name}", b'{"retired_at": "first seen by gc"}')
    if doomed:
        # a version that a manifest committed since the listing references is not garbage
        _, still = _current(store)
        if still is None:
            return report
        for name, keys in doomed.items():
            if name in still:
                continue
            sizes = {o.key: o.size for o in versions.get(name, [])}
            store.delete(keys)
            report.bytes_freed += sum(sizes.get(k, 0) for k in keys)
    if report.removed:
        log.info("gc %s: removed %d item(s), %d bytes", store.url, len(report.removed),
                 report.bytes_freed)  # fmt: skip
    return report
