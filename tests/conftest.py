"""Shared fixtures: quiet TensorFlow, a registry reset after every test."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from collections.abc import Iterator

import pytest

from shardstore import registry


@pytest.fixture(autouse=True)
def _fresh_registry() -> Iterator[None]:
    """Tests that install throwaway plugins must not leak them into other tests."""
    yield
    registry.refresh()
