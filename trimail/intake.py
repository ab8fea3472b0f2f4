"""Accepting mail: validated requests become stored jobs, each logged ``accepted``.

The request path's one write. With a durable store :meth:`Intake.submit`
returns only once the jobs are committed (group commit), so a ``202`` means
the job survives a crash; the memory store answers at once.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from .errors import ShuttingDown
from .ledger import Ledger
from .models import SendRequest
from .store import IdempotencyClaim, JobStore, NewJob, Submission
from .store.payload import memory_size


def new_job_id() -> str:
    """An opaque, unguessable id: 32 hex digits."""
    return uuid.uuid4().hex


class Intake:
    """Where requests enter the store; ``accepting`` is False before start and while stopping."""

    def __init__(
        self,
        store: JobStore,
        ledger: Ledger,
        *,
        grace: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.grace = grace
        self.clock = clock
        self.accepting = False
        #: Called after jobs were stored: the dispatcher's wake-up, if this process delivers.
        self.on_accept: Callable[[], None] = lambda: None

    def ensure_accepting(self) -> None:
        """Raise ``shutting_down`` unless new jobs are taken now."""
        if not self.accepting:
            raise ShuttingDown(
                "trimail is shutting down and accepts no new mail; send it to another instance "
                "or retry later",
                retry_after=max(1, math.ceil(self.grace)),
            )

    async def submit(
        self,
        requests: Sequence[SendRequest],
        owner: str | None,
        answer: Callable[[list[str]], dict[str, Any]],
        idempotency: tuple[str, bytes] | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Store one job per request, all or none; return the answer and whether it is a replay.

        ``answer(ids)`` builds the ``202`` body from the new job ids; with an
        ``idempotency`` (key, fingerprint) it is recorded with the jobs, and a
        request already recorded under that key gets its first answer back
        (nothing stored). Raises ``queue_full``, ``invalid_idempotent_request``
        or ``store_unavailable`` from the store.
        """
        self.ensure_accepting()
        now = self.clock()
        ids = [new_job_id() for _ in requests]
        body = answer(ids)
        jobs = [
            NewJob(job_id, owner, request, now, memory_size(request))
            for job_id, request in zip(ids, requests, strict=True)
        ]
        claim = IdempotencyClaim(idempotency[0], idempotency[1], body) if idempotency else None
        replay = await self.store.submit(Submission(owner, jobs, claim), now)
        if replay is not None:
            return replay.answer, True
        for job in jobs:
            self.ledger.accepted(job.id, len(job.recipients))
        self.on_accept()
        return body, False
