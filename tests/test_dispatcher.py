"""The queue, workers, retries and shutdown, delivering to a real SMTP server.

Backoff and grace periods run on trio's autojump clock, so minutes of retries
take milliseconds; every job's fate is read from the ledger of final log lines.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
import trio

from trimail.config import SMTPSecurity
from trimail.delivery.retry import RetryPolicy
from trimail.delivery.transport import SMTPTransport, Transport, make_tls_context
from trimail.models import SendRequest
from trimail.store import JobState, open_store

from .conftest import (
    Delivery,
    drained,
    final_lines,
    memory_limits,
    new_delivery,
    running_dispatcher,
    wait_until,
)
from .smtpserver import SMTPTestServer

LONGEST = RetryPolicy(base_delay=10, max_delay=1000, max_attempts=5, uniform=lambda lo, hi: hi)


def message(*to: str, **changes: Any) -> SendRequest:
    body: dict[str, Any] = {
        "from": "sender@example.com",
        "to": list(to) or ["rcpt@example.com"],
        "subject": "Hi",
        "text": "Body",
    }
    body.update(changes)
    return SendRequest.model_validate(body)


TLS_CONTEXT = make_tls_context()  # unused with security none, but costly to build per worker


def smtp_factory(port: int) -> Callable[[], Transport]:
    return lambda: SMTPTransport(
        "127.0.0.1", port, security=SMTPSecurity.NONE, timeout=5, tls_context=TLS_CONTEXT
    )


def running(port: int, **kwargs: Any) -> AbstractAsyncContextManager[Delivery]:
    """A started dispatcher delivering to ``port``, with long backoffs unless told otherwise."""
    kwargs.setdefault("retry", LONGEST)
    return running_dispatcher(smtp_factory(port), **kwargs)


async def test_transient_failures_are_retried_with_backoff(
    smtp_server: SMTPTestServer, autojump_clock: trio.testing.MockClock, caplog: Any
) -> None:
    """Two 451s then success: three attempts, waits of 10 s and 20 s, one final 'sent'."""
    smtp_server.fail("DATA", "451 4.3.0 try again later", times=2)
    async with running(smtp_server.port, workers=1) as dispatcher:
        start = trio.current_time()
        job = await dispatcher.submit(message())
        await drained(dispatcher)
        assert trio.current_time() - start == pytest.approx(30, abs=0.5)
    assert (await dispatcher.attempts(job.id)) == 3
    assert final_lines(caplog) == {job.id: ["sent"]}
    assert len(smtp_server.received) == 1
    codes = [r.smtp_code for r in caplog.records if getattr(r, "event", "") == "attempt"]
    assert codes == [451, 451, 250]


async def test_a_job_waiting_for_retry_holds_no_worker(
    smtp_server: SMTPTestServer, autojump_clock: trio.testing.MockClock, caplog: Any
) -> None:
    """With one worker, a job sent after a failing one is delivered during its backoff."""
    smtp_server.fail("RCPT", "451 4.3.0 later", match="first@")
    async with running(smtp_server.port, workers=1) as dispatcher:
        first = await dispatcher.submit(message("first@example.com"))
        second = await dispatcher.submit(message("second@example.com"))
        await drained(dispatcher)
    finals = [r.job_id for r in caplog.records if getattr(r, "event", "") == "final"]
    assert finals == [second.id, first.id]
    assert final_lines(caplog) == {first.id: ["sent"], second.id: ["sent"]}


async def test_permanent_failure_is_not_retried(
    smtp_server: SMTPTestServer, autojump_clock: trio.testing.MockClock, caplog: Any
) -> None:
    """A 5xx to DATA fails the job after one attempt, with the code in its final line."""
    smtp_server.fail("DATA", "554 5.7.1 rejected as spam")
    async with running(smtp_server.port) as dispatcher:
        job = await dispatcher.submit(message())
        await drained(dispatcher)
    assert (await dispatcher.attempts(job.id)) == 1
    assert final_lines(caplog) == {job.id: ["failed"]}
    final = next(r for r in caplog.records if getattr(r, "event", "") == "final")
    assert "554 5.7.1 rejected as spam" in final.getMessage()


async def test_attempts_are_bounded(
    closed_port: int, autojump_clock: trio.testing.MockClock, caplog: Any
) -> None:
    """With the provider down, every refused connection is an attempt; after 5 the job fails."""
    async with running(closed_port) as dispatcher:
        job = await dispatcher.submit(message())
        await drained(dispatcher)
    assert (await dispatcher.attempts(job.id)) == 5
    assert final_lines(caplog) == {job.id: ["failed"]}
    final = next(r for r in caplog.records if getattr(r, "event", "") == "final")
    assert final.getMessage().endswith(f"connection refused by 127.0.0.1:{closed_port}")


async def test_partial_refusal(
    smtp_server: SMTPTestServer, autojump_clock: trio.testing.MockClock, caplog: Any
) -> None:
    """5xx-refused recipients fail, 4xx-refused ones are retried alone, the rest get it once."""
    smtp_server.fail("RCPT", "550 5.1.1 no such user", times=5, match="gone@")
    smtp_server.fail("RCPT", "452 4.2.2 mailbox full", times=1, match="full@")
    async with running(smtp_server.port) as dispatcher:
        job = await dispatcher.submit(
            message("ok@example.com", "gone@example.com", "full@example.com")
        )
        await drained(dispatcher)
        refused = (await dispatcher.status(job.id)).refused
    assert [r.rcpt_tos for r in smtp_server.received] == [
        ["ok@example.com"],
        ["full@example.com"],
    ]
    assert final_lines(caplog) == {job.id: ["sent"]}
    assert refused == {"gone@example.com": "550 5.1.1 no such user"}
    final = next(r for r in caplog.records if getattr(r, "event", "") == "final")
    assert "gone@example.com" in final.getMessage()


async def test_every_recipient_refused_permanently_fails_the_job(
    smtp_server: SMTPTestServer, autojump_clock: trio.testing.MockClock, caplog: Any
) -> None:
    """When every recipient gets a 5xx, nothing is sent and the job fails."""
    smtp_server.fail("RCPT", "550 5.1.1 no such user", times=2)
    async with running(smtp_server.port) as dispatcher:
        job = await dispatcher.submit(message("a@example.com", "b@example.com"))
        await drained(dispatcher)
    assert smtp_server.received == []
    assert final_lines(caplog) == {job.id: ["failed"]}


async def test_shutdown_drains_queue_and_retries(smtp_server: SMTPTestServer, caplog: Any) -> None:
    """Jobs queued when shutdown begins are still delivered within the grace period."""
    smtp_server.hold()
    dispatcher = new_delivery(smtp_factory(smtp_server.port), workers=1, grace=60)
    async with trio.open_nursery() as nursery:
        await nursery.start(dispatcher.run)
        jobs = [await dispatcher.submit(message()) for _ in range(3)]
        await wait_until(lambda: smtp_server.holding)
        nursery.start_soon(dispatcher.shutdown)
        await wait_until(lambda: not dispatcher.intake.accepting)
        smtp_server.release()
    assert final_lines(caplog) == {job.id: ["sent"] for job in jobs}
    assert len(smtp_server.received) == 3


async def test_grace_expiry_logs_every_unfinished_job_not_delivered(
    smtp_server: SMTPTestServer, autojump_clock: trio.testing.MockClock, caplog: Any
) -> None:
    """At the end of the grace, the in-flight send is cut and no job is left without a line."""
    smtp_server.hold("RCPT")  # the provider stalls before the message is transferred
    dispatcher = new_delivery(smtp_factory(smtp_server.port), workers=1, grace=5)
    async with trio.open_nursery() as nursery:
        await nursery.start(dispatcher.run)
        jobs = [await dispatcher.submit(message()) for _ in range(3)]
        await wait_until(lambda: smtp_server.holding)
        await dispatcher.shutdown()
    smtp_server.release()
    assert final_lines(caplog) == {job.id: ["not delivered"] for job in jobs}
    assert smtp_server.received == []
    # The held send was cut by abort(), not left to run into the SMTP timeout.
    attempts = [r.getMessage() for r in caplog.records if getattr(r, "event", "") == "attempt"]
    assert len(attempts) == 1
    assert "timed out" not in attempts[0]


async def test_idle_shutdown_does_not_wait_for_the_grace(
    smtp_server: SMTPTestServer, autojump_clock: trio.testing.MockClock
) -> None:
    """With nothing outstanding, shutdown ends without spending any of the grace period."""
    dispatcher = new_delivery(smtp_factory(smtp_server.port), grace=30)
    async with trio.open_nursery() as nursery:
        await nursery.start(dispatcher.run)
        before = trio.current_time()
        await dispatcher.shutdown()
        assert trio.current_time() - before < 30


async def test_cancelled_dispatcher_logs_what_it_leaves(closed_port: int, caplog: Any) -> None:
    """Cancelling run() from outside still gives every job its final line."""
    dispatcher = new_delivery(smtp_factory(closed_port), retry=LONGEST)
    async with trio.open_nursery() as nursery:
        await nursery.start(dispatcher.run)
        job = await dispatcher.submit(message())
        await wait_until(lambda: dispatcher.counts(retrying=1))
        nursery.cancel_scope.cancel()
    assert final_lines(caplog) == {job.id: ["not delivered"]}


async def test_submit_refuses_when_full_or_closing(closed_port: int) -> None:
    """A full queue raises QueueFull, a stopping intake ShuttingDown; neither stores a job."""
    from trimail.errors import QueueFull, ShuttingDown

    dispatcher = new_delivery(smtp_factory(closed_port), workers=1, queue_size=2, retry=LONGEST)
    with pytest.raises(ShuttingDown):
        await dispatcher.submit(message())  # not started yet
    async with trio.open_nursery() as nursery:
        await nursery.start(dispatcher.run)
        await dispatcher.submit(message())
        await dispatcher.submit(message())
        with pytest.raises(QueueFull) as info:  # retrying jobs count too: the queue is full
            await dispatcher.submit(message())
        assert info.value.retry_after >= 1
        assert dispatcher.outstanding == 2
        dispatcher.intake.accepting = False
        with pytest.raises(ShuttingDown):
            await dispatcher.submit(message())
        dispatcher.dispatcher.stop_now()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_40_second_outage_loses_nothing_with_the_default_retries(
    closed_port: int,
    autojump_clock: trio.testing.MockClock,
    tmp_path: Path,
    caplog: Any,
    kind: str,
) -> None:
    """The provider is down for 40 s (virtual): with the default policy the mail still arrives."""
    store = await open_store("memory" if kind == "memory" else f"sqlite://{tmp_path}/spool.db",
                             memory_limits())  # fmt: skip
    async with running_dispatcher(smtp_factory(closed_port), store=store, retry=RetryPolicy()) as d:
        job = await d.submit(message())
        started = trio.current_time()
        # Refused, again and again, with the backoff growing; virtual time moves with the
        # retries (a sleep here would be leapt to while an attempt's thread runs).
        await wait_until(lambda: trio.current_time() - started >= 40)
        status = await d.status(job.id)
        assert status.state in (JobState.RETRYING, JobState.SENDING)  # not given up
        assert status.attempts >= 4
        provider = SMTPTestServer(port=closed_port)
        provider.start()
        try:
            await drained(d)
        finally:
            provider.stop()
        attempts = await d.attempts(job.id)
    await store.aclose()
    assert final_lines(caplog) == {job.id: ["sent"]}
    assert len(provider.received) == 1
    assert attempts > 5  # more than the old default allowed before giving up


async def test_an_attempt_past_its_deadline_is_cut_and_retried(
    smtp_server: SMTPTestServer, caplog: Any
) -> None:
    """A provider holding the message past the attempt deadline: cut, logged as such, retried.

    Real time: the deadline is 1.08 s (a lease of 1.2 s less a tenth).
    """
    smtp_server.hold("RCPT")
    quick = RetryPolicy(base_delay=0.05, max_delay=0.05)
    delivery = new_delivery(smtp_factory(smtp_server.port), workers=1, retry=quick,
                            lease_seconds=1.2, clock=time.time, attempt_deadline=None)  # fmt: skip
    async with trio.open_nursery() as nursery:
        await nursery.start(delivery.run)
        job = await delivery.submit(message())
        await wait_until(lambda: smtp_server.holding)
        await wait_until(lambda: delivery.counts(retrying=1))  # cut, not waiting for the release
        smtp_server.release()
        await drained(delivery)
        nursery.start_soon(delivery.shutdown)
    attempts = [r.getMessage() for r in caplog.records if getattr(r, "event", "") == "attempt"]
    assert "cut at its deadline (1 s)" in attempts[0]
    assert final_lines(caplog) == {job.id: ["sent"]}
    assert len(smtp_server.received) == 1
