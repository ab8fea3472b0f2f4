"""The request log: one line per HTTP request, on the ``trimail.access`` logger.

A line says what was asked and how it ended: method, path, status, duration
in milliseconds, the job ids it created, the caller's owner id (a hash of its
API key, never the key), the client address and the ``Idempotency-Key``.
Refusals decided before a body is read (401, 413, 503) are logged like any
other answer. Bodies, keys and passwords never appear. ``TRIMAIL_ACCESS_LOG=false``
turns the lines off (the logger can also be silenced on its own).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

LOGGER_NAME = "trimail.access"
#: The scope key under which a sending route leaves the ids of the jobs it created.
JOBS = "trimail.jobs"
#: The most characters of an Idempotency-Key written (the API limits keys to 255).
KEY_CHARS = 255

log = logging.getLogger(LOGGER_NAME)


def request_line(
    scope: dict[str, Any] | Any, status: int, duration: float, owner: str | None
) -> tuple[str, dict[str, Any]]:
    """The text and the structured fields of one request's line (a pure function)."""
    client = scope.get("client")
    address = f"{client[0]}:{client[1]}" if client else "unix"
    jobs: Sequence[str] = scope.get(JOBS, ())
    key = next((v for n, v in scope["headers"] if n == b"idempotency-key"), None)
    fields: dict[str, Any] = {
        "method": scope["method"],
        "path": scope["path"],
        "status": status,
        "duration_ms": round(duration * 1000.0, 1),
        "client": address,
    }
    text = f'{address} "{scope["method"]} {scope["path"]}" {status} {fields["duration_ms"]} ms'
    if jobs:
        fields["job_ids"] = list(jobs)
        text += " job " + ",".join(jobs)
    if owner:
        fields["owner"] = owner
        text += f" owner {owner}"
    if key is not None:
        fields["idempotency_key"] = key.decode("latin-1")[:KEY_CHARS]
        text += f" idempotency-key {fields['idempotency_key']!r}"
    return text, fields


def log_request(scope: Any, status: int, duration: float, owner: str | None) -> None:
    """Write the line for one answered request (INFO; 5xx as WARNING)."""
    if not log.isEnabledFor(logging.INFO):
        return
    text, fields = request_line(scope, status, duration, owner)
    log.log(logging.WARNING if status >= 500 else logging.INFO, "%s", text, extra=fields)
