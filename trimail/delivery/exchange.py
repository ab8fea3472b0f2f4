"""One mail transaction on an open SMTP connection: MAIL, RCPT, DATA, the message.

When the server offers PIPELINING (RFC 2920), as every large provider does,
``MAIL``, the ``RCPT``\\ s and ``DATA`` go out in one write and their replies are
read after: one round trip where there were ``2 + recipients``, which is both
the latency of a remote provider and system calls and thread wake-ups saved.
Otherwise each command waits for its reply.

Blocking (run in the transport's thread); raises smtplib's and the socket's
exceptions for the caller to describe (:mod:`trimail.delivery.failures`), and:

- :class:`StaleConnection` when the server answers ``MAIL`` with ``421`` or the
  connection is found closed before that reply: nothing was accepted;
- :class:`~trimail.errors.TransientDeliveryError` when the reply to the final
  dot does not come within ``data_timeout``, or the connection ends before it:
  the provider may already have the message.
"""

from __future__ import annotations

import contextlib
import smtplib
from dataclasses import dataclass, field

from ..errors import PermanentDeliveryError, TransientDeliveryError
from .failures import reply_text, timed_out
from .message import Envelope

#: Reply codes that accept a recipient (RFC 5321 section 4.2.5).
RCPT_ACCEPTED = (250, 251)


@dataclass(frozen=True, slots=True)
class SendResult:
    """The outcome of a transaction that reached DATA or refused every recipient.

    ``refused`` maps each refused recipient to the server's ``(code, reply)``.
    """

    accepted: tuple[str, ...]
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)


class StaleConnection(Exception):
    """The server closed the connection, or said it would (``421``), before accepting MAIL."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


@dataclass(frozen=True, slots=True)
class Exchange:
    """How to run transactions against one server: where it is and how long to wait."""

    target: str  # host:port, for messages
    timeout: float  # each command
    data_timeout: float  # the reply to the final dot

    def run(self, smtp: smtplib.SMTP, envelope: Envelope) -> tuple[SendResult, bool]:
        """Run the transaction; also return whether the connection may be reused."""
        mail = _mail_command(smtp, envelope)
        encoding = "utf-8" if envelope.smtputf8 else "ascii"
        recipients = envelope.recipients
        if smtp.has_extn("pipelining"):
            lines = [mail, *(f"RCPT TO:{smtplib.quoteaddr(r)}" for r in recipients), "DATA"]
            _send_or_stale(smtp, ("\r\n".join(lines) + "\r\n").encode(encoding))
            _check_mail(envelope, *_reply_or_stale(smtp))
            replies = [smtp.getreply() for _ in recipients]
            data_code, data_reply = smtp.getreply()
        else:
            _send_or_stale(smtp, f"{mail}\r\n".encode(encoding))
            _check_mail(envelope, *_reply_or_stale(smtp))
            replies = []
            for recipient in recipients:
                smtp.send(f"RCPT TO:{smtplib.quoteaddr(recipient)}\r\n".encode(encoding))
                replies.append(smtp.getreply())
            data_code, data_reply = 0, b""  # DATA only once some recipient was accepted
        refused = {
            recipient: (code, reply_text(reply))
            for recipient, (code, reply) in zip(recipients, replies, strict=True)
            if code not in RCPT_ACCEPTED
        }
        accepted = tuple(r for r in recipients if r not in refused)
        if not accepted:
            if data_code == 354:  # a server that started DATA with no recipient: end it empty
                with contextlib.suppress(smtplib.SMTPException, OSError):
                    smtp.send(b".\r\n")
                    smtp.getreply()
                return SendResult(accepted=(), refused=refused), False
            return SendResult(accepted=(), refused=refused), _reset(smtp)
        if not data_code:
            data_code, data_reply = smtp.docmd("DATA")
        if data_code != 354:
            raise smtplib.SMTPDataError(data_code, data_reply)
        self._message(smtp, envelope.data)
        return SendResult(accepted=accepted, refused=refused), True

    def _message(self, smtp: smtplib.SMTP, data: bytes) -> None:
        """The message, then up to ``data_timeout`` for the reply to its final dot."""
        smtp.send(dot_stuffed(data))
        sock = smtp.sock
        assert sock is not None  # send() raised if the connection was gone
        sock.settimeout(self.data_timeout)
        try:
            code, reply = smtp.getreply()
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            waited = "no reply" if timed_out(exc) else "the connection ended"
            raise TransientDeliveryError(
                f"{waited} after the end of the message was sent to {self.target}; "
                "the provider may already have it"
            ) from exc
        if code != 250:
            raise smtplib.SMTPDataError(code, reply)
        sock.settimeout(self.timeout)


def _mail_command(smtp: smtplib.SMTP, envelope: Envelope) -> str:
    options = []
    if envelope.smtputf8:
        if not smtp.has_extn("smtputf8"):
            raise PermanentDeliveryError(
                "an address has a non-ASCII local part and the SMTP server does not offer SMTPUTF8"
            )
        options += ["SMTPUTF8", "BODY=8BITMIME"]
    if smtp.has_extn("size"):
        options.append(f"SIZE={len(envelope.data)}")
    return " ".join([f"MAIL FROM:{smtplib.quoteaddr(envelope.sender)}", *options])


def _send_or_stale(smtp: smtplib.SMTP, data: bytes) -> None:
    try:
        smtp.send(data)
    except (smtplib.SMTPServerDisconnected, ConnectionError) as exc:
        raise StaleConnection(exc) from exc


def _reply_or_stale(smtp: smtplib.SMTP) -> tuple[int, bytes]:
    """The reply to MAIL; a connection found closed there was closed while idle."""
    try:
        code, reply = smtp.getreply()
    except (smtplib.SMTPServerDisconnected, ConnectionError) as exc:
        if timed_out(exc):
            raise
        raise StaleConnection(exc) from exc
    if code == 421:  # the server is closing the connection (idle too long, going down)
        raise StaleConnection(smtplib.SMTPSenderRefused(code, reply, ""))
    return code, reply


def _check_mail(envelope: Envelope, code: int, reply: bytes) -> None:
    if code != 250:
        raise smtplib.SMTPSenderRefused(code, reply, envelope.sender)


def _reset(smtp: smtplib.SMTP) -> bool:
    """RSET after every recipient was refused; whether the connection is still usable.

    The refusals are the outcome either way: a failed RSET must neither replace
    them nor leave the refused transaction open under the next MAIL FROM.
    """
    try:
        code, _ = smtp.rset()
    except (smtplib.SMTPException, OSError):
        return False
    return code == 250


def dot_stuffed(data: bytes) -> bytes:
    """``data`` as sent after DATA: each line starting with a dot gets another, then CRLF.CRLF.

    ``data`` has CRLF line endings only (:func:`~trimail.delivery.message.
    check_line_endings` holds every built message to that).
    """
    stuffed = data.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    if not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return stuffed + b".\r\n"
