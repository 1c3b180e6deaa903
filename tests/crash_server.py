"""A fork server for the crash tests: each trial is a real child process, killed for real.

Started once per test module as ``python tests/crash_server.py`` (a clean
interpreter: no TensorFlow, no threads), it imports shardstore and NumPy,
then reads one JSON request per line on stdin and answers on stdout. For
each request it forks a child that arms :mod:`shardstore.storage.faults` (``SIGKILL``
after ``after_ops`` storage operations) and runs one write or one garbage
collection. It answers ``{"pid": ...}`` as soon as the child exists (so the
test can also kill it at a random time), then the outcome once the child is
gone: ``{"signal": 9}`` for a kill, ``{"code": 0, "ops": n, "trace": [...]}``
for a clean run, ``{"code": 1, "error": "..."}`` for a Python error.

Requests: ``{"op": "write", "path", "seed", "overwrite", "format", "n",
"rps", "fsync", "after_ops"}`` and ``{"op": "gc", "path", "grace", "after_ops"}``;
``after_ops`` null counts operations without killing. With ``"hold": true``
the child is not reaped until the test sends one more line, so that a
``kill(pid)`` from the test can never reach a recycled pid.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from typing import Any

import numpy as np

import shardstore
from shardstore.storage import faults


def make_data(seed: int, n: int) -> dict[str, np.ndarray]:
    """The records a write with ``seed`` stores (the tests recompute them to compare)."""
    rng = np.random.default_rng(seed)
    return {
        "x": rng.integers(-(2**31), 2**31, size=(n, 3), dtype=np.int32),
        "y": rng.standard_normal((n, 2)).astype(np.float64),
    }


def _run(req: dict[str, Any]) -> dict[str, Any]:
    if req["op"] == "write":
        ds = shardstore.write(
            req["path"],
            make_data(req["seed"], req["n"]),
            format=req.get("format", "npy"),
            records_per_shard=req["rps"],
            overwrite=req["overwrite"],
            metadata={"seed": req["seed"]},
            fsync=req.get("fsync", True),
            progress=False,
        )
        return {"version_id": ds.manifest.version_id}
    if req["op"] == "gc":
        report = shardstore.gc(req["path"], grace=req.get("grace", 0))
        return {"removed": report.removed}
    raise ValueError(f"unknown op {req['op']!r}")


def _child(req: dict[str, Any], out: int) -> None:
    after = req.get("after_ops")
    faults.arm(0 if after is None else int(after))
    try:
        result: dict[str, Any] = {"code": 0, **_run(req)}
    except Exception as exc:
        result = {"code": 1, "error": f"{type(exc).__name__}: {exc}"}
    result.update(ops=faults.count(), trace=faults.trace())
    os.write(out, json.dumps(result).encode())
    os._exit(0)


def main() -> None:
    # Import (never use: zarr starts its event-loop thread on first use, and a
    # thread does not survive fork) what the children need, once.
    import zarr.codecs  # noqa: F401

    import shardstore.sources.tfrecord
    import shardstore.sources.zarr  # noqa: F401

    assert threading.active_count() == 1, threading.enumerate()
    for line in sys.stdin:
        req = json.loads(line)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child
            os.close(r)
            _child(req, w)
        os.close(w)
        print(json.dumps({"pid": pid}), flush=True)
        chunks = []
        while chunk := os.read(r, 1 << 16):
            chunks.append(chunk)
        os.close(r)
        if req.get("hold"):  # the test may still kill the pid: keep it from being reused
            sys.stdin.readline()
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            reply: dict[str, Any] = {"signal": os.WTERMSIG(status)}
        else:
            reply = json.loads(b"".join(chunks)) if chunks else {"code": os.WEXITSTATUS(status)}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
