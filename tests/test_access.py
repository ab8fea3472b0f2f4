"""Who may call which route, decided from headers and addresses alone (pure functions)."""

from __future__ import annotations

import pytest

from trimail.errors import Unauthorized
from trimail.http.access import LOCAL_OWNER, Access, Guard, owner_id

LOOPBACK = ("127.0.0.1", 8080)
KEYED = Access((b"alpha", b"beta"))


def bearer(key: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", b"Bearer " + key)]


def test_owner_is_derived_from_the_key_not_its_position() -> None:
    """Reordering or adding keys keeps every key's owner id; the id does not contain the key."""
    reordered = Access((b"gamma", b"beta", b"alpha"))
    for key in (b"alpha", b"beta"):
        owner = KEYED.check(Guard.API_KEY, bearer(key), LOOPBACK)
        assert owner == reordered.check(Guard.API_KEY, bearer(key), LOOPBACK) == owner_id(key)
    assert owner_id(b"alpha") != owner_id(b"beta")
    assert "alpha" not in owner_id(b"alpha")


@pytest.mark.parametrize(
    "headers",
    [[], [(b"authorization", b"Bearer")], [(b"authorization", b"Basic alpha")], bearer(b"wrong")],
)
def test_a_missing_or_wrong_key_is_refused(headers: list[tuple[bytes, bytes]]) -> None:
    """With keys configured, only a configured bearer key passes, wherever the caller is."""
    with pytest.raises(Unauthorized):
        KEYED.check(Guard.API_KEY, headers, LOOPBACK)


@pytest.mark.parametrize("header", [b"forwarded", b"x-forwarded-for", b"x-real-ip", b"via"])
def test_without_keys_a_proxied_request_is_refused(header: bytes) -> None:
    """A proxy connects from loopback on anyone's behalf: its headers mean keys are required."""
    with pytest.raises(Unauthorized, match="keys are required behind a proxy"):
        Access(()).check(Guard.API_KEY, [(header, b"203.0.113.9")], LOOPBACK)


def test_without_keys_a_unix_socket_is_refused() -> None:
    """On a Unix socket (no server address) the caller cannot be known: refused."""
    with pytest.raises(Unauthorized, match="Unix socket"):
        Access(()).check(Guard.API_KEY, [], None)


def test_without_keys_only_loopback_tcp_is_served() -> None:
    """A direct connection to a loopback address is served as the local owner; others are not."""
    assert Access(()).check(Guard.API_KEY, [], LOOPBACK) == LOCAL_OWNER
    assert Access(()).check(Guard.API_KEY, [], ("::1", 8080)) == LOCAL_OWNER
    with pytest.raises(Unauthorized, match="loopback"):
        Access(()).check(Guard.API_KEY, [], ("192.0.2.10", 8080))


def test_open_routes_need_nothing() -> None:
    """Health, readiness and the API document are open, even to a proxied caller."""
    assert Access(()).check(Guard.OPEN, [(b"via", b"proxy")], None) is None
    assert KEYED.check(Guard.OPEN, [], None) is None


def test_the_metrics_key_opens_metrics_only() -> None:
    """TRIMAIL_METRICS_KEY is accepted for /metrics, not for sending; API keys work for both."""
    access = Access((b"alpha",), metrics_key=b"scrape")
    assert access.check(Guard.METRICS, bearer(b"scrape"), LOOPBACK)
    assert access.check(Guard.METRICS, bearer(b"alpha"), LOOPBACK) == owner_id(b"alpha")
    with pytest.raises(Unauthorized):
        access.check(Guard.API_KEY, bearer(b"scrape"), LOOPBACK)
    with pytest.raises(Unauthorized):
        access.check(Guard.METRICS, [], LOOPBACK)


def test_a_metrics_key_alone_guards_metrics() -> None:
    """Without API keys but with a metrics key, /metrics needs that key; sending stays local."""
    access = Access((), metrics_key=b"scrape")
    with pytest.raises(Unauthorized):
        access.check(Guard.METRICS, [], LOOPBACK)
    assert access.check(Guard.METRICS, bearer(b"scrape"), LOOPBACK)
    assert access.check(Guard.API_KEY, [], LOOPBACK) == LOCAL_OWNER
