"""The job store's interface, and the records that cross it.

A job is a record in a store, not a task in a process. Its ``state``::

    queued ──claim──> sending ──> sent | failed            (final)
      ^                  │
      └── retrying <─────┘  (a transient failure: due again at next_attempt_at)

    sending, lease expired ──claim──> sending      (its process died: any instance retries)
    any open state ──> undelivered                 (memory store only, at shutdown)

A claim takes due jobs for a lease; the attempt number it gives is the claim's
fencing token: a result is recorded only if the job still carries that
number, so a process whose lease expired cannot overwrite a newer attempt.

Every method may be called from the event loop. What a store does in threads
(the SQL ones) runs under its own limiter, never the delivery threads'.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Protocol

from ..models import SendRequest


class JobState(str, Enum):
    QUEUED = "queued"
    SENDING = "sending"
    RETRYING = "retrying"
    SENT = "sent"
    FAILED = "failed"
    UNDELIVERED = "undelivered"


FINAL_STATES = frozenset({JobState.SENT, JobState.FAILED, JobState.UNDELIVERED})


@dataclass(frozen=True, slots=True)
class NewJob:
    """A validated request about to be stored; ``size`` is what it counts toward the bytes."""

    id: str
    owner: str | None
    request: SendRequest
    created_at: float
    size: int

    @property
    def recipients(self) -> tuple[str, ...]:
        return tuple(m.smtp_address for m in self.request.envelope_recipients)


@dataclass(frozen=True, slots=True)
class IdempotencyClaim:
    """An ``Idempotency-Key`` to record with a submission, with the answer to replay."""

    key: str
    fingerprint: bytes
    answer: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Submission:
    """Jobs to store all together or not at all, optionally under an idempotency key."""

    owner: str | None
    jobs: Sequence[NewJob]
    idempotency: IdempotencyClaim | None = None


@dataclass(frozen=True, slots=True)
class Replay:
    """The answer already given to an idempotency key: its request's fingerprint and body."""

    fingerprint: bytes
    answer: dict[str, Any]


@dataclass(slots=True)
class ClaimedJob:
    """A job taken for one attempt: what the attempt needs, and where the job stood."""

    id: str
    owner: str | None
    attempt: int  # this attempt's number, 1 for the first; the claim's fencing token
    created_at: float
    request: SendRequest
    pending: tuple[str, ...]  # recipients still to deliver
    delivered: tuple[str, ...] = ()  # recipients that got it in an earlier attempt
    refused: dict[str, str] = field(default_factory=dict)  # refused for good, with the reply


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """Where one attempt leaves its job: final (sent, failed) or retrying at a time.

    ``state`` UNDELIVERED is only for the memory store at shutdown.
    """

    job_id: str
    attempt: int
    state: JobState
    at: float
    pending: tuple[str, ...] = ()
    delivered: tuple[str, ...] = ()
    refused: dict[str, str] = field(default_factory=dict)
    next_attempt_at: float | None = None
    last_error: str | None = None
    last_error_code: int | None = None


def _timestamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True, slots=True)
class JobStatus:
    """What ``GET /email/{id}`` knows about a job; kept after it is final, for the status TTL."""

    id: str
    owner: str | None
    state: JobState
    attempts: int
    created_at: float
    updated_at: float
    last_error_code: int | None = None
    last_error: str | None = None
    refused: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON body of ``GET /email/{id}``."""
        body: dict[str, Any] = {
            "id": self.id,
            "status": self.state.value,
            "attempts": self.attempts,
            "created_at": _timestamp(self.created_at),
            "updated_at": _timestamp(self.updated_at),
        }
        if self.last_error is not None and self.state is not JobState.SENT:
            body["last_error"] = {"code": self.last_error_code, "message": self.last_error}
        if self.refused:
            body["failed_recipients"] = self.refused
        return body


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Open jobs as the store sees them, across every instance that shares it."""

    queued: int
    sending: int
    retrying: int
    bytes: int

    @property
    def outstanding(self) -> int:
        return self.queued + self.sending + self.retrying


@dataclass(frozen=True, slots=True)
class Limits:
    """Admission and retention: how much a store holds, and for how long."""

    max_jobs: int  # open jobs (queued + sending + retrying); beyond: queue_full
    max_bytes: int  # their stored bytes; beyond: queue_full
    status_ttl: float  # seconds a final job's status is kept
    status_max_jobs: int
    idempotency_ttl: float
    idempotency_max_keys: int


class JobStore(Protocol):
    """Where jobs live; see the module docstring for states, claims and fencing."""

    #: ``memory``, ``sqlite`` or ``postgresql``.
    kind: str
    #: Whether a committed job survives the process (and a ``202`` means committed).
    durable: bool

    async def submit(self, submission: Submission, now: float) -> Replay | None:
        """Store every job of ``submission`` and its idempotency key, or nothing.

        Returns None when stored, or the earlier answer when the key was already
        recorded with the same fingerprint (nothing stored). Raises
        :class:`~trimail.errors.QueueFull` if admission refuses, and
        :class:`~trimail.errors.IdempotencyKeyReused` for another fingerprint.
        Cancellation: the caller stops waiting; the submission may still commit.
        """
        ...

    async def replay(self, owner: str | None, key: str, now: float) -> Replay | None:
        """The answer recorded for ``key`` (and still remembered), if any."""
        ...

    async def claim(self, limit: int, now: float, lease_until: float) -> list[ClaimedJob]:
        """Take up to ``limit`` due jobs (oldest due first) until ``lease_until``."""
        ...

    async def record(self, results: Sequence[AttemptResult]) -> None:
        """Write where attempts left their jobs; a result whose attempt is stale is ignored."""
        ...

    async def release(self, jobs: Sequence[ClaimedJob], now: float) -> None:
        """Give back claimed jobs whose attempt never started: due again, attempt undone."""
        ...

    async def status(self, job_id: str, now: float) -> JobStatus | None:
        """The job's status, or None if it is unknown or its status expired."""
        ...

    async def unfinished(self, job_ids: Sequence[str]) -> dict[str, int]:
        """Which of ``job_ids`` are not final, with their attempts (unknown ids are left out)."""
        ...

    async def abandon(self, job_ids: Sequence[str], now: float) -> None:
        """Mark open jobs ``undelivered``: the memory store's jobs when its process stops.

        Durable stores keep them for the next start: for them this does nothing.
        """
        ...

    async def stats(self) -> StoreStats:
        """Counts of open jobs, by state, and their bytes."""
        ...

    async def next_due(self) -> float | None:
        """When the earliest queued or retrying job is due, if any."""
        ...

    async def prune(self, now: float) -> int:
        """Delete expired statuses and idempotency keys; return how many rows went."""
        ...

    async def watch(self, wake: Callable[[], None], *, task_status: Any) -> None:
        """Call ``wake`` whenever another process adds work; run until cancelled.

        Stores without notifications return after ``task_status.started()``:
        the dispatcher polls them.
        """
        ...

    async def aclose(self) -> None:
        """Close connections; the store is unusable afterwards."""
        ...
