"""Fixtures: a real SMTP server, settings pointing at it, and a running app."""

from __future__ import annotations

import inspect
import logging
import math
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import trio
from quart_trio.testing import TrioClient

from trimail.config import Settings
from trimail.delivery.dispatcher import Dispatcher
from trimail.delivery.transport import Transport
from trimail.http.app import TrimailApp, create_app
from trimail.intake import Intake
from trimail.ledger import Ledger
from trimail.models import SendRequest
from trimail.store import JobStatus, JobStore, Limits
from trimail.store.memory import MemoryStore

from .pgserver import PostgresServer, find_binaries
from .serving import services
from .smtpserver import SMTPTestServer


@pytest.fixture
def smtp_server() -> Iterator[SMTPTestServer]:
    server = SMTPTestServer(enable_SMTPUTF8=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL cluster for the whole session; skipped where PostgreSQL is absent."""
    binaries = find_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL server binaries are missing: install Debian's postgresql (.ci/run)")
    server = PostgresServer(binaries)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty database of the session's cluster."""
    return postgres_server.database()


@pytest.fixture
def closed_port() -> int:
    """A loopback port with nothing listening: the provider is down."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def settings_for(server: SMTPTestServer | None = None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "smtp_host": "127.0.0.1",
        "smtp_port": server.port if server else 25,
        "smtp_security": "none",
        "smtp_timeout": 5,
        "workers": 2,
        "queue_size": 100,
        "shutdown_grace": 5,
        "retry_base_delay": 1,
        "default_from": "trimail tests <tests@example.com>",
        "smtp_check": False,  # tests that count connections see deliveries only
    }
    values.update(overrides)
    return Settings.model_validate(values)


@pytest.fixture
async def running_app(smtp_server: SMTPTestServer) -> AsyncIterator[TrimailApp]:
    """The app with its real startup and shutdown, delivering to ``smtp_server``."""
    app = create_app(settings_for(smtp_server), setup_logging=False)
    async with app.test_app():
        yield app


def final_lines(caplog: pytest.LogCaptureFixture) -> dict[str, list[str]]:
    """Each job id's final log lines (there must be exactly one per job)."""
    finals: dict[str, list[str]] = {}
    for record in caplog.records:
        if getattr(record, "event", None) == "final":
            finals.setdefault(record.job_id, []).append(record.outcome)  # type: ignore[attr-defined]
    return finals


async def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    """Poll ``predicate`` every 5 ms of real time, at most ``timeout`` real seconds.

    The predicate may return an awaitable (``lambda: retrying(app, 1)``).
    """
    for _ in range(int(timeout / 0.005)):
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        await trio.to_thread.run_sync(time.sleep, 0.005)
    raise AssertionError("condition not reached in time")


async def retrying(app: TrimailApp, count: int) -> bool:
    """Whether the app's store holds exactly ``count`` jobs waiting for a retry."""
    assert app.store is not None
    return (await app.store.stats()).retrying == count


#: The Unix time that trio's clock 0 stands for in tests: stores get wall-clock times
#: that advance with trio's (virtual, under autojump) clock.
EPOCH = 1_800_000_000.0


def trio_clock() -> float:
    return EPOCH + trio.current_time()


def memory_limits(queue_size: int = 10_000, queue_bytes: int = 256 * 1024 * 1024) -> Limits:
    return Limits(queue_size, queue_bytes, 86_400, 100_000, 86_400, 100_000)


@dataclass(frozen=True)
class Submitted:
    """A job submitted in a test: its id."""

    id: str


@dataclass
class Delivery:
    """A dispatcher delivering from a store, and an intake to submit through (tests only)."""

    dispatcher: Dispatcher
    intake: Intake
    store: JobStore

    async def submit(self, request: SendRequest, owner: str | None = None) -> Submitted:
        """Store ``request`` as a job, as the API would."""
        answer, _ = await self.intake.submit([request], owner, lambda ids: {"id": ids[0]})
        return Submitted(str(answer["id"]))

    async def status(self, job_id: str) -> JobStatus:
        status = await self.store.status(job_id, trio_clock())
        assert status is not None, f"no status for job {job_id}"
        return status

    async def attempts(self, job_id: str) -> int:
        return (await self.status(job_id)).attempts

    @property
    def outstanding(self) -> int:
        """Jobs accepted here and not yet closed in the ledger."""
        return len(self.dispatcher.ledger.open)

    @property
    def retrying(self) -> int:
        """Jobs waiting for a retry (memory store: counted without waiting)."""
        assert isinstance(self.store, MemoryStore)
        return self.store.stats_now().retrying

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the dispatcher, accepting jobs once it is ready (start with ``nursery.start``)."""

        self.intake.accepting = True
        await self.dispatcher.run(task_status=task_status)

    async def shutdown(self) -> None:
        self.intake.accepting = False
        await self.dispatcher.shutdown()

    async def counts(self, **expected: int) -> bool:
        """Whether the store's open jobs are as ``expected`` (``queued=``, ``retrying=``...)."""
        stats = await self.store.stats()
        return all(getattr(stats, state) == count for state, count in expected.items())


def new_delivery(
    transport_factory: Callable[[], Transport],
    *,
    store: JobStore | None = None,
    queue_size: int = 10_000,
    **kwargs: Any,
) -> Delivery:
    """A dispatcher on ``store`` (a new memory store by default), not started yet.

    Unless told otherwise, attempts have no deadline and idle connections stay
    open: under trio's autojump clock, time would leap to those deadlines while
    a thread sends.
    """
    store = store or MemoryStore(memory_limits(queue_size))
    ledger = Ledger()
    kwargs.setdefault("clock", trio_clock)
    kwargs.setdefault("attempt_deadline", math.inf)
    kwargs.setdefault("idle_timeout", math.inf)
    dispatcher = Dispatcher(store, transport_factory, ledger=ledger, **kwargs)
    intake = Intake(store, ledger, grace=dispatcher.grace, clock=kwargs["clock"])
    intake.on_accept = dispatcher.wake
    return Delivery(dispatcher, intake, store)


@asynccontextmanager
async def running_dispatcher(
    transport_factory: Callable[[], Transport], **kwargs: Any
) -> AsyncIterator[Delivery]:
    """A started dispatcher (see :func:`new_delivery`); on exit it drains, or stops at once."""
    delivery = new_delivery(transport_factory, **kwargs)
    async with trio.open_nursery() as nursery:
        await nursery.start(delivery.run)
        try:
            yield delivery
        except BaseException:
            delivery.dispatcher.stop_now()  # a frozen test clock would never end the grace
            raise
        finally:
            await delivery.shutdown()


async def drained(delivery: Delivery) -> None:
    """Wait until every accepted job has its closing line."""
    await wait_until(lambda: delivery.outstanding == 0)


def open_jobs(app: TrimailApp) -> int:
    """Jobs the app accepted and has not closed yet."""
    return len(app.ledger.open)


@pytest.fixture(autouse=True)
def _capture_info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trimail")


#: The addresses Hypercorn puts in the scope of a request over loopback TCP.
LOOPBACK_SCOPE = {"server": ("127.0.0.1", 8080), "client": ("127.0.0.1", 50000)}


class LoopbackClient(TrioClient):
    """Quart's test client, with the scope of a real loopback TCP connection by default.

    Quart's own test scope has no server address, which trimail (rightly) treats
    like a Unix socket; ``scope_base`` still overrides it.
    """

    async def _make_request(self, *args: Any, **kwargs: Any) -> Any:
        arguments = inspect.signature(super()._make_request).bind(*args, **kwargs).arguments
        arguments["scope_base"] = {**LOOPBACK_SCOPE, **(arguments["scope_base"] or {})}
        return await super()._make_request(**arguments)


@pytest.fixture(autouse=True)
def _loopback_test_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TrimailApp, "test_client_class", LoopbackClient)


__all__ = [
    "EPOCH",
    "Delivery",
    "drained",
    "final_lines",
    "memory_limits",
    "new_delivery",
    "open_jobs",
    "retrying",
    "running_dispatcher",
    "services",
    "settings_for",
    "trio_clock",
    "wait_until",
]
