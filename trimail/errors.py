"""The exceptions trimail raises, named by who is at fault.

::

    TrimailError
    ├── ConfigurationError        the operator's settings cannot work
    ├── RequestError              the caller's request is refused (4xx); nothing is queued
    │   ├── InvalidJSON             400 invalid_json
    │   ├── Unauthorized            401 unauthorized
    │   ├── NotFound                404 not_found
    │   ├── MethodNotAllowed        405 method_not_allowed
    │   ├── PayloadTooLarge         413 payload_too_large
    │   ├── UnsupportedMediaType    415 unsupported_media_type
    │   └── ValidationFailed        422 validation_error
    ├── Unavailable               the service cannot take a job now; try again later (503)
    │   ├── QueueFull               503 queue_full
    │   └── ShuttingDown            503 shutting_down
    └── DeliveryError             one SMTP attempt failed (raised in worker threads)
        ├── TransientDeliveryError  worth another attempt later
        └── PermanentDeliveryError  another attempt would fail the same way

Every :class:`RequestError` and :class:`Unavailable` knows its HTTP status and
its machine-readable ``code``; the API turns them into
``{"error": {"code", "message", "details"?}}``.
"""

from __future__ import annotations

from typing import Any, ClassVar


class TrimailError(Exception):
    """Base class of every exception trimail raises on purpose."""


class ConfigurationError(TrimailError):
    """The settings are unusable: an unknown key, a bad value, an unsafe bind."""


class HTTPError(TrimailError):
    """An error answered to the HTTP caller as a JSON error body."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def headers(self) -> dict[str, str]:
        """Extra response headers this error needs (``Retry-After``, ``WWW-Authenticate``)."""
        return {}


class RequestError(HTTPError):
    """The caller sent something trimail refuses; fixing the request fixes it."""

    status = 400


class InvalidJSON(RequestError):
    status = 400
    code = "invalid_json"


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


class PayloadTooLarge(RequestError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(RequestError):
    status = 415
    code = "unsupported_media_type"


class ValidationFailed(RequestError):
    status = 422
    code = "validation_error"


class Unavailable(HTTPError):
    """The service is healthy but cannot take the job now; the caller should retry later."""

    status = 503

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class QueueFull(Unavailable):
    code = "queue_full"


class ShuttingDown(Unavailable):
    code = "shutting_down"


class DeliveryError(TrimailError):
    """One delivery attempt failed; ``smtp_code`` is the server's reply code if it sent one."""

    def __init__(self, reason: str, smtp_code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.smtp_code = smtp_code


class TransientDeliveryError(DeliveryError):
    """The attempt failed in a way that may pass: try again after a backoff."""


class PermanentDeliveryError(DeliveryError):
    """The attempt failed in a way that will not pass by itself: do not try again."""
