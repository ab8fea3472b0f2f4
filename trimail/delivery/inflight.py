"""The attempts in flight: which job each transport is sending, and when it must end.

:meth:`InFlight.watch` is the dispatcher's *watchdog* task: it sleeps until the
oldest attempt's deadline and cuts (``Transport.abort``) every attempt past its
own, so that an attempt never outlives the lease of its claim. All attempts
get the same time, so the oldest, the first in insertion order, ends first.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import trio

from ..store import ClaimedJob
from .transport import Transport


class InFlight:
    """Attempts by transport; ``deadline`` seconds each (``math.inf``: no limit)."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self._attempts: dict[Transport, tuple[ClaimedJob, float]] = {}  # insertion ordered
        self._expired: set[str] = set()
        self._added = trio.Event()

    def __len__(self) -> int:
        return len(self._attempts)

    def __iter__(self) -> Iterator[Transport]:
        return iter(list(self._attempts))

    def start(self, transport: Transport, job: ClaimedJob) -> None:
        if not self._attempts:
            self._added.set()  # the watchdog had nothing to watch
        self._attempts[transport] = (job, trio.current_time() + self.deadline)

    def end(self, transport: Transport) -> bool:
        """Forget the attempt; True if the watchdog had cut it at its deadline."""
        job, _ = self._attempts.pop(transport)
        if job.id in self._expired:
            self._expired.discard(job.id)
            return True
        return False

    def cut_all(self) -> None:
        """Cut every attempt at once (shutdown): each blocked thread returns with an error."""
        for transport in list(self._attempts):
            transport.abort()

    async def watch(self) -> None:
        """Cut each attempt at its deadline; run until cancelled."""
        while True:
            pending = (deadline for job, deadline in self._attempts.values()
                       if job.id not in self._expired and deadline < math.inf)  # fmt: skip
            with trio.move_on_at(next(pending, math.inf)):
                await self._added.wait()
                self._added = trio.Event()
                continue
            now = trio.current_time()
            for transport, (job, deadline) in list(self._attempts.items()):
                if deadline > now:
                    break
                if job.id not in self._expired:
                    self._expired.add(job.id)
                    transport.abort()  # the thread returns with an error
