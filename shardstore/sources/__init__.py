"""Built-in source plugins (registered through entry points like any other)."""

from shardstore.sources.base import ReadContext, ShardWriteContext, Source

__all__ = ["ReadContext", "ShardWriteContext", "Source"]
