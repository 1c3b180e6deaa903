"""Small thread-safe caches shared by the sources: by entry count, and by bytes."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

import numpy as np

__all__ = ["LRU", "ByteBudgetCache"]

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


class LRU(Generic[_K, _V]):
    """A small thread-safe LRU mapping of at most ``maxsize`` entries."""

    def __init__(self, maxsize: int) -> None:
        self._maxsize = maxsize
        self._items: OrderedDict[_K, _V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: _K) -> _V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: _K, value: _V) -> _V:
        """Insert ``value`` unless ``key`` is present; return the stored value."""
        with self._lock:
            existing = self._items.get(key)
            if existing is not None:
                self._items.move_to_end(key)
                return existing
            self._items[key] = value
            while len(self._items) > self._maxsize:
                self._items.popitem(last=False)
            return value


class ByteBudgetCache(Generic[_K]):
    """Arrays under a byte budget, the oldest inserted dropped first (at least one kept)."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._nbytes = 0
        self._items: OrderedDict[_K, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: _K) -> np.ndarray | None:
        with self._lock:
            return self._items.get(key)

    def put(self, key: _K, value: np.ndarray) -> None:
        with self._lock:
            if key in self._items:
                return
            self._items[key] = value
            self._nbytes += value.nbytes
            while self._nbytes > self._max_bytes and len(self._items) > 1:
                self._nbytes -= self._items.popitem(last=False)[1].nbytes

    def pop(self, key: _K) -> None:
        with self._lock:
            value = self._items.pop(key, None)
            if value is not None:
                self._nbytes -= value.nbytes

    def __len__(self) -> int:
        return len(self._items)
