"""One set of tests for every store: memory, SQLite and a real PostgreSQL.

Each test pins a rule of the JobStore contract (trimail.store.base): what is
stored and when, claims and leases, fencing of stale results, idempotency,
admission, retention. Times are passed in, so nothing here waits.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from trimail.errors import ConfigurationError, IdempotencyKeyReused, QueueFull
from trimail.models import SendRequest
from trimail.store import (
    AttemptResult,
    IdempotencyClaim,
    JobState,
    JobStore,
    Limits,
    NewJob,
    Replay,
    Submission,
    open_store,
)

T0 = 1_800_000_000.0
LIMITS = Limits(
    max_jobs=5,
    max_bytes=10_000,
    status_ttl=3600,
    status_max_jobs=1000,
    idempotency_ttl=600,
    idempotency_max_keys=1000,
)
KINDS = ["memory", "sqlite", "postgresql"]
DURABLE = ["sqlite", "postgresql"]

Opener = Callable[..., Awaitable[JobStore]]


async def _opener(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Opener]:
    if kind == "memory":
        url = "memory"
    elif kind == "sqlite":
        url = f"sqlite://{tmp_path / 'spool.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    opened: list[JobStore] = []
    shared: dict[str, JobStore] = {}

    async def opener(limits: Limits = LIMITS, fresh: bool = False) -> JobStore:
        if kind == "memory" and shared and not fresh:
            return shared["memory"]  # one process's memory: the same store again
        store = await open_store(url, limits)
        opened.append(store)
        shared.setdefault(kind, store)
        return store

    yield opener
    for store in opened:
        await store.aclose()


@pytest.fixture(params=KINDS)
async def open_one(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    """Opens stores of one kind, all on the same data; closes them all at the end."""
    async for opener in _opener(request.param, request, tmp_path):
        yield opener


@pytest.fixture(params=DURABLE)
async def open_durable(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    """The same, for the stores that outlive their process."""
    async for opener in _opener(request.param, request, tmp_path):
        yield opener


@pytest.fixture
async def store(open_one: Opener) -> JobStore:
    return await open_one()


def message(**changes: Any) -> SendRequest:
    body: dict[str, Any] = {"from": "Sender <s@example.com>", "to": ["a@example.com"],
                            "subject": "Hi", "text": "Body"}  # fmt: skip
    body.update(changes)
    return SendRequest.model_validate(body)


def new_job(size: int = 100, created_at: float = T0, **changes: Any) -> NewJob:
    return NewJob(uuid.uuid4().hex, "owner-1", message(**changes), created_at, size)


def submission(*jobs: NewJob, key: str | None = None, fingerprint: bytes = b"f") -> Submission:
    claim = None
    if key is not None:
        claim = IdempotencyClaim(key, fingerprint, {"data": [{"id": job.id} for job in jobs]})
    return Submission("owner-1", list(jobs), claim)


def result(job_id: str, attempt: int, state: JobState, at: float = T0 + 1, **kw: Any) -> Any:
    return AttemptResult(job_id=job_id, attempt=attempt, state=state, at=at, **kw)


async def test_a_submitted_job_is_claimed_with_its_message(store: JobStore) -> None:
    """The claim returns attempt 1, the recipients to deliver and the same request."""
    job = new_job(cc="Copy <c@example.com>", attachments=[{"filename": "a.txt", "content": "aGk="}])
    assert await store.submit(submission(job), T0) is None
    [claimed] = await store.claim(10, T0, T0 + 60)
    assert (claimed.id, claimed.attempt, claimed.owner) == (job.id, 1, "owner-1")
    assert claimed.pending == ("a@example.com", "c@example.com")
    assert claimed.request == job.request
    assert (await store.status(job.id, T0)).state is JobState.SENDING  # type: ignore[union-attr]
    assert await store.claim(10, T0, T0 + 60) == []  # held by its lease


async def test_claims_take_due_jobs_oldest_first_up_to_the_limit(store: JobStore) -> None:
    """A limit of 2 takes the two oldest; a job due later waits, and next_due says when."""
    jobs = [new_job(created_at=T0 + n) for n in range(3)]
    for job in jobs:
        await store.submit(submission(job), T0)
    assert await store.next_due() == T0
    claimed = await store.claim(2, T0 + 1, T0 + 60)
    assert [c.id for c in claimed] == [jobs[0].id, jobs[1].id]
    assert await store.claim(5, T0 + 1, T0 + 60) == []  # the third is due at T0 + 2
    assert await store.next_due() == T0 + 2


async def test_a_final_result_frees_the_job_and_keeps_its_status(store: JobStore) -> None:
    """Sent: no longer open or counted; its status says sent, with the refused recipient."""
    job = new_job(to=["a@example.com", "b@example.com"])
    await store.submit(submission(job), T0)
    await store.claim(1, T0, T0 + 60)
    refused = {"b@example.com": "550 5.1.1 no such user"}
    await store.record([result(job.id, 1, JobState.SENT, delivered=("a@example.com",),
                               refused=refused)])  # fmt: skip
    status = await store.status(job.id, T0 + 2)
    assert status is not None
    assert (status.state, status.attempts, status.refused) == (JobState.SENT, 1, refused)
    assert await store.unfinished([job.id]) == {}
    stats = await store.stats()
    assert (stats.outstanding, stats.bytes) == (0, 0)


async def test_a_retry_is_a_time_not_a_task(store: JobStore) -> None:
    """Retrying: not claimable before its time; then attempt 2 with what is still pending."""
    job = new_job(to=["a@example.com", "b@example.com"])
    await store.submit(submission(job), T0)
    await store.claim(1, T0, T0 + 60)
    await store.record([result(job.id, 1, JobState.RETRYING, next_attempt_at=T0 + 30,
                               pending=("b@example.com",), delivered=("a@example.com",),
                               last_error="451 try later", last_error_code=451)])  # fmt: skip
    status = await store.status(job.id, T0 + 2)
    assert status is not None
    assert (status.state, status.last_error_code) == (JobState.RETRYING, 451)
    assert await store.claim(1, T0 + 29, T0 + 89) == []
    assert await store.next_due() == T0 + 30
    [again] = await store.claim(1, T0 + 30, T0 + 90)
    assert (again.attempt, again.pending, again.delivered) == (2, ("b@example.com",),
                                                              ("a@example.com",))  # fmt: skip


async def test_an_expired_lease_is_claimed_again_and_the_old_result_ignored(
    store: JobStore,
) -> None:
    """A claim whose process went silent is taken after its lease; its late result is stale."""
    job = new_job()
    await store.submit(submission(job), T0)
    await store.claim(1, T0, T0 + 10)
    assert await store.claim(1, T0 + 9, T0 + 19) == []
    [again] = await store.claim(1, T0 + 10, T0 + 20)
    assert again.attempt == 2
    await store.record([result(job.id, 1, JobState.FAILED, last_error="late")])  # stale
    status = await store.status(job.id, T0 + 11)
    assert status is not None
    assert status.state is JobState.SENDING
    await store.record([result(job.id, 2, JobState.SENT)])
    status = await store.status(job.id, T0 + 12)
    assert status is not None
    assert status.state is JobState.SENT


async def test_a_released_claim_is_due_again_with_its_attempt_undone(store: JobStore) -> None:
    """A job claimed but never started goes back as it was: queued, attempt count kept."""
    job = new_job()
    await store.submit(submission(job), T0)
    [claimed] = await store.claim(1, T0, T0 + 60)
    await store.release([claimed], T0 + 1)
    status = await store.status(job.id, T0 + 1)
    assert status is not None
    assert (status.state, status.attempts) == (JobState.QUEUED, 0)
    [again] = await store.claim(1, T0 + 1, T0 + 61)
    assert again.attempt == 1


async def test_an_idempotency_key_replays_and_refuses(store: JobStore) -> None:
    """Same key and fingerprint: the first answer, nothing stored; another fingerprint: 409."""
    first = new_job()
    assert await store.submit(submission(first, key="k1"), T0) is None
    second = new_job()
    replay = await store.submit(submission(second, key="k1"), T0 + 1)
    assert replay == Replay(b"f", {"data": [{"id": first.id}]})
    assert await store.replay("owner-1", "k1", T0 + 2) == replay
    assert await store.status(second.id, T0 + 2) is None
    with pytest.raises(IdempotencyKeyReused):
        await store.submit(submission(new_job(), key="k1", fingerprint=b"other"), T0 + 3)
    assert await store.replay("owner-2", "k1", T0 + 3) is None  # keys belong to their owner
    assert (await store.stats()).outstanding == 1


async def test_an_idempotency_key_is_free_after_its_ttl(store: JobStore) -> None:
    """After TRIMAIL_IDEMPOTENCY_TTL the key is forgotten and can carry a new request."""
    await store.submit(submission(new_job(), key="k1"), T0)
    later = T0 + LIMITS.idempotency_ttl + 1
    assert await store.replay("owner-1", "k1", later) is None
    assert await store.submit(submission(new_job(), key="k1", fingerprint=b"g"), later) is None


async def test_concurrent_submissions_with_one_key_store_one_job(open_one: Opener) -> None:
    """40 submissions with the same key, from two store instances at once: one job stored."""
    stores = [await open_one(), await open_one()]
    outcomes: list[Replay | None] = []

    async def submit(n: int) -> None:
        job = new_job()
        outcomes.append(await stores[n % 2].submit(submission(job, key="same"), T0))

    async with trio.open_nursery() as nursery:
        for n in range(40):
            nursery.start_soon(submit, n)
    assert outcomes.count(None) == 1
    replays = [outcome for outcome in outcomes if outcome is not None]
    assert len({str(replay.answer) for replay in replays}) == 1
    assert (await stores[0].stats()).outstanding == 1


async def test_admission_counts_open_jobs_and_their_bytes(store: JobStore) -> None:
    """Beyond max_jobs or max_bytes a submission is refused whole; a final job frees room."""
    jobs = [new_job(size=1000) for _ in range(5)]
    for job in jobs:
        await store.submit(submission(job), T0)
    with pytest.raises(QueueFull):
        await store.submit(submission(new_job(size=1)), T0)
    [claimed] = await store.claim(1, T0, T0 + 60)
    await store.record([result(claimed.id, 1, JobState.SENT)])
    with pytest.raises(QueueFull):  # room for one job, but not for 6,001 more bytes
        await store.submit(submission(new_job(size=6001)), T0 + 2)
    with pytest.raises(QueueFull):  # a batch is all or nothing
        await store.submit(submission(new_job(size=1), new_job(size=1)), T0 + 2)
    assert await store.submit(submission(new_job(size=1000)), T0 + 2) is None
    stats = await store.stats()
    assert (stats.outstanding, stats.bytes) == (5, 5000)


async def test_statuses_expire_after_their_ttl(store: JobStore) -> None:
    """A final job's status is readable for status_ttl, then gone; pruning removes it."""
    job = new_job()
    await store.submit(submission(job), T0)
    await store.claim(1, T0, T0 + 60)
    await store.record([result(job.id, 1, JobState.FAILED, at=T0 + 1, last_error="550 no")])
    assert await store.status(job.id, T0 + LIMITS.status_ttl) is not None
    gone = T0 + 1 + LIMITS.status_ttl + 1
    assert await store.prune(gone) >= 1
    assert await store.status(job.id, gone) is None
    assert await store.status(job.id, T0 + 2) is None  # deleted, not only hidden


async def test_stats_count_open_jobs_by_state(store: JobStore) -> None:
    """Queued, sending and retrying are counted apart; final jobs are not counted."""
    jobs = [new_job(created_at=T0 + n) for n in range(4)]
    for job in jobs:
        await store.submit(submission(job), T0)
    claimed = await store.claim(3, T0 + 5, T0 + 60)
    await store.record([result(claimed[0].id, 1, JobState.RETRYING, next_attempt_at=T0 + 99),
                        result(claimed[1].id, 1, JobState.SENT)])  # fmt: skip
    stats = await store.stats()
    assert (stats.queued, stats.sending, stats.retrying) == (1, 1, 1)


async def test_two_instances_never_claim_the_same_job(open_one: Opener) -> None:
    """Concurrent claims from two store instances split the jobs, each taken once."""
    first, second = await open_one(), await open_one()
    for _ in range(5):
        await first.submit(submission(new_job()), T0)
    claimed: list[str] = []

    async def take(store: JobStore) -> None:
        for _ in range(5):
            claimed.extend(job.id for job in await store.claim(1, T0, T0 + 60))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take, first)
        nursery.start_soon(take, second)
    assert len(claimed) == len(set(claimed)) == 5


async def test_durable_stores_keep_jobs_across_a_restart(open_durable: Opener) -> None:
    """Closed and opened again: the job is there, with its attempts and next-attempt time."""
    store = await open_durable()
    job = new_job()
    await store.submit(submission(job), T0)
    await store.claim(1, T0, T0 + 60)
    await store.record([result(job.id, 1, JobState.RETRYING, next_attempt_at=T0 + 300,
                               pending=("a@example.com",))])  # fmt: skip
    await store.aclose()
    reopened = await open_durable(fresh=True)
    assert await reopened.claim(1, T0 + 299, T0 + 400) == []
    [claimed] = await reopened.claim(1, T0 + 300, T0 + 400)
    assert (claimed.id, claimed.attempt, claimed.request) == (job.id, 2, job.request)


async def test_a_newer_schema_is_refused(open_durable: Opener) -> None:
    """A store written by a newer trimail (higher schema version) is not touched."""
    store = await open_durable()
    driver = store.driver  # type: ignore[attr-defined]

    def bump() -> None:
        with driver.write() as cursor:
            cursor.execute("UPDATE trimail_meta SET value = '999' WHERE name = 'schema_version'")

    await trio.to_thread.run_sync(bump)
    with pytest.raises(ConfigurationError, match="schema version 999"):
        await open_durable(fresh=True)
