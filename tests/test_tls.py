"""TLS and SMTP AUTH against a real aiosmtpd server, with certificates from trustme.

Verification is always on: trimail trusts the system CAs plus the PEM file it is
given (``TRIMAIL_SMTP_CA_FILE``, here a throwaway trustme CA), and checks that the
certificate names the host it connects to (``127.0.0.1``, as an IP SAN).
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme
from aiosmtpd.smtp import AuthResult

from trimail.config import SMTPSecurity
from trimail.delivery.message import Envelope, build_envelope
from trimail.delivery.retry import RetryPolicy
from trimail.delivery.transport import SMTPTransport, make_tls_context
from trimail.errors import PermanentDeliveryError, TransientDeliveryError
from trimail.models import SendRequest
from trimail.store import JobStatus

from .conftest import Delivery, final_lines, running_dispatcher, wait_until
from .smtpserver import ScriptedHandler, SMTPTestServer, _AnyPort

HOST = "127.0.0.1"
USER, PASSWORD, WRONG_PASSWORD = "mailer", "correct horse", "battery staple"
LONGEST = RetryPolicy(base_delay=10, max_delay=1000, max_attempts=5, uniform=lambda lo, hi: hi)


# -- certificates --------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """The CA that trimail is told to trust."""
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CA's certificate as a PEM file: what ``TRIMAIL_SMTP_CA_FILE`` names."""
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    """A server-side context presenting a certificate issued by ``ca`` for ``names``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    return context


# -- a server that records how each mail and each login arrived ------------------------


@dataclass
class TLSHandler(ScriptedHandler):
    """:class:`ScriptedHandler` that also records, per accepted mail, TLS and connection."""

    encrypted: list[bool] = field(default_factory=list)
    peers: list[Any] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.encrypted.append(server.transport.get_extra_info("ssl_object") is not None)
            self.peers.append(session.peer)
        return await super().handle_DATA(server, session, envelope)


@dataclass
class Accounts:
    """An aiosmtpd ``authenticator`` with one account; it records every AUTH it judges."""

    logins: list[tuple[str, bool, Any]] = field(default_factory=list)
    user: str = USER
    password: str = PASSWORD

    def __call__(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        login = auth_data.login.decode()
        ok = login == self.user and auth_data.password.decode() == self.password
        self.logins.append((login, ok, session.peer))
        return AuthResult(success=ok, handled=False)

    @property
    def connections(self) -> int:
        """How many SMTP connections tried to log in."""
        return len({peer for _, _, peer in self.logins})


class TLSServer(SMTPTestServer):
    """aiosmtpd on 127.0.0.1 at a free port with a :class:`TLSHandler`; kwargs go to aiosmtpd."""

    def __init__(self, **kwargs: Any) -> None:
        self.handler: TLSHandler = TLSHandler()
        self._controller = _AnyPort(self.handler, hostname=HOST, port=0, **kwargs)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port where the kernel completes TCP connections and nobody ever says a word."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        sock.listen(4)
        yield int(sock.getsockname()[1])


@pytest.fixture
def serve() -> Iterator[Callable[..., TLSServer]]:
    """Start a :class:`TLSServer` with the given aiosmtpd options; all are stopped at the end."""
    started: list[TLSServer] = []

    def start(**kwargs: Any) -> TLSServer:
        server = TLSServer(**kwargs)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def starttls_server(
    serve: Callable[..., TLSServer], context: ssl.SSLContext, **kw: Any
) -> TLSServer:
    """A server that offers STARTTLS and refuses mail until it was used."""
    return serve(tls_context=context, require_starttls=True, **kw)


def implicit_tls_server(serve: Callable[..., TLSServer], context: ssl.SSLContext) -> TLSServer:
    """A server that speaks TLS from the first byte, as on port 465."""
    return serve(ssl_context=context)


# -- what is sent ----------------------------------------------------------------------


def request(**changes: Any) -> SendRequest:
    body: dict[str, Any] = {
        "from": "sender@example.com",
        "to": "rcpt@example.com",
        "subject": "Hi",
        "text": "Body",
    }
    body.update(changes)
    return SendRequest.model_validate(body)


def envelope() -> Envelope:
    return build_envelope(request(), "job")


def transport(server: SMTPTestServer, security: SMTPSecurity, **kwargs: Any) -> SMTPTransport:
    return SMTPTransport(HOST, server.port, security=security, timeout=5, **kwargs)


def running(factory: Callable[[], SMTPTransport]) -> AbstractAsyncContextManager[Delivery]:
    """A started dispatcher with long backoffs (so a retry would show), shut down on exit."""
    return running_dispatcher(factory, workers=1, retry=LONGEST)


async def deliver_one(factory: Callable[[], SMTPTransport]) -> JobStatus:
    """Submit one job through a dispatcher; its status once it has its final line."""
    async with running(factory) as dispatcher:
        job = await dispatcher.submit(request())
        await wait_until(lambda: dispatcher.outstanding == 0)
        return await dispatcher.status(job.id)


def final_message(caplog: pytest.LogCaptureFixture) -> str:
    [final] = [r for r in caplog.records if getattr(r, "event", "") == "final"]
    return final.getMessage()


def attempt_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if getattr(r, "event", "") == "attempt"]


# -- STARTTLS and implicit TLS that verify ---------------------------------------------


@pytest.mark.parametrize("security", [SMTPSecurity.AUTO, SMTPSecurity.STARTTLS])
def test_starttls_delivers_over_a_verified_connection(
    serve: Callable[..., TLSServer], ca: trustme.CA, ca_file: Path, security: SMTPSecurity
) -> None:
    """With the CA file trusted, auto and starttls upgrade the connection and deliver over TLS."""
    server = starttls_server(serve, server_context(ca, HOST))
    smtp = transport(server, security, tls_context=make_tls_context(ca_file))
    result = smtp.send(envelope())
    smtp.close()
    assert result.accepted == ("rcpt@example.com",)
    assert len(server.received) == 1
    assert server.handler.encrypted == [True]


def test_implicit_tls_delivers_over_a_verified_connection(
    serve: Callable[..., TLSServer], ca: trustme.CA, ca_file: Path
) -> None:
    """security=tls speaks TLS from the first byte and delivers when the CA file is trusted."""
    server = implicit_tls_server(serve, server_context(ca, HOST))
    smtp = transport(server, SMTPSecurity.TLS, tls_context=make_tls_context(ca_file))
    smtp.send(envelope())
    smtp.close()
    assert len(server.received) == 1
    assert server.handler.encrypted == [True]


def test_certificate_for_localhost_verifies_when_connecting_to_localhost(
    serve: Callable[..., TLSServer], ca: trustme.CA, ca_file: Path
) -> None:
    """A certificate issued for 'localhost' verifies when trimail connects by that name."""
    if HOST not in {info[4][0] for info in socket.getaddrinfo("localhost", None)}:
        pytest.skip("localhost does not resolve to 127.0.0.1 here")
    server = starttls_server(serve, server_context(ca, "localhost"))
    smtp = SMTPTransport(
        "localhost",
        server.port,
        security=SMTPSecurity.STARTTLS,
        timeout=5,
        tls_context=make_tls_context(ca_file),
    )
    smtp.send(envelope())  # if ::1 comes first, nothing listens there and 127.0.0.1 is next
    smtp.close()
    assert server.handler.encrypted == [True]


def test_a_verified_tls_connection_is_reused(
    serve: Callable[..., TLSServer], ca: trustme.CA, ca_file: Path
) -> None:
    """Three sends over STARTTLS share one connection: the handshake is paid once."""
    server = starttls_server(serve, server_context(ca, HOST))
    smtp = transport(server, SMTPSecurity.STARTTLS, tls_context=make_tls_context(ca_file))
    for _ in range(3):
        smtp.send(envelope())
    smtp.close()
    assert server.handler.encrypted == [True, True, True]
    assert len(set(server.handler.peers)) == 1


@pytest.mark.parametrize("security", [SMTPSecurity.STARTTLS, SMTPSecurity.TLS])
def test_idle_tls_connection_closed_by_server_is_reopened(
    serve: Callable[..., TLSServer], ca: trustme.CA, ca_file: Path, security: SMTPSecurity
) -> None:
    """A TLS connection the server closed while idle is reopened silently, like a plain one."""
    context = server_context(ca, HOST)
    kwargs: dict[str, Any] = {"timeout": 0.2}  # aiosmtpd hangs up after 0.2 s of silence
    if security is SMTPSecurity.TLS:
        server = serve(ssl_context=context, **kwargs)
    else:
        server = starttls_server(serve, context, **kwargs)
    smtp = transport(server, security, tls_context=make_tls_context(ca_file))
    smtp.send(envelope())
    time.sleep(0.5)  # a real-time wait for the server's own timer, not an assertion
    smtp.send(envelope())
    smtp.close()
    assert server.handler.encrypted == [True, True]
    assert len(set(server.handler.peers)) == 2


def test_abort_unblocks_a_send_held_over_tls(
    serve: Callable[..., TLSServer], ca: trustme.CA, ca_file: Path
) -> None:
    """abort() from another thread ends a TLS send the server is holding (as at grace expiry)."""
    server = starttls_server(serve, server_context(ca, HOST))
    server.hold()
    smtp = transport(server, SMTPSecurity.STARTTLS, tls_context=make_tls_context(ca_file))
    outcome: list[BaseException] = []

    def send() -> None:
        try:
            smtp.send(envelope())
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=send)
    thread.start()
    for _ in range(2000):
        if server.holding or not thread.is_alive():
            break
        threading.Event().wait(0.005)
    assert server.holding
    smtp.abort()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert isinstance(outcome[0], TransientDeliveryError)


def test_tls_handshake_with_a_silent_server_times_out(silent_port: int, ca_file: Path) -> None:
    """security=tls against a server that never answers the handshake: bounded, transient."""
    smtp = SMTPTransport(
        HOST,
        silent_port,
        security=SMTPSecurity.TLS,
        timeout=0.5,
        tls_context=make_tls_context(ca_file),
    )
    with pytest.raises(TransientDeliveryError) as info:
        smtp.send(envelope())
    assert info.value.reason == f"timed out waiting for {HOST}:{silent_port}"
    assert isinstance(info.value.__cause__, TimeoutError)


@pytest.mark.parametrize(
    ("security", "server_kind"),
    [(SMTPSecurity.STARTTLS, "starttls"), (SMTPSecurity.TLS, "implicit")],
)
def test_without_the_ca_file_the_certificate_does_not_verify(
    serve: Callable[..., TLSServer], ca: trustme.CA, security: SMTPSecurity, server_kind: str
) -> None:
    """The same server that works with the CA file fails verification with system CAs only."""
    context = server_context(ca, HOST)
    if server_kind == "starttls":
        server = starttls_server(serve, context)
    else:
        server = implicit_tls_server(serve, context)
    with pytest.raises(PermanentDeliveryError) as info:
        transport(server, security, tls_context=make_tls_context()).send(envelope())
    assert info.value.reason.startswith(f"TLS certificate verification failed for {HOST}:")
    assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)
    assert server.received == []


# -- certificates that must not verify: one attempt, failed, and why -------------------


@pytest.mark.parametrize("security", [SMTPSecurity.AUTO, SMTPSecurity.STARTTLS, SMTPSecurity.TLS])
@pytest.mark.parametrize("case", ["untrusted", "wrong-host", "no-ca-file"])
async def test_a_certificate_that_does_not_verify_fails_the_job_once(
    serve: Callable[..., TLSServer],
    ca: trustme.CA,
    ca_file: Path,
    case: str,
    security: SMTPSecurity,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An untrusted or misnamed certificate fails the job after exactly one attempt, saying so."""
    if case == "untrusted":  # issued by a CA that trimail was not told to trust
        context = server_context(trustme.CA(), HOST)
    elif case == "wrong-host":  # issued by the trusted CA, for another name
        context = server_context(ca, "mail.example.com")
    else:  # the right certificate, but TRIMAIL_SMTP_CA_FILE is not set
        context = server_context(ca, HOST)
    tls_context = make_tls_context(None if case == "no-ca-file" else ca_file)
    if security is SMTPSecurity.TLS:
        server = implicit_tls_server(serve, context)
    else:
        server = starttls_server(serve, context)

    job = await deliver_one(lambda: transport(server, security, tls_context=tls_context))

    assert job.attempts == 1
    assert final_lines(caplog) == {job.id: ["failed"]}
    assert "TLS certificate verification failed" in final_message(caplog)
    [attempt] = attempt_lines(caplog)
    assert "permanent failure" in attempt
    assert server.received == []


# -- AUTH --------------------------------------------------------------------------------


def test_auth_over_starttls_delivers(
    serve: Callable[..., TLSServer], ca: trustme.CA, ca_file: Path
) -> None:
    """The right credentials are sent after STARTTLS, accepted, and the mail is delivered."""
    accounts = Accounts()
    server = starttls_server(
        serve,
        server_context(ca, HOST),
        authenticator=accounts,
        auth_required=True,
        auth_require_tls=True,
    )
    smtp = transport(
        server,
        SMTPSecurity.STARTTLS,
        tls_context=make_tls_context(ca_file),
        username=USER,
        password=PASSWORD,
    )
    smtp.send(envelope())
    smtp.close()
    assert [(login, ok) for login, ok, _ in accounts.logins] == [(USER, True)]
    assert server.handler.encrypted == [True]


async def test_wrong_password_fails_the_job_after_one_attempt(
    serve: Callable[..., TLSServer],
    ca: trustme.CA,
    ca_file: Path,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 535 is permanent: one attempt on one connection, and the final line says what to fix."""
    accounts = Accounts()
    server = starttls_server(
        serve,
        server_context(ca, HOST),
        authenticator=accounts,
        auth_required=True,
        auth_require_tls=True,
    )
    tls_context = make_tls_context(ca_file)

    job = await deliver_one(
        lambda: transport(
            server,
            SMTPSecurity.STARTTLS,
            tls_context=tls_context,
            username=USER,
            password=WRONG_PASSWORD,
        )
    )

    assert job.attempts == 1
    assert final_lines(caplog) == {job.id: ["failed"]}
    final = final_message(caplog)
    assert "535" in final
    assert "TRIMAIL_SMTP_USERNAME" in final
    assert "TRIMAIL_SMTP_PASSWORD" in final
    assert WRONG_PASSWORD not in caplog.text  # passwords are never logged
    # smtplib tries each mechanism the server offers (PLAIN, LOGIN) on the one connection.
    assert accounts.connections == 1
    assert all(not ok for _, ok, _ in accounts.logins)
    assert server.received == []


def test_auth_in_plain_text_to_loopback_is_allowed(serve: Callable[..., TLSServer]) -> None:
    """Credentials may go unencrypted to a loopback address (a local relay), and work there."""
    accounts = Accounts()
    server = serve(authenticator=accounts, auth_require_tls=False)
    smtp = transport(server, SMTPSecurity.NONE, username=USER, password=PASSWORD)
    smtp.send(envelope())
    smtp.close()
    assert [(login, ok) for login, ok, _ in accounts.logins] == [(USER, True)]
    assert server.handler.encrypted == [False]


NON_ASCII_PASSWORD = "pässwörd-ñ"


def test_non_ascii_credentials_log_in_with_utf8_plain(serve: Callable[..., TLSServer]) -> None:
    """A password that is not ASCII is sent as UTF-8 with AUTH PLAIN (RFC 4616), and works."""
    accounts = Accounts(user="mäiler", password=NON_ASCII_PASSWORD)
    server = serve(authenticator=accounts, auth_require_tls=False)
    smtp = transport(server, SMTPSecurity.NONE, username="mäiler", password=NON_ASCII_PASSWORD)
    smtp.send(envelope())
    smtp.close()
    assert [(login, ok) for login, ok, _ in accounts.logins] == [("mäiler", True)]
    assert len(server.received) == 1


async def test_a_wrong_non_ascii_password_reveals_nothing(
    serve: Callable[..., TLSServer],
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The job fails with the server's 535; no character of the password reaches a caller or log."""
    accounts = Accounts(password="other")
    server = serve(authenticator=accounts, auth_require_tls=False)
    job = await deliver_one(
        lambda: transport(server, SMTPSecurity.NONE, username=USER, password=NON_ASCII_PASSWORD)
    )
    assert final_lines(caplog) == {job.id: ["failed"]}
    assert job.last_error_code == 535
    assert job.last_error is not None
    assert job.last_error.startswith("SMTP authentication failed (535")
    for shown in (job.last_error, caplog.text):
        assert "ä" not in shown
        assert "ñ" not in shown
        assert "\\xe4" not in shown
        assert "position" not in shown  # the text of the UnicodeEncodeError it once was


def test_credentials_are_not_sent_when_the_upgrade_fails(
    serve: Callable[..., TLSServer], ca: trustme.CA, ca_file: Path
) -> None:
    """When STARTTLS does not verify, trimail stops there: no AUTH reaches the server."""
    accounts = Accounts()
    server = starttls_server(
        serve, server_context(trustme.CA(), HOST), authenticator=accounts, auth_require_tls=False
    )
    smtp = transport(
        server,
        SMTPSecurity.AUTO,
        tls_context=make_tls_context(ca_file),
        username=USER,
        password=PASSWORD,
    )
    with pytest.raises(PermanentDeliveryError) as info:
        smtp.send(envelope())
    assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)
    assert accounts.logins == []
    assert server.received == []
