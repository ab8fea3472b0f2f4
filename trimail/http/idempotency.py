"""Idempotency keys: a retried request with the same key gets the first answer again.

Semantics (those of Stripe and Resend):

- keys are scoped to the caller's API key and remembered for ``ttl`` seconds;
- same key, same route and byte-identical body: the remembered ``202`` answer
  is replayed and nothing is queued again;
- same key, different body or route: ``409 invalid_idempotent_request``;
- same key while the first request with it is still being handled:
  ``409 concurrent_idempotent_requests``.

Only accepted requests are remembered. A request refused with an error (a 422,
a 503 ``queue_full``...) leaves its key free, so the caller can fix or retry it
with the same key.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from ..errors import IdempotencyKeyInUse, IdempotencyKeyReused, InvalidIdempotencyKey
from ..store.expiring import ExpiringStore

MAX_KEY_CHARS = 256
_KEY = re.compile(r"[\x21-\x7e]{1,256}")  # visible ASCII, as in a header value


@dataclass(frozen=True, slots=True)
class Answer:
    """A remembered answer; ``body`` is None while the first request is in progress."""

    fingerprint: bytes
    body: dict[str, Any] | None


def fingerprint(route: str, body: bytes) -> bytes:
    """What must match for a replay: the route and the exact bytes of the body."""
    return hashlib.sha256(route.encode() + b"\0" + body).digest()


def check_key(key: str) -> str:
    """Return ``key`` if it is usable, else raise ``invalid_idempotency_key``."""
    if not _KEY.fullmatch(key):
        raise InvalidIdempotencyKey(
            f"Idempotency-Key must be 1 to {MAX_KEY_CHARS} visible ASCII characters "
            "(a UUID is a good choice)"
        )
    return key


class IdempotencyKeys:
    """The keys seen recently, per owner (API key), with the answers they got."""

    def __init__(self, ttl: float, max_keys: int) -> None:
        self._answers: ExpiringStore[tuple[str | None, str], Answer] = ExpiringStore(ttl, max_keys)

    def begin(self, owner: str | None, key: str, print_: bytes) -> dict[str, Any] | None:
        """Claim ``key`` for a new request, or return the answer to replay.

        Raises :class:`IdempotencyKeyReused` or :class:`IdempotencyKeyInUse`.
        After a None, call :meth:`complete` or :meth:`abandon`.
        """
        known = self._answers.get((owner, key))
        if known is None:
            self._answers.put((owner, key), Answer(print_, None))
            return None
        if known.fingerprint != print_:
            raise IdempotencyKeyReused(
                "this Idempotency-Key was already used with a different request; use a new key "
                "for a new message"
            )
        if known.body is None:
            raise IdempotencyKeyInUse(
                "a request with this Idempotency-Key is still being handled; retry shortly"
            )
        return known.body

    def complete(self, owner: str | None, key: str, print_: bytes, body: dict[str, Any]) -> None:
        """Remember ``body`` as the answer to ``key``."""
        self._answers.put((owner, key), Answer(print_, body))

    def abandon(self, owner: str | None, key: str) -> None:
        """Forget a claimed key whose request was refused, so it can be used again."""
        self._answers.pop((owner, key))
