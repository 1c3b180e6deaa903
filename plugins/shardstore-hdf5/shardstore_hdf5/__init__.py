"""shardstore-hdf5: an HDF5 source plugin for shardstore.

Installing this distribution registers the source ``"hdf5"`` under the
``shardstore.sources`` entry-point group::

    import shardstore

    shardstore.write("data/train", {"image": images, "label": labels}, format="hdf5")
    ds = shardstore.open("data/train")            # reads with the hdf5 source
    train = ds.to_tf(batch_size=32, shuffle=True)  # TensorFlow ops only

Every shard is a plain ``.h5`` file (one contiguous dataset per feature) that
h5py and other HDF5 tools open directly. See :mod:`shardstore_hdf5.source`.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from shardstore_hdf5.source import INFO_OFFSETS, SUFFIX, Hdf5Source

__all__ = ["INFO_OFFSETS", "SUFFIX", "Hdf5Source", "__version__"]

try:
    __version__ = version("shardstore-hdf5")
except PackageNotFoundError:  # imported from a source tree that is not installed
    __version__ = "0+unknown"
