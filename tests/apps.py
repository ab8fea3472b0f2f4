"""App factories for tests that run Hypercorn as a process (``tests.apps:crashing_app()``)."""

from __future__ import annotations

from trimail.config import load_settings
from trimail.http.app import TrimailApp, create_app, store_limits
from trimail.store import ClaimedJob
from trimail.store.memory import MemoryStore


class BrokenStore(MemoryStore):
    """A memory store with a bug: the dispatcher's first claim raises."""

    async def claim(self, limit: int, now: float, lease_until: float) -> list[ClaimedJob]:
        raise RuntimeError("a bug in the store's claim")


def crashing_app() -> TrimailApp:
    """The app configured from TRIMAIL_*, whose delivery stops right after it starts."""
    settings = load_settings()
    return create_app(settings, store=BrokenStore(store_limits(settings)))
