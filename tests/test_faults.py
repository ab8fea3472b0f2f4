"""The provider-fault matrix: real SMTP servers that misbehave on purpose.

Every test checks the ledger: each accepted job ends in exactly one final log
line, nothing reaches the provider twice (counted by the job id in each received
``Message-ID``) unless SMTP itself allows it, and each job took the number of
attempts its fault explains.

Backoff runs on trio's mock clocks. Where the provider must change between two
attempts (down, then up), the clock stands still (``mock_clock``) until the test
has changed it and moves the clock on by hand; elsewhere it jumps on its own
(``autojump_clock``). Everything listens on 127.0.0.1 and is stopped by a fixture.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
from aiosmtpd.smtp import SMTP

from trimail.config import SMTPSecurity
from trimail.delivery.retry import RetryPolicy
from trimail.delivery.transport import SMTPTransport, make_tls_context
from trimail.models import SendRequest

from .conftest import Delivery, Submitted, drained, final_lines, running_dispatcher, wait_until
from .smtpserver import Received, ScriptedHandler, SMTPTestServer, _AnyPort

HOST = "127.0.0.1"
#: Backoffs of 10, 20, 40... virtual seconds: long enough that a retry can never
#: overtake the test, and always the same.
LONGEST = RetryPolicy(base_delay=10, max_delay=1000, max_attempts=5, uniform=lambda lo, hi: hi)
#: Real seconds trimail waits for a provider that says nothing.
SILENT_TIMEOUT = 0.5


# -- providers that misbehave ----------------------------------------------------------


async def _hang_up(server: SMTP) -> None:
    """Close the client's connection without a reply; aiosmtpd then cancels this session."""
    assert server.transport is not None
    server.transport.close()
    await asyncio.Event().wait()  # connection_lost() cancels the session's task


@dataclass
class FaultyHandler(ScriptedHandler):
    """:class:`ScriptedHandler` that can also hang up on purpose, ``drops[stage]`` times,
    and counts the sessions it is holding (``held_now``).

    ``"DATA"``: when the client says DATA, after every RCPT was accepted (nothing
    was transferred). ``"after DATA"``: once the whole message arrived and the
    provider has taken it, before its reply is sent.
    """

    drops: Counter[str] = field(default_factory=Counter)
    held_now: int = 0

    async def _wait_if_held(self, stage: str) -> None:
        if self.hold_stage != stage or self.held.is_set():
            return
        with self.lock:
            self.held_now += 1
        try:
            await super()._wait_if_held(stage)
        finally:
            with self.lock:
                self.held_now -= 1

    def drop(self, stage: str, times: int = 1) -> None:
        with self.lock:
            self.drops[stage] += times

    def take_drop(self, stage: str) -> bool:
        with self.lock:
            if self.drops[stage] > 0:
                self.drops[stage] -= 1
                return True
        return False

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.take_drop("after DATA"):
            with self.lock:
                self.received.append(
                    Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
                )
            await _hang_up(server)
        return await super().handle_DATA(server, session, envelope)


class _FaultySMTP(SMTP):
    async def smtp_DATA(self, arg: str) -> None:
        if self.event_handler.take_drop("DATA"):
            await _hang_up(self)
        await super().smtp_DATA(arg)


class _FaultyController(_AnyPort):
    def factory(self) -> SMTP:
        return _FaultySMTP(self.handler, **self.SMTP_kwargs)


class Provider(SMTPTestServer):
    """aiosmtpd with a :class:`FaultyHandler` on a given port (0: any), restartable.

    A restart keeps the handler, so ``received`` counts across both lives.
    """

    def __init__(self, port: int = 0, **kwargs: Any) -> None:
        self.handler: FaultyHandler = FaultyHandler()
        self._kwargs = kwargs
        self._controller = _FaultyController(self.handler, hostname=HOST, port=port, **kwargs)
        self.running = False

    def start(self) -> None:
        super().start()
        self.running = True

    def crash(self) -> None:
        """Stop at once: sessions in progress (even held ones) are cut, not finished."""
        if self.running:
            self.running = False
            self._controller.stop()

    def stop(self) -> None:
        self.release()
        self.crash()

    def restart(self) -> None:
        """A new server process, as it were, on the same port (after :meth:`crash`)."""
        self.crash()
        self.release()
        self._controller = _FaultyController(
            self.handler, hostname=HOST, port=self.port, **self._kwargs
        )
        self.start()


@pytest.fixture
def providers() -> Iterator[Callable[[int], Provider]]:
    """Start a :class:`Provider` on a port (0: any free one); all are stopped at the end."""
    started: list[Provider] = []

    def start(port: int = 0) -> Provider:
        provider = Provider(port)
        provider.start()
        started.append(provider)
        return provider

    yield start
    for provider in started:
        provider.stop()


def listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    sock.listen(16)
    return sock


@pytest.fixture
def silent_listener() -> Iterator[socket.socket]:
    """A socket that takes TCP connections (the kernel completes them) and never says a word."""
    sock = listening_socket()
    with sock:
        yield sock


class GreetingRefuser:
    """A raw server that answers every connection with ``421`` at once and hangs up."""

    def __init__(self, reply: bytes = b"421 4.3.2 busy, try again later\r\n") -> None:
        self.reply = reply
        self.connections = 0
        self._sock = listening_socket()
        self._sock.settimeout(0.05)
        self.port = int(self._sock.getsockname()[1])
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                self.connections += 1
                with contextlib.suppress(OSError):
                    conn.sendall(self.reply)

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        self._sock.close()


@pytest.fixture
def refuser() -> Iterator[GreetingRefuser]:
    server = GreetingRefuser()
    try:
        yield server
    finally:
        server.stop()


# -- jobs, the dispatcher and the ledger ------------------------------------------------


def message(*to: str) -> SendRequest:
    return SendRequest.model_validate(
        {
            "from": "sender@example.com",
            "to": list(to) or ["rcpt@example.com"],
            "subject": "Hi",
            "text": "Body",
        }
    )


@functools.cache
def plain_tls_context() -> ssl.SSLContext:
    """One TLS context for every transport (security=none never uses it).

    Left to itself each transport would build one, loading the system CAs each
    time: tens of milliseconds per worker.
    """
    return make_tls_context()


@asynccontextmanager
async def running(port: int, *, timeout: float = 5.0, **kwargs: Any) -> AsyncIterator[Delivery]:
    """A started dispatcher delivering to ``port``; on error it stops at once, else drains."""
    kwargs.setdefault("retry", LONGEST)
    unused = plain_tls_context()

    def factory() -> SMTPTransport:
        return SMTPTransport(
            HOST, port, security=SMTPSecurity.NONE, timeout=timeout, tls_context=unused
        )

    async with running_dispatcher(factory, **kwargs) as dispatcher:
        yield dispatcher


async def all_waiting_for_retry(dispatcher: Delivery, count: int) -> None:
    """Wait until ``count`` jobs are outstanding and every one sleeps in its backoff."""
    await wait_until(lambda: dispatcher.outstanding == dispatcher.retrying == count)


async def settle(dispatcher: Delivery, clock: trio.testing.MockClock) -> None:
    """Run the frozen clock past the backoffs until every job is final (10 s real at most).

    The clock only jumps while every job left sleeps in its backoff, so that no
    attempt in progress is timed across a jump.
    """
    for _ in range(2000):
        if dispatcher.outstanding == 0:
            return
        if dispatcher.outstanding == dispatcher.retrying:
            clock.jump(LONGEST.max_delay)
        await trio.to_thread.run_sync(time.sleep, 0.005)
    raise AssertionError("jobs still outstanding")


def deliveries(server: SMTPTestServer) -> Counter[str]:
    """How often the provider took each job, by the job id in the Message-ID."""
    return Counter(r.message["Message-ID"].strip("<>").partition("@")[0] for r in server.received)


def assert_ledger(caplog: pytest.LogCaptureFixture, outcomes: dict[str, str]) -> None:
    """Exactly these jobs have a final line, exactly one each, with these outcomes."""
    assert final_lines(caplog) == {job_id: [outcome] for job_id, outcome in outcomes.items()}


def attempt_records(caplog: pytest.LogCaptureFixture, job: Submitted) -> list[Any]:
    return [
        r
        for r in caplog.records
        if getattr(r, "event", "") == "attempt" and getattr(r, "job_id", "") == job.id
    ]


def final_message(caplog: pytest.LogCaptureFixture, job: Submitted) -> str:
    [final] = [
        r
        for r in caplog.records
        if getattr(r, "event", "") == "final" and getattr(r, "job_id", "") == job.id
    ]
    return final.getMessage()


# -- the provider is not there, or says nothing ------------------------------------------


async def test_provider_down_at_start_then_up(
    closed_port: int,
    mock_clock: trio.testing.MockClock,
    providers: Callable[[int], Provider],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Jobs whose connections were refused wait in backoff and are delivered once it is up."""
    async with running(closed_port, workers=2) as dispatcher:
        jobs = [await dispatcher.submit(message()) for _ in range(3)]
        await all_waiting_for_retry(dispatcher, 3)
        provider = providers(closed_port)
        await settle(dispatcher, mock_clock)

    assert_ledger(caplog, {job.id: "sent" for job in jobs})
    assert deliveries(provider) == {job.id: 1 for job in jobs}
    assert [(await dispatcher.attempts(job.id)) for job in jobs] == [2, 2, 2]
    for job in jobs:
        first, _ = attempt_records(caplog, job)
        assert "connection refused by 127.0.0.1:" in first.getMessage()


async def test_silent_provider_times_out_then_a_real_one_takes_over(
    silent_listener: socket.socket,
    mock_clock: trio.testing.MockClock,
    providers: Callable[[int], Provider],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A provider that accepts TCP and never greets frees the worker after the SMTP timeout."""
    port = int(silent_listener.getsockname()[1])
    async with running(port, timeout=SILENT_TIMEOUT, workers=1) as dispatcher:
        jobs = [await dispatcher.submit(message()) for _ in range(2)]
        # One worker: the second job's first attempt shows the first one let go of it.
        await all_waiting_for_retry(dispatcher, 2)
        silent_listener.close()
        provider = providers(port)
        await settle(dispatcher, mock_clock)

    assert_ledger(caplog, {job.id: "sent" for job in jobs})
    assert deliveries(provider) == {job.id: 1 for job in jobs}
    for job in jobs:
        first, second = attempt_records(caplog, job)
        assert first.result == "transient failure"
        assert "timed out" in first.getMessage()
        assert second.result == "delivered"


async def test_silent_provider_fails_the_job_after_max_attempts(
    silent_listener: socket.socket,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Against a provider that never greets, each attempt times out; the job fails, saying so."""
    port = int(silent_listener.getsockname()[1])
    retry = RetryPolicy(base_delay=10, max_delay=1000, max_attempts=2)
    async with running(port, timeout=SILENT_TIMEOUT, workers=1, retry=retry) as dispatcher:
        job = await dispatcher.submit(message())
        await drained(dispatcher)

    assert_ledger(caplog, {job.id: "failed"})
    assert (await dispatcher.attempts(job.id)) == 2
    assert [r.result for r in attempt_records(caplog, job)] == ["transient failure"] * 2
    # What retry.describe() gives a timeout; smtplib wraps the TimeoutError of a read.
    assert "timed out waiting for 127.0.0.1:" in final_message(caplog, job)


async def test_421_at_greeting_is_retried(
    refuser: GreetingRefuser,
    mock_clock: trio.testing.MockClock,
    providers: Callable[[int], Provider],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A provider that greets with 421 and hangs up is tried again; the job is delivered later."""
    async with running(refuser.port, workers=1) as dispatcher:
        job = await dispatcher.submit(message())
        await all_waiting_for_retry(dispatcher, 1)
        mock_clock.jump(LONGEST.backoff(1))
        await wait_until(
            lambda: len(attempt_records(caplog, job)) == 2 and dispatcher.counts(retrying=1)
        )
        refuser.stop()
        provider = providers(refuser.port)
        await settle(dispatcher, mock_clock)

    assert_ledger(caplog, {job.id: "sent"})
    assert deliveries(provider) == {job.id: 1}
    assert refuser.connections == 2
    assert [r.smtp_code for r in attempt_records(caplog, job)] == [421, 421, 250]


# -- the provider answers 4xx or 5xx ------------------------------------------------------


@pytest.mark.parametrize(
    ("stage", "reply"),
    [
        ("MAIL", "451 4.3.0 temporary local problem"),
        ("RCPT", "450 4.2.1 mailbox busy"),
        ("DATA", "452 4.3.1 insufficient system storage"),
    ],
)
async def test_4xx_is_retried_and_delivered_once(
    stage: str,
    reply: str,
    smtp_server: SMTPTestServer,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A temporary refusal at MAIL, RCPT or DATA costs one attempt; the retry delivers once."""
    smtp_server.fail(stage, reply)
    async with running(smtp_server.port) as dispatcher:
        job = await dispatcher.submit(message())
        await drained(dispatcher)

    assert_ledger(caplog, {job.id: "sent"})
    assert deliveries(smtp_server) == {job.id: 1}
    assert [r.smtp_code for r in attempt_records(caplog, job)] == [int(reply[:3]), 250]


async def test_5xx_at_rcpt_for_some_recipients(
    smtp_server: SMTPTestServer,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Recipients refused with 5xx are not retried; the others get the mail once, in one attempt."""
    smtp_server.fail("RCPT", "550 5.1.1 no such user", times=5, match="gone@")
    async with running(smtp_server.port) as dispatcher:
        job = await dispatcher.submit(message("a@example.com", "gone@example.com", "b@example.com"))
        await drained(dispatcher)

    assert_ledger(caplog, {job.id: "sent"})
    assert (await dispatcher.attempts(job.id)) == 1
    assert deliveries(smtp_server) == {job.id: 1}
    assert [r.rcpt_tos for r in smtp_server.received] == [["a@example.com", "b@example.com"]]
    assert "gone@example.com: 550 5.1.1 no such user" in final_message(caplog, job)


async def test_5xx_at_data_fails_after_one_attempt(
    smtp_server: SMTPTestServer,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 5xx to the message is permanent: one attempt, failed, nothing delivered."""
    smtp_server.fail("DATA", "554 5.6.0 message content rejected")
    async with running(smtp_server.port) as dispatcher:
        job = await dispatcher.submit(message())
        await drained(dispatcher)

    assert_ledger(caplog, {job.id: "failed"})
    assert (await dispatcher.attempts(job.id)) == 1
    assert smtp_server.received == []
    assert "554 5.6.0 message content rejected" in final_message(caplog, job)


# -- the connection is lost in the middle -------------------------------------------------


async def test_connection_dropped_before_data_is_retried(
    providers: Callable[[int], Provider],
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The provider hangs up at DATA, after every RCPT was accepted: retried, delivered once."""
    provider = providers(0)
    provider.handler.drop("DATA")
    async with running(provider.port) as dispatcher:
        job = await dispatcher.submit(message())
        await drained(dispatcher)

    assert_ledger(caplog, {job.id: "sent"})
    assert (await dispatcher.attempts(job.id)) == 2
    assert deliveries(provider) == {job.id: 1}
    first, _ = attempt_records(caplog, job)
    assert "closed the connection" in first.getMessage()


async def test_reply_to_the_message_lost_is_retried_and_may_duplicate(
    providers: Callable[[int], Provider],
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The provider took the message but hung up before replying: trimail retries it.

    This is the one duplicate SMTP allows (README, Delivery semantics): without
    the reply, trimail cannot know the provider has the mail, and treats the lost
    connection as transient. So the provider gets the same message (same
    Message-ID) twice, while the ledger still says ``sent`` exactly once.
    """
    provider = providers(0)
    provider.handler.drop("after DATA")
    async with running(provider.port) as dispatcher:
        job = await dispatcher.submit(message())
        await drained(dispatcher)

    assert_ledger(caplog, {job.id: "sent"})
    assert (await dispatcher.attempts(job.id)) == 2
    assert deliveries(provider) == {job.id: 2}
    assert [r.result for r in attempt_records(caplog, job)] == ["transient failure", "delivered"]


async def test_provider_restarted_under_load(
    providers: Callable[[int], Provider],
    mock_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A provider restarted in the middle of 30 jobs: each job is sent exactly once, none lost."""
    provider = providers(0)
    async with running(provider.port, workers=4) as dispatcher:
        early = [await dispatcher.submit(message()) for _ in range(10)]
        await drained(dispatcher)
        # The provider now holds each message it gets in full, before accepting it,
        # and is killed with four held; the sixteen queued jobs then meet a closed port.
        provider.hold("DATA")
        late = [await dispatcher.submit(message()) for _ in range(20)]
        await wait_until(lambda: provider.handler.held_now == 4 and dispatcher.counts(queued=16))
        provider.crash()
        await all_waiting_for_retry(dispatcher, 20)
        provider.restart()  # a new server on the same port
        await settle(dispatcher, mock_clock)

    jobs = early + late
    assert_ledger(caplog, {job.id: "sent" for job in jobs})
    assert deliveries(provider) == {job.id: 1 for job in jobs}
    assert [(await dispatcher.attempts(job.id)) for job in early] == [1] * 10
    assert [(await dispatcher.attempts(job.id)) for job in late] == [2] * 20
