"""The storage backends: one contract, run against a local directory, an in-process store
and a real S3 server on 127.0.0.1."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap

import pytest

from shardstore.errors import (
    InvalidInputError,
    StorageFileNotFoundError,
    StoragePermissionError,
    StorageUnavailableError,
)
from shardstore.storage import open_store
from shardstore.storage.base import PreconditionFailed
from shardstore.storage.location import parse_location
from shardstore.storage.objects import ObjectStore


@pytest.fixture(params=["local", "memory", "s3"])
def store(request, memory_url, tmp_path):
    if request.param == "local":
        return open_store(tmp_path / "ds")
    if request.param == "memory":
        return ObjectStore(parse_location(memory_url))
    url = request.getfixturevalue("s3_url")
    return ObjectStore(parse_location(url))


def test_put_get_head_list_delete(store):
    info = store.put("a/b.bin", b"hello")
    assert info.size == 5
    head = store.head("a/b.bin")
    assert head is not None and head.size == 5 and head.key == "a/b.bin"
    assert store.head("missing") is None
    assert store.get("a/b.bin", max_size=5) == b"hello"
    store.put("a/c/d.bin", b"x")
    store.put("e.bin", b"yy")
    assert sorted(o.key for o in store.list()) == ["a/b.bin", "a/c/d.bin", "e.bin"]
    assert sorted(o.key for o in store.list("a/")) == ["a/b.bin", "a/c/d.bin"]
    store.delete(["a/b.bin", "never-there"])
    assert sorted(o.key for o in store.list()) == ["a/c/d.bin", "e.bin"]


def test_get_is_bounded_and_missing_objects_are_typed(store):
    store.put("big", b"x" * 100)
    with pytest.raises(InvalidInputError, match="100 bytes, more than the 99"):
        store.get("big", max_size=99)
    with pytest.raises(StorageFileNotFoundError, match=r"(?i)no such (object|file)") as err:
        store.get("nope", max_size=10)
    assert isinstance(err.value, FileNotFoundError)
    assert store.url in str(err.value)


def test_ranges_and_chunks(store):
    data = bytes(range(256)) * 100_000  # 25.6 MB: more than one upload part
    sink = store.open_write("v/obj")
    for i in range(0, len(data), 3_000_000):
        sink.write(data[i : i + 3_000_000])
    sink.close()
    assert store.head("v/obj").size == len(data)
    got = store.get_ranges("v/obj", [0, 10, 25_000_000], [3, 20, 25_000_005])
    assert [bytes(b) for b in got] == [data[0:3], data[10:20], data[25_000_000:25_000_005]]
    assert b"".join(bytes(c) for c in store.iter_chunks("v/obj", 8 << 20)) == data


def test_an_aborted_upload_leaves_nothing(store):
    sink = store.open_write("v/partial")
    sink.write(b"x" * 1000)
    sink.abort()
    assert store.head("v/partial") is None


def test_conditional_puts_have_one_winner(store):
    store.put("m", b"1", mode="create")
    with pytest.raises(PreconditionFailed):
        store.put("m", b"2", mode="create")
    first = store.head("m")
    if store.is_local:  # a local directory commits with file locks instead
        with pytest.raises(NotImplementedError, match="file locks"):
            store.put("m", b"3", if_match=first)
        return
    store.put("m", b"3", if_match=first)
    with pytest.raises(PreconditionFailed):
        store.put("m", b"4", if_match=first)  # no longer that version
    assert store.get("m", max_size=10) == b"3"


def test_a_store_pickles_as_its_location_and_options(store):
    store.put("k", b"v")
    clone = pickle.loads(pickle.dumps(store))
    assert clone.url == store.url and getattr(clone, "options", {}) == getattr(store, "options", {})
    if store.location.scheme != "memory":  # memory stores live in one process
        assert clone.get("k", max_size=1) == b"v"


def test_wrong_credentials_are_a_permission_error(s3_server, s3_url):
    bad = ObjectStore(
        parse_location(s3_url), {**s3_server.storage_options, "secret_access_key": "wrong"}
    )
    with pytest.raises(StoragePermissionError, match="check the credentials") as err:
        bad.head("manifest.json")
    assert isinstance(err.value, PermissionError)


def test_an_unreachable_store_fails_in_bounded_time_naming_the_url():
    url = "s3://bucket/x"
    options = {"endpoint": "http://127.0.0.1:9", "allow_http": True, "access_key_id": "a",
               "secret_access_key": "b", "region": "us-east-1", "max_retries": 2,
               "retry_timeout": 3, "init_backoff": 0.05}  # fmt: skip
    store = ObjectStore(parse_location(url), options)
    with pytest.raises(
        StorageUnavailableError, match=r"cannot head s3://bucket/x/manifest.json.*retr"
    ):
        store.head("manifest.json")


def test_unknown_storage_options_are_refused():
    store = ObjectStore(parse_location("s3://b/x"), {"no_such_option": 1})
    with pytest.raises(InvalidInputError, match="no_such_option"):
        store.head("x")


def test_a_forked_child_fails_fast_and_a_spawned_one_works(s3_url, s3_env, tmp_path):
    """The client's threads do not survive fork: a child forked after its parent used
    object storage must get a clear error, not hang; a spawned process works."""
    script = textwrap.dedent(
        f"""
        import multiprocessing as mp, os
        from shardstore.errors import StorageError
        from shardstore.storage.location import parse_location
        from shardstore.storage.objects import ObjectStore

        def child(store):
            return bytes(store.get("k", max_size=10))

        if __name__ == "__main__":
            store = ObjectStore(parse_location({s3_url!r}))
            store.put("k", b"parent")
            pid = os.fork()
            if pid == 0:
                try:
                    ObjectStore(parse_location({s3_url!r})).get("k", max_size=10)
                except StorageError as exc:
                    os._exit(7 if "spawn" in str(exc) else 3)
                os._exit(4)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 7, status
            with mp.get_context("spawn").Pool(1) as pool:
                assert pool.apply(child, (store,)) == b"parent"
            print("ok")
        """
    )
    path = tmp_path / "fork_check.py"
    path.write_text(script)
    proc = subprocess.run([sys.executable, str(path)], timeout=120, capture_output=True)
    assert proc.returncode == 0 and proc.stdout.strip() == b"ok", proc.stderr.decode()
