"""Resumable writing: a journal of finished shards, so an interrupted job continues.

Used by :func:`shardstore.ingest`, whose inputs (files on disk) can be read
again after an interruption. The records are described up front as
*columns* (one per feature, each able to produce any record range), so the
shard boundaries are known before the first byte is written and a re-run
cuts exactly the same shards.

The journal ``.shardstore/staging/v-<version_id>/.ingest-journal`` lives in
the new version's staging directory, next to the shard files (nothing there
is visible to readers until the commit renames it into place). Another write
to the same dataset garbage-collects an abandoned staging directory, after
which the ingest starts over. Its first line names
the *plan*: a digest of the inputs (paths, sizes, modification times,
labels) and of every write setting. After it, one line per finished shard,
appended only once the shard's files are complete and ``fsync``-ed, holds
the shard's manifest entry.

A run that finds a journal of the same plan at the destination continues it:
it keeps the journaled shards whose files are intact (present, with their
size), removes whatever else is in that directory (shards that were being
written when the job stopped), and writes the missing shards. The result is
the dataset an uninterrupted run writes (same version id, same bytes). A
journal of another plan (the inputs changed) is discarded with a warning.

What counts as an interruption: ``KeyboardInterrupt`` / ``SystemExit``
(Ctrl-C), and anything that ends the process without Python's say
(``SIGKILL``, ``SIGTERM``'s default action, a crash, a power cut). Any other
error is a failure: everything written is removed, as :class:`Writer` does.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from tqdm.auto import tqdm

from shardstore.errors import DatasetExistsError, ManifestError
from shardstore.format.manifest import MANIFEST_NAME, FeatureSpec, Manifest, ShardEntry
from shardstore.sources.base import ArrayLike, ShardWriteContext, Source
from shardstore.storage.checksum import new_hasher
from shardstore.storage.commit import CONTROL_DIR, Transaction, manifest_state, staging_dir
from shardstore.storage.fsutil import parent_directory, remove_quietly, write_file_at
from shardstore.storage.safefs import Directory
from shardstore.writing.parallel import ShardDispatcher

if TYPE_CHECKING:
    from shardstore.reading.reader import Dataset

__all__ = ["JOURNAL_NAME", "Column", "plan_digest", "write_resumable"]

log = logging.getLogger(__name__)

#: The journal's file name inside ``v-<version_id>/``.
JOURNAL_NAME: Final = ".ingest-journal"
_JOURNAL_FORMAT: Final = "shardstore-ingest-journal"
_VERSION_DIR = re.compile(r"v-([0-9a-f]{8,64})")
#: The largest journal read back (one line per shard).
_MAX_JOURNAL_BYTES: Final = 1 << 30


class Column(Protocol):
    """One feature's records, readable by range (``read`` may return a lazy view)."""

    @property
    def spec(self) -> FeatureSpec:
        """dtype and per-record shape."""
        ...

    def read(self, lo: int, hi: int) -> ArrayLike:
        """Records ``lo:hi`` (called in increasing order of ``lo``, from one thread)."""
        ...


def plan_digest(plan: Mapping[str, Any]) -> str:
    """A stable digest of a JSON-ready plan description."""
    hasher = new_hasher()
    text = json.dumps(plan, sort_keys=True, separators=(",", ":"), default=repr)
    hasher.update(text.encode("utf-8", "surrogateescape"))
    return hasher.hexdigest()


def _read_journal(directory: Directory) -> tuple[dict[str, Any] | None, list[ShardEntry]]:
    """The journal's header and entries; a torn last line (a kill mid-append) is ignored."""
    path = directory.child(JOURNAL_NAME)
    try:
        lines = directory.read_bytes(JOURNAL_NAME, _MAX_JOURNAL_BYTES).split(b"\n")
    except OSError:  # missing, not a regular file (never read then), too large...
        return None, []
    header: dict[str, Any] | None = None
    entries: list[ShardEntry] = []
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            log.info("%s: ignoring unreadable line %d (torn by an interruption)", path, number + 1)
            continue
        if number == 0:
            header = obj if isinstance(obj, dict) and obj.get("format") == _JOURNAL_FORMAT else None
            if header is None:
                return None, []
            continue
        try:
            entries.append(ShardEntry.from_json(obj.get("shard"), where=f"{path}:{number + 1}"))
        except (ManifestError, AttributeError) as exc:
            log.info("%s: ignoring line %d: %s", path, number + 1, exc)
    return header, entries


def _intact(root: Path, prefix: str, entry: ShardEntry) -> bool:
    for f in entry.stored_files:
        if not f.path.startswith(prefix + "/"):
            return False
        try:
            if (root / f.path).stat().st_size != f.size:
                return False
        except OSError:
            return False
    return True


def _remove_strays(directory: Directory, keep: set[str], rel: str = "") -> int:
    """Remove every entry under ``directory`` whose relative path is not in ``keep``.

    Directories are entered by descriptor (never through a link) and removed
    once empty.
    """
    removed = 0
    for entry in directory.entries():
        path = f"{rel}{entry.name}"
        if entry.is_dir:
            with directory.sub(entry.name) as sub:
                removed += _remove_strays(sub, keep, f"{path}/")
            with contextlib.suppress(OSError):
                directory.rmdir(entry.name)  # only if empty
        elif path not in keep:
            with contextlib.suppress(OSError):
                directory.unlink(entry.name, missing_ok=True)
                removed += 1
    return removed


def _resume_point(
    root: Path, plan_id: str, *, resume: bool, committed: str | None, num_shards: int
) -> tuple[str | None, dict[int, ShardEntry]]:
    """The version id and finished shards of an interrupted run of this plan, if any."""
    found: tuple[str | None, dict[int, ShardEntry]] = (None, {})
    staging = staging_dir(root)
    try:
        with Directory.open(root, damage=True) as top:
            area = top.try_sub(f"{CONTROL_DIR}/staging")
    except (FileNotFoundError, NotADirectoryError):
        area = None
    if area is None:
        return found
    with area:
        for item in area.entries():
            m = _VERSION_DIR.fullmatch(item.name)
            if m is None or m.group(1) == committed or not item.is_dir:
                continue
            with area.sub(item.name) as vdir:
                found = _consider(
                    area, vdir, staging, m.group(1), plan_id, resume, num_shards, found
                )
    return found


def _consider(
    area: Directory,
    vdir: Directory,
    staging: Path,
    version_id: str,
    plan_id: str,
    resume: bool,
    num_shards: int,
    found: tuple[str | None, dict[int, ShardEntry]],
) -> tuple[str | None, dict[int, ShardEntry]]:
    """Take over (or discard) the interrupted run in ``vdir``; the new ``found``."""
    directory = staging / Path(vdir.path).name
    journal_st = vdir.lstat(JOURNAL_NAME)
    if journal_st is None or not stat.S_ISREG(journal_st.st_mode):
        return found  # not a resumable write's directory (or a damaged one): leave it
    header, entries = _read_journal(vdir)
    same = (
        header is not None
        and header.get("plan") == plan_id
        and header.get("version_id") == version_id
        and header.get("num_shards") == num_shards
    )
    if not (resume and same) or found[0] is not None:
        why = "resume=False" if same and not resume else "the inputs or settings changed"
        log.warning(
            "discarding the interrupted ingest in %s (%s)",
            directory,
            why,
            extra={"params": ("resume",)},
        )
        area.remove_tree(directory.name)
        return found
    prefix = directory.name
    done = {e.index: e for e in entries if e.index < num_shards and _intact(staging, prefix, e)}
    keep = {JOURNAL_NAME} | {
        f.path[len(prefix) + 1 :] for e in done.values() for f in e.stored_files
    }
    strays = _remove_strays(vdir, keep)
    log.info(
        "resuming the ingest in %s: %d of %d shards already written (%d stray files removed)",
        directory,
        len(done),
        num_shards,
        strays,
    )
    return (version_id, done)


def write_resumable(
    root: Path,
    columns: Mapping[str, Column],
    *,
    num_records: int,
    records_per_shard: int,
    source: Source,
    options: Mapping[str, Any],
    plan: Mapping[str, Any],
    metadata: Mapping[str, Any],
    overwrite: bool = False,
    resume: bool = True,
    fsync: bool = True,
    executor: Any = "threads",
    progress: bool | None = None,
) -> Dataset:
    """Write ``columns`` as a dataset at ``root``, continuing an interrupted run of ``plan``.

    Parameters
    ----------
    root : the dataset directory.
    columns : ``feature -> Column``; every column holds ``num_records`` records.
    num_records, records_per_shard : the shard boundaries.
    source, options : the source writing the shards and its (checked) options.
    plan : JSON-ready description of the inputs; a resumed run must have the same.
    metadata : the manifest's user metadata.
    overwrite : replace an existing dataset (atomically, at the commit).
    resume : continue a matching interrupted run (default); ``False`` starts over.
    fsync, executor, progress : as for :func:`shardstore.write`.
    """
    from shardstore._version import __version__
    from shardstore.reading.reader import Dataset

    if not overwrite and (root / MANIFEST_NAME).exists():
        raise DatasetExistsError(
            f"a dataset already exists at {root}; pass overwrite=True to replace it",
            params=("overwrite",),
        )
    specs = {name: col.spec for name, col in columns.items()}
    source.check_features(specs)
    bounds = [
        (lo, min(lo + records_per_shard, num_records))
        for lo in range(0, num_records, records_per_shard)
    ]
    plan_id = plan_digest(
        {
            "plan": plan,
            "features": {n: s.to_json() for n, s in specs.items()},
            "records_per_shard": records_per_shard,
            "num_records": num_records,
            "source": source.name,
            "options": dict(options),
            "metadata": dict(metadata),
        }
    )
    base = manifest_state(root)  # the commit succeeds only if manifest.json is unchanged
    version_id, done = _resume_point(
        root,
        plan_id,
        resume=resume,
        committed=base.version_id,
        num_shards=len(bounds),
    )
    fresh = version_id is None
    version_id = version_id or secrets.token_hex(8)
    prefix = f"v-{version_id}"
    txn = Transaction(root, version_id, overwrite=overwrite, fsync=fsync, base=base)
    # an earlier run's staging directory is kept: no garbage collection here
    txn.begin(collect_garbage=False)
    journal_path = txn.staged / JOURNAL_NAME
    with parent_directory(journal_path, below=root) as staged:
        if fresh:
            header = {"format": _JOURNAL_FORMAT, "plan": plan_id, "version_id": version_id,
                      "num_shards": len(bounds)}  # fmt: skip
            write_file_at(staged, JOURNAL_NAME, (json.dumps(header) + "\n").encode("utf-8"))
        fd = staged.open_append(JOURNAL_NAME, create=True)
    assert fd is not None
    journal = open(fd, "a", encoding="utf-8")  # noqa: SIM115 - closed below
    bar = tqdm(
        total=num_records,
        initial=sum(e.num_records for e in done.values()),
        unit="rec",
        unit_scale=True,
        desc="ingest",
        disable=None if progress is None else not progress,
    )

    def finished(entry: ShardEntry) -> None:
        journal.write(json.dumps({"shard": entry.to_json()}) + "\n")
        journal.flush()
        if fsync:
            os.fsync(journal.fileno())
        bar.update(entry.num_records)

    dispatcher = ShardDispatcher(executor, source, on_done=finished)
    try:
        for index, (lo, hi) in enumerate(bounds):
            if index in done:
                continue
            ctx = ShardWriteContext(
                root=txn.shard_root,  # .shardstore/staging: renamed into place at commit
                base=root,
                prefix=prefix,
                index=index,
                num_records=hi - lo,
                features=specs,
                options=options,
                fsync=fsync,
            )
            dispatcher.submit(ctx, {name: col.read(lo, hi) for name, col in columns.items()})
        written = dispatcher.finish()
        shards = sorted([*done.values(), *written], key=lambda e: e.index)
        manifest = Manifest(
            features=specs,
            shards=tuple(shards),
            version_id=version_id,
            metadata=dict(metadata),
            created_by=f"shardstore {__version__}",
        )
        Manifest.from_json(manifest.to_json())  # publish only what every reader accepts
        journal.close()
        remove_quietly(journal_path, below=root)  # the version directory: shards only
        txn.commit(manifest)
    except (KeyboardInterrupt, SystemExit):
        dispatcher.close()
        journal.close()
        txn.suspend()
        log.warning(
            "interrupted: the finished shards are kept in %s; run the same ingest again to "
            "resume (resume=False starts over)",
            txn.staged,
            extra={"params": ("resume",)},
        )
        raise
    except BaseException:
        dispatcher.close()
        journal.close()
        txn.abort()
        raise
    finally:
        bar.close()
    log.info(
        "committed %s: %d records in %d shards (%d resumed; version %s)",
        root,
        manifest.num_records,
        len(shards),
        len(done),
        version_id,
    )
    return Dataset(root, manifest)
