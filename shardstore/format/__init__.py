"""What is on disk: the manifest, ragged features and block indexes.

The code form of ``docs/format.md``. Nothing here reads or writes a file; these modules
import nothing from the other layers of shardstore (only :mod:`shardstore.errors`).
"""
