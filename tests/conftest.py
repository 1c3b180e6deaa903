"""Shared fixtures: quiet TensorFlow, a registry reset after every test."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from collections.abc import Iterator

import pytest

from shardstore import registry


@pytest.fixture(autouse=True)
def _fresh_registry() -> Iterator[None]:
    """Tests that install throwaway plugins (entry points or register_source) must not
    leak them into other tests."""
    registered = dict(registry._registered)
    yield
    registry._registered.clear()
    registry._registered.update(registered)
    registry.refresh()
