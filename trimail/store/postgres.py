"""The PostgreSQL store: durable and shared by any number of instances.

``postgresql://user:password@host:port/database?sslmode=...`` (a libpq URL).
psycopg 3 and its pool are blocking drivers, so every call runs in a thread,
the same pattern as smtplib. Claims use ``FOR UPDATE SKIP LOCKED``, so
instances never wait for each other's claimed rows. A submission notifies
``trimail_jobs`` in its transaction; every instance LISTENs on its own
connection and claims at once (within a second, the listener's poll, if a
notification is lost).
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, cast

import psycopg
import trio
from psycopg_pool import ConnectionPool, PoolTimeout

from ..errors import ConfigurationError
from . import redact
from .base import Limits
from .driver import Cursor
from .sql import SQLStore

log = logging.getLogger(__name__)

CHANNEL = "trimail_jobs"
#: Connections each instance may hold: one per concurrent store call (a guess:
#: claims, group commits and status lookups rarely overlap more than this).
POOL_SIZE = 8
#: Seconds to wait for the database when opening the store.
CONNECT_TIMEOUT = 10.0
#: Seconds a call waits for a free connection (or a new one, while the database is
#: down) before the store counts as unavailable.
POOL_TIMEOUT = 5.0
#: Seconds the listener blocks before checking whether it should stop.
LISTEN_POLL = 1.0
#: A fixed key for the advisory lock that serializes schema setup across instances.
SCHEMA_LOCK = 4_721_338_011

_PARAM = re.compile(r"(?<![:\w]):(\w+)")


class PostgresDriver:
    """The :class:`~trimail.store.sql.Driver` for a PostgreSQL database."""

    kind = "postgresql"
    unavailable: tuple[type[BaseException], ...] = (psycopg.OperationalError, PoolTimeout)

    def __init__(self, url: str) -> None:
        self.url = url
        #: Sent with this instance's notifications, so that its listener skips them: the
        #: instance wakes its own claimer directly.
        self.instance = uuid.uuid4().hex
        self.write_limiter = trio.CapacityLimiter(POOL_SIZE)
        self.read_limiter = self.write_limiter
        self._pool = ConnectionPool(
            url, min_size=1, max_size=POOL_SIZE, open=False, timeout=POOL_TIMEOUT,
            kwargs={"autocommit": False},
        )  # fmt: skip

    def open(self) -> None:
        try:
            self._pool.open(wait=True, timeout=CONNECT_TIMEOUT)
        except psycopg.Error as exc:
            raise ConfigurationError(
                f"cannot reach the store at {redact(self.url)}: {exc}"
            ) from None
        except Exception as exc:  # the pool's own timeout error
            raise ConfigurationError(
                f"cannot reach the store at {redact(self.url)} within {CONNECT_TIMEOUT:.0f} s "
                f"({type(exc).__name__})"
            ) from None

    def sql(self, text: str) -> str:
        text = text.replace("{blob}", "BYTEA").replace("{skip_locked}", "FOR UPDATE SKIP LOCKED")
        return _PARAM.sub(r"%(\1)s", text)

    @contextmanager
    def write(self) -> Iterator[Cursor]:
        with self._pool.connection() as connection, connection.transaction():
            yield connection.cursor()

    def pipeline(self, cursor: Cursor) -> AbstractContextManager[object]:
        """psycopg's pipeline mode, for writes whose results nobody reads: one round trip
        for them all, and so fewer waits for the GIL in a busy process. (Reads stay out
        of it: a fetch after several pipelined statements can return the wrong result.)"""
        return cast(psycopg.Cursor[Any], cursor).connection.pipeline()

    @contextmanager
    def read(self) -> Iterator[Cursor]:
        with self._pool.connection() as connection, connection.transaction():
            yield connection.cursor()

    def lock_totals(self) -> str:
        return "SELECT jobs, bytes FROM trimail_totals WHERE id = 1 FOR UPDATE"

    def lock_schema(self, cursor: Cursor) -> None:
        cursor.execute(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})")

    def notify(self, cursor: Cursor) -> None:
        cursor.execute(f"NOTIFY {CHANNEL}, '{self.instance}'")

    async def watch(self, wake: Callable[[], None], *, task_status: Any) -> None:
        """LISTEN on a connection of its own, in a thread; ``wake`` on each notification.

        Cancellation: the thread notices within :data:`LISTEN_POLL` seconds and
        closes its connection; the task returns at once (the thread is abandoned).
        """
        stop = False
        token = trio.lowlevel.current_trio_token()

        def listen() -> None:
            with psycopg.connect(self.url, autocommit=True) as connection:
                connection.execute(f"LISTEN {CHANNEL}")
                while not stop:
                    for notice in connection.notifies(timeout=LISTEN_POLL, stop_after=1):
                        if notice.payload != self.instance:
                            trio.from_thread.run_sync(wake, trio_token=token)

        task_status.started()
        try:
            while True:
                try:
                    await trio.to_thread.run_sync(listen, abandon_on_cancel=True)
                except psycopg.Error as exc:
                    log.warning("lost the notification connection to the store (%s); "
                                "retrying in %.0f s", type(exc).__name__, LISTEN_POLL)  # fmt: skip
                await trio.sleep(LISTEN_POLL)
        finally:
            stop = True

    def close(self) -> None:
        self._pool.close()


async def open_postgres(url: str, limits: Limits) -> SQLStore:
    """Connect, and create the schema (under an advisory lock) or check its version."""

    def open_sync() -> SQLStore:
        driver = PostgresDriver(url)
        driver.open()
        store = SQLStore(driver, limits)
        store.create_schema(redact(url))
        return store

    return await trio.to_thread.run_sync(open_sync)
