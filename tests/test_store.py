"""The bounded expiring store and the idempotency-key rules built on it (pure, no I/O)."""

from __future__ import annotations

import pytest

from trimail.errors import IdempotencyKeyInUse, IdempotencyKeyReused, InvalidIdempotencyKey
from trimail.http.idempotency import IdempotencyKeys, check_key, fingerprint
from trimail.store.expiring import ExpiringStore


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_entries_expire_after_ttl() -> None:
    """An entry is readable until its ttl has passed, then gone."""
    clock = FakeClock()
    store: ExpiringStore[str, int] = ExpiringStore(ttl=10, max_entries=5, clock=clock)
    store.put("a", 1)
    clock.now = 9.9
    assert store.get("a") == 1
    clock.now = 10.0
    assert store.get("a") is None
    assert len(store) == 0


def test_oldest_entries_go_when_full() -> None:
    """Past max_entries the oldest entry is dropped, so memory stays bounded."""
    store: ExpiringStore[int, int] = ExpiringStore(ttl=100, max_entries=3, clock=FakeClock())
    for n in range(10):
        store.put(n, n)
    assert len(store) == 3
    assert [store.get(n) for n in range(10)] == [None] * 7 + [7, 8, 9]


def test_replacing_an_entry_renews_it() -> None:
    """put() on an existing key starts its lifetime again."""
    clock = FakeClock()
    store: ExpiringStore[str, int] = ExpiringStore(ttl=10, max_entries=5, clock=clock)
    store.put("a", 1)
    clock.now = 8
    store.put("a", 2)
    clock.now = 15
    assert store.get("a") == 2


def test_first_use_claims_then_replays() -> None:
    """A new key is claimed; once completed, the same request gets the same answer."""
    keys = IdempotencyKeys(ttl=100, max_keys=10)
    body = fingerprint("/email/send", b"{}")
    assert keys.begin("key-1", "k", body) is None
    with pytest.raises(IdempotencyKeyInUse):
        keys.begin("key-1", "k", body)
    keys.complete("key-1", "k", body, {"id": "x", "status": "queued"})
    assert keys.begin("key-1", "k", body) == {"id": "x", "status": "queued"}


def test_a_different_body_with_the_same_key_conflicts() -> None:
    """Reusing a key for another request is refused."""
    keys = IdempotencyKeys(ttl=100, max_keys=10)
    keys.begin("key-1", "k", fingerprint("/email/send", b"{}"))
    keys.complete("key-1", "k", fingerprint("/email/send", b"{}"), {"id": "x"})
    with pytest.raises(IdempotencyKeyReused):
        keys.begin("key-1", "k", fingerprint("/email/send", b'{"a": 1}'))
    with pytest.raises(IdempotencyKeyReused):
        keys.begin("key-1", "k", fingerprint("/email/batch", b"{}"))


def test_keys_are_scoped_to_the_api_key() -> None:
    """Two callers may use the same Idempotency-Key independently."""
    keys = IdempotencyKeys(ttl=100, max_keys=10)
    body = fingerprint("/email/send", b"{}")
    keys.begin("key-1", "k", body)
    assert keys.begin("key-2", "k", body) is None


def test_abandoned_key_can_be_used_again() -> None:
    """A refused request frees its key."""
    keys = IdempotencyKeys(ttl=100, max_keys=10)
    keys.begin("key-1", "k", fingerprint("/email/send", b"bad"))
    keys.abandon("key-1", "k")
    assert keys.begin("key-1", "k", fingerprint("/email/send", b"good")) is None


@pytest.mark.parametrize("key", ["", "a b", "x" * 257, "naïve", "tab\there"])
def test_unusable_keys_are_refused(key: str) -> None:
    """Keys are 1-256 visible ASCII characters."""
    with pytest.raises(InvalidIdempotencyKey):
        check_key(key)


def test_usable_keys_pass() -> None:
    """UUIDs and the longest allowed key pass."""
    assert check_key("9f1c2b4e-7a1d-4d2e-9b0f-3c5a6e7f8a9b")
    assert check_key("x" * 256)
