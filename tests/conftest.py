"""Fixtures: a real SMTP server, settings pointing at it, and a running app."""

from __future__ import annotations

import inspect
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from quart_trio.testing import TrioClient

from trimail.config import Settings
from trimail.delivery.dispatcher import Dispatcher
from trimail.delivery.transport import Transport
from trimail.http.app import TrimailApp, create_app
from trimail.jobs import Outcome

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
    """Poll ``predicate`` every 5 ms of real time, at most ``timeout`` real seconds."""
    for _ in range(int(timeout / 0.005)):
        if predicate():
            return
        await trio.to_thread.run_sync(time.sleep, 0.005)
    raise AssertionError("condition not reached in time")


@asynccontextmanager
async def running_dispatcher(
    transport_factory: Callable[[], Transport], **kwargs: Any
) -> AsyncIterator[Dispatcher]:
    """A started dispatcher; on exit it drains (with its grace), or stops at once on an error."""
    dispatcher = Dispatcher(transport_factory, **kwargs)
    async with trio.open_nursery() as nursery:
        await nursery.start(dispatcher.run)
        try:
            yield dispatcher
        except BaseException:
            dispatcher.stop_now()  # a frozen test clock would never end the grace
            raise
        finally:
            await dispatcher.shutdown()


async def drained(dispatcher: Dispatcher) -> None:
    """Wait until every accepted job has its final outcome."""
    await wait_until(lambda: dispatcher.outstanding == 0)


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
    "Outcome",
    "drained",
    "final_lines",
    "running_dispatcher",
    "services",
    "settings_for",
    "wait_until",
]
