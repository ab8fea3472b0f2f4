"""The exceptions trimail raises, named by who is at fault.

::

    TrimailError
    ├── ConfigurationError        the operator's settings cannot work
    ├── ConnectionFailed          the client could not reach trimail (after its retries)
    ├── HTTPError                 answered as JSON; 500 internal_error when used as is
    │   ├── RequestError            the caller's request is refused (4xx); nothing is queued
    │   │   ├── BadRequest              400 bad_request
    │   │   ├── InvalidJSON             400 invalid_json
    │   │   ├── InvalidIdempotencyKey   400 invalid_idempotency_key
    │   │   ├── Unauthorized            401 unauthorized
    │   │   ├── NotFound                404 not_found
    │   │   ├── MethodNotAllowed        405 method_not_allowed
    │   │   ├── RequestTimeout          408 request_timeout
    │   │   ├── IdempotencyKeyReused    409 invalid_idempotent_request
    │   │   ├── PayloadTooLarge         413 payload_too_large
    │   │   ├── UnsupportedMediaType    415 unsupported_media_type
    │   │   └── ValidationFailed        422 validation_error
    │   └── Unavailable             the service cannot take a job now; try again later (503)
    │       ├── QueueFull               503 queue_full
    │       ├── ServerBusy              503 server_busy
    │       ├── ShuttingDown            503 shutting_down
    │       └── StoreUnavailable        503 store_unavailable
    └── DeliveryError             one SMTP attempt failed (raised in worker threads)
        ├── TransientDeliveryError  worth another attempt later
        └── PermanentDeliveryError  another attempt would fail the same way

Every :class:`HTTPError` knows its HTTP status and its machine-readable
``code``; the API turns it into ``{"error": {"code", "message", "details"?}}``.
The codes form a closed set: :func:`error_codes` lists them.
"""

from __future__ import annotations

from typing import Any, ClassVar


class TrimailError(Exception):
    """Base class of every exception trimail raises on purpose."""


class ConfigurationError(TrimailError):
    """The settings are unusable: an unknown key, a bad value, an unsafe bind."""


class ConnectionFailed(TrimailError):
    """Raised by :mod:`trimail.client` when trimail could not be reached at all."""


class HTTPError(TrimailError):
    """An error answered to the HTTP caller as a JSON error body."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"

    def headers(self) -> dict[str, str]:
        """Extra response headers this error needs (``Retry-After``, ``WWW-Authenticate``)."""
        return {}

    def payload(self) -> dict[str, Any]:
        """The value of ``"error"`` in the JSON answer."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        return body


class RequestError(HTTPError):
    """The caller sent something trimail refuses; fixing the request fixes it."""

    status = 400


class BadRequest(RequestError):
    status = 400
    code = "bad_request"


class InvalidJSON(RequestError):
    status = 400
    code = "invalid_json"


class InvalidIdempotencyKey(RequestError):
    status = 400
    code = "invalid_idempotency_key"


class Unauthorized(RequestError):
    status = 401
    code = "unauthorized"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="trimail"'}


class NotFound(RequestError):
    status = 404
    code = "not_found"


class MethodNotAllowed(RequestError):
    status = 405
    code = "method_not_allowed"

    def __init__(self, message: str, details: Any = None, *, allow: str = "") -> None:
        super().__init__(message, details)
        self.allow = allow  # the methods the route takes, for the Allow header

    def headers(self) -> dict[str, str]:
        return {"Allow": self.allow} if self.allow else {}


class RequestTimeout(RequestError):
    status = 408
    code = "request_timeout"


class IdempotencyKeyReused(RequestError):
    """The Idempotency-Key was used before with a different request."""

    status = 409
    code = "invalid_idempotent_request"

    def __init__(
        self,
        message: str = "this Idempotency-Key was already used with a different request; use a "
        "new key for a new message",
        details: Any = None,
    ) -> None:
        super().__init__(message, details)


class PayloadTooLarge(RequestError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(RequestError):
    status = 415
    code = "unsupported_media_type"


class ValidationFailed(RequestError):
    """``details`` lists the problems; ``omitted`` counts those left out of a long list."""

    status = 422
    code = "validation_error"

    def __init__(self, message: str, details: Any = None, omitted: int | None = None) -> None:
        super().__init__(message, details)
        self.omitted = omitted

    def payload(self) -> dict[str, Any]:
        body = super().payload()
        if self.omitted:
            body["omitted"] = self.omitted
        return body


class Unavailable(HTTPError):
    """The service is healthy but cannot take the job now; the caller should retry later.

    ``Retry-After`` and ``details.retry_after`` both say how many seconds to wait.
    """

    status = 503

    def __init__(self, message: str, retry_after: int, details: Any = None) -> None:
        super().__init__(message, {"retry_after": retry_after} if details is None else details)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class QueueFull(Unavailable):
    code = "queue_full"


class ServerBusy(Unavailable):
    """Request bodies in flight already hold ``TRIMAIL_MAX_INFLIGHT_BYTES``."""

    code = "server_busy"


class ShuttingDown(Unavailable):
    """The instance is draining: the connection is closed so the client reconnects elsewhere."""

    code = "shutting_down"

    def headers(self) -> dict[str, str]:
        return {**super().headers(), "Connection": "close"}


class ProviderUnavailable(Unavailable):
    """``/readyz`` only: the SMTP provider cannot be used (see trimail.delivery.provider)."""

    code = "provider_unavailable"


class StoreUnavailable(Unavailable):
    """The job store cannot be reached or used now; nothing was stored.

    ``detail`` says why, for the operator's log; callers get ``message`` only.
    """

    code = "store_unavailable"

    def __init__(
        self, message: str, retry_after: int = 1, details: Any = None, detail: str = ""
    ) -> None:
        super().__init__(message, retry_after, details)
        self.detail = detail


class DeliveryError(TrimailError):
    """One delivery attempt failed; ``smtp_code`` is the server's reply code if it sent one.

    ``pushback`` is true when the server turned the connection away before any
    mail was offered (connection refused or closed at once, a ``4xx`` greeting,
    ``421`` before ``MAIL``): the usual answer of a provider to too many
    connections (see :mod:`trimail.delivery.concurrency`). ``provider`` is true when
    the attempt failed before any mail was offered (connecting, TLS, AUTH): the
    provider or its settings are at fault, not the message or its recipients.
    """

    def __init__(
        self, reason: str, smtp_code: int | None = None, *, pushback: bool = False
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.smtp_code = smtp_code
        self.pushback = pushback
        self.provider = False


class TransientDeliveryError(DeliveryError):
    """The attempt failed in a way that may pass: try again after a backoff."""


class PermanentDeliveryError(DeliveryError):
    """The attempt failed in a way that will not pass by itself: do not try again."""


def from_answer(status: int, body: Any, retry_after: int | None = None) -> HTTPError:
    """The exception for an error answer, as :mod:`trimail.client` raises it.

    Unknown codes (another server in the way, a newer trimail) give a plain
    :class:`HTTPError` that keeps the status and code it got.
    """
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {"code": f"http_{status}", "message": str(body)[:500]}
    code, message = str(error.get("code")), str(error.get("message", ""))
    details = error.get("details")
    kind = _BY_CODE.get(code)
    if kind is not None and kind.status == status:
        if issubclass(kind, Unavailable):
            return kind(message, retry_after=retry_after or 1, details=details)
        return kind(message, details)
    unknown = HTTPError(message, details)
    unknown.status, unknown.code = status, code  # type: ignore[misc]
    return unknown


def _kinds() -> dict[str, type[HTTPError]]:
    found: dict[str, type[HTTPError]] = {}
    pending: list[type[HTTPError]] = [HTTPError]
    while pending:
        kind = pending.pop()
        pending.extend(kind.__subclasses__())
        if kind not in (RequestError, Unavailable):
            found[kind.code] = kind
    return found


_BY_CODE = _kinds()


def error_codes() -> dict[str, int]:
    """Every error ``code`` the API can answer, with its HTTP status."""
    return {code: kind.status for code, kind in _BY_CODE.items()}
