"""The write side: arrays and existing files in, shards and one committed manifest out.

:mod:`~shardstore.writing.writer` (the :class:`~shardstore.Writer`),
:mod:`~shardstore.writing.parallel` (thread pools, executors, Dask),
:mod:`~shardstore.writing.ingest` with its input readers
(:mod:`~shardstore.writing.npyfiles`, :mod:`~shardstore.writing.arrayfiles`,
:mod:`~shardstore.writing.labels`) and :mod:`~shardstore.writing.resumable`,
:mod:`~shardstore.writing.adopt` (TFRecords as they are), :mod:`~shardstore.writing.merge`,
:mod:`~shardstore.writing.convert`.
"""
