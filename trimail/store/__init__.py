"""Where jobs live between their acceptance and their final outcome.

``TRIMAIL_STORE`` picks one: ``memory`` (the default; this process only),
``sqlite:///ABSOLUTE/PATH.db`` (durable, one host) or a PostgreSQL URL
(durable, any number of instances). Nothing outside this package writes SQL.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from urllib.parse import urlsplit

from .base import (
    AttemptResult,
    ClaimedJob,
    IdempotencyClaim,
    JobState,
    JobStatus,
    JobStore,
    Limits,
    NewJob,
    Replay,
    StoreStats,
    Submission,
)

__all__ = [
    "AttemptResult",
    "ClaimedJob",
    "IdempotencyClaim",
    "JobState",
    "JobStatus",
    "JobStore",
    "Limits",
    "NewJob",
    "Replay",
    "StoreStats",
    "Submission",
    "open_store",
    "redact",
    "store_kind",
]

POSTGRES_SCHEMES = ("postgresql", "postgres")


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***``, for logs and messages."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def store_kind(url: str) -> str:
    """``memory``, ``sqlite`` or ``postgresql`` for a ``TRIMAIL_STORE`` value; else ValueError."""
    if url == "memory":
        return "memory"
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        path = PurePosixPath(parts.path)
        if parts.netloc or not parts.path or not path.is_absolute() or path.name in ("", ".."):
            raise ValueError(
                "a SQLite store is sqlite:///ABSOLUTE/PATH.db (three slashes, then the file's "
                "absolute path)"
            )
        return "sqlite"
    if parts.scheme in POSTGRES_SCHEMES:
        if not (parts.netloc or parts.path.strip("/") or parts.query):
            raise ValueError(
                "a PostgreSQL store names a database: postgresql://user:pass@host:port/db, "
                "or postgresql:///db over the local socket"
            )
        return "postgresql"
    raise ValueError(
        "must be memory, sqlite:///ABSOLUTE/PATH.db or postgresql://user:pass@host:port/db"
    )


async def open_store(url: str, limits: Limits) -> JobStore:
    """Open the store ``url`` names (see :func:`store_kind`); its schema is ready on return.

    Raises :class:`~trimail.errors.ConfigurationError` if a durable store cannot
    be reached or has a schema newer than this code.
    """
    kind = store_kind(url)
    if kind == "memory":
        from .memory import MemoryStore

        return MemoryStore(limits)
    if kind == "sqlite":
        from pathlib import Path

        from .sqlite import open_sqlite

        return await open_sqlite(Path(urlsplit(url).path), limits)
    from .postgres import open_postgres

    return await open_postgres(url, limits)
