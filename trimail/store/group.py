"""Group commit: many callers, one transaction for all those who arrived meanwhile.

While one flush runs (in a thread), new items wait; the next flush takes them
all. No background task drives it: a caller whose item is pending and finds no
flush running runs the next one itself, so the work happens in the tasks that
wait for it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import trio

T = TypeVar("T")
R = TypeVar("R")


class _Slot(Generic[T, R]):
    __slots__ = ("done", "item", "outcome")

    def __init__(self, item: T) -> None:
        self.item = item
        self.done = False
        self.outcome: R | BaseException | None = None


class GroupCommit(Generic[T, R]):
    """Calls ``flush(items)`` in a thread, one call at a time, for every item pending.

    ``flush`` returns one result per item, in order; an item's result may be an
    exception, which is raised to that item's caller alone. An exception raised
    by ``flush`` itself is raised to every caller of that flush.

    Cancellation: a caller that is cancelled while its item is in a running
    flush is told so only after the flush ends (a thread cannot be cancelled);
    an item still waiting for a flush is withdrawn.
    """

    def __init__(
        self,
        flush: Callable[[Sequence[T]], Sequence[R | BaseException]],
        limiter: trio.CapacityLimiter,
        max_items: int = 1000,
    ) -> None:
        self._flush = flush
        self._limiter = limiter
        self._max_items = max_items
        self._pending: list[_Slot[T, R]] = []
        self._flushing = False
        self._flushed = trio.Event()

    async def __call__(self, item: T) -> R:
        slot: _Slot[T, R] = _Slot(item)
        self._pending.append(slot)
        try:
            while not slot.done:
                if self._flushing:
                    await self._flushed.wait()
                else:
                    await self._run_flush()
        except BaseException:
            if not slot.done and slot in self._pending:
                self._pending.remove(slot)
            raise
        if isinstance(slot.outcome, BaseException):
            raise slot.outcome
        return slot.outcome  # type: ignore[return-value]

    async def _run_flush(self) -> None:
        batch = self._pending[: self._max_items]
        del self._pending[: len(batch)]
        self._flushing = True
        try:
            try:
                outcomes = await trio.to_thread.run_sync(
                    self._flush, [slot.item for slot in batch], limiter=self._limiter
                )
            except Exception as exc:  # the whole flush failed: every item of it did
                outcomes = [exc] * len(batch)
            except BaseException:  # cancelled before the thread started: back in line
                self._pending[:0] = batch
                raise
            for slot, outcome in zip(batch, outcomes, strict=True):
                slot.outcome, slot.done = outcome, True
        finally:
            self._flushing = False
            flushed, self._flushed = self._flushed, trio.Event()
            flushed.set()
