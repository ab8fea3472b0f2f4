"""The SQLite spool: durable on one host, no server to run.

``sqlite:///ABSOLUTE/PATH.db``. The database is in WAL mode with
``synchronous=FULL``: a commit is on disk (fsync) before ``submit`` returns,
so a ``202`` survives a crash of the process or of the machine. One
connection writes (every write of this process is serialized on it; group
commit shares each fsync among the requests that arrived meanwhile), another
reads, so status lookups do not wait behind commits. Several processes may
share the file (``hypercorn --workers N``): SQLite serializes their writes, and
each waits up to :data:`BUSY_TIMEOUT_MS` for the others.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import trio

from .base import Limits
from .driver import Cursor
from .sql import SQLStore

#: Milliseconds a connection waits for another process's write to finish before
#: the store counts as unavailable (a guess: far above a group commit's few ms).
BUSY_TIMEOUT_MS = 10_000
#: Seconds between tries of a statement SQLite refused at once as locked.
LOCKED_RETRY_SECONDS = 0.01


def _retry_while_locked(statement: Callable[[], object]) -> None:
    """Run ``statement``, again while SQLite says the file is locked, for up to
    :data:`BUSY_TIMEOUT_MS`.

    Switching a new file to WAL needs the file to itself, and when several processes
    open it at once (``hypercorn --workers 2``, or an API and a delivery instance
    started together) SQLite answers "database is locked" at once, without waiting
    in its busy handler, to avoid a deadlock between them.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            statement()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(LOCKED_RETRY_SECONDS)


class SQLiteDriver:
    """The :class:`~trimail.store.sql.Driver` for one SQLite file."""

    kind = "sqlite"
    unavailable: tuple[type[BaseException], ...] = (sqlite3.OperationalError,)

    def __init__(self, path: Path) -> None:
        self.path = path
        self.write_limiter = trio.CapacityLimiter(1)
        self.read_limiter = trio.CapacityLimiter(1)
        self._writer = self._connect()
        self._reader = self._connect()
        self._lock = threading.Lock()  # the limiters already serialize; this keeps it so

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
        )
        _retry_while_locked(lambda: connection.execute("PRAGMA journal_mode=WAL"))
        connection.execute("PRAGMA synchronous=FULL")
        connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        return connection

    def sql(self, text: str) -> str:
        return text.replace("{blob}", "BLOB").replace("{skip_locked}", "")

    @contextmanager
    def write(self) -> Iterator[Cursor]:
        with self._lock:
            cursor = self._writer.cursor()
            cursor.execute("BEGIN IMMEDIATE")  # take the write lock now, not on first write
            try:
                yield cursor
                cursor.execute("COMMIT")
            except BaseException:
                if self._writer.in_transaction:
                    cursor.execute("ROLLBACK")
                raise

    @contextmanager
    def read(self) -> Iterator[Cursor]:
        cursor = self._reader.cursor()
        cursor.execute("BEGIN")
        try:
            yield cursor
        finally:
            cursor.execute("COMMIT")

    def lock_totals(self) -> str:
        return "SELECT jobs, bytes FROM trimail_totals WHERE id = 1"

    def lock_schema(self, cursor: Cursor) -> None:
        """BEGIN IMMEDIATE already holds the file's write lock."""

    def notify(self, cursor: Cursor) -> None:
        """Other processes on the file find new work by polling."""

    def pipeline(self, cursor: Cursor) -> AbstractContextManager[object]:
        """In-process: every statement is a function call already."""
        return nullcontext()

    async def watch(self, wake: Callable[[], None], *, task_status: Any) -> None:
        task_status.started()

    def close(self) -> None:
        self._writer.close()
        self._reader.close()


async def open_sqlite(path: Path, limits: Limits) -> SQLStore:
    """Open (and create, with its directory's existing permissions) the spool at ``path``."""

    def open_sync() -> SQLStore:
        store = SQLStore(SQLiteDriver(path), limits)
        store.create_schema(f"sqlite://{path}")
        return store

    return await trio.to_thread.run_sync(open_sync)
