"""What the SQL store needs from a database: the :class:`Driver` interface.

One implementation per database (:mod:`trimail.store.sqlite`,
:mod:`trimail.store.postgres`); everything else about the SQL stores is
written once, in :mod:`trimail.store.sql`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

import trio

Row = tuple[Any, ...]


class Cursor(Protocol):
    """What both drivers' cursors offer: DB-API ``execute`` and the fetches."""

    def execute(self, sql: str, params: Any = ..., /) -> Any: ...
    def executemany(self, sql: str, params: Any, /) -> Any: ...
    def fetchone(self) -> Row | None: ...
    def fetchall(self) -> list[Row]: ...


class Driver(Protocol):
    """A database: its dialect, its connections and transactions, its errors."""

    kind: str
    #: Exceptions meaning "the database cannot be reached or used now".
    unavailable: tuple[type[BaseException], ...]
    #: Limits the threads that wait on the database at once.
    write_limiter: trio.CapacityLimiter
    read_limiter: trio.CapacityLimiter

    def sql(self, text: str) -> str:
        """``text`` (named ``:params``, ``{blob}``, ``{skip_locked}``) in this dialect."""
        ...

    def write(self) -> AbstractContextManager[Cursor]:
        """A transaction that may write; committed when the block ends without error."""
        ...

    def read(self) -> AbstractContextManager[Cursor]:
        """A cursor for reads."""
        ...

    def lock_totals(self) -> str:
        """The statement that reads ``trimail_totals`` under the submission lock."""
        ...

    def lock_schema(self, cursor: Cursor) -> None:
        """Serialize schema setup with other instances (within the transaction)."""
        ...

    def notify(self, cursor: Cursor) -> None:
        """Tell other instances that work was added (within the transaction)."""
        ...

    def pipeline(self, cursor: Cursor) -> AbstractContextManager[object]:
        """Send the block's statements together, where the database can; read no result
        inside it."""
        ...

    async def watch(self, wake: Callable[[], None], *, task_status: Any) -> None:
        """Call ``wake`` when another instance notifies; see JobStore.watch."""
        ...

    def close(self) -> None: ...
