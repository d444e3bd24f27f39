"""A bounded memo for the hot path: results of pure functions, per workload shape.

Pods of one Deployment share annotations, namespace and policy, so their options and
sidecars are built once. The memo empties itself when full, so hostile input (every review
with new annotation values) costs memory up to the bound and no more.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedMemo(Generic[K, V]):
    """A dict that is cleared when it reaches `size` entries."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._data: dict[K, V] = {}

    def get(self, key: K) -> V | None:
        return self._data.get(key)

    def put(self, key: K, value: V) -> V:
        if len(self._data) >= self._size:
            self._data.clear()
        self._data[key] = value
        return value

    def __len__(self) -> int:
        return len(self._data)
