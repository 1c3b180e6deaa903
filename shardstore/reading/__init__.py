"""The read side: an opened dataset and everything behind ``to_tf`` and ``ds[i]``.

:mod:`~shardstore.reading.reader` (the :class:`~shardstore.Dataset`),
:mod:`~shardstore.reading.pipeline` (the ``tf.data`` pipeline),
:mod:`~shardstore.reading.random_access`, :mod:`~shardstore.reading.remote` (shards fetched
from object storage into the local cache) and :mod:`~shardstore.reading.tfexit`.
"""
