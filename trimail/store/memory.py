"""The in-memory store: jobs in this process's memory, gone with it.

Not durable: a crash loses every open job (a graceful stop logs each one
``not delivered``). Admission bounds the open jobs by count and by their bytes
(estimated from their texts and attachments), so memory stays within about
``max_bytes`` whatever the provider does. Every method is synchronous inside:
none of them waits for anything.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from ..errors import IdempotencyKeyReused, QueueFull
from ..models import SendRequest
from .base import (
    FINAL_STATES,
    AttemptResult,
    ClaimedJob,
    JobState,
    JobStatus,
    Limits,
    Replay,
    StoreStats,
    Submission,
)
from .expiring import ExpiringStore

#: Seconds a caller is told to wait after ``queue_full``: long enough for a round
#: of sends at typical provider latency (a guess).
QUEUE_FULL_RETRY_AFTER = 1


def queue_full(jobs: int, max_jobs: int, size: int, max_bytes: int) -> QueueFull:
    """The refusal for a submission of ``jobs`` jobs and ``size`` bytes that does not fit."""
    return QueueFull(
        f"the queue holds as many jobs ({max_jobs}) or bytes ({max_bytes}) as it may; "
        f"this request needs {jobs} job(s) and {size} bytes; retry after the delay given",
        retry_after=QUEUE_FULL_RETRY_AFTER,
    )


@dataclass(eq=False)
class _Job:
    id: str
    owner: str | None
    request: SendRequest
    created_at: float
    size: int
    pending: tuple[str, ...]
    state: JobState = JobState.QUEUED
    attempts: int = 0
    updated_at: float = 0.0
    next_attempt_at: float = 0.0
    lease_until: float = 0.0
    delivered: tuple[str, ...] = ()
    refused: dict[str, str] = field(default_factory=dict)
    last_error: str | None = None
    last_error_code: int | None = None

    def status(self) -> JobStatus:
        return JobStatus(
            id=self.id,
            owner=self.owner,
            state=self.state,
            attempts=self.attempts,
            created_at=self.created_at,
            updated_at=self.updated_at,
            last_error_code=self.last_error_code,
            last_error=self.last_error,
            refused=dict(self.refused) or None,
        )


class MemoryStore:
    """The default store; see the module docstring."""

    kind = "memory"
    durable = False

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._open: dict[str, _Job] = {}
        self._due: list[tuple[float, int, str]] = []  # (next_attempt_at, order, id), lazily pruned
        self._sending: set[str] = set()  # claimed jobs, whose leases may expire
        self._order = itertools.count()
        self._states: Counter[JobState] = Counter()
        self._bytes = 0
        self._finished: ExpiringStore[str, JobStatus] = ExpiringStore(
            limits.status_ttl, limits.status_max_jobs
        )
        self._keys: ExpiringStore[tuple[str | None, str], Replay] = ExpiringStore(
            limits.idempotency_ttl, limits.idempotency_max_keys
        )

    async def submit(self, submission: Submission, now: float) -> Replay | None:
        await trio.lowlevel.checkpoint()
        claim = submission.idempotency
        if claim is not None:
            known = self._keys.get((submission.owner, claim.key), now)
            if known is not None:
                return _replay_or_refuse(known, claim.fingerprint)
        size = sum(job.size for job in submission.jobs)
        count = len(submission.jobs)
        if (
            len(self._open) + count > self.limits.max_jobs
            or self._bytes + size > self.limits.max_bytes
        ):
            raise queue_full(count, self.limits.max_jobs, size, self.limits.max_bytes)
        for new in submission.jobs:
            job = _Job(new.id, new.owner, new.request, new.created_at, new.size, new.recipients)
            job.updated_at = job.next_attempt_at = new.created_at
            self._open[job.id] = job
            self._states[JobState.QUEUED] += 1
            self._bytes += job.size
            heapq.heappush(self._due, (job.next_attempt_at, next(self._order), job.id))
        if claim is not None:
            self._keys.put(
                (submission.owner, claim.key), Replay(claim.fingerprint, claim.answer), now
            )
        return None

    async def replay(self, owner: str | None, key: str, now: float) -> Replay | None:
        await trio.lowlevel.checkpoint()
        return self._keys.get((owner, key), now)

    async def claim(self, limit: int, now: float, lease_until: float) -> list[ClaimedJob]:
        await trio.lowlevel.checkpoint()
        claimed: list[ClaimedJob] = []
        for job_id in list(self._sending):  # at most one per worker
            silent = self._open[job_id]
            if silent.lease_until <= now and len(claimed) < limit:
                claimed.append(self._take(silent, now, lease_until))  # its attempt went silent
        while self._due and len(claimed) < limit and self._due[0][0] <= now:
            due_at, _, job_id = heapq.heappop(self._due)
            job = self._open.get(job_id)
            if job is None or job.state is JobState.SENDING or job.next_attempt_at != due_at:
                continue  # finished, or rescheduled since this entry was pushed
            claimed.append(self._take(job, now, lease_until))
        return claimed

    def _take(self, job: _Job, now: float, lease_until: float) -> ClaimedJob:
        job.attempts += 1
        job.updated_at = now
        job.lease_until = lease_until
        if job.state is not JobState.SENDING:
            self._move(job, JobState.SENDING)
        self._sending.add(job.id)
        return ClaimedJob(
            id=job.id,
            owner=job.owner,
            attempt=job.attempts,
            created_at=job.created_at,
            request=job.request,
            pending=job.pending,
            delivered=job.delivered,
            refused=dict(job.refused),
        )

    async def record(self, results: Sequence[AttemptResult]) -> None:
        await trio.lowlevel.checkpoint()
        for result in results:
            job = self._open.get(result.job_id)
            if job is None or job.attempts != result.attempt or job.state is not JobState.SENDING:
                continue  # stale: a newer attempt owns the job
            job.updated_at = result.at
            job.pending, job.delivered = result.pending, result.delivered
            job.refused = dict(result.refused)
            job.last_error, job.last_error_code = result.last_error, result.last_error_code
            if result.state in FINAL_STATES:
                self._states[job.state] -= 1
                self._sending.discard(job.id)
                job.state = result.state
                del self._open[job.id]
                self._bytes -= job.size
                self._finished.put(job.id, job.status(), result.at)
            else:
                assert result.next_attempt_at is not None
                job.next_attempt_at = result.next_attempt_at
                self._move(job, JobState.RETRYING)
                heapq.heappush(self._due, (job.next_attempt_at, next(self._order), job.id))

    async def release(self, jobs: Sequence[ClaimedJob], now: float) -> None:
        await trio.lowlevel.checkpoint()
        for claimed in jobs:
            job = self._open.get(claimed.id)
            if job is None or job.attempts != claimed.attempt or job.state is not JobState.SENDING:
                continue
            job.attempts -= 1
            self._move(job, JobState.RETRYING if job.attempts else JobState.QUEUED)
            heapq.heappush(self._due, (job.next_attempt_at, next(self._order), job.id))

    async def status(self, job_id: str, now: float) -> JobStatus | None:
        await trio.lowlevel.checkpoint()
        job = self._open.get(job_id)
        return job.status() if job is not None else self._finished.get(job_id, now)

    async def unfinished(self, job_ids: Sequence[str]) -> dict[str, int]:
        await trio.lowlevel.checkpoint()
        return {job_id: self._open[job_id].attempts for job_id in job_ids if job_id in self._open}

    async def abandon(self, job_ids: Sequence[str], now: float) -> None:
        await trio.lowlevel.checkpoint()
        for job_id in job_ids:
            job = self._open.get(job_id)
            if job is not None:
                self._states[job.state] -= 1
                self._sending.discard(job.id)
                job.state, job.updated_at = JobState.UNDELIVERED, now
                del self._open[job.id]
                self._bytes -= job.size
                self._finished.put(job.id, job.status(), now)

    async def stats(self) -> StoreStats:
        await trio.lowlevel.checkpoint()
        return self.stats_now()

    def stats_now(self) -> StoreStats:
        """:meth:`stats`, without waiting: this store counts as it goes."""
        return StoreStats(
            queued=self._states[JobState.QUEUED],
            sending=self._states[JobState.SENDING],
            retrying=self._states[JobState.RETRYING],
            bytes=self._bytes,
        )

    async def next_due(self) -> float | None:
        await trio.lowlevel.checkpoint()
        while self._due:
            due_at, _, job_id = self._due[0]
            job = self._open.get(job_id)
            current = job is not None and job.next_attempt_at == due_at
            if current and job is not None and job.state is not JobState.SENDING:
                return due_at
            heapq.heappop(self._due)
        return None

    async def prune(self, now: float) -> int:
        await trio.lowlevel.checkpoint()
        return self._finished.expire(now) + self._keys.expire(now)

    async def watch(self, wake: Callable[[], None], *, task_status: Any) -> None:
        """Nothing else adds work to this store: return at once."""
        task_status.started()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()

    def _move(self, job: _Job, state: JobState) -> None:
        """Change an open job's state, keeping the counts by state."""
        if job.state is JobState.SENDING:
            self._sending.discard(job.id)
        self._states[job.state] -= 1
        self._states[state] += 1
        job.state = state


def _replay_or_refuse(known: Replay, fingerprint: bytes) -> Replay:
    if known.fingerprint != fingerprint:
        raise IdempotencyKeyReused()
    return known
