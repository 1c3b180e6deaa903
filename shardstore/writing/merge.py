"""Merge datasets written independently (same features) into one, without rewriting shards.

Jobs that write on many hosts without a shared driver each write a *part*
(an ordinary dataset, e.g. ``shardstore.write(f"parts/{rank}", ...)``);
:func:`merge` then builds one dataset whose shards are the parts' shards, in
the order the parts are given:

* every part must hold the same features (names, dtypes, per-record shapes)
  and shards the first part's source can read; a mismatch is an error naming
  the part and the feature, raised before anything is written;
* each shard file is **hard-linked** into the new dataset's ``v-<version_id>/``
  directory (no data copied, the parts stay valid), or **copied** when the
  filesystem refuses a link (another device; ``link="auto"``, the default);
* checksums are carried over from the parts' manifests: a copied file is
  hashed while it is copied and must match; a linked file is size-checked,
  and hashed too with ``verify=True``;
* the manifest is committed last and atomically (:mod:`shardstore.storage.commit`);
  on any failure the new files are removed, and the parts are never modified.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from shardstore.errors import (
    ChecksumError,
    DatasetExistsError,
    InvalidInputError,
)
from shardstore.format.blocks import INDEX_SUFFIX
from shardstore.format.manifest import MANIFEST_NAME, FeatureSpec, FileEntry, Manifest, ShardEntry
from shardstore.format.ragged import merge_length_stats
from shardstore.storage.checksum import CHUNK_BYTES, format_digest, new_hasher
from shardstore.storage.commit import Transaction, manifest_state
from shardstore.storage.fsutil import (
    HashingFile,
    link_into,
    make_dirs,
    remove_quietly,
    resolve_inside,
)
from shardstore.storage.progress import progress_bar
from shardstore.storage.safefs import open_binary

if TYPE_CHECKING:
    from shardstore.reading.reader import Dataset

__all__ = ["LINK_MODES", "link_or_copy", "merge"]

log = logging.getLogger(__name__)

#: Accepted values of ``merge(..., link=...)``.
LINK_MODES: Final = ("auto", "hardlink", "copy")

# os.link failures meaning "this filesystem will not hard-link this file": "auto" copies.
_NO_LINK_ERRNOS: Final = frozenset(
    {errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}
    | {errno.ENOSYS}
)
_SHARD_PATH = re.compile(r"^[^/]+/(\d{6})(.*)$")


def link_or_copy(
    src: Path,
    dst: Path,
    *,
    link: str,
    fsync: bool,
    expected: FileEntry | None = None,
    below: Path | None = None,
) -> bool:
    """Bring ``src`` in as the new file ``dst``; return True if hard-linked, False if copied.

    With ``expected``, a copy is hashed while written and must match its
    checksum and size (``ChecksumError`` otherwise, the copy removed).
    ``link="hardlink"`` raises ``InvalidInputError`` where ``"auto"`` would copy.
    ``dst``'s directory is reached from ``below`` without following links.
    """
    if link != "copy":
        try:
            link_into(src, dst, below=below)
            return True
        except OSError as exc:
            if exc.errno not in _NO_LINK_ERRNOS:
                raise
            if link == "hardlink":
                raise InvalidInputError(
                    f"cannot hard-link {str(src)!r} into {str(dst.parent)!r}: {exc.strerror}. "
                    "Hard links need both on the same filesystem; use link='copy' or link='auto'",
                    params=("link",),
                ) from None
            log.info("cannot hard-link %s (%s); copying it", src, exc.strerror)
    with open_binary(src) as fin, HashingFile(dst, fsync=fsync, below=below) as out:
        while piece := fin.read(CHUNK_BYTES):
            out.write(piece)
    if expected is not None and (out.checksum, out.size) != (expected.checksum, expected.size):
        remove_quietly(dst, below=below)
        raise ChecksumError(
            f"{str(src)!r} has checksum {out.checksum} and {out.size} bytes; its manifest "
            f"records {expected.checksum} and {expected.size} bytes",
            file=str(src),
        )
    return False


def _hash(path: Path) -> tuple[int, str]:
    hasher = new_hasher()
    size = 0
    with open_binary(path) as f:
        while piece := f.read(CHUNK_BYTES):
            hasher.update(piece)
            size += len(piece)
    return size, format_digest(hasher)


def _open_parts(parts: object, dest: Path) -> list[Dataset]:
    from shardstore.api import open as open_dataset

    if isinstance(parts, str | os.PathLike) or not isinstance(parts, Sequence):
        raise InvalidInputError(
            f"parts must be a list of dataset paths, got {type(parts).__name__}"
        )
    if not parts:
        raise InvalidInputError("nothing to merge: the list of parts is empty")
    opened: list[Dataset] = []
    seen: dict[str, str] = {}
    dest_real = os.path.realpath(dest)
    for part in parts:
        if not isinstance(part, str | os.PathLike):
            raise InvalidInputError(f"parts must be paths, got {part!r}")
        real = os.path.realpath(part)
        if real == dest_real:
            raise InvalidInputError(f"the destination {str(dest)!r} is also a part")
        if real in seen:
            raise InvalidInputError(f"part {str(part)!r} is listed twice (also as {seen[real]!r})")
        seen[real] = str(part)
        opened.append(open_dataset(part))
    return opened


def _damaged(part: Dataset, shard: ShardEntry, relpath: str, what: str) -> ChecksumError:
    return ChecksumError(
        f"part {str(part.path)!r}, shard {shard.index}: file {relpath!r} {what}",
        dataset=str(part.path),
        shard=shard.index,
        file=relpath,
    )


def _describe(spec: Any) -> str:
    return f"{spec.dtype.name} {tuple(spec.shape)}"


def _check_compatible(parts: Sequence[Dataset]) -> None:
    """Same features in every part, and shards the first part's source can read."""
    from shardstore.registry import get_source

    first = parts[0]
    reader = first.source
    for number, part in enumerate(parts[1:], start=2):
        where = f"part {number} ({str(part.path)!r})"
        ref = f"part 1 ({str(first.path)!r})"
        for name, spec in first.features.items():
            other = part.features.get(name)
            if other is None:
                raise InvalidInputError(f"{where} has no feature {name!r}, which {ref} has")
            if other != spec:
                raise InvalidInputError(
                    f"{where}: feature {name!r} is {_describe(other)}, "
                    f"in {ref} it is {_describe(spec)}"
                )
        extra = sorted(set(part.features) - set(first.features))
        if extra:
            raise InvalidInputError(f"{where} has feature {extra[0]!r}, which {ref} lacks")
        for written_by in part.manifest.sources:
            if not reader.can_read(written_by):
                get_source(written_by)  # a missing plugin is the clearer error
                raise InvalidInputError(
                    f"{where} was written by the {written_by!r} source, which the "
                    f"{reader.name!r} source of {ref} cannot read; convert it first "
                    f"(shardstore convert --format {reader.name})"
                )


def _merged_metadata(parts: Sequence[Dataset]) -> dict[str, Any]:
    """The user metadata every part agrees on (keys with one value in all parts)."""
    first = dict(parts[0].metadata)
    common = {
        key: value
        for key, value in first.items()
        if all(key in p.metadata and p.metadata[key] == value for p in parts[1:])
    }
    dropped = sorted(set().union(*(set(p.metadata) for p in parts)) - set(common))
    if dropped:
        log.info("merge: metadata keys differing between parts are dropped: %s", dropped)
    return common


def _new_path(prefix: str, index: int, shard: ShardEntry, path: str) -> str:
    """``v-<old>/000003.image.npy`` -> ``<prefix>/000012.image.npy``, keeping any tree."""
    m = _SHARD_PATH.match(path)
    if m and int(m.group(1)) == shard.index:
        return f"{prefix}/{index:06d}{m.group(2)}"
    return f"{prefix}/{index:06d}/{path}"  # another layout: kept whole under the shard


def _carry_index(
    part: Dataset,
    shard: ShardEntry,
    index: int,
    prefix: str,
    root: Path,
    files: Sequence[FileEntry],
    *,
    link: str,
    fsync: bool,
) -> FileEntry | None:
    """Bring ``shard``'s block index in as shard ``index``'s (linked or copied, checked).

    Sections of an index are found by file size and checksum, not by path, so
    the index stays valid for the renamed files. ``None`` when the shard has
    none (its files are then verified whole when read).
    """
    if shard.blocks is None:
        return None
    relpath = f"{prefix}/{index:06d}{INDEX_SUFFIX}"
    if any(f.path == relpath for f in files):  # a foreign layout took the name: go without
        return None
    src = resolve_inside(part.path, shard.blocks.path)
    try:
        linked = link_or_copy(src, root / relpath, link=link, fsync=fsync, expected=shard.blocks)
    except (ChecksumError, FileNotFoundError):
        raise _damaged(part, shard, shard.blocks.path, "does not match its manifest") from None
    if linked and (root / relpath).stat().st_size != shard.blocks.size:
        raise _damaged(part, shard, shard.blocks.path, "does not match its manifest")
    return FileEntry(relpath, shard.blocks.size, shard.blocks.checksum)


def _merged_features(parts: Sequence[Dataset]) -> dict[str, FeatureSpec]:
    """The parts' features; a ragged feature's length statistics summed over the parts."""
    out = dict(parts[0].features)
    for name, spec in out.items():
        if spec.is_ragged:
            stats = [p.features[name].lengths for p in parts]
            merged = merge_length_stats([s for s in stats if s is not None])
            out[name] = dataclasses.replace(
                spec, lengths=merged if all(s is not None for s in stats) else None
            )
    return out


def merge(
    parts: Sequence[str | os.PathLike[str]],
    dest: str | os.PathLike[str],
    *,
    link: str = "auto",
    verify: bool = False,
    overwrite: bool = False,
    metadata: Mapping[str, Any] | None = None,
    fsync: bool = True,
    progress: bool | None = None,
) -> Dataset:
    """Merge datasets with the same features into one new dataset at ``dest``.

    Parameters
    ----------
    parts : list of paths
        Committed datasets; their records appear in this order.
    dest : path
        The new dataset's directory (created if missing; not one of the parts).
    link : {"auto", "hardlink", "copy"}
        Hard-link shard files (``"hardlink"``), copy them (``"copy"``), or
        hard-link where possible and copy otherwise (``"auto"``).
    verify : bool
        Also re-hash hard-linked files against their checksums (copies are
        always hashed while copied; linked files are always size-checked).
    overwrite : bool
        Replace an existing dataset at ``dest`` (atomically).
    metadata : mapping, optional
        User metadata of the result; default: the keys on which all parts agree.
    fsync : bool
        Flush files and directories before committing (default True).
    progress : bool, optional
        Progress bar (default: only on a terminal).

    Returns
    -------
    Dataset
        The merged dataset, opened.

    Raises
    ------
    InvalidInputError
        No parts, a part listed twice or equal to ``dest``, a feature missing
        or different in a part (named), shards the result could not read.
    DatasetNotFoundError
        A part is not a dataset.
    ChecksumError
        A part's file does not match its manifest (missing, other size,
        other checksum).
    DatasetExistsError
        A dataset exists at ``dest`` and ``overwrite`` is False.
    """
    from shardstore.storage import require_local

    for location in (*parts, dest):
        require_local(location, "merge")
    from shardstore._version import __version__
    from shardstore.reading.reader import Dataset

    if link not in LINK_MODES:
        raise InvalidInputError(
            f"link must be one of {', '.join(LINK_MODES)}, got {link!r}", params=("link",)
        )
    root = Path(dest)
    if root.exists() and not root.is_dir():
        raise InvalidInputError(f"{root} exists and is not a directory")
    opened = _open_parts(parts, root)
    if not overwrite and (root / MANIFEST_NAME).exists():
        raise DatasetExistsError(
            f"a dataset already exists at {root}; pass overwrite=True to replace it",
            params=("overwrite",),
        )
    _check_compatible(opened)
    for part in opened:
        part.check_files()  # every file present with its size, before anything is written
    try:
        chosen = dict(metadata) if metadata is not None else _merged_metadata(opened)
        meta = json.loads(json.dumps(chosen, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"metadata must be JSON-serialisable: {exc}") from None

    version_id = secrets.token_hex(8)
    prefix = f"v-{version_id}"
    shards: list[ShardEntry] = []
    linked = copied = 0
    bar = progress_bar(total=sum(p.nbytes for p in opened), desc="merge", unit="B",
                       enabled=progress)  # fmt: skip
    # the commit succeeds only if manifest.json is still what it is now
    txn = Transaction(root, version_id, overwrite=overwrite, fsync=fsync, base=manifest_state(root))
    try:
        txn.begin()  # files go to .shardstore/staging/v-<id>/, renamed into place at commit
        for part in opened:
            for shard in part.shards:
                index = len(shards)
                files = []
                for f in shard.files:
                    relpath = _new_path(prefix, index, shard, f.path)
                    target = txn.shard_root / relpath
                    make_dirs(target.parent, below=root)
                    src = resolve_inside(part.path, f.path)
                    try:
                        was_linked = link_or_copy(
                            src, target, link=link, fsync=fsync, expected=f, below=root
                        )
                    except ChecksumError:
                        raise _damaged(
                            part, shard, f.path, f"does not match its checksum {f.checksum}"
                        ) from None
                    if was_linked:
                        linked += 1
                        size = target.stat().st_size
                        if size != f.size:
                            raise _damaged(
                                part,
                                shard,
                                f.path,
                                f"has {size} bytes, the manifest records {f.size}",
                            )
                        if verify and _hash(target)[1] != f.checksum:
                            raise _damaged(
                                part, shard, f.path, f"does not match its checksum {f.checksum}"
                            )
                    else:
                        copied += 1
                    files.append(FileEntry(relpath, f.size, f.checksum, f.feature, dict(f.info)))
                    bar.update(f.size)
                blocks = _carry_index(part, shard, index, prefix, txn.shard_root, files,
                                      link=link, fsync=fsync)  # fmt: skip
                shards.append(
                    ShardEntry(index, shard.source, shard.num_records, tuple(files), blocks)
                )
        manifest = Manifest(
            features=_merged_features(opened),
            shards=tuple(shards),
            version_id=version_id,
            metadata=meta,
            created_by=f"shardstore {__version__}",
        )
        Manifest.from_json(manifest.to_json())  # publish only what every reader accepts
        txn.commit(manifest)  # fsyncs the staged files' directories first
    except BaseException:
        txn.abort()  # links and copies only: the parts are untouched
        raise
    finally:
        bar.close()
    log.info(
        "merged %d part(s) into %s: %d records in %d shards, %d file(s) hard-linked, "
        "%d copied (version %s)",
        len(opened),
        root,
        manifest.num_records,
        len(shards),
        linked,
        copied,
        version_id,
    )
    return Dataset(root, manifest)
