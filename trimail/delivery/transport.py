"""The SMTP transport: one reusable connection, driven by blocking smtplib calls.

Every method except :meth:`SMTPTransport.abort` blocks and must run in a worker
thread (``trio.to_thread.run_sync``). A thread cannot be cancelled, so every
socket operation has a timeout, by phase as RFC 5321 section 4.5.3.2 asks:
``timeout`` for the connection and greeting and for each command, and
``data_timeout`` (10 minutes by default) for the reply to the message's final
``.``, which a provider may only send once it has filtered and stored the
message. :meth:`~SMTPTransport.abort` lets the event loop cut a connection
short from outside (the dispatcher's watchdog bounds a whole attempt).

Error handling: :meth:`SMTPTransport.send` raises only
:class:`~trimail.errors.DeliveryError` (see :mod:`trimail.delivery.failures`), with the
smtplib, ssl or socket error chained as its cause. One that turned the connection
away before any mail was offered has ``pushback`` set. A connection that ends, or
a reply that does not come, after the final ``.`` leaves the outcome unknown: the
error is transient and says that the provider may already have the message.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import logging
import smtplib
import socket
import ssl
import threading
from pathlib import Path
from typing import Protocol

from ..config import SMTPSecurity, is_loopback
from ..errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from .exchange import Exchange, SendResult, StaleConnection
from .failures import delivery_error, reply_text, turned_away
from .message import Envelope

log = logging.getLogger(__name__)

#: RFC 5321 section 4.5.3.2.6: wait at least 10 minutes for the reply to the final dot.
DATA_TIMEOUT = 600.0


class Transport(Protocol):
    """What a worker needs from a transport; each worker owns one instance."""

    @property
    def connected(self) -> bool:
        """Whether it holds an open connection worth keeping for the next send."""

    def send(self, envelope: Envelope) -> SendResult:
        """Deliver ``envelope`` (blocking); raise on a failure of the whole transaction."""

    def close(self) -> None:
        """Say QUIT and close the connection, if any (blocking)."""

    def abort(self) -> None:
        """Cut the connection at once; safe to call from another thread (non-blocking)."""


def make_tls_context(ca_file: Path | None = None) -> ssl.SSLContext:
    """A verifying client context (system CAs, plus ``ca_file`` if given); build it once."""
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=ca_file)
    return context


@functools.cache
def local_hostname() -> str:
    """The name trimail gives in EHLO; looked up once because ``getfqdn`` may be slow."""
    return socket.getfqdn()


_warned_cleartext: set[tuple[str, int]] = set()
_warned_lock = threading.Lock()


def warn_cleartext_once(host: str, port: int) -> None:
    """Warn, once per server, that mail to it goes out unencrypted."""
    with _warned_lock:
        if (host, port) in _warned_cleartext:
            return
        _warned_cleartext.add((host, port))
    log.warning(
        "%s:%d does not offer STARTTLS: mail to it goes out unencrypted "
        "(TRIMAIL_SMTP_SECURITY=auto); set starttls or tls to require encryption",
        host,
        port,
    )


class SMTPTransport:
    """One connection to the SMTP server, opened on first use and reused after.

    A reused connection that the server closed while idle is reopened once,
    silently, when it fails before the server accepted MAIL FROM: nothing was
    sent, so it is not a failed attempt. After any other failure the connection
    is dropped, never reused in an unknown state.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        security: SMTPSecurity = SMTPSecurity.AUTO,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 30.0,
        data_timeout: float = DATA_TIMEOUT,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.security = security
        self.username = username
        self.password = password
        self.timeout = timeout
        self.data_timeout = data_timeout
        self.tls_context = tls_context or make_tls_context()
        #: Whether the server is on this machine: credentials may go to it in clear text.
        self.local = is_loopback(host)
        self._smtp: smtplib.SMTP | None = None
        self._exchange = Exchange(f"{host}:{port}", timeout, data_timeout)

    @property
    def connected(self) -> bool:
        return self._smtp is not None

    def _open(self) -> smtplib.SMTP:
        """A new connection, greeted, secured and logged in; marks pushback (module docstring)."""
        try:
            return self._connect()
        except (smtplib.SMTPException, OSError, DeliveryError) as exc:
            error = delivery_error(exc, self.host, self.port)
            error.pushback = error.pushback or turned_away(exc)
            error.provider = True
            raise error from exc

    def check(self) -> str:
        """Connect, secure, log in, ``NOOP`` and ``QUIT``, as a delivery would before its
        first ``MAIL``; return what was done, in one line, or raise the
        :class:`~trimail.errors.DeliveryError` a delivery would have met."""
        try:
            smtp = self._open()
        except BaseException:
            self._drop()
            raise
        try:
            code, reply = smtp.noop()
            if code != 250:
                raise smtplib.SMTPResponseException(code, reply)
            encrypted = isinstance(smtp.sock, ssl.SSLSocket)
        except (smtplib.SMTPException, OSError) as exc:
            self._drop()
            error = delivery_error(exc, self.host, self.port)
            error.provider = True
            raise error from exc
        self.close()
        return (
            f"{self.host}:{self.port} answered NOOP over "
            + ("TLS" if encrypted else "a connection in clear text")
            + (f", logged in as {self.username!r}" if self.username else ", without AUTH")
        )

    def _connect(self) -> smtplib.SMTP:
        smtp: smtplib.SMTP
        if self.security is SMTPSecurity.TLS:
            smtp = smtplib.SMTP_SSL(
                local_hostname=local_hostname(), timeout=self.timeout, context=self.tls_context
            )
        else:
            smtp = smtplib.SMTP(local_hostname=local_hostname(), timeout=self.timeout)
        self._smtp = smtp  # before connecting, so that abort() can reach its socket
        # smtplib records the host only when it is given to the constructor (bpo-36094);
        # starttls() and SMTP_SSL send it as SNI and verify the certificate against it.
        smtp._host = self.host  # type: ignore[attr-defined]
        code, reply = smtp.connect(self.host, self.port)
        if code != 220:
            raise smtplib.SMTPConnectError(code, reply)
        smtp.ehlo_or_helo_if_needed()
        encrypted = self.security is SMTPSecurity.TLS
        if self.security in (SMTPSecurity.AUTO, SMTPSecurity.STARTTLS):
            if smtp.has_extn("starttls"):
                smtp.starttls(context=self.tls_context)
                smtp.ehlo()
                encrypted = True
            elif self.security is SMTPSecurity.STARTTLS:
                raise PermanentDeliveryError(
                    f"{self.host}:{self.port} does not offer STARTTLS, which "
                    "TRIMAIL_SMTP_SECURITY=starttls requires"
                )
            elif not self.local:
                warn_cleartext_once(self.host, self.port)
        if self.username:
            self._login(smtp, encrypted)
        return smtp

    def _login(self, smtp: smtplib.SMTP, encrypted: bool) -> None:
        if not encrypted and not self.local:
            raise PermanentDeliveryError(
                f"refusing to send SMTP credentials unencrypted to {self.host}; "
                "set TRIMAIL_SMTP_SECURITY to starttls or tls"
            )
        username, password = self.username or "", self.password or ""
        try:
            if username.isascii() and password.isascii():
                smtp.login(username, password)
            else:
                self._login_utf8(smtp, username, password)
        except smtplib.SMTPAuthenticationError as exc:
            reason = (
                f"SMTP authentication failed ({exc.smtp_code} {reply_text(exc.smtp_error)}): "
                "check TRIMAIL_SMTP_USERNAME and TRIMAIL_SMTP_PASSWORD"
            )
            error = TransientDeliveryError if 400 <= exc.smtp_code < 500 else PermanentDeliveryError
            raise error(reason, exc.smtp_code) from exc
        except smtplib.SMTPNotSupportedError as exc:
            raise PermanentDeliveryError(
                f"{self.host} offers no AUTH, but TRIMAIL_SMTP_USERNAME is set"
            ) from exc

    def _login_utf8(self, smtp: smtplib.SMTP, username: str, password: str) -> None:
        """AUTH PLAIN with UTF-8 credentials (RFC 4616); smtplib can only send ASCII ones."""
        mechanisms = smtp.esmtp_features.get("auth", "").upper().split()
        if "PLAIN" not in mechanisms:
            raise PermanentDeliveryError(
                f"{self.host} does not offer AUTH PLAIN, the only way to send a user name or "
                "password that is not ASCII"
            )
        token = base64.b64encode(f"\0{username}\0{password}".encode()).decode("ascii")
        code, reply = smtp.docmd("AUTH", f"PLAIN {token}")
        if code != 235:
            raise smtplib.SMTPAuthenticationError(code, reply)

    def send(self, envelope: Envelope) -> SendResult:
        """Run one SMTP transaction; see the class docstring for connection reuse.

        Returns a :class:`SendResult` when DATA was accepted or every recipient
        was refused; raises a :class:`~trimail.errors.DeliveryError` otherwise.
        """
        try:
            return self._transaction(envelope)
        except (smtplib.SMTPException, OSError) as exc:
            raise delivery_error(exc, self.host, self.port) from exc

    def _transaction(self, envelope: Envelope) -> SendResult:
        try:
            if self._smtp is not None:
                try:
                    return self._run(self._smtp, envelope)
                except StaleConnection:  # closed while idle: nothing was sent, reconnect
                    self._drop()
            smtp = self._open()
            try:
                return self._run(smtp, envelope)
            except StaleConnection as stale:  # on a new connection: the server turns us away
                error = delivery_error(stale.cause, self.host, self.port)
                error.pushback = True
                raise error from stale.cause
        except BaseException:
            self._drop()
            raise

    def _run(self, smtp: smtplib.SMTP, envelope: Envelope) -> SendResult:
        result, reusable = self._exchange.run(smtp, envelope)
        if not reusable:
            self._drop()
        return result

    def _drop(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            smtp.close()

    def close(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            smtp.close()

    def abort(self) -> None:
        sock = getattr(self._smtp, "sock", None)
        if sock is not None:
            # socket.socket.shutdown, not SSLSocket.shutdown: no TLS state is touched,
            # the blocked call in the other thread just sees the connection end.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
