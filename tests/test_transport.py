"""The SMTP transport against a real SMTP server (aiosmtpd), no mocks."""

from __future__ import annotations

import smtplib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from trimail.config import SMTPSecurity
from trimail.delivery.message import Envelope, build_envelope
from trimail.delivery.transport import SMTPTransport
from trimail.errors import PermanentDeliveryError, TransientDeliveryError
from trimail.models import SendRequest

from .smtpserver import SMTPTestServer
from .test_message import SMUGGLING


@pytest.fixture(params=[False, True], ids=["one command at a time", "pipelined"])
def smtp_server(request: pytest.FixtureRequest) -> Iterator[SMTPTestServer]:
    """Every test here runs against a server without PIPELINING and one with it."""
    server = SMTPTestServer(enable_SMTPUTF8=True, pipelining=request.param)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def envelope(**changes: Any) -> Envelope:
    body: dict[str, Any] = {
        "from": "sender@example.com",
        "to": ["a@example.com", "b@example.com"],
        "subject": "Hi",
        "text": "Body",
    }
    body.update(changes)
    return build_envelope(SendRequest.model_validate(body), "job")


def transport(server: SMTPTestServer | int, **kwargs: Any) -> SMTPTransport:
    port = server if isinstance(server, int) else server.port
    kwargs.setdefault("security", SMTPSecurity.NONE)
    return SMTPTransport("127.0.0.1", port, timeout=5, **kwargs)


def test_delivers_to_every_recipient(smtp_server: SMTPTestServer) -> None:
    """A plain send reaches the server with the right envelope and bytes."""
    sent = envelope()
    result = transport(smtp_server).send(sent)
    assert result.accepted == ("a@example.com", "b@example.com")
    assert result.refused == {}
    [received] = smtp_server.received
    assert received.mail_from == "sender@example.com"
    assert received.rcpt_tos == ["a@example.com", "b@example.com"]
    assert received.message["Subject"] == "Hi"


def test_connection_is_reused(smtp_server: SMTPTestServer) -> None:
    """Three sends in a row use one SMTP session."""
    smtp = transport(smtp_server)
    for _ in range(3):
        smtp.send(envelope())
    assert len(smtp_server.received) == 3
    assert smtp_server.sessions == 1


def test_idle_connection_closed_by_server_is_reopened() -> None:
    """A connection the server closed after its idle timeout is reopened within the same send."""
    server = SMTPTestServer(timeout=0.2)  # aiosmtpd hangs up after 0.2 s of silence
    server.start()
    try:
        smtp = transport(server)
        smtp.send(envelope())
        time.sleep(0.5)  # a real-time wait for the server's own timer, not an assertion
        smtp.send(envelope())
        assert len(server.received) == 2
        assert server.sessions == 2
    finally:
        server.stop()


def test_421_on_reuse_reconnects(smtp_server: SMTPTestServer) -> None:
    """A 421 to MAIL on a reused connection means 'idle timeout': reconnect, do not fail."""
    smtp = transport(smtp_server)
    smtp.send(envelope())
    smtp_server.fail("MAIL", "421 4.4.2 idle too long")
    smtp.send(envelope())
    assert len(smtp_server.received) == 2


def test_421_on_a_fresh_connection_is_an_error(smtp_server: SMTPTestServer) -> None:
    """On a new connection a 421 is a real failure: transient, with the server's reply."""
    smtp_server.fail("MAIL", "421 4.3.2 shutting down")
    with pytest.raises(TransientDeliveryError) as info:
        transport(smtp_server).send(envelope())
    assert (info.value.smtp_code, info.value.reason) == (421, "421 4.3.2 shutting down")
    assert isinstance(info.value.__cause__, smtplib.SMTPSenderRefused)
    assert info.value.pushback  # a 421 before MAIL: the server turns the connection away


def test_a_421_greeting_is_pushback(smtp_server: SMTPTestServer) -> None:
    """A server over its connection limit answers 421 at once: transient, marked as pushback."""
    smtp_server.limit_connections(0)
    with pytest.raises(TransientDeliveryError) as info:
        transport(smtp_server).send(envelope())
    assert info.value.reason == "421 4.7.0 Error: too many connections"
    assert info.value.pushback


def test_no_reply_after_the_final_dot_may_mean_delivered(smtp_server: SMTPTestServer) -> None:
    """Silence after the message arrived: transient, says the provider may have it, no reuse."""
    smtp_server.hold()  # the server has the whole message and does not answer
    smtp = transport(smtp_server, data_timeout=0.3)
    try:
        with pytest.raises(TransientDeliveryError) as info:
            smtp.send(envelope())
        assert smtp_server.holding  # the provider held the message when trimail gave up
    finally:
        smtp_server.release()
    assert info.value.reason == (
        f"no reply after the end of the message was sent to 127.0.0.1:{smtp_server.port}; "
        "the provider may already have it"
    )
    assert not info.value.pushback
    assert not smtp.connected


def test_the_data_timeout_does_not_cut_commands_short(smtp_server: SMTPTestServer) -> None:
    """The long final-dot wait applies to that reply only; the next send works as usual."""
    smtp = transport(smtp_server, data_timeout=600)
    smtp.send(envelope())
    smtp.send(envelope())
    assert smtp.connected
    assert len(smtp_server.received) == 2


def test_some_recipients_refused(smtp_server: SMTPTestServer) -> None:
    """Refused recipients are reported with their codes; the others get the mail."""
    smtp_server.fail("RCPT", "550 5.1.1 no such user", match="b@")
    result = transport(smtp_server).send(envelope())
    assert result.accepted == ("a@example.com",)
    assert result.refused == {"b@example.com": (550, "5.1.1 no such user")}
    assert smtp_server.received[0].rcpt_tos == ["a@example.com"]


def test_all_recipients_refused_sends_no_data(smtp_server: SMTPTestServer) -> None:
    """With every recipient refused, DATA is never sent and the connection stays usable."""
    smtp_server.fail("RCPT", "450 4.2.0 mailbox busy", times=2)
    smtp = transport(smtp_server)
    result = smtp.send(envelope())
    assert result.accepted == ()
    assert set(result.refused) == {"a@example.com", "b@example.com"}
    assert smtp_server.received == []
    smtp.send(envelope())
    assert len(smtp_server.received) == 1
    assert smtp_server.sessions == 1


def test_data_rejection_raises_and_drops_the_connection(smtp_server: SMTPTestServer) -> None:
    """A refused DATA is a permanent failure; the next send starts a fresh session."""
    smtp_server.fail("DATA", "554 5.7.1 rejected as spam")
    smtp = transport(smtp_server)
    with pytest.raises(PermanentDeliveryError) as info:
        smtp.send(envelope())
    assert info.value.smtp_code == 554
    assert isinstance(info.value.__cause__, smtplib.SMTPDataError)
    smtp.send(envelope())
    assert smtp_server.sessions == 2


def test_provider_down_raises_connection_refused(closed_port: int) -> None:
    """A refused connection is transient and named by the server's address, nothing else."""
    with pytest.raises(TransientDeliveryError) as info:
        transport(closed_port).send(envelope())
    assert info.value.reason == f"connection refused by 127.0.0.1:{closed_port}"
    assert isinstance(info.value.__cause__, ConnectionRefusedError)


def test_smuggled_commands_arrive_as_text_of_one_message(smtp_server: SMTPTestServer) -> None:
    """Published smuggling sequences in a body give one transaction, text intact, dots stuffed."""
    text = "".join(f"line{n}{sequence}" for n, sequence in enumerate(SMUGGLING))
    transport(smtp_server).send(envelope(text=text))
    [received] = smtp_server.received
    assert received.mail_from == "sender@example.com"
    assert received.rcpt_tos == ["a@example.com", "b@example.com"]
    body = received.message.get_content()
    assert "MAIL FROM:<evil@example.net>" in body  # as text, not as a command
    assert body.count("\r\n.\r\n") == 7  # each lone dot line survives: smtplib stuffed it


def test_smtputf8_when_offered(smtp_server: SMTPTestServer) -> None:
    """A non-ASCII local part is sent with SMTPUTF8 to a server that offers it."""
    transport(smtp_server).send(envelope(to="jürgen@example.de"))
    assert smtp_server.received[0].rcpt_tos == ["jürgen@example.de"]


def test_smtputf8_refused_when_not_offered() -> None:
    """Without SMTPUTF8 on the server, such a mail fails permanently and says why."""
    server = SMTPTestServer(enable_SMTPUTF8=False)
    server.start()
    try:
        with pytest.raises(PermanentDeliveryError, match="SMTPUTF8"):
            transport(server).send(envelope(to="jürgen@example.de"))
    finally:
        server.stop()


def test_starttls_required_but_not_offered(smtp_server: SMTPTestServer) -> None:
    """security=starttls against a server without STARTTLS fails permanently."""
    with pytest.raises(PermanentDeliveryError, match="STARTTLS"):
        transport(smtp_server, security=SMTPSecurity.STARTTLS).send(envelope())


def test_cleartext_to_a_remote_server_is_warned_once(
    smtp_server: SMTPTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    """security=auto, no STARTTLS offered, a server elsewhere: one warning per server, mail sent."""
    for _ in range(2):  # two connections, as two workers would open
        smtp = transport(smtp_server, security=SMTPSecurity.AUTO)
        smtp.local = False  # what a non-loopback host gives; the test server stays on loopback
        smtp.send(envelope())
        smtp.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        f"127.0.0.1:{smtp_server.port} does not offer STARTTLS: mail to it goes out unencrypted "
        "(TRIMAIL_SMTP_SECURITY=auto); set starttls or tls to require encryption"
    ]
    assert len(smtp_server.received) == 2


def test_cleartext_to_a_local_relay_is_not_warned(
    smtp_server: SMTPTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A relay on this machine (loopback) is not warned about: nothing crosses a network."""
    transport(smtp_server, security=SMTPSecurity.AUTO).send(envelope())
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_credentials_never_sent_in_plain_text_to_a_remote_host() -> None:
    """AUTH over an unencrypted connection to a non-loopback host is refused."""
    smtp = SMTPTransport("smtp.example.com", 25, username="u", password="p")
    with pytest.raises(PermanentDeliveryError, match="unencrypted"):
        smtp._login(smtplib.SMTP(), encrypted=False)


def test_abort_unblocks_a_send_in_progress(smtp_server: SMTPTestServer) -> None:
    """abort() from another thread ends a send the server is holding."""
    smtp_server.hold()
    smtp = transport(smtp_server)
    outcome: list[BaseException] = []

    def send() -> None:
        try:
            smtp.send(envelope())
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=send)
    thread.start()
    for _ in range(2000):
        if smtp_server.holding:
            break
        threading.Event().wait(0.005)
    assert smtp_server.holding
    smtp.abort()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert isinstance(outcome[0], TransientDeliveryError)
