"""Retry policy as data, and the pure functions that apply it; nothing here sleeps.

``backoff(attempt)`` is *full jitter*: a uniform draw from
``[0, min(max_delay, base_delay * 2 ** (attempt - 1))]`` seconds, where
``attempt`` is the number of the attempt that just failed (1 for the first).

``classify(exc)`` names what is transient, and only that: connection refused,
reset or timed out, a dropped connection, TLS failures other than certificate
verification, and 4xx replies. Everything else is permanent, unknown errors
included, so a bug cannot turn into a retry storm.
"""

from __future__ import annotations

import random
import smtplib
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from .errors import DeliveryError, TransientDeliveryError


class Verdict(str, Enum):
    TRANSIENT = "transient"
    PERMANENT = "permanent"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently a job is retried.

    ``uniform(low, high)`` draws the jitter; tests pass a deterministic one.
    """

    base_delay: float = 1.0
    max_delay: float = 300.0
    max_attempts: int = 5
    uniform: Callable[[float, float], float] = field(default=random.uniform, compare=False)

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (full jitter)."""
        ceiling = min(self.max_delay, self.base_delay * 2 ** min(attempt - 1, 64))
        return self.uniform(0.0, ceiling)

    def should_retry(self, attempt: int, verdict: Verdict) -> bool:
        """Whether a job whose attempt number ``attempt`` failed this way gets another one."""
        return verdict is Verdict.TRANSIENT and attempt < self.max_attempts


def classify_code(code: int) -> Verdict:
    """A reply code's verdict: 4xx is transient, anything else permanent."""
    return Verdict.TRANSIENT if 400 <= code < 500 else Verdict.PERMANENT


def classify(exc: BaseException) -> Verdict:
    """Whether the failure ``exc`` of one attempt may pass if tried again."""
    if isinstance(exc, DeliveryError):
        return Verdict.TRANSIENT if isinstance(exc, TransientDeliveryError) else Verdict.PERMANENT
    if isinstance(exc, smtplib.SMTPResponseException):
        return classify_code(exc.smtp_code)
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return Verdict.TRANSIENT
    if isinstance(exc, ssl.SSLCertVerificationError):
        return Verdict.PERMANENT  # the configuration or the server's certificate must change
    if isinstance(exc, (ssl.SSLError, ConnectionError, TimeoutError)):
        return Verdict.TRANSIENT
    if isinstance(exc, OSError) and not isinstance(exc, smtplib.SMTPException):
        return Verdict.TRANSIENT  # unreachable network, DNS failure, and their kin
    return Verdict.PERMANENT


def describe(exc: BaseException) -> tuple[int | None, str]:
    """The SMTP code (if any) and a one-line reason for a failed attempt, for the logs."""
    if isinstance(exc, DeliveryError):
        return exc.smtp_code, exc.reason
    if isinstance(exc, smtplib.SMTPResponseException):
        text = exc.smtp_error
        reply = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
        return exc.smtp_code, " ".join(reply.split())
    if isinstance(exc, ssl.SSLCertVerificationError):
        return None, f"TLS certificate verification failed: {exc.verify_message}"
    if isinstance(exc, TimeoutError) or (
        # smtplib turns a read that timed out into SMTPServerDisconnected("Connection
        # unexpectedly closed: timed out"): the server did not close anything.
        isinstance(exc, smtplib.SMTPServerDisconnected)
        and isinstance(exc.__context__, TimeoutError)
    ):
        return None, "timed out waiting for the SMTP server"
    return None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
