"""A bounded, expiring in-memory map: the memory of idempotency keys and finished jobs.

Entries live at most ``ttl`` seconds and at most ``max_entries`` are kept; the
oldest go first. Every operation is O(1) amortized, so the store stays flat in
memory and time under any load.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ExpiringStore(Generic[K, V]):
    """Insertion-ordered map whose entries expire after ``ttl`` seconds or when it is full."""

    def __init__(
        self, ttl: float, max_entries: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | None:
        """The live value for ``key``, or None if there is none (or it expired)."""
        self._expire()
        entry = self._entries.get(key)
        return None if entry is None else entry[1]

    def put(self, key: K, value: V) -> None:
        """Store ``value``; its lifetime starts now (an existing entry is replaced)."""
        self._entries.pop(key, None)
        self._entries[key] = (self._clock() + self.ttl, value)
        self._expire()
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def pop(self, key: K) -> V | None:
        entry = self._entries.pop(key, None)
        return None if entry is None else entry[1]

    def _expire(self) -> None:
        now = self._clock()
        while self._entries:
            key, (deadline, _) = next(iter(self._entries.items()))
            if deadline > now:
                break
            del self._entries[key]
