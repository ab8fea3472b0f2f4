"""SMTP connections on demand: growth with the backlog, reuse, idle close, provider pushback.

Each test runs a dispatcher against a real SMTP server (aiosmtpd) that counts
its open connections, and, where the test says so, turns away connections
beyond a limit as a provider does, or never answers the end of a message.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from trimail.config import SMTPSecurity
from trimail.delivery.retry import RetryPolicy
from trimail.delivery.transport import SMTPTransport

from .conftest import drained, final_lines, running_dispatcher, wait_until
from .smtpserver import SMTPTestServer
from .test_dispatcher import TLS_CONTEXT, message, smtp_factory

#: Quick retries on the real clock, should a test's job fail an attempt.
QUICK = RetryPolicy(base_delay=0.05, max_delay=0.2, max_attempts=20)


def attempt_lines(caplog: pytest.LogCaptureFixture, event: str = "attempt") -> list[Any]:
    return [r for r in caplog.records if getattr(r, "event", "") == event]


async def test_connections_grow_with_the_backlog_and_are_reused(
    smtp_server: SMTPTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Ten held mails open ten connections; the next ten reuse them and open none."""
    smtp_server.hold()
    async with running_dispatcher(smtp_factory(smtp_server.port), workers=50) as delivery:
        first = [await delivery.submit(message(f"a{i}@example.com")) for i in range(10)]
        await wait_until(lambda: smtp_server.handler.open_connections == 10)
        assert delivery.dispatcher.connections == 10
        smtp_server.release()
        await drained(delivery)
        second = [await delivery.submit(message(f"b{i}@example.com")) for i in range(10)]
        await drained(delivery)
        assert smtp_server.sessions == 10  # one EHLO per connection: all reused
        assert delivery.dispatcher.connections <= 10
    assert len(smtp_server.received) == 20
    assert final_lines(caplog) == {job.id: ["sent"] for job in first + second}


async def test_sequential_mail_uses_one_connection(smtp_server: SMTPTestServer) -> None:
    """Mails that do not overlap go over one connection, however many workers there are."""
    async with running_dispatcher(smtp_factory(smtp_server.port), workers=100) as delivery:
        for i in range(5):
            await delivery.submit(message(f"r{i}@example.com"))
            await drained(delivery)
    assert (smtp_server.sessions, smtp_server.handler.peak_connections) == (1, 1)


async def test_an_idle_connection_is_closed_with_quit(smtp_server: SMTPTestServer) -> None:
    """After idle_timeout without use the connection gets a QUIT, while trimail runs on."""
    async with running_dispatcher(
        smtp_factory(smtp_server.port), idle_timeout=0.2, workers=4
    ) as delivery:
        await delivery.submit(message())
        await drained(delivery)
        await wait_until(lambda: smtp_server.handler.quits == 1)
        await wait_until(lambda: smtp_server.handler.open_connections == 0)
        assert delivery.dispatcher.connections == 0
        await delivery.submit(message("again@example.com"))  # a new connection, on demand
        await drained(delivery)
        assert smtp_server.sessions == 2
    assert len(smtp_server.received) == 2


async def test_shutdown_says_quit_on_idle_connections(smtp_server: SMTPTestServer) -> None:
    """Connections still open at shutdown are closed politely, not dropped."""
    async with running_dispatcher(smtp_factory(smtp_server.port), workers=4) as delivery:
        await delivery.submit(message())
        await drained(delivery)
        assert smtp_server.handler.quits == 0
    await wait_until(lambda: smtp_server.handler.open_connections == 0)
    assert smtp_server.handler.quits == 1


@pytest.mark.parametrize(
    "reply", ["421 4.7.0 Error: too many connections from 127.0.0.1", None], ids=["421", "close"]
)
async def test_a_provider_connection_limit_is_learnt(
    smtp_server: SMTPTestServer, caplog: pytest.LogCaptureFixture, reply: str | None
) -> None:
    """Above 3 connections the provider turns them away: trimail settles at 3, loses nothing.

    The jobs whose connection was turned away go back to the queue without an
    attempt counted; after the first burst no more connections are turned away.
    """
    smtp_server.limit_connections(3, reply)
    smtp_server.hold()
    async with running_dispatcher(
        smtp_factory(smtp_server.port), workers=20, retry=QUICK
    ) as delivery:
        jobs = [await delivery.submit(message(f"r{i}@example.com")) for i in range(40)]
        await wait_until(lambda: smtp_server.handler.turned_away >= 1)
        await wait_until(lambda: delivery.dispatcher.concurrency <= 3)
        smtp_server.release()
        await drained(delivery)
        burst = smtp_server.handler.turned_away
        assert burst <= 2 * 20  # no storm: each worker was turned away about once
        attempts = {job.id: await delivery.attempts(job.id) for job in jobs}
    assert final_lines(caplog) == {job.id: ["sent"] for job in jobs}
    assert sorted(r.rcpt_tos[0] for r in smtp_server.received) == sorted(
        f"r{i}@example.com" for i in range(40)
    )
    assert set(attempts.values()) == {1}  # a turned-away connection is not an attempt
    assert len(attempt_lines(caplog, "requeued")) == burst
    assert smtp_server.handler.peak_connections <= 3
    assert any("turned a connection away" in r.getMessage() for r in caplog.records)


async def test_a_provider_that_is_down_is_not_a_full_one(
    closed_port: int, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Refused with nothing else open: a failed attempt, and one connection at a time."""
    async with running_dispatcher(
        smtp_factory(closed_port), workers=8, retry=RetryPolicy(max_attempts=2)
    ) as delivery:
        job = await delivery.submit(message())
        await drained(delivery)
        assert delivery.dispatcher.concurrency == 1
        assert await delivery.attempts(job.id) == 2
    assert final_lines(caplog) == {job.id: ["failed"]}
    assert not attempt_lines(caplog, "requeued")


async def test_silence_after_the_final_dot_is_retried_as_possibly_delivered(
    smtp_server: SMTPTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    """No reply to the end of the message within the data timeout: retried, and logged so."""

    def factory() -> SMTPTransport:
        return SMTPTransport("127.0.0.1", smtp_server.port, security=SMTPSecurity.NONE,
                             timeout=5, data_timeout=0.2, tls_context=TLS_CONTEXT)  # fmt: skip

    smtp_server.hold()
    async with running_dispatcher(factory, workers=2, retry=QUICK) as delivery:
        job = await delivery.submit(message())
        await wait_until(lambda: attempt_lines(caplog))
        smtp_server.release()
        await drained(delivery)
    first, *_, last = attempt_lines(caplog)
    assert first.result == "transient failure"
    assert first.getMessage().endswith(
        f"no reply after the end of the message was sent to 127.0.0.1:{smtp_server.port}; "
        "the provider may already have it"
    )
    assert last.result == "delivered"
    assert final_lines(caplog) == {job.id: ["sent"]}
    ids = {received.message["Message-ID"] for received in smtp_server.received}
    assert len(ids) == 1  # copies, if the provider kept the stalled one too, are one message
