"""Thread-safe ring buffers of timestamped samples: the device histories (``states(n)``,
``frames(n)``) an observation window is resampled from."""

from __future__ import annotations

import collections
import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class History(Generic[T]):
    """The latest ``capacity`` samples (oldest dropped first), each with a ``timestamp`` attribute.

    Raises:
        ValueError: ``capacity`` < 1.
    """

    def __init__(self, capacity: int = 32):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._items: collections.deque[T] = collections.deque(maxlen=int(capacity))
        self._cond = threading.Condition()

    @property
    def capacity(self) -> int:
        return self._items.maxlen

    def push(self, item: T) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify_all()

    def clear(self) -> None:
        with self._cond:
            self._items.clear()

    def latest(self) -> T | None:
        """The newest sample, or None before the first."""
        with self._cond:
            return self._items[-1] if self._items else None

    def last(self, n: int) -> list[T]:
        """The newest ``min(n, len)`` samples, oldest first."""
        with self._cond:
            if n <= 0:
                return []
            k = min(n, len(self._items))
            return [self._items[i] for i in range(len(self._items) - k, len(self._items))]

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)
