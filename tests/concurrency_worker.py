"""Processes for the concurrency tests (run as ``python tests/concurrency_worker.py MODE ...``).

Each prints ``{"ready": true}`` once imported, then waits for the file
GOFILE to exist, so that the test starts them all at the same moment.

``overwrite PATH GOFILE SEED0 COUNT``
    COUNT overwrites of PATH (records from seeds SEED0, SEED0+1, ...). Prints
    one JSON line per attempt: ``{"ok": true, "replaces": <version it
    replaced>, "version": <new version>}`` or ``{"ok": false, "conflict":
    true}`` when another writer committed first (CommitConflictError).
``read PATH GOFILE STOPFILE``
    Until STOPFILE exists: open PATH, read every record, compare them with
    the records of the seed in the manifest's metadata. Prints one JSON line
    at the end: reads, versions seen, mismatches, errors (by type).
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

import shardstore
from shardstore.errors import CommitConflictError

sys.path.insert(0, str(Path(__file__).parent))
from crash_server import make_data

N, RPS = 40, 8


def overwrite(path: str, seed0: int, count: int) -> None:
    for i in range(count):
        seed = seed0 + i
        try:
            with shardstore.Writer(
                path, overwrite=True, records_per_shard=RPS, metadata={"seed": seed}, fsync=False
            ) as w:
                w.write(make_data(seed, N))
        except CommitConflictError:
            print(json.dumps({"ok": False, "conflict": True}), flush=True)
        else:
            print(json.dumps({"ok": True, "replaces": w.replaces, "version": w.version_id}),
                  flush=True)  # fmt: skip


def read(path: str, stopfile: str) -> None:
    reads, mismatches = 0, 0
    versions: set[str] = set()
    errors: Counter[str] = Counter()
    stop = Path(stopfile)
    while not stop.exists():
        try:
            ds = shardstore.open(path)
            got = ds[:]
        except Exception as exc:  # anything at all is a failure of isolation
            errors[f"{type(exc).__name__}: {exc}"] += 1
            time.sleep(0.001)
            continue
        expected = make_data(int(ds.metadata["seed"]), N)
        if any(not np.array_equal(got[k], v) for k, v in expected.items()):
            mismatches += 1
        reads += 1
        versions.add(ds.manifest.version_id)
    print(json.dumps({"reads": reads, "versions": len(versions), "mismatches": mismatches,
                      "errors": dict(errors)}), flush=True)  # fmt: skip


def wait_for(gofile: str) -> None:
    print(json.dumps({"ready": True}), flush=True)
    while not Path(gofile).exists():
        time.sleep(0.002)


if __name__ == "__main__":
    mode, path, go, *args = sys.argv[1:]
    wait_for(go)
    if mode == "overwrite":
        overwrite(path, int(args[0]), int(args[1]))
    elif mode == "read":
        read(path, args[0])
    else:
        raise SystemExit(f"unknown mode {mode!r}")
