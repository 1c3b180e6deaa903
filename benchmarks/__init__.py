"""shardstore's side-by-side benchmark (``make bench``, ``python -m benchmarks``).

One process, warm page cache, one epoch per measurement: the ``np.load``
floor, every shardstore source and shuffle mode, and the usual ``tf.data``
patterns, each consumed in graph. Also write throughput, anonymous memory
while streaming and writing (in fresh subprocesses), time to first batch on
10,000 shards and ``open()`` of a 100,000-shard manifest. Modules:

* :mod:`benchmarks.workloads`: the images and tabular workloads;
* :mod:`benchmarks.peers`: the tf.data patterns shardstore is compared with;
* :mod:`benchmarks.read`, :mod:`benchmarks.write`, :mod:`benchmarks.memory`,
  :mod:`benchmarks.scaling`: the suites;
* :mod:`benchmarks.probe`: measurements that need a fresh process;
* :mod:`benchmarks.results`: JSON document, tables and targets;
* :mod:`benchmarks.chart`, :mod:`benchmarks.readme`: the PNG and the README block;
* :mod:`benchmarks.run`: the command line.
"""
