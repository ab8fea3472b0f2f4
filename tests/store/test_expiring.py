"""The bounded expiring map of the memory store, and the idempotency-key rules (pure)."""

from __future__ import annotations

import pytest

from trimail.errors import InvalidIdempotencyKey
from trimail.http.idempotency import check_key, fingerprint
from trimail.store.expiring import ExpiringStore


def test_entries_expire_after_ttl() -> None:
    """An entry is readable until its ttl has passed, then gone."""
    store: ExpiringStore[str, int] = ExpiringStore(ttl=10, max_entries=5)
    store.put("a", 1, now=0)
    assert store.get("a", now=9.9) == 1
    assert store.get("a", now=10.0) is None
    assert len(store) == 0


def test_oldest_entries_go_when_full() -> None:
    """Past max_entries the oldest entry is dropped, so memory stays bounded."""
    store: ExpiringStore[int, int] = ExpiringStore(ttl=100, max_entries=3)
    for n in range(10):
        store.put(n, n, now=0)
    assert len(store) == 3
    assert [store.get(n, now=0) for n in range(10)] == [None] * 7 + [7, 8, 9]


def test_replacing_an_entry_renews_it() -> None:
    """put() on an existing key starts its lifetime again."""
    store: ExpiringStore[str, int] = ExpiringStore(ttl=10, max_entries=5)
    store.put("a", 1, now=0)
    store.put("a", 2, now=8)
    assert store.get("a", now=15) == 2


def test_expire_counts_what_it_drops() -> None:
    """expire() removes every entry whose lifetime ended and says how many."""
    store: ExpiringStore[str, int] = ExpiringStore(ttl=10, max_entries=5)
    store.put("a", 1, now=0)
    store.put("b", 2, now=5)
    assert store.expire(now=12) == 1
    assert store.get("b", now=12) == 2


def test_the_fingerprint_covers_route_and_body() -> None:
    """The same body on another route, or another body, is another request."""
    send = fingerprint("/email/send", b"{}")
    assert send == fingerprint("/email/send", b"{}")
    assert send != fingerprint("/email/batch", b"{}")
    assert send != fingerprint("/email/send", b'{"a": 1}')


@pytest.mark.parametrize("key", ["", "a b", "x" * 257, "naïve", "tab\there"])
def test_unusable_keys_are_refused(key: str) -> None:
    """Keys are 1-256 visible ASCII characters."""
    with pytest.raises(InvalidIdempotencyKey):
        check_key(key)


def test_usable_keys_pass() -> None:
    """UUIDs and the longest allowed key pass."""
    assert check_key("9f1c2b4e-7a1d-4d2e-9b0f-3c5a6e7f8a9b")
    assert check_key("x" * 256)
