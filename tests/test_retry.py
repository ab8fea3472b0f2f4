"""The retry policy and failure classification (pure functions)."""

from __future__ import annotations

import smtplib
import ssl

import pytest

from trimail.errors import PermanentDeliveryError, TransientDeliveryError
from trimail.retry import RetryPolicy, Verdict, classify, describe


def test_backoff_is_full_jitter_up_to_the_exponential_ceiling() -> None:
    """attempt n waits uniform(0, min(max, base * 2**(n-1)))."""
    highest = RetryPolicy(base_delay=1.0, max_delay=300.0, uniform=lambda low, high: high)
    ceilings = [highest.backoff(n) for n in range(1, 12)]
    assert ceilings == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    assert RetryPolicy(uniform=lambda low, high: low).backoff(3) == 0.0


def test_backoff_survives_huge_attempt_numbers() -> None:
    """The exponent is clamped, so a large attempt number cannot overflow."""
    assert RetryPolicy(max_delay=5.0, uniform=lambda low, high: high).backoff(10_000) == 5.0


def test_should_retry_stops_at_max_attempts_and_on_permanent() -> None:
    """Transient failures are retried until max_attempts; permanent ones never."""
    policy = RetryPolicy(max_attempts=3)
    assert policy.should_retry(1, Verdict.TRANSIENT)
    assert policy.should_retry(2, Verdict.TRANSIENT)
    assert not policy.should_retry(3, Verdict.TRANSIENT)
    assert not policy.should_retry(1, Verdict.PERMANENT)


@pytest.mark.parametrize(
    ("exc", "verdict"),
    [
        (ConnectionRefusedError(), Verdict.TRANSIENT),
        (ConnectionResetError(), Verdict.TRANSIENT),
        (TimeoutError(), Verdict.TRANSIENT),
        (smtplib.SMTPServerDisconnected("gone"), Verdict.TRANSIENT),
        (smtplib.SMTPConnectError(421, b"busy"), Verdict.TRANSIENT),
        (smtplib.SMTPSenderRefused(451, b"later", "a@b.c"), Verdict.TRANSIENT),
        (smtplib.SMTPDataError(452, b"full"), Verdict.TRANSIENT),
        (smtplib.SMTPDataError(554, b"spam"), Verdict.PERMANENT),
        (smtplib.SMTPSenderRefused(550, b"no", "a@b.c"), Verdict.PERMANENT),
        (smtplib.SMTPNotSupportedError("no"), Verdict.PERMANENT),
        (ssl.SSLCertVerificationError("bad cert"), Verdict.PERMANENT),
        (TransientDeliveryError("x"), Verdict.TRANSIENT),
        (PermanentDeliveryError("x"), Verdict.PERMANENT),
        (ValueError("a bug"), Verdict.PERMANENT),
    ],
)
def test_classify(exc: BaseException, verdict: Verdict) -> None:
    """Only what may pass by itself is transient; unknown errors are permanent."""
    assert classify(exc) is verdict


def test_describe_gives_code_and_reply() -> None:
    """The log gets the reply code and a one-line reply text."""
    assert describe(smtplib.SMTPDataError(554, b"5.7.1 rejected\n  as spam")) == (
        554,
        "5.7.1 rejected as spam",
    )
    assert describe(ConnectionRefusedError(111, "Connection refused")) == (
        None,
        "ConnectionRefusedError: [Errno 111] Connection refused",
    )
