"""A bounded, expiring map: the memory store's finished jobs and idempotency keys.

Entries live at most ``ttl`` seconds and at most ``max_entries`` are kept; the
oldest go first. Every operation is O(1) amortized, so the map stays flat in
memory and time under any load. Times are passed in (``now``), in seconds.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ExpiringStore(Generic[K, V]):
    """Insertion-ordered map whose entries expire after ``ttl`` seconds or when it is full."""

    def __init__(self, ttl: float, max_entries: int) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K, now: float) -> V | None:
        """The live value for ``key``, or None if there is none (or it expired)."""
        self.expire(now)
        entry = self._entries.get(key)
        return None if entry is None else entry[1]

    def put(self, key: K, value: V, now: float) -> None:
        """Store ``value``; its lifetime starts ``now`` (an existing entry is replaced)."""
        self._entries.pop(key, None)
        self._entries[key] = (now + self.ttl, value)
        self.expire(now)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def pop(self, key: K) -> V | None:
        entry = self._entries.pop(key, None)
        return None if entry is None else entry[1]

    def expire(self, now: float) -> int:
        """Drop the entries whose lifetime ended by ``now``; return how many."""
        dropped = 0
        while self._entries:
            key, (deadline, _) = next(iter(self._entries.items()))
            if deadline > now:
                break
            del self._entries[key]
            dropped += 1
        return dropped
