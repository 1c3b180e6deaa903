"""Object stores (S3, GCS, Azure, HTTP, memory) through obstore.

obstore (Rust ``object_store`` bindings) is an optional dependency:
``pip install 'shardstore[cloud]'``. It is imported when the first remote location is
opened, never by ``import shardstore``.

Settings come from the environment, as AWS, Google and Azure tools read them
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, ``AWS_ENDPOINT_URL``,
``AWS_ALLOW_HTTP=true`` for a plain-http endpoint, ``GOOGLE_APPLICATION_CREDENTIALS``,
``AZURE_STORAGE_ACCOUNT_NAME``...), or from ``storage_options``: the store's own keys
(``endpoint``, ``region``, ``access_key_id``..., see obstore's ``S3Config``,
``GCSConfig``, ``AzureConfig``), client keys (``allow_http``, ``timeout``,
``connect_timeout``...) and retry keys (``max_retries``, ``retry_timeout``), all in one
flat mapping.

Transient failures (5xx, throttling, dropped connections, timeouts) are retried by
obstore with exponential backoff and jitter, up to ``max_retries`` (default 10) and
``retry_timeout`` (default 2 minutes); what still fails becomes a
:class:`~shardstore.errors.StorageError` naming the URL and the operation.

These clients are not fork-safe: their threads do not survive ``fork()``, and a child
forked after its parent made a request would hang on its first one. A
:class:`ObjectStore` builds its client lazily, in the process that uses it, and pickles
as its location and options, so it travels to Dask workers and to processes started
with ``spawn`` or ``forkserver``; in a child forked after its parent used object
storage it raises :class:`~shardstore.errors.StorageError` saying so, instead of hanging.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from shardstore.errors import (
    InvalidInputError,
    MissingDependencyError,
    StorageError,
    storage_error,
)
from shardstore.storage.base import ObjectInfo, PreconditionFailed, PutMode, Sink, Store
from shardstore.storage.location import Location

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = ["CLIENT_OPTIONS", "RETRY_OPTIONS", "ObjectStore", "memory_store"]

log = logging.getLogger(__name__)

#: Keys of ``storage_options`` that configure the HTTP client rather than the store.
CLIENT_OPTIONS = frozenset(
    {
        "allow_http", "allow_invalid_certificates", "connect_timeout", "default_content_type",
        "http1_only", "http2_keep_alive_interval", "http2_keep_alive_timeout",
        "http2_keep_alive_while_idle", "http2_only", "pool_idle_timeout",
        "pool_max_idle_per_host", "proxy_url", "read_timeout", "timeout", "user_agent",
    }
)  # fmt: skip
#: Keys of ``storage_options`` that configure retries (seconds for ``retry_timeout``).
RETRY_OPTIONS = frozenset({"max_retries", "retry_timeout", "init_backoff", "max_backoff"})
#: How long a request is retried before it fails (obstore's own default is 3 minutes).
DEFAULT_RETRY_TIMEOUT = 120.0
#: Multipart part size of uploads (S3 needs >= 5 MiB per part).
UPLOAD_PART_BYTES = 8 << 20
#: Keys removed per delete request (S3's bulk-delete limit).
DELETE_BATCH = 1000

_memory_lock = threading.Lock()
_memory_stores: dict[str, Any] = {}
# The client's runtime threads do not survive fork(): a child forked after this process
# used object storage would hang on its first request. Such a child fails fast instead.
_used = False
_forked_after_use = False


def _mark_forked() -> None:
    global _forked_after_use
    _forked_after_use = _forked_after_use or _used


os.register_at_fork(after_in_child=_mark_forked)


def _obstore() -> Any:
    try:
        import obstore
        import obstore.store
    except ImportError:
        raise MissingDependencyError(
            "datasets in object storage need obstore: pip install 'shardstore[cloud]'"
        ) from None
    return obstore


def memory_store(name: str) -> Any:
    """The process-wide in-memory store ``name`` (``memory://name/...``), made on first use."""
    obstore = _obstore()
    with _memory_lock:
        store = _memory_stores.get(name)
        if store is None:
            store = _memory_stores[name] = obstore.store.MemoryStore()
        return store


def _split_options(
    options: Mapping[str, Any],
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    config: dict[str, Any] = {}
    client: dict[str, Any] = {}
    retry: dict[str, Any] = {"retry_timeout": timedelta(seconds=DEFAULT_RETRY_TIMEOUT)}
    backoff: dict[str, Any] = {}
    for key, value in options.items():
        if not isinstance(key, str):
            raise InvalidInputError(f"storage_options keys must be strings, got {key!r}")
        if key in CLIENT_OPTIONS:
            client[key] = value
        elif key == "max_retries":
            retry[key] = int(value)
        elif key == "retry_timeout":
            retry[key] = timedelta(seconds=float(value))
        elif key in ("init_backoff", "max_backoff"):
            backoff[key] = timedelta(seconds=float(value))
        else:
            config[key] = value
    if backoff:
        retry["backoff"] = backoff
    return config, client, retry


class _UploadSink(Sink):
    """A multipart upload (obstore's buffered writer); aborting deletes what was completed."""

    def __init__(self, store: ObjectStore, key: str) -> None:
        self._store = store
        self._key = key
        self._size = 0
        with store._errors("write", key):
            self._file = _obstore().open_writer(
                store.client, store._kp + key, buffer_size=UPLOAD_PART_BYTES, max_concurrency=8
            )

    def write(self, data: Buffer) -> None:
        with self._store._errors("write", self._key):
            self._file.write(data)
        self._size += memoryview(data).nbytes

    def close(self) -> None:
        with self._store._errors("write", self._key):
            self._file.close()
        parts = -(-self._size // UPLOAD_PART_BYTES)
        self._store._count("PUT", 1 if parts <= 1 else parts + 2)  # create + parts + complete

    def abort(self) -> None:
        # obstore cannot abort a buffered upload: finish it, then remove it. It lives
        # under a version prefix no manifest references, so no reader ever sees it.
        with contextlib.suppress(Exception):
            self._file.close()
        with contextlib.suppress(Exception):
            self._store.delete([self._key])


class ObjectStore(Store):
    """A :class:`~shardstore.storage.base.Store` over an object-store prefix.

    Parameters
    ----------
    location : a parsed remote location (``s3://bucket/prefix``...).
    storage_options : store, client and retry settings (see the module docstring).
    """

    def __init__(self, location: Location, storage_options: Mapping[str, Any] | None = None):
        if location.is_local:
            raise ValueError("ObjectStore needs a remote location")
        self.location = location
        self.options = dict(storage_options or {})
        self._client: Any = None
        self._pid = -1
        # obstore's memory store has no prefix of its own: keys are prefixed here
        self._kp = f"{location.prefix}/" if location.scheme == "memory" and location.prefix else ""
        self._lock = threading.Lock()
        #: Requests this object made, by kind (``GET``, ``HEAD``, ``LIST``, ``PUT``,
        #: ``DELETE``): they cost money on public clouds; benchmarks report them.
        self.requests: Counter[str] = Counter()

    def __getstate__(self) -> dict[str, Any]:
        return {"location": self.location, "options": self.options}

    def _count(self, kind: str, n: int = 1) -> None:
        with self._lock:
            self.requests[kind] += n

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["location"], state["options"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"ObjectStore({self.url!r})"

    @property
    def client(self) -> Any:
        """The obstore store of this process (built on first use).

        Raises
        ------
        StorageError
            In a process forked after its parent used object storage.
        """
        global _used
        if _forked_after_use:
            raise StorageError(
                f"cannot reach {self.url} from a process forked after its parent used object "
                "storage (the storage client's threads do not survive fork); start worker "
                "processes with the 'spawn' or 'forkserver' method, e.g. "
                "multiprocessing.get_context('spawn')"
            )
        pid = os.getpid()
        if self._client is None or self._pid != pid:
            with self._lock:
                if self._client is None or self._pid != pid:
                    self._client = self._build()
                    self._pid = pid
                    _used = True
        return self._client

    def _build(self) -> Any:
        obstore = _obstore()
        loc = self.location
        if loc.scheme == "memory":
            if self.options:
                raise InvalidInputError("memory:// stores take no storage_options")
            return memory_store(loc.bucket)
        config, client, retry = _split_options(self.options)
        url = f"{loc.scheme}://{loc.bucket}" + (f"/{loc.prefix}" if loc.prefix else "")
        try:
            return obstore.store.from_url(
                url, config=config or None, client_options=client or None, retry_config=retry
            )
        except obstore.exceptions.UnknownConfigurationKeyError as exc:
            raise InvalidInputError(f"{self.url}: unknown storage option: {exc}") from None
        except (ValueError, TypeError, obstore.exceptions.BaseError) as exc:
            raise InvalidInputError(f"{self.url}: cannot configure the store: {exc}") from None

    @contextlib.contextmanager
    def _errors(self, op: str, key: str) -> Iterator[None]:
        """Turn obstore's errors into shardstore's (see :func:`shardstore.errors.storage_error`)."""
        obstore = _obstore()
        exc_mod = obstore.exceptions
        try:
            yield
        except (exc_mod.AlreadyExistsError, exc_mod.PreconditionError) as exc:
            raise PreconditionFailed(str(exc)) from None
        except (FileNotFoundError, exc_mod.NotFoundError):
            raise storage_error("not_found", op, self.key_url(key), "no such object") from None
        except (exc_mod.PermissionDeniedError, exc_mod.UnauthenticatedError) as exc:
            raise storage_error("denied", op, self.key_url(key), _first_line(exc)) from None
        except exc_mod.NotSupportedError as exc:
            raise storage_error("unsupported", op, self.key_url(key), _first_line(exc)) from None
        except (exc_mod.BaseError, OSError) as exc:
            if isinstance(exc, OSError) and type(exc).__module__.startswith("shardstore"):
                raise
            raise storage_error("failed", op, self.key_url(key), _first_line(exc)) from None

    # -- reading ----------------------------------------------------------------------------
    def head(self, key: str) -> ObjectInfo | None:
        """See :meth:`Store.head`."""
        self._count("HEAD")
        try:
            with self._errors("head", key):
                meta = self.client.head(self._kp + key)
        except FileNotFoundError:
            return None
        return _info(meta, key)

    def get(self, key: str, *, max_size: int) -> bytes:
        """See :meth:`Store.get`."""
        self._count("GET")
        with self._errors("read", key):
            result = self.client.get(self._kp + key)
            size = int(result.meta["size"])
            if size > max_size:
                raise InvalidInputError(
                    f"{self.key_url(key)} is {size} bytes, more than the {max_size} "
                    "bytes allowed for it"
                )
            return bytes(result.bytes())

    def get_ranges(self, key: str, starts: Sequence[int], ends: Sequence[int]) -> list[Buffer]:
        """See :meth:`Store.get_ranges` (ranges under 1 MiB apart are fetched in one request)."""
        if not starts:
            return []
        self._count("GET", _merged_requests(starts, ends))
        with self._errors("read", key):
            return list(
                self.client.get_ranges(self._kp + key, starts=list(starts), ends=list(ends))
            )

    def iter_chunks(self, key: str, chunk_size: int) -> Iterator[Buffer]:
        """See :meth:`Store.iter_chunks`."""
        self._count("GET")
        with self._errors("read", key):
            stream = self.client.get(self._kp + key).stream(min_chunk_size=chunk_size)
        while True:
            with self._errors("read", key):
                chunk = next(stream, None)
            if chunk is None:
                return
            yield chunk

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """See :meth:`Store.list`."""
        with self._errors("list", prefix or "."):
            stream = self.client.list((self._kp + prefix) or None)
        while True:
            with self._errors("list", prefix or "."):
                chunk = next(stream, None)
            self._count("LIST")
            if chunk is None:
                return
            for meta in chunk:
                yield _info(meta, meta["path"][len(self._kp) :])

    # -- writing ----------------------------------------------------------------------------
    def put(
        self,
        key: str,
        data: Buffer,
        *,
        mode: PutMode = "overwrite",
        if_match: ObjectInfo | None = None,
    ) -> ObjectInfo:
        """See :meth:`Store.put`."""
        put_mode: Any = mode
        if if_match is not None:
            put_mode = {
                k: v for k, v in (("e_tag", if_match.etag), ("version", if_match.version)) if v
            }
        size = memoryview(data).nbytes
        self._count("PUT")
        with self._errors("write", key):
            result = self.client.put(self._kp + key, data, mode=put_mode, use_multipart=False)
        return ObjectInfo(
            key, size, time.time(), etag=result.get("e_tag"), version=result.get("version")
        )

    def open_write(self, key: str) -> Sink:
        """See :meth:`Store.open_write`: a multipart upload in parts of 8 MiB."""
        return _UploadSink(self, key)

    def delete(self, keys: Iterable[str]) -> None:
        """See :meth:`Store.delete` (bulk requests of up to 1000 keys)."""
        batch: list[str] = []
        for key in keys:
            batch.append(key)
            if len(batch) == DELETE_BATCH:
                self._delete_batch(batch)
                batch = []
        if batch:
            self._delete_batch(batch)

    def _delete_batch(self, keys: Sequence[str]) -> None:
        self._count("DELETE")
        try:
            with self._errors("delete", keys[0]):
                self.client.delete([self._kp + k for k in keys])
        except FileNotFoundError:  # some stores refuse a bulk delete naming a missing key
            for key in keys:
                with contextlib.suppress(FileNotFoundError), self._errors("delete", key):
                    self.client.delete(self._kp + key)


def _info(meta: Mapping[str, Any], key: str) -> ObjectInfo:
    modified = meta.get("last_modified")
    return ObjectInfo(
        key=key,
        size=int(meta["size"]),
        mtime=modified.timestamp() if modified is not None else 0.0,
        etag=meta.get("e_tag"),
        version=meta.get("version"),
    )


def _merged_requests(starts: Sequence[int], ends: Sequence[int], gap: int = 1 << 20) -> int:
    """Requests ``get_ranges`` makes: ranges less than ``gap`` apart are fetched together."""
    spans = sorted(zip(starts, ends, strict=True))
    count, reach = 0, -1
    for lo, hi in spans:
        if count == 0 or lo - reach >= gap:
            count += 1
        reach = max(reach, hi)
    return count


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
