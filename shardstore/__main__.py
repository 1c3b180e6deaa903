"""``python -m shardstore``: the same as the ``shardstore`` console script."""

from __future__ import annotations

from shardstore.cli import main

raise SystemExit(main())
