"""The reader: an opened dataset, its metadata, and ``to_tf``.

:class:`Dataset` is cheap to create: it holds the validated manifest and
touches no shard file until asked. TensorFlow is imported only by
:meth:`Dataset.to_tf`, which delegates the ``tf.data`` construction to
:mod:`shardstore.reading.pipeline`.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import shlex
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shardstore.errors import (
    CapabilityError,
    ChecksumError,
    DamagedFilesError,
    DatasetNotFoundError,
    InvalidInputError,
    ManifestError,
    from_tf_error,
)
from shardstore.format.manifest import (
    MANIFEST_NAME,
    MAX_EXPANSION,
    FeatureSpec,
    Manifest,
    ShardEntry,
)
from shardstore.reading.remote import RemoteShards, stored_bytes
from shardstore.registry import get_source
from shardstore.sources.base import ReadContext
from shardstore.storage import Store, integrity
from shardstore.storage.cache import ShardCache
from shardstore.storage.fsutil import MAX_MANIFEST_BYTES, InsideResolver
from shardstore.storage.progress import progress_bar
from shardstore.storage.safefs import storage_boundary

if TYPE_CHECKING:
    import tensorflow as tf

    from shardstore.sources.base import Source

__all__ = ["Dataset", "open_remote"]


class Dataset:
    """A committed shardstore dataset, opened for reading.

    Create it with :func:`shardstore.open` (or get it back from
    :func:`shardstore.write`). Attributes: :attr:`num_records`,
    :attr:`num_shards`, :attr:`features` (name -> :class:`FeatureSpec`),
    :attr:`metadata`, :attr:`nbytes`, :attr:`verify_mode`.

    ``verify`` chooses what is checksummed on the read path
    (:mod:`shardstore.storage.integrity`): ``"once"`` (default) verifies every block
    of a file when this process first reads it, ``"size"`` only checks sizes.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        manifest: Manifest,
        *,
        source: str | None = None,
        verify: str | None = None,
        remote: RemoteShards | None = None,
    ) -> None:
        self.path = Path(path)
        #: Where the shards come from when the dataset is in object storage (``path`` is
        #: then the local cache folder they are fetched into); ``None`` for a local one.
        self.remote = remote
        self.manifest = manifest
        self._source_name = source
        self._random_ctx: ReadContext | None = None
        self._ranged_ctx: ReadContext | None = None  # sparse copies, for ds[i] in object storage
        #: ``"once"`` or ``"size"``: see :mod:`shardstore.storage.integrity`.
        self.verify_mode = integrity.normalize_mode(verify)
        # shards random access has checked against the manifest already
        self._checked: set[int] = set()

    # -- metadata -----------------------------------------------------------------------
    @property
    def location(self) -> str:
        """The dataset's URL (object storage) or directory, as users name it."""
        return self.remote.url if self.remote is not None else str(self.path)

    @property
    def num_records(self) -> int:
        """Records in the dataset."""
        return self.manifest.num_records

    @property
    def num_shards(self) -> int:
        """Shards in the dataset."""
        return len(self.manifest.shards)

    @property
    def features(self) -> Mapping[str, FeatureSpec]:
        """Feature specs by name: ``.dtype`` (numpy) and ``.shape`` (per record)."""
        return self.manifest.features

    @property
    def metadata(self) -> Mapping[str, Any]:
        """The user metadata stored at write time."""
        return self.manifest.metadata

    @property
    def nbytes(self) -> int:
        """Bytes of all shard files on disk."""
        return self.manifest.nbytes

    @property
    def shards(self) -> tuple[ShardEntry, ...]:
        """The manifest's shard entries."""
        return self.manifest.shards

    @property
    def source(self) -> Source:
        """The source plugin that reads this dataset."""
        written_by = self.manifest.sources
        name = self._source_name or (written_by[0] if written_by else "npy")
        source = get_source(name)
        for shard_source in written_by:
            if not source.can_read(shard_source):
                raise CapabilityError(
                    f"the {name!r} source cannot read shards written by {shard_source!r}"
                )
        return source

    def source_for(
        self,
        capability: str,
        *,
        wanted: str | None = None,
        instead: str | None = None,
        params: Sequence[str] = (),
    ) -> Source:
        """The source to use for ``capability`` (e.g. ``"random_access"``).

        Without an explicit ``open(..., source=...)``, a source lacking the
        capability may hand over to the companion it names (``npy`` ->
        ``memmap``). Raises ``CapabilityError`` naming the capability otherwise:
        with ``wanted`` (what the caller asked for, e.g. ``"shuffle='global'"``)
        the message says that, and what to do: ``instead`` (another way to get
        it done), or convert the dataset to a format that has the capability;
        ``params`` are the parameters those name (``ShardStoreError.params``).
        """
        source = self.source
        if getattr(type(source), capability, False):
            return source
        companion = source.random_access_source if capability == "random_access" else None
        if self._source_name is None and companion is not None:
            alt = get_source(companion)
            if getattr(type(alt), capability, False) and all(
                alt.can_read(s) for s in self.manifest.sources
            ):
                return alt
        if wanted is None:
            source.require(capability)
            raise AssertionError("unreachable")  # pragma: no cover
        if capability == "random_access":
            need = "reads records by index (random_access)"
        else:
            need = f"needs {capability}"
        advice = f"{instead}, or convert" if instead else "Convert"
        raise CapabilityError(
            f"{wanted} {need}, which the {source.name!r} source of dataset {str(self.path)!r} "
            f"does not support. {advice} the dataset once to a format that does: "
            f"`shardstore convert {shlex.quote(str(self.path))} DEST --format npy` "
            "(`shardstore.convert(src, dest, format='npy')` in Python)",
            params=params,
        )

    def __len__(self) -> int:
        return self.num_records

    @storage_boundary("read", lambda self, *a, **k: self.location)
    def __getitem__(self, key: Any) -> dict[str, Any]:
        """Records by index, as NumPy arrays (no TensorFlow involved).

        ``ds[i]`` gives one record (``name -> array of the record's shape``);
        ``ds[i:j]``, ``ds[[i, k, ...]]`` and ``ds[bool_mask]`` give
        ``name -> array (k, *shape)`` in the order asked for. Needs a source
        with random access (``npy`` datasets use ``memmap`` automatically).
        """
        from shardstore.reading.random_access import gather_records, normalize_index

        source = self.source_for(
            "random_access",
            wanted="ds[...]",
            instead="Read the records in order with ds.iter_numpy() or ds.to_tf()",
        )
        if self._random_ctx is None:
            self._random_ctx = ReadContext(
                self.path,
                self.shards,
                self.features,
                1,
                verifier=self.verifier(),
                remote=self.remote,
            )
        if isinstance(key, slice):  # check the shards first: allocate nothing a lie implies
            self._check_range(self._random_ctx, range(*key.indices(self.num_records)))
        indices, scalar = normalize_index(key, self.num_records)
        self._check_touched(self._random_ctx, indices)
        if self.remote is not None and self._ranged_ctx is None:
            self._ranged_ctx = self.remote.ranged_context(self._random_ctx, self.verify_mode)
        out = gather_records(source, self._random_ctx, indices, ranged=self._ranged_ctx)
        if scalar:
            return {name: arr[0] for name, arr in out.items()}
        return out

    def __repr__(self) -> str:
        feats = ", ".join(f"{n}: {s.dtype.name}{list(s.shape)}" for n, s in self.features.items())
        return (
            f"<shardstore.Dataset {self.location!r} records={self.num_records} "
            f"shards={self.num_shards} features={{{feats}}}>"
        )

    # -- reading --------------------------------------------------------------------------
    @storage_boundary("read", lambda self, *a, **k: self.location)
    def iter_numpy(
        self, batch_size: int | None = None, *, features: Sequence[str] | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every record in order, as NumPy batches (``name -> array (b, *shape)``).

        Uses the random-access source when there is one (no TensorFlow), else
        an ordered ``to_tf`` pipeline. ``batch_size`` defaults to ~64 MiB of
        records. Used by ``convert``; handy for scikit-learn style consumers.
        """
        names = list(features) if features is not None else list(self.features)
        self._check_plausible(self.shards)
        record_bytes = max(1, int(sum(self.features[n].mean_record_nbytes for n in names)))
        step = batch_size or max(1, (64 << 20) // record_bytes)
        try:
            source = self.source_for("random_access")
        except CapabilityError:
            import tensorflow as tf

            batches = self.to_tf(step, features=tuple(names)).as_numpy_iterator()
            while True:
                try:
                    batch = next(batches)
                except StopIteration:
                    return
                except tf.errors.OpError as exc:  # the pipeline's own error, typed again
                    typed = from_tf_error(exc)
                    if typed is None:
                        raise
                    raise typed from exc
                yield dict(zip(names, batch, strict=True))
        from shardstore.reading.random_access import gather_records

        specs = {n: self.features[n] for n in names}
        ctx = ReadContext(
            self.path, self.shards, specs, 1, verifier=self.verifier(), remote=self.remote
        )
        for lo in range(0, self.num_records, step):
            indices = np.arange(lo, min(lo + step, self.num_records), dtype=np.int64)
            self._check_touched(ctx, indices)
            yield gather_records(source, ctx, indices)

    @storage_boundary("read", lambda self, *a, **k: self.location)
    def to_tf(
        self,
        batch_size: int | None = 32,
        *,
        features: str | Sequence[str] | None = None,
        shuffle: bool | str = False,
        seed: int | None = None,
        drop_remainder: bool = False,
        shard: tuple[int, int] | None = None,
        num_parallel_reads: int | None = None,
        deterministic: bool | None = None,
        prefetch: bool | int = True,
        shuffle_buffer: int | None = None,
        tf_native: bool = False,
        start_step: int = 0,
        balance: str | None = "drop",
        input_context: tf.distribute.InputContext | None = None,
        map_fn: Callable[..., Any] | None = None,
        service: str | None = None,
        service_sharding: str = "dynamic",
        job_name: str | None = None,
        pad: bool | int | Mapping[str, int] = False,
        pad_value: float = 0,
        bucket_boundaries: Sequence[int] | str | None = None,
        bucket_by: str | None = None,
    ) -> tf.data.Dataset:
        """A ``tf.data.Dataset`` of batches read from this dataset.

        Parameters
        ----------
        batch_size : records per batch; ``None`` yields single records.
        features : ``None`` for a dict of every feature; a tuple of names for
            tuples in that order (Keras-ready ``(x, y)``); one name for bare tensors.
        shuffle : ``False`` reads in record order. ``True`` reads blocks of
            consecutive records (about 1 MiB each) in a random order and permutes
            the records within windows of ``shuffle_buffer`` records.
            ``"global"`` draws an exact seeded permutation of all records each
            epoch (needs random access). Every record appears once per epoch in
            all modes. A shuffled batch of 4 MiB or more is read in file order,
            so its records come sorted by record number.
        seed : makes the shuffled order reproducible run to run; each
            iteration over the returned dataset (each epoch) reshuffles. Where
            batches are gathered by index (npy datasets, ``shuffle="global"``),
            epoch ``e``'s order is a pure function of ``(seed, e)``. The
            ``tf_native`` block pipeline shuffles with tf.data's own seeded ops,
            so there TensorFlow's global seed (``tf.random.set_seed``) is part
            of the seed too.
        drop_remainder : drop the last partial batch (static batch dimension).
        shard : ``(worker_index, num_workers)``: read only this worker's
            disjoint share of the shards (every ``num_workers``-th shard).
        balance : with ``shard`` or ``input_context``, how workers whose shares
            differ in size get the same number of steps per epoch, so no rank
            waits for another: ``"drop"`` (default) stops every worker after the
            smallest share's full batches; ``"repeat"`` lets smaller shares
            start over until the largest share's last batch (all batches full);
            ``None`` reads each share once, as it is.
        num_parallel_reads : shards read concurrently (default: CPU count).
        deterministic : keep a reproducible order (default: True unless
            shuffling without a seed).
        prefetch : ``True`` for an autotuned prefetch, an int for a fixed one.
        shuffle_buffer : records mixed together by ``shuffle=True`` (default:
            about 32 MiB of records).
        start_step : resume a job: the first iteration starts at this global
            step (``epoch * steps_per_epoch + step``, e.g. a Keras optimizer's
            ``iterations``) without reading the skipped batches; later
            iterations are the following epochs. Needs batches gathered by index;
            ``tf_native`` pipelines resume with ``tf.train.Checkpoint`` of their
            iterator.
        input_context : the ``tf.distribute.InputContext`` given to the
            function of ``strategy.distribute_datasets_from_function``: this
            input pipeline reads its share of the shards, ``batch_size`` is the
            GLOBAL batch size (each replica gets its share), and tf.data
            auto-sharding is switched off so nothing is sharded twice.
        map_fn : applied to every batch (the output structure: dict, tuple or
            tensor) in parallel, e.g. augmentation with ``tf.image``.
        service : the address of a tf.data service dispatcher
            (``"grpc://host:port"``): the pipeline runs on its workers
            (``tf.data.experimental.service.distribute``). Implies
            ``tf_native=True``; a source that is not TF-native raises
            ``CapabilityError`` here rather than failing inside a worker.
        service_sharding : ``"dynamic"`` (default): the dispatcher hands shards
            to workers as they ask, so each record is read once per epoch
            across all workers; ``"off"``: every worker reads everything.
        job_name : share one job (and its epoch) between several consumers.
        pad : ragged features come as ``tf.RaggedTensor`` batches by default;
            ``True`` pads them with ``pad_value`` to the longest record of each
            batch (dense ``Tensor[b, longest, *inner]``); an int pads or cuts
            every record to that length (a static shape, e.g. for XLA); a
            mapping ``{feature: length}`` (``True`` for the batch's longest)
            chooses per feature. Needs ``batch_size``.
        pad_value : what padding is filled with (default 0).
        bucket_boundaries : batch records of similar lengths together: a
            record of length ``n`` goes to bucket ``i`` when
            ``boundaries[i-1] <= n < boundaries[i]``, and each bucket yields a
            batch of ``batch_size`` records when full (less padding, faster
            sequence models). ``"auto"``: powers of two up to the longest
            record (from the manifest's length statistics). The number of
            batches per epoch then varies slightly.
        bucket_by : the ragged feature whose length buckets records (default:
            the only ragged feature read).
        tf_native : build the pipeline from TensorFlow ops only (serialisable;
            what tf.data service needs), from the source's block reader. It
            can be split among tf.data service workers, by ``service=`` or by
            your own ``.apply(tf.data.experimental.service.distribute(...))``,
            so its number of batches is not asserted (``cardinality()`` is
            unknown, except with ``balance``). TensorFlow ops cannot hash, so
            such a pipeline verifies the files it will read, whole, when it is
            built. The default reads each batch with one ``numpy_function``
            call from a random-access source when the dataset has one (``npy``
            datasets: ``memmap``), the fastest path, and verifies what it reads
            when it reads it, in this process only: under a tf.data service it
            fails with a message that says to use ``service=`` or
            ``tf_native=True``. Raises ``CapabilityError`` when the source is
            not ``tf_native``.
        """
        from shardstore.reading.pipeline import ReadConfig, build_pipeline

        if input_context is not None:
            if shard is not None:
                raise InvalidInputError("give shard or input_context, not both")
            shard = (input_context.input_pipeline_id, input_context.num_input_pipelines)
            if batch_size is not None:
                batch_size = input_context.get_per_replica_batch_size(batch_size)
        config = ReadConfig.create(
            self.features,
            batch_size=batch_size,
            features=features,
            shuffle=shuffle,
            seed=seed,
            drop_remainder=drop_remainder,
            shard=shard,
            num_parallel_reads=num_parallel_reads,
            deterministic=deterministic,
            prefetch=prefetch,
            shuffle_buffer=shuffle_buffer,
            tf_native=tf_native,
            start_step=start_step,
            balance=balance,
            map_fn=map_fn,
            service=service,
            service_sharding=service_sharding,
            job_name=job_name,
            pad=pad,
            pad_value=pad_value,
            bucket_boundaries=bucket_boundaries,
            bucket_by=bucket_by,
        )
        pipeline = build_pipeline(self, config)
        if input_context is not None:
            import tensorflow as tf

            options = tf.data.Options()
            options.experimental_distribute.auto_shard_policy = (
                tf.data.experimental.AutoShardPolicy.OFF
            )
            pipeline = pipeline.with_options(options)
        return pipeline

    def _context(self, features: Mapping[str, FeatureSpec]) -> ReadContext:
        """A context reading ``features`` of every shard, record by record (random access)."""
        return ReadContext(
            self.path, self.shards, features, 1, verifier=self.verifier(), remote=self.remote
        )

    def verifier(self) -> integrity.Verifier:
        """A new :class:`~shardstore.storage.integrity.Verifier` of this dataset, in its mode.

        Each pipeline and each random-access context gets one: it checks the
        files it opens against the manifest (sizes when first opened, blocks
        when read), sharing the process-wide memory of what was verified.
        """
        return integrity.Verifier(self.path, self.verify_mode)

    def check_files(
        self,
        shards: Sequence[ShardEntry] | None = None,
        *,
        features: Sequence[str] | None = None,
    ) -> None:
        """Check the files of ``shards`` (default: all) now, before they are read.

        Every file must exist inside the dataset with its recorded size and,
        with ``verify="once"`` (the default), its recorded checksum: files not
        verified before by this process are hashed whole. Pipelines do not
        need this (they verify what they read, when they read it); only
        ``to_tf(tf_native=True)`` calls it, for its pipeline of TensorFlow ops
        cannot hash. With ``features``, only those features' files (and files
        of no single feature) are checked.

        Raises
        ------
        ChecksumError
            Naming the dataset, the shard and the first damaged file.
        """
        shards = self.shards if shards is None else shards
        self._check_plausible(shards)
        if features is not None and not set(self.features) <= set(features):
            wanted = set(features)
            shards = [
                dataclasses.replace(
                    s, files=tuple(f for f in s.files if f.feature is None or f.feature in wanted)
                )
                for s in shards
            ]
        resolve_stat = self._resolve_stat(shards)
        if self.verify_mode == "size":
            problems = integrity.stat_shards(
                [dataclasses.replace(s, blocks=None) for s in shards], resolve_stat, self._damaged
            )
        else:
            problems = integrity.hash_shards(
                shards, resolve_stat, self._damaged, rehash=False, blocks=False, first_only=True
            )
        if problems:
            raise problems[0]

    def _resolve_stat(
        self, shards: Sequence[ShardEntry], root: Path | None = None
    ) -> Callable[[str], tuple[str, os.stat_result | None]]:
        """:meth:`InsideResolver.resolve_stat`, damage reported at the shard listing the file.

        Every file of the dataset is checked to be a regular file, reached
        through real directories (no symlink, FIFO, device...), before it is
        hashed, mapped or handed to TensorFlow.
        """
        resolver = InsideResolver(self.path if root is None else root)
        owner = {f.path: s for s in shards for f in s.stored_files}

        def resolve_stat(relpath: str) -> tuple[str, os.stat_result | None]:
            try:
                return resolver.resolve_stat(relpath)
            except ChecksumError as exc:
                located = type(exc).in_file(
                    self.location, owner[relpath].index, relpath, exc.what, errno=exc.errno
                )
                raise located from None

        return resolve_stat

    def _check_plausible(self, shards: Sequence[ShardEntry]) -> None:
        """Refuse a shard claiming far more record bytes than its files could hold.

        Readers allocate what the manifest's shapes and counts imply; a
        manifest whose claims are not backed by bytes on disk (more than
        :data:`~shardstore.format.manifest.MAX_EXPANSION` times, compression
        included) is refused before anything is allocated. Every record
        counts its fixed-shape features' bytes (in a dataset of ragged
        features only, 8 bytes of offset per feature); the files' recorded
        sizes are checked against the disk (:mod:`shardstore.storage.integrity`)
        before anything is read.
        """
        specs = self.features.values()
        record_bytes = sum(s.record_nbytes for s in specs if s.is_fixed)
        if not record_bytes:  # only ragged features: each record has an 8-byte offset
            record_bytes = 8 * sum(1 for s in specs if s.is_ragged)
        for shard in shards:
            claimed = shard.num_records * record_bytes
            if claimed > MAX_EXPANSION * shard.nbytes + (1 << 20):
                raise ManifestError(
                    f"dataset {str(self.path)!r}, shard {shard.index}: claims {claimed} bytes "
                    f"of records in {shard.nbytes} bytes of files ({shard.num_records} records, "
                    f"more than {MAX_EXPANSION}-fold); refusing to read it"
                )

    def _check_range(self, ctx: ReadContext, records: range) -> None:
        """The manifest checks of the shards a range of records touches; allocates nothing."""
        if not len(records):
            return
        lo, hi = min(records[0], records[-1]), max(records[0], records[-1]) + 1
        starts = ctx.record_starts
        first = int(np.searchsorted(starts, lo, side="right")) - 1
        last = int(np.searchsorted(starts, hi - 1, side="right")) - 1
        new = [ctx.shards[p] for p in range(first, last + 1) if p not in self._checked]
        if new:
            self._check_plausible(new)
            self._checked.update(s.index for s in new)

    def _check_touched(self, ctx: ReadContext, indices: np.ndarray) -> None:
        """The manifest checks of the shards holding ``indices``, once per shard.

        Their files are verified as they are read (:mod:`shardstore.storage.integrity`).
        """
        if not len(indices):
            return
        positions = np.unique(np.searchsorted(ctx.record_starts, indices, side="right") - 1)
        new = [ctx.shards[int(p)] for p in positions if int(p) not in self._checked]
        if new:
            self._check_plausible(new)
            self._checked.update(s.index for s in new)

    @storage_boundary("verify", lambda self, *a, **k: self.location)
    def verify(self, *, progress: bool | None = None) -> None:
        """Check that every shard can be read as the manifest says; report all damage.

        Runs what reading runs, and more: the plausibility of every record
        count (before anything is allocated); the size and checksum of every
        file and of every block (block indexes included, always hashing,
        whatever ``verify_mode``; every file must be a regular file reached
        without a symlink); then the source's layout checks
        (:meth:`~shardstore.sources.base.Source.check_shards`) and, with a
        random-access source, a read of the first and last record of every
        shard (which parses the headers and file structure a reader trusts).

        Raises
        ------
        DamagedFilesError
            A ``ChecksumError`` naming the dataset, the shard and the first
            damaged file; ``err.errors`` lists every damaged file (one
            ``ChecksumError`` each), ``err.checked`` the files checked.
        ManifestError
            A count, a header or a file structure that contradicts the manifest.
        """
        self._check_plausible(self.shards)
        total = sum(f.size for s in self.shards for f in s.stored_files)
        with progress_bar(total=total, desc="verify", unit="B", enabled=progress) as bar:
            if self.remote is None:
                problems = integrity.hash_shards(
                    self.shards,
                    self._resolve_stat(self.shards),
                    self._damaged,
                    rehash=True,
                    progress=bar.update,
                )
            else:
                problems = self._verify_remote(bar.update)
        if problems:
            files = sum(len(s.stored_files) for s in self.shards)
            damaged = len({(e.shard, e.file) for e in problems})
            lines = "\n".join(f"  {e}" for e in problems[:20])
            if len(problems) > 20:
                lines += f"\n  ... and {len(problems) - 20} more (err.errors lists them all)"
            raise DamagedFilesError(
                f"dataset {str(self.path)!r}: {damaged} of {files} files damaged:\n{lines}",
                problems,
                checked=files,
            )
        if self.remote is None:  # in object storage: each shard in _verify_remote
            self._check_layout(ReadContext(self.path, self.shards, self.features, 1,
                                           verifier=self.verifier()))  # fmt: skip

    def _check_layout(self, ctx: ReadContext) -> None:
        """The sources' layout checks of ``ctx.shards``, and a read of each one's ends."""
        source = self.source
        source.check_shards(ctx)
        try:
            reader = self.source_for("random_access")
        except CapabilityError:
            return
        if reader is not source:
            reader.check_shards(ctx)
        from shardstore.reading.random_access import gather_records

        for position, shard in enumerate(ctx.shards):
            if shard.num_records:
                start = int(ctx.record_starts[position])
                ends = sorted({start, start + shard.num_records - 1})
                gather_records(reader, ctx, np.array(ends, dtype=np.int64))

    def _verify_remote(self, progress: Callable[[int], None]) -> list[ChecksumError]:
        """Download every shard afresh (verified on the way) and check its blocks.

        The objects in the store are checked, not the copies in the shared cache: each
        shard goes through a private cache in a temporary directory, one at a time.
        """
        import tempfile

        assert self.remote is not None
        problems: list[ChecksumError] = []
        largest = max((stored_bytes(s) for s in self.shards), default=1)
        with (
            tempfile.TemporaryDirectory(prefix="verify-", dir=self.remote.cache.directory) as tmp,
            ShardCache(tmp, limit=max(1, largest), depth=1) as cache,
        ):
            private = RemoteShards(self.remote.store, cache)
            for shard in self.shards:
                try:
                    with private.holding((shard,)):
                        found = integrity.hash_shards(
                            (shard,),
                            self._resolve_stat((shard,), private.root),
                            self._damaged,
                            rehash=True,
                            progress=progress,
                        )
                        problems += found
                        if not found:
                            verifier = integrity.Verifier(private.root, self.verify_mode)
                            self._check_layout(ReadContext(private.root, (shard,), self.features,
                                                           1, verifier=verifier))  # fmt: skip
                except ChecksumError as exc:  # the object itself: missing, short, or damaged
                    problems.append(exc)
                    progress(shard.nbytes)
        return problems

    def _damaged(self, shard: ShardEntry, relpath: str, what: str) -> ChecksumError:
        code = errno.ENOENT if what == "is missing" else None  # a FileNotFoundError too
        return ChecksumError.in_file(self.location, shard.index, relpath, what, errno=code)

    def info(self) -> dict[str, Any]:
        """A JSON-ready summary (used by ``shardstore info --json``)."""
        return {
            "path": self.location,
            "version_id": self.manifest.version_id,
            "format_version": self.manifest.format_version,
            "num_records": self.num_records,
            "num_shards": self.num_shards,
            "nbytes": self.nbytes,
            "sources": list(self.manifest.sources),
            "features": {n: s.to_json() for n, s in self.features.items()},
            "metadata": dict(self.metadata),
        }


def open_remote(
    store: Store,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    cache_limit: int | str | None = None,
    source: str | None = None,
    verify: str | None = None,
) -> Dataset:
    """Open the committed dataset in ``store`` for reading (see :func:`shardstore.open`)."""
    try:
        data = store.get(MANIFEST_NAME, max_size=MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        raise DatasetNotFoundError(
            f"no shardstore dataset at {store.url}: no {MANIFEST_NAME} (never committed?)"
        ) from None
    try:
        manifest = Manifest.from_json(data)
    except ManifestError as exc:
        raise ManifestError(f"{store.key_url(MANIFEST_NAME)}: {exc}", params=exc.params) from None
    cache = ShardCache(cache_dir, cache_limit)
    remote = RemoteShards(store, cache)
    remote.root.mkdir(parents=True, exist_ok=True)
    dataset = Dataset(remote.root, manifest, source=source, verify=verify, remote=remote)
    if source is not None:
        dataset.source  # noqa: B018 - fail fast on an unknown or incompatible source
    return dataset
