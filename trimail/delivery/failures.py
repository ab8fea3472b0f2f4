"""What a failed SMTP attempt means: transient or permanent, and a fixed description.

:func:`delivery_error` turns whatever smtplib, ssl or the socket raised into a
:class:`~trimail.errors.DeliveryError` whose ``reason`` is either the SMTP
server's own reply (code and text) or a fixed sentence for the class of
failure that names the server (``connection refused by smtp.example.com:587``).
The text of the original exception never reaches a caller or a log line: it
can hold anything (a character of a password, once). It stays chained as
``__cause__`` for debugging.

Transient, and worth another attempt: connection refused, reset or timed out,
a dropped connection, DNS and routing failures, TLS failures other than
certificate verification, and every ``4xx`` reply. Everything else is
permanent: ``5xx`` replies, a certificate that does not verify, and unknown
SMTP errors, so a surprise cannot turn into a retry storm.
"""

from __future__ import annotations

import errno
import smtplib
import socket
import ssl

from ..errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError

#: OpenSSL's reasons for a failed handshake that point at a wrong TRIMAIL_SMTP_SECURITY.
_TLS_HINTS = {
    "WRONG_VERSION_NUMBER": "TRIMAIL_SMTP_SECURITY=tls against a server that speaks plain "
    "SMTP first? use starttls or none, or the server's TLS port (465)",
    "UNSUPPORTED_PROTOCOL": "the server offers only TLS versions this Python refuses",
    "TLSV1_ALERT_PROTOCOL_VERSION": "the server offers only TLS versions this Python refuses",
}


def reply_text(reply: bytes | str) -> str:
    """An SMTP reply as one line of text."""
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    return " ".join(text.split())


def code_is_transient(code: int) -> bool:
    """4xx replies may pass if tried again (RFC 5321 section 4.2.1); nothing else does."""
    return 400 <= code < 500


def delivery_error(exc: BaseException, host: str, port: int) -> DeliveryError:
    """The :class:`DeliveryError` for ``exc``, raised while talking to ``host:port``.

    Raise it ``from exc``. ``exc`` is an ``OSError`` or an ``smtplib.SMTPException``;
    a :class:`DeliveryError` is returned as it is.
    """
    if isinstance(exc, DeliveryError):
        return exc
    target = f"{host}:{port}"
    if isinstance(exc, smtplib.SMTPResponseException):
        code = exc.smtp_code
        kind = TransientDeliveryError if code_is_transient(code) else PermanentDeliveryError
        return kind(f"{code} {reply_text(exc.smtp_error)}", code)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return PermanentDeliveryError(
            f"TLS certificate verification failed for {target}: {exc.verify_message}"
        )
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or "unknown"
        hint = _TLS_HINTS.get(reason)
        return TransientDeliveryError(
            f"TLS handshake with {target} failed ({reason})" + (f": {hint}" if hint else "")
        )
    if timed_out(exc):
        return TransientDeliveryError(f"timed out waiting for {target}")
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return TransientDeliveryError(f"{target} closed the connection")
    if isinstance(exc, ConnectionRefusedError):
        return TransientDeliveryError(f"connection refused by {target}")
    if isinstance(exc, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
        return TransientDeliveryError(f"connection to {target} was reset")
    if isinstance(exc, socket.gaierror):
        return TransientDeliveryError(f"cannot resolve {host} (DNS)")
    if isinstance(exc, smtplib.SMTPException):  # before OSError, its base class
        return PermanentDeliveryError(f"unexpected SMTP error with {target} ({type(exc).__name__})")
    if isinstance(exc, OSError):
        name = errno.errorcode.get(exc.errno or 0, "unknown error")
        return TransientDeliveryError(f"network error talking to {target} ({name})")
    return PermanentDeliveryError(f"unexpected error with {target} ({type(exc).__name__})")


def turned_away(exc: BaseException) -> bool:
    """Whether ``exc``, raised while opening a connection, is the server refusing one more.

    A refused or reset connection, one closed before the greeting or the EHLO
    reply, a ``4xx`` greeting, or ``421`` to a command before ``MAIL``: what
    providers answer to too many connections (Postfix: ``421 4.7.0 Error: too
    many connections``). A timeout is not: a slow server is not a full one.
    """
    if timed_out(exc):
        return False
    if isinstance(exc, smtplib.SMTPConnectError):
        return code_is_transient(exc.smtp_code)
    if isinstance(exc, smtplib.SMTPResponseException):
        return exc.smtp_code == 421
    return isinstance(
        exc, (smtplib.SMTPServerDisconnected, ConnectionRefusedError, ConnectionResetError)
    )


def timed_out(exc: BaseException) -> bool:
    # smtplib turns a read that timed out into SMTPServerDisconnected("Connection
    # unexpectedly closed: timed out"): the server did not close anything.
    return isinstance(exc, TimeoutError) or (
        isinstance(exc, smtplib.SMTPServerDisconnected)
        and isinstance(exc.__context__, TimeoutError)
    )
