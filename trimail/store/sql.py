"""The SQL job store, written once for SQLite and PostgreSQL (each a :class:`Driver`).

Tables (all times are Unix seconds, as ``double precision``)::

    trimail_meta         name -> value; holds schema_version
    trimail_jobs         one row per job: state, attempts, due and lease times, the
                         message (payload; NULL once final), recipients, last error
    trimail_idempotency  (owner, key) -> fingerprint, answer, created_at
    trimail_totals       one row: open jobs and their bytes, for admission

Every write that adds or finishes jobs also updates ``trimail_totals``, in the
same transaction; a submission reads it under a lock (``FOR UPDATE`` in
PostgreSQL, ``BEGIN IMMEDIATE`` in SQLite), so admission and idempotency are
decided one transaction at a time across every instance. Submissions and
attempt results are written by group commit (:mod:`trimail.store.group`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import trio

from ..errors import ConfigurationError, IdempotencyKeyReused, QueueFull, StoreUnavailable
from . import payload
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
from .driver import Cursor, Driver
from .group import GroupCommit
from .memory import queue_full
from .schema import CHUNK, OPEN, PRUNE_BATCH, SCHEMA, SCHEMA_VERSION, STATEMENTS

T = TypeVar("T")


class SQLStore:
    """A :class:`~trimail.store.base.JobStore` over a :class:`Driver`."""

    durable = True

    def __init__(self, driver: Driver, limits: Limits) -> None:
        self.driver = driver
        self.kind = driver.kind
        self.limits = limits
        self._q = {name: driver.sql(text) for name, text in STATEMENTS.items()}
        self._submit = GroupCommit(self._guard(self._submit_many), driver.write_limiter)
        self._record = GroupCommit(self._guard(self._record_many), driver.write_limiter)

    # -- setup ------------------------------------------------------------------------

    def create_schema(self, where: str) -> None:
        """Create the tables, or check that their version is one this code knows."""
        with self.driver.write() as cursor:
            self.driver.lock_schema(cursor)  # instances starting together take turns
            cursor.execute(
                "CREATE TABLE IF NOT EXISTS trimail_meta (name TEXT PRIMARY KEY, value TEXT)"
            )
            cursor.execute(self.driver.sql("SELECT value FROM trimail_meta WHERE name = :name"),
                           {"name": "schema_version"})  # fmt: skip
            row = cursor.fetchone()
            if row is not None and int(row[0]) > SCHEMA_VERSION:
                raise ConfigurationError(
                    f"the store at {where} has schema version {row[0]}, newer than this "
                    f"trimail knows ({SCHEMA_VERSION}): run a newer trimail against it"
                )
            for statement in self.driver.sql(SCHEMA).split(";"):
                if statement.strip():
                    cursor.execute(statement)
            if row is None:
                cursor.execute(
                    self.driver.sql("INSERT INTO trimail_meta (name, value) VALUES (:n, :v)"),
                    {"n": "schema_version", "v": str(SCHEMA_VERSION)},
                )

    # -- the store interface: each call runs its sync half in a thread ------------------

    async def submit(self, submission: Submission, now: float) -> Replay | None:
        return await self._submit((submission, now))

    async def record(self, results: Sequence[AttemptResult]) -> None:
        if results:
            await self._record(results)

    async def replay(self, owner: str | None, key: str, now: float) -> Replay | None:
        return await self._read(self._replay_sync, owner or "", key, now)

    async def claim(self, limit: int, now: float, lease_until: float) -> list[ClaimedJob]:
        return await self._write(self._claim_sync, limit, now, lease_until)

    async def release(self, jobs: Sequence[ClaimedJob], now: float) -> None:
        if jobs:
            await self._write(self._release_sync, jobs, now)

    async def status(self, job_id: str, now: float) -> JobStatus | None:
        return await self._read(self._status_sync, job_id, now)

    async def unfinished(self, job_ids: Sequence[str]) -> dict[str, int]:
        return await self._read(self._unfinished_sync, list(job_ids))

    async def abandon(self, job_ids: Sequence[str], now: float) -> None:
        """Durable: the jobs stay queued for the next start."""

    async def stats(self) -> StoreStats:
        return await self._read(self._stats_sync)

    async def next_due(self) -> float | None:
        return await self._read(self._next_due_sync)

    async def prune(self, now: float) -> int:
        return await self._write(self._prune_sync, now)

    async def watch(self, wake: Callable[[], None], *, task_status: Any) -> None:
        await self.driver.watch(wake, task_status=task_status)

    async def aclose(self) -> None:
        await trio.to_thread.run_sync(self.driver.close)

    async def _read(self, function: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(
            self._guard(function), *args, limiter=self.driver.read_limiter
        )

    async def _write(self, function: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(
            self._guard(function), *args, limiter=self.driver.write_limiter
        )

    def _guard(self, function: Callable[..., T]) -> Callable[..., T]:
        """``function``, raising :class:`StoreUnavailable` for the driver's connection errors."""

        def guarded(*args: Any) -> T:
            try:
                return function(*args)
            except self.driver.unavailable as exc:
                detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise StoreUnavailable(
                    "the job store is unavailable; nothing was stored; retry after the delay given",
                    detail=f"{type(exc).__name__}: {detail}",
                ) from exc

        return guarded

    # -- the synchronous halves, in threads ------------------------------------------------

    def _submit_many(
        self, batch: Sequence[tuple[Submission, float]]
    ) -> list[Replay | BaseException | None]:
        """Decide every submission under the totals lock, then write all the accepted ones.

        The reads come first (the totals, then every idempotency key of the batch
        in one query) and the writes after, pipelined where the driver can.
        """
        outcomes: list[Replay | BaseException | None] = []
        accepted: list[tuple[Submission, float]] = []
        expired: list[dict[str, str]] = []
        limits = self.limits
        with self.driver.write() as cursor:
            cursor.execute(self.driver.lock_totals())
            jobs, size = cursor.fetchone() or (0, 0)
            known = self._known_keys(cursor, [s for s, _ in batch if s.idempotency])
            for submission, now in batch:
                try:
                    replay = self._replay_for(submission, now, known, expired)
                    if replay is None:
                        count = len(submission.jobs)
                        need = sum(job.size for job in submission.jobs)
                        if jobs + count > limits.max_jobs or size + need > limits.max_bytes:
                            raise queue_full(count, limits.max_jobs, need, limits.max_bytes)
                        jobs, size = jobs + count, size + need
                        accepted.append((submission, now))
                        claim = submission.idempotency
                        if claim is not None:  # a later one in this batch replays it
                            key = (submission.owner or "", claim.key)
                            known[key] = (claim.fingerprint, json.dumps(claim.answer), now)
                    outcomes.append(replay)
                except (QueueFull, IdempotencyKeyReused) as exc:  # this submission's alone
                    outcomes.append(exc)
            with self.driver.pipeline(cursor):
                if expired:
                    cursor.executemany(self._q["drop_key"], expired)
                if accepted:
                    self._insert(cursor, accepted)
                    cursor.execute(self._q["set_totals"], {"jobs": jobs, "bytes": size})
                    self.driver.notify(cursor)
        return outcomes

    def _known_keys(
        self, cursor: Cursor, submissions: Sequence[Submission]
    ) -> dict[tuple[str, str], tuple[bytes, str, float]]:
        """The recorded idempotency keys among ``submissions``', in one query."""
        if not submissions:
            return {}
        pairs = ", ".join(f"(:o{n}, :k{n})" for n in range(len(submissions)))
        params: dict[str, str] = {}
        for n, submission in enumerate(submissions):
            assert submission.idempotency is not None
            params[f"o{n}"], params[f"k{n}"] = submission.owner or "", submission.idempotency.key
        cursor.execute(
            self.driver.sql(
                "SELECT owner, key, fingerprint, answer, created_at FROM trimail_idempotency "  # noqa: S608
                f"WHERE (owner, key) IN ({pairs})"
            ),
            params,
        )
        return {(o, k): (bytes(f), a, c) for o, k, f, a, c in cursor.fetchall()}

    def _replay_for(
        self,
        submission: Submission,
        now: float,
        known: dict[tuple[str, str], tuple[bytes, str, float]],
        expired: list[dict[str, str]],
    ) -> Replay | None:
        """The earlier answer to this submission's key, None if it is new; a reuse raises."""
        claim = submission.idempotency
        if claim is None:
            return None
        key = (submission.owner or "", claim.key)
        if key not in known:
            return None
        fingerprint, answer, created_at = known[key]
        if created_at <= now - self.limits.idempotency_ttl:
            del known[key]  # expired: the key is free again
            expired.append({"owner": key[0], "key": key[1]})
            return None
        if fingerprint != claim.fingerprint:
            raise IdempotencyKeyReused()
        return Replay(claim.fingerprint, json.loads(answer))

    def _insert(self, cursor: Cursor, accepted: Sequence[tuple[Submission, float]]) -> None:
        cursor.executemany(
            self._q["insert_job"],
            [
                {
                    "id": job.id,
                    "owner": job.owner or "",
                    "created_at": job.created_at,
                    "size": job.size,
                    "payload": payload.encode(job.request),
                    "pending": json.dumps(job.recipients),
                }
                for submission, _ in accepted
                for job in submission.jobs
            ],
        )
        keys = [
            {"owner": submission.owner or "", "key": submission.idempotency.key, "now": now,
             "fingerprint": submission.idempotency.fingerprint,
             "answer": json.dumps(submission.idempotency.answer)}
            for submission, now in accepted
            if submission.idempotency is not None
        ]  # fmt: skip
        if keys:
            cursor.executemany(self._q["insert_key"], keys)

    def _record_many(self, batch: Sequence[Sequence[AttemptResult]]) -> list[None]:
        finished = freed = 0
        with self.driver.write() as cursor:
            for result in (r for results in batch for r in results):
                common = {
                    "id": result.job_id,
                    "attempt": result.attempt,
                    "at": result.at,
                    "delivered": json.dumps(result.delivered),
                    "refused": json.dumps(result.refused),
                    "last_error": result.last_error,
                    "last_error_code": result.last_error_code,
                }
                if result.state in FINAL_STATES:
                    cursor.execute(self._q["finish"], {**common, "state": result.state.value})
                    row = cursor.fetchone()
                    if row is not None:
                        finished, freed = finished + 1, freed + int(row[0])
                else:
                    cursor.execute(
                        self._q["retry"],
                        {**common, "next_attempt_at": result.next_attempt_at,
                         "pending": json.dumps(result.pending)},
                    )  # fmt: skip
            if finished:
                cursor.execute(self._q["free_totals"], {"jobs": finished, "bytes": freed})
        return [None] * len(batch)

    def _claim_sync(self, limit: int, now: float, lease_until: float) -> list[ClaimedJob]:
        with self.driver.write() as cursor:
            cursor.execute(
                self._q["claim"], {"limit": limit, "now": now, "lease_until": lease_until}
            )
            rows = cursor.fetchall()
        rows.sort(key=lambda row: row[3])  # RETURNING has no order: oldest first
        return [
            ClaimedJob(
                id=job_id,
                owner=owner or None,
                attempt=attempt,
                created_at=created_at,
                request=payload.decode(bytes(data)),
                pending=tuple(json.loads(pending)),
                delivered=tuple(json.loads(delivered)),
                refused=json.loads(refused),
            )
            for job_id, owner, attempt, created_at, data, pending, delivered, refused in rows
        ]

    def _release_sync(self, jobs: Sequence[ClaimedJob], now: float) -> None:
        with self.driver.write() as cursor:
            cursor.executemany(
                self._q["release"], [{"id": j.id, "attempt": j.attempt, "now": now} for j in jobs]
            )
            self.driver.notify(cursor)

    def _replay_sync(self, owner: str, key: str, now: float) -> Replay | None:
        with self.driver.read() as cursor:
            cursor.execute(self._q["get_key"], {"owner": owner, "key": key})
            row = cursor.fetchone()
        if row is None or row[2] <= now - self.limits.idempotency_ttl:
            return None
        return Replay(bytes(row[0]), json.loads(row[1]))

    def _status_sync(self, job_id: str, now: float) -> JobStatus | None:
        with self.driver.read() as cursor:
            cursor.execute(self._q["status"], {"id": job_id})
            row = cursor.fetchone()
        if row is None:
            return None
        job_id, owner, state, attempts, created, updated, code, error, refused, finished = row
        if finished is not None and finished <= now - self.limits.status_ttl:
            return None
        return JobStatus(job_id, owner or None, JobState(state), attempts, created, updated,
                         code, error, json.loads(refused) or None)  # fmt: skip

    def _unfinished_sync(self, job_ids: list[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        with self.driver.read() as cursor:
            for start in range(0, len(job_ids), CHUNK):
                chunk = job_ids[start : start + CHUNK]
                marks = ", ".join(f":i{n}" for n in range(len(chunk)))
                # Only the placeholders are built here; the ids are parameters.
                query = f"SELECT id, attempts FROM trimail_jobs WHERE id IN ({marks}) AND state IN "  # noqa: S608
                query += OPEN
                cursor.execute(
                    self.driver.sql(query), {f"i{n}": job_id for n, job_id in enumerate(chunk)}
                )
                found.update((job_id, int(attempts)) for job_id, attempts in cursor.fetchall())
        return found

    def _stats_sync(self) -> StoreStats:
        with self.driver.read() as cursor:
            cursor.execute(self._q["count_open"])
            counts = {state: int(count) for state, count in cursor.fetchall()}
            cursor.execute("SELECT bytes FROM trimail_totals WHERE id = 1")
            row = cursor.fetchone()
        return StoreStats(counts.get("queued", 0), counts.get("sending", 0),
                          counts.get("retrying", 0), int(row[0]) if row else 0)  # fmt: skip

    def _next_due_sync(self) -> float | None:
        with self.driver.read() as cursor:
            cursor.execute(self._q["next_due"])
            row = cursor.fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def _prune_sync(self, now: float) -> int:
        limits, removed = self.limits, 0
        with self.driver.write() as cursor:
            for name, params in (
                ("prune_jobs", {"cutoff": now - limits.status_ttl}),
                ("prune_keys", {"cutoff": now - limits.idempotency_ttl}),
                ("trim_jobs", {"keep": limits.status_max_jobs}),
                ("trim_keys", {"keep": limits.idempotency_max_keys}),
            ):
                cursor.execute(self._q[name], {**params, "batch": PRUNE_BATCH})
                removed += len(cursor.fetchall())  # RETURNING: each statement's own rows
        return removed
