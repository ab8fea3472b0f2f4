"""What a failed attempt means and how it is described (pure functions)."""

from __future__ import annotations

import errno
import smtplib
import socket
import ssl

import pytest

from trimail.delivery.failures import delivery_error, turned_away
from trimail.delivery.retry import Verdict, classify
from trimail.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError

HOST, PORT = "smtp.example.com", 587


def _timed_out_read() -> smtplib.SMTPServerDisconnected:
    """What smtplib raises when a read times out: a disconnect whose context is the timeout."""
    try:
        try:
            raise TimeoutError("timed out")
        except TimeoutError:
            raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed: timed out")  # noqa: B904
    except smtplib.SMTPServerDisconnected as exc:
        return exc


def _cert_error() -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] failed")
    error.verify_message = "certificate has expired"
    return error


def _ssl_error(reason: str) -> ssl.SSLError:
    error = ssl.SSLError(1, f"[SSL: {reason}] {reason.lower()} (_ssl.c:1000)")
    error.reason = reason
    return error


@pytest.mark.parametrize(
    ("exc", "verdict", "reason"),
    [
        (ConnectionRefusedError(111, "Connection refused"), Verdict.TRANSIENT,
         "connection refused by smtp.example.com:587"),
        (ConnectionResetError(104, "reset"), Verdict.TRANSIENT,
         "connection to smtp.example.com:587 was reset"),
        (TimeoutError("timed out"), Verdict.TRANSIENT,
         "timed out waiting for smtp.example.com:587"),
        (_timed_out_read(), Verdict.TRANSIENT, "timed out waiting for smtp.example.com:587"),
        (smtplib.SMTPServerDisconnected("gone"), Verdict.TRANSIENT,
         "smtp.example.com:587 closed the connection"),
        (socket.gaierror(-2, "Name or service not known"), Verdict.TRANSIENT,
         "cannot resolve smtp.example.com (DNS)"),
        (OSError(errno.ENETUNREACH, "Network is unreachable"), Verdict.TRANSIENT,
         "network error talking to smtp.example.com:587 (ENETUNREACH)"),
        (smtplib.SMTPConnectError(421, b"busy"), Verdict.TRANSIENT, "421 busy"),
        (smtplib.SMTPSenderRefused(451, b"later", "a@b.c"), Verdict.TRANSIENT, "451 later"),
        (smtplib.SMTPDataError(452, b"full"), Verdict.TRANSIENT, "452 full"),
        (smtplib.SMTPDataError(554, b"5.7.1 rejected\n  as spam"), Verdict.PERMANENT,
         "554 5.7.1 rejected as spam"),
        (smtplib.SMTPSenderRefused(550, b"no", "a@b.c"), Verdict.PERMANENT, "550 no"),
        (smtplib.SMTPNotSupportedError("no"), Verdict.PERMANENT,
         "unexpected SMTP error with smtp.example.com:587 (SMTPNotSupportedError)"),
        (_cert_error(), Verdict.PERMANENT,
         "TLS certificate verification failed for smtp.example.com:587: certificate has expired"),
        (_ssl_error("WRONG_VERSION_NUMBER"), Verdict.TRANSIENT,
         "TLS handshake with smtp.example.com:587 failed (WRONG_VERSION_NUMBER): "
         "TRIMAIL_SMTP_SECURITY=tls against a server that speaks plain SMTP first? use starttls "
         "or none, or the server's TLS port (465)"),
        (_ssl_error("SSLV3_ALERT_HANDSHAKE_FAILURE"), Verdict.TRANSIENT,
         "TLS handshake with smtp.example.com:587 failed (SSLV3_ALERT_HANDSHAKE_FAILURE)"),
        (TransientDeliveryError("x"), Verdict.TRANSIENT, "x"),
        (PermanentDeliveryError("x"), Verdict.PERMANENT, "x"),
    ],
)  # fmt: skip
def test_each_failure_has_a_verdict_and_a_fixed_reason(
    exc: BaseException, verdict: Verdict, reason: str
) -> None:
    """Only what may pass by itself is transient; the reason is the reply or a fixed sentence."""
    error = delivery_error(exc, HOST, PORT)
    assert isinstance(error, DeliveryError)
    assert classify(error) is verdict
    assert error.reason == reason


def test_reply_code_is_kept() -> None:
    """A reply's code travels with the error; failures without a reply have none."""
    assert delivery_error(smtplib.SMTPDataError(554, b"no"), HOST, PORT).smtp_code == 554
    assert delivery_error(ConnectionRefusedError(), HOST, PORT).smtp_code is None


def test_the_text_of_an_exception_never_becomes_the_reason() -> None:
    """Whatever an OSError says (here, a secret) stays out of the reason."""
    error = delivery_error(OSError(errno.EIO, "s3cr\u00e9t in the message"), HOST, PORT)
    assert "s3cr" not in error.reason
    assert error.reason == "network error talking to smtp.example.com:587 (EIO)"


@pytest.mark.parametrize(
    ("exc", "pushback"),
    [
        (ConnectionRefusedError(111, "Connection refused"), True),
        (ConnectionResetError(104, "reset"), True),
        (smtplib.SMTPServerDisconnected("Connection unexpectedly closed"), True),
        (smtplib.SMTPConnectError(421, b"4.7.0 too many connections"), True),
        (smtplib.SMTPConnectError(450, b"busy"), True),
        (smtplib.SMTPConnectError(554, b"no service for you"), False),
        (smtplib.SMTPSenderRefused(421, b"4.7.0 try later", "a@b.c"), True),
        (smtplib.SMTPSenderRefused(451, b"4.3.0 later", "a@b.c"), False),
        (smtplib.SMTPAuthenticationError(535, b"bad credentials"), False),
        (TimeoutError("timed out"), False),
        (_timed_out_read(), False),
        (socket.gaierror(-2, "Name or service not known"), False),
        (_cert_error(), False),
    ],
)  # fmt: skip
def test_what_counts_as_the_provider_turning_a_connection_away(
    exc: BaseException, pushback: bool
) -> None:
    """Refusals, hang-ups, 4xx greetings and 421s push back; slowness and errors do not."""
    assert turned_away(exc) is pushback
