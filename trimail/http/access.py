"""Who may call which route: API keys, the metrics key, and the rule without keys.

With ``TRIMAIL_API_KEYS`` set, ``/email/*`` needs ``Authorization: Bearer <key>``
and ``/metrics`` needs an API key or ``TRIMAIL_METRICS_KEY``. Without API keys
trimail follows Redis's *protected mode*: it serves only a caller it can see is
on this machine, that is a direct TCP connection to a loopback address. A Unix
socket (the peer is unknown) and a request that came through a proxy (it
carries ``Forwarded``, ``X-Forwarded-For``, ``X-Real-IP`` or ``Via``; the proxy
connects from loopback on behalf of anyone) are refused, so an instance put
behind a proxy by mistake is not an open relay.

Everything here is a pure function of the request's headers and addresses: the
body is never needed, so a refusal costs nothing and reads nothing.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

from ..config import is_loopback
from ..errors import Unauthorized

#: Headers a reverse proxy adds; their presence means the TCP peer is not the caller.
PROXY_HEADERS = frozenset({b"forwarded", b"x-forwarded-for", b"x-real-ip", b"via"})
#: The owner of every job when no API keys are configured.
LOCAL_OWNER = "local"


class Guard(Enum):
    """What a route asks of its caller."""

    OPEN = "open"  # health, readiness, the API document
    API_KEY = "api_key"  # sending and job status
    METRICS = "metrics"  # an API key or the metrics key


def owner_id(key: bytes) -> str:
    """The stable owner of an API key's jobs: 16 hex digits of a hash of the key.

    It does not depend on the key's position in ``TRIMAIL_API_KEYS``, so keys
    can be reordered, added or removed without handing one caller's jobs to
    another, and it is the same on every instance. It does not reveal the key.
    """
    return hashlib.sha256(b"trimail owner\0" + key).hexdigest()[:16]


@dataclass(frozen=True)
class Access:
    """The keys of one app; :meth:`check` decides one request."""

    api_keys: tuple[bytes, ...]
    metrics_key: bytes | None = None

    @classmethod
    def from_secrets(cls, api_keys: Iterable[str], metrics_key: str | None) -> Access:
        return cls(
            tuple(key.encode() for key in api_keys),
            metrics_key.encode() if metrics_key else None,
        )

    def check(
        self,
        guard: Guard,
        headers: Sequence[tuple[bytes, bytes]],
        server: Sequence[object] | None,
    ) -> str | None:
        """The caller's owner id for ``guard``, None for an open route; else raise 401.

        ``headers`` and ``server`` are the ASGI scope's (``server`` is None on a
        Unix socket). Keys are compared in constant time, each one every time.
        """
        if guard is Guard.OPEN:
            return None
        keys = self.api_keys
        if guard is Guard.METRICS and self.metrics_key is not None:
            keys = (*keys, self.metrics_key)
        if not keys:
            _check_local(headers, server)
            return LOCAL_OWNER
        presented = _bearer(headers)
        matched: bytes | None = None
        for key in keys:  # no early exit: the time taken says nothing about which key
            if hmac.compare_digest(presented, key):
                matched = key
        if matched is None:
            raise Unauthorized(
                "send the header 'Authorization: Bearer <API key>'"
                if not presented
                else "the API key in the Authorization header is not valid"
            )
        return owner_id(matched)


def _bearer(headers: Sequence[tuple[bytes, bytes]]) -> bytes:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer":
                return token.strip()
            return b""
    return b""


def _check_local(headers: Sequence[tuple[bytes, bytes]], server: Sequence[object] | None) -> None:
    """Protected mode: only a direct TCP connection to a loopback address is served."""
    if any(name in PROXY_HEADERS for name, _ in headers):
        raise Unauthorized(
            "this request came through a proxy, and this trimail has no API keys: keys are "
            "required behind a proxy; the operator must set TRIMAIL_API_KEYS"
        )
    host = server[0] if server else None
    if not isinstance(host, str):
        raise Unauthorized(
            "this trimail has no API keys and was reached over a Unix socket, where the "
            "caller cannot be known; the operator must set TRIMAIL_API_KEYS"
        )
    if not is_loopback(host):
        raise Unauthorized(
            "this trimail has no API keys configured and serves loopback callers only; "
            "the operator must set TRIMAIL_API_KEYS"
        )
