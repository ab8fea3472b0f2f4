"""The one background housekeeping task of an instance.

Every :data:`STATS_INTERVAL` seconds it counts the store's open jobs (what
``/healthz``, ``/readyz`` and ``/metrics`` report, so that no request waits for
the store to count), and notes whether the store answers at all. Every
:data:`PRUNE_INTERVAL` seconds it deletes expired statuses and idempotency keys,
and forgets the jobs this process answered for that another instance closed.
Several instances on one store may all prune: the deletes are idempotent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import trio

from .errors import StoreUnavailable
from .ledger import Ledger
from .store import JobStore, StoreStats

log = logging.getLogger(__name__)

#: Seconds between counts of the store (a guess: fresh enough for a health check,
#: and a count of a large PostgreSQL queue costs tens of milliseconds).
STATS_INTERVAL = 2.0
#: Seconds between prunes (a guess: statuses live for hours, a minute late is nothing).
PRUNE_INTERVAL = 60.0


class Maintenance:
    """Runs the housekeeping; ``stats`` and ``error`` are its latest view of the store."""

    def __init__(
        self, store: JobStore, ledger: Ledger, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.clock = clock
        self.stats = StoreStats(0, 0, 0, 0)
        #: Why the store did not answer the last count, or None while it answers.
        self.error: str | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Count once, report started, then keep house until cancelled."""
        await self.refresh()
        task_status.started()
        last_prune = trio.current_time()
        while True:
            await trio.sleep(STATS_INTERVAL)
            try:
                await self.refresh()
                if trio.current_time() - last_prune >= PRUNE_INTERVAL:
                    last_prune = trio.current_time()
                    await self.prune()
            except Exception:  # housekeeping must not take the instance down; try again later
                log.exception("housekeeping failed")

    async def current(self) -> StoreStats:
        """The latest counts: counted now if that costs no I/O (memory), else the last count."""
        if not self.store.durable:
            await self.refresh()
        return self.stats

    async def refresh(self) -> None:
        try:
            self.stats = await self.store.stats()
        except StoreUnavailable as exc:
            if self.error is None:
                log.warning("the store does not answer (%s)", exc.detail)
            self.error = exc.detail or "unavailable"
        else:
            if self.error is not None:
                log.info("the store answers again")
            self.error = None

    async def prune(self) -> None:
        try:
            removed = await self.store.prune(self.clock())
            if self.store.durable and self.ledger.open:
                asked = sorted(self.ledger.open)
                still = await self.store.unfinished(asked)
                self.ledger.forget(set(asked) - still.keys())
        except StoreUnavailable:
            return  # the count says so; try again next time
        if removed:
            log.debug("pruned %d expired status(es) and key(s)", removed)
