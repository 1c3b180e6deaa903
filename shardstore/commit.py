"""The commit: publish a manifest atomically, then retire the previous version.

Shared by everything that creates a dataset (:class:`~shardstore.writer.Writer`,
:func:`~shardstore.adopt.index_tfrecords`). The steps, in order
(``docs/format.md``, section 9):

1. the manifest text goes to ``.manifest-<version_id>.tmp``, created
   exclusively and ``fsync``-ed;
2. :func:`~shardstore.fsutil.publish` makes it ``manifest.json``: create-only
   (``link``) for a first write, so a concurrent writer cannot be overwritten
   silently, ``replace`` for an overwrite; then the directory is ``fsync``-ed;
3. after an overwrite, the previous version's files that the new manifest
   does not use are removed (never through a path that leaves the dataset).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from shardstore.errors import ManifestError, ShardStoreError
from shardstore.fsutil import publish, remove_quietly, resolve_inside
from shardstore.manifest import MANIFEST_NAME, Manifest

__all__ = ["commit_manifest", "remove_previous", "staging_path"]

log = logging.getLogger(__name__)


def staging_path(root: Path, version_id: str) -> Path:
    """Where the manifest of ``version_id`` is staged before it is published."""
    return root / f".manifest-{version_id}.tmp"


def commit_manifest(
    root: Path, manifest: Manifest, *, overwrite: bool, fsync: bool
) -> Manifest | None:
    """Publish ``manifest`` as ``root/manifest.json``; return the version it replaced.

    Raises ``DatasetExistsError`` when ``overwrite`` is false and a dataset was
    committed at ``root`` first. The returned previous manifest (``None`` for
    a first write, or when it cannot be read) is for :func:`remove_previous`.
    """
    tmp = staging_path(root, manifest.version_id)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(manifest.to_json())
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    previous = _read_previous(root) if overwrite else None
    try:
        publish(tmp, root / MANIFEST_NAME, replace=overwrite)
    except BaseException:
        remove_quietly(tmp)
        raise
    return previous


def _read_previous(root: Path) -> Manifest | None:
    try:
        return Manifest.from_json((root / MANIFEST_NAME).read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ShardStoreError) as exc:
        log.warning("not cleaning up the previous version of %s: %s", root, exc)
        return None


def remove_previous(root: Path, old: Manifest, new: Manifest) -> None:
    """Delete the files of ``old`` that ``new`` does not use, and emptied directories."""
    keep = {f.path for s in new.shards for f in s.files}
    dirs: set[Path] = set()
    for shard in old.shards:
        for f in shard.files:
            if f.path in keep:
                continue
            try:
                target = resolve_inside(root, f.path)
            except ManifestError:
                continue  # never delete through a link that leaves the dataset
            remove_quietly(target)
            dirs.add(target.parent)
    real_root = root.resolve()
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            if d != real_root:
                d.rmdir()  # only if empty
