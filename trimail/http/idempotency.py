"""Idempotency keys: a retried request with the same key gets the first answer again.

Semantics (those of Stripe and Resend); the records live in the job store, so
every process and instance on one store answers the same:

- keys are scoped to the caller's API key and remembered for
  ``TRIMAIL_IDEMPOTENCY_TTL``;
- same key, same route and byte-identical body: the remembered ``202`` answer
  is replayed and nothing is stored again;
- same key, different body or route: ``409 invalid_idempotent_request``;
- the same request sent twice at once: one is stored, the other gets its answer.

Only accepted requests are remembered: a request refused with an error (a 422,
a 503 ``queue_full``...) leaves its key free, so the caller can fix or retry it.
"""

from __future__ import annotations

import hashlib
import re

from ..errors import InvalidIdempotencyKey

MAX_KEY_CHARS = 256
_KEY = re.compile(r"[\x21-\x7e]{1,256}")  # visible ASCII, as in a header value


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
