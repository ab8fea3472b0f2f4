"""The delivery engine: claims due jobs from the store and sends them with worker tasks.

Lifetimes, all inside the one nursery that :meth:`Dispatcher.run` opens:

- the *claimer* takes due jobs from the store, never more than there are idle
  workers, and hands each to an idle worker through a trio memory channel
  bounded at zero (so no claimed job ever waits in a buffer); when
  nothing is due it sleeps until woken (a job accepted here, a notification
  from another instance) or until the next job falls due, at most
  ``poll_interval`` seconds (a durable store only: another process may add work);
- *workers* (``workers`` of them) each take a connection from the
  :class:`~trimail.delivery.pool.ConnectionPool` for an attempt, run it in a
  thread, give the connection back and record in the store where the attempt
  left the job; the claimer never starts more attempts at once than the
  :class:`~trimail.delivery.concurrency.ConcurrencyLimit` learnt from the
  provider allows (a connection the provider turned away puts its job back
  in the queue, not counted as an attempt);
- the *reaper* closes connections idle for ``idle_timeout`` seconds;
- the *watcher* relays the store's notifications (PostgreSQL LISTEN) to the claimer;
- the *watchdog* cuts an attempt still running at its deadline, a little before its
  claim's lease ends, so that no other instance takes the job while it is sent.

A retry is not a task: it is the job's next-attempt time in the store.

Shutdown (:meth:`shutdown`): with the memory store the dispatcher keeps
delivering for up to ``grace`` seconds, until no job is open. With a durable
store it claims nothing more, gives back the jobs it claimed but did not start,
and waits up to ``grace`` for the attempts in flight. When the grace runs out,
the connections in use are cut (a send cut so is not recorded: a durable
store's lease brings it back) and the nursery is cancelled. Either way the
ledger then closes every job still open here (:func:`trimail.ledger.settle`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable

import trio

from ..errors import DeliveryError, StoreUnavailable, TransientDeliveryError
from ..ledger import Closing, Ledger, settle
from ..store import AttemptResult, ClaimedJob, JobState, JobStore
from . import outcomes
from .concurrency import ConcurrencyLimit
from .exchange import SendResult
from .inflight import InFlight
from .message import build_envelope
from .pool import ConnectionPool
from .provider import ProviderState
from .retry import RetryPolicy
from .transport import Transport

log = logging.getLogger(__name__)

#: Seconds between attempts to reach a store that is unavailable.
STORE_RETRY_DELAY = 1.0
#: Seconds the claimer waits at least when the store says a job is due but none was
#: claimable (another instance holds it): keeps a race from becoming a busy loop.
MIN_POLL = 0.01
#: Seconds the closing bookkeeping at shutdown may take (a few store calls).
SETTLE_TIMEOUT = 10.0
#: Seconds between an attempt's deadline and the end of its lease (at most a tenth of
#: the lease): time to record the outcome before another instance may claim the job.
LEASE_MARGIN = 60.0


class Observer:
    """What the dispatcher reports as it works; this base ignores it (see trimail.http.metrics).

    Called on the event loop, synchronously: implementations must not block.
    """

    def attempted(self, kind: str, smtp_code: int | None, duration: float) -> None:
        """An attempt ended: ``kind`` is delivered, transient, permanent or partial."""

    def retry_scheduled(self) -> None:
        """A job will be tried again at its next-attempt time."""

    def finished(self, closing: Closing) -> None:
        """A job got its closing line."""


class Dispatcher:
    """Delivers the store's due jobs in the background; see the module docstring.

    ``clock`` gives Unix seconds (tests pass one driven by trio's clock).
    ``attempt_deadline`` defaults to the lease less a margin to record the
    outcome; ``math.inf`` turns the watchdog off (tests on trio's autojump
    clock, which leaps over a thread's real time to the next deadline).
    """

    def __init__(
        self,
        store: JobStore,
        transport_factory: Callable[[], Transport],
        *,
        ledger: Ledger | None = None,
        workers: int = 8,
        idle_timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        lease_seconds: float = 900.0,
        grace: float = 30.0,
        observer: Observer | None = None,
        clock: Callable[[], float] = time.time,
        poll_interval: float = 1.0,
        attempt_deadline: float | None = None,
        provider: ProviderState | None = None,
    ) -> None:
        self.store = store
        self.ledger = ledger or Ledger()
        self.workers = workers
        self.retry = retry or RetryPolicy()
        self.lease_seconds = lease_seconds
        self.grace = grace
        self.observer = observer or Observer()
        self.clock = clock
        self.poll_interval = poll_interval
        #: What attempts have shown of the provider (readiness; see .provider).
        self.provider = provider or ProviderState()
        if attempt_deadline is None:
            attempt_deadline = lease_seconds - min(LEASE_MARGIN, lease_seconds / 10)
        #: Seconds an attempt may run before the watchdog cuts it (``math.inf``: no limit).
        self.attempt_deadline = attempt_deadline
        self._pool = ConnectionPool(transport_factory, idle_timeout)
        self._limit = ConcurrencyLimit(workers)
        self._send, self._receive = trio.open_memory_channel[ClaimedJob](0)
        # Our own limiter: trio's default one (40 threads) would silently cap the workers.
        self._threads = trio.CapacityLimiter(workers)
        self._active = 0  # jobs handed to a worker and not yet recorded
        self._room = trio.Event()
        self._wake = trio.Event()
        self._in_flight = InFlight(attempt_deadline)
        self._cut: set[str] = set()
        self._cutting = False
        self._started = False
        self._closing = trio.Event()
        self._drained = trio.Event()
        self._finished = trio.Event()
        self._claims = trio.CancelScope()
        self._grace_scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self.store_error: str | None = None

    @property
    def busy(self) -> int:
        """Workers in the middle of an attempt."""
        return len(self._in_flight)

    @property
    def connections(self) -> int:
        """SMTP connections open now, in use or idle."""
        return len(self._pool) + sum(1 for transport in self._in_flight if transport.connected)

    @property
    def concurrency(self) -> int:
        """Attempts allowed at once now: ``workers``, or less after the provider pushed back."""
        return self._limit.allowed

    def wake(self) -> None:
        """Make the claimer look for due jobs now (a job was just accepted)."""
        self._wake.set()

    # -- running and stopping --------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver until :meth:`shutdown` completes; start with ``nursery.start``.

        Cancellation: if the caller cancels this task, in-flight connections are
        cut, and every job still open here gets its closing line before it returns.
        """
        try:
            async with trio.open_nursery() as nursery:  # the claimer, watcher and watchdog
                self._nursery = nursery
                nursery.start_soon(self._claimer, name="trimail-claimer")
                nursery.start_soon(self._pool.run, name="trimail-reaper")
                async with trio.open_nursery() as workers:
                    try:
                        for number in range(self.workers):
                            workers.start_soon(
                                self._worker, self._receive.clone(), name=f"trimail-worker-{number}"
                            )
                        self._receive.close()  # the workers' clones keep the queue open
                        self._started = True
                        task_status.started()  # before any checkpoint: no worker can fail first
                        nursery.start_soon(self._watch, name="trimail-watcher")
                        nursery.start_soon(self._in_flight.watch, name="trimail-watchdog")
                        await self._closing.wait()
                        await self._stop_taking_work()
                        with trio.move_on_after(self.grace) as self._grace_scope:
                            await self._drained.wait()
                        if self._drained.is_set():
                            self._claims.cancel()
                            await self._send.aclose()  # workers see the end and finish
                    finally:
                        if not self._drained.is_set():  # grace over, or we were cancelled
                            self._abort(nursery)
                nursery.cancel_scope.cancel()  # no worker is left for the helpers to serve
                await self._pool.aclose()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(SETTLE_TIMEOUT):
                await settle(self.store, self.ledger, self.clock(), self._cut)
            self._finished.set()

    async def shutdown(self) -> None:
        """Stop, within ``grace`` seconds (see the module docstring); wait until :meth:`run` ended.

        Safe to call more than once and from several tasks. Cancellation: the
        wait is cancelled; the drain itself carries on under :meth:`run`.
        """
        if not self._closing.is_set():
            log.info(
                "shutting down: %d job(s) open here, up to %.1f s to finish",
                len(self.ledger.open),
                self.grace,
            )
            self._closing.set()
        if self._started:
            await self._finished.wait()

    def stop_now(self) -> None:
        """End the grace period at once (a second SIGTERM)."""
        self._closing.set()
        if self._grace_scope is not None:
            self._grace_scope.cancel()
        elif self._nursery is not None:
            self._abort(self._nursery)

    async def _stop_taking_work(self) -> None:
        """Durable store: claim nothing more (the attempts in flight may finish)."""
        if self.store.durable:
            self._claims.cancel()
        self._check_drained()

    def _check_drained(self) -> None:
        if not self._closing.is_set() or self._active:
            return
        if self.store.durable or not self.ledger.open:
            self._drained.set()

    def _abort(self, nursery: trio.Nursery) -> None:
        self._cutting = True
        self._in_flight.cut_all()
        nursery.cancel_scope.cancel()

    # -- the claimer ------------------------------------------------------------------------

    async def _claimer(self) -> None:
        with self._claims:
            while True:
                idle_workers = self._send.statistics().tasks_waiting_receive
                room = min(idle_workers, self._limit.allowed - self._active)
                if room <= 0:
                    await self._room.wait()
                    self._room = trio.Event()
                    continue
                now = self.clock()
                try:
                    jobs = await self.store.claim(room, now, now + self.lease_seconds)
                except StoreUnavailable as exc:
                    self._store_down(exc)
                    await trio.sleep(STORE_RETRY_DELAY)
                    continue
                self.store_error = None
                await self._hand_over(jobs)
                if len(jobs) < room:
                    await self._sleep_until_due(empty=not jobs)

    async def _hand_over(self, jobs: list[ClaimedJob]) -> None:
        """Give each job to an idle worker, with no checkpoint before the last is given."""
        unplaced = []
        for job in jobs:
            try:
                self._send.send_nowait(job)
            except (trio.WouldBlock, trio.ClosedResourceError):  # shutdown: the job goes back
                unplaced.append(job)
                continue
            self._active += 1
            self.ledger.claimed(job.id)
        if unplaced:  # if the store is down, their leases bring them back
            with trio.CancelScope(shield=True), contextlib.suppress(StoreUnavailable):
                await self.store.release(unplaced, self.clock())

    async def _sleep_until_due(self, empty: bool) -> None:
        try:
            due = await self.store.next_due()
        except StoreUnavailable:
            due = None
        # Another process may add work to a durable store: look again every poll_interval.
        delay = self.poll_interval if self.store.durable else math.inf
        if due is not None:
            delay = min(delay, max(MIN_POLL if empty else 0.0, due - self.clock()))
        with trio.move_on_after(delay):
            await self._wake.wait()
        self._wake = trio.Event()

    async def _watch(self) -> None:
        await self.store.watch(self.wake, task_status=trio.TASK_STATUS_IGNORED)

    def _store_down(self, exc: StoreUnavailable) -> None:
        if self.store_error is None:
            log.warning("the store is unavailable (%s); retrying every %.0f s",
                        exc.detail, STORE_RETRY_DELAY)  # fmt: skip
        self.store_error = exc.detail

    # -- the workers ------------------------------------------------------------------------

    async def _worker(self, jobs: trio.MemoryReceiveChannel[ClaimedJob]) -> None:
        async with jobs:
            while True:
                self._room.set()
                try:
                    job = await jobs.receive()
                except trio.EndOfChannel:
                    return
                transport = self._pool.take()
                try:
                    await self._deliver(job, transport)
                finally:
                    self._pool.give_back(transport)
                    self._active -= 1
                self._check_drained()

    async def _deliver(self, job: ClaimedJob, transport: Transport) -> None:
        """One attempt, then its result recorded in the store (shielded: it must not be lost)."""
        started = trio.current_time()
        self._in_flight.start(transport, job)
        sent: SendResult | DeliveryError | None = None  # None: a bug in trimail
        try:
            # Not abandoned on cancel: the outcome of a send must be known before it is
            # recorded. Shutdown unblocks the thread with transport.abort() instead.
            sent = await trio.to_thread.run_sync(
                _send_in_thread, transport, job, limiter=self._threads
            )
        except DeliveryError as failure:
            sent = failure
        except Exception:  # a bug must cost one job, not the worker
            log.exception("internal error while delivering job %s", job.id)
        finally:
            expired = self._in_flight.end(transport)
        if isinstance(sent, DeliveryError) and self._cutting:  # cut by our own shutdown
            self._cut.add(job.id)
            self.ledger.attempt(job.id, job.attempt, "cut by trimail's shutdown", None,
                                trio.current_time() - started)  # fmt: skip
            return
        turned_away = isinstance(sent, DeliveryError) and sent.pushback and not expired
        if turned_away and isinstance(sent, DeliveryError) and await self._pushed_back(job, sent):
            return
        now = self.clock()
        if isinstance(sent, SendResult):
            self.provider.succeeded()
            if self._limit.delivered(trio.current_time()):
                log.info("concurrency back to %d connection(s)", self._limit.allowed)
            attempted = outcomes.after_send(job, sent, self.retry, now)
        elif isinstance(sent, DeliveryError):
            if sent.provider and not expired:
                self.provider.failed(sent.reason)
            if expired:
                sent = TransientDeliveryError(
                    f"the attempt was cut at its deadline ({self.attempt_deadline:.0f} s); "
                    "the provider may already have the message"
                )
            attempted = outcomes.after_failure(job, sent, self.retry, now)
        else:
            result = outcomes.internal_error(job, now)
            attempted = outcomes.Attempted(result, "internal error", "permanent", None, "")
        duration = trio.current_time() - started
        self.ledger.attempt(job.id, job.attempt, attempted.line, attempted.smtp_code, duration,
                            attempted.detail)  # fmt: skip
        self.observer.attempted(attempted.kind, attempted.smtp_code, duration)
        with trio.CancelScope(shield=True):
            await self._record(job, attempted.result)

    async def _pushed_back(self, job: ClaimedJob, error: DeliveryError) -> bool:
        """Learn from a connection turned away; True if the job went back to the queue.

        With other attempts running or connections open, the provider may only
        be full: the attempt did not happen, so it is not counted, and the
        concurrency is lowered (see :mod:`trimail.delivery.concurrency`). Alone,
        it is an ordinary failure.
        """
        open_connections = self.connections
        others = len(self._in_flight) + len(self._pool)
        if self._limit.pushed_back(open_connections, trio.current_time()):
            log.warning("the SMTP server turned a connection away (%s) with %d open: at most %d "
                        "at once for now", error.reason, open_connections,
                        self._limit.allowed)  # fmt: skip
        if not others:
            return False
        self.ledger.requeued(job.id, job.attempt, error.reason)
        with trio.CancelScope(shield=True), contextlib.suppress(StoreUnavailable):
            await self.store.release([job], self.clock())  # if the store is down: the lease
        return True

    async def _record(self, job: ClaimedJob, result: AttemptResult) -> None:
        lease_end = self.clock() + self.lease_seconds
        while True:
            try:
                await self.store.record([result])
                break
            except StoreUnavailable as exc:
                self._store_down(exc)
                if self.clock() > lease_end or self._cutting:
                    log.error("could not record the outcome of job %s attempt %d; it is left "
                              "to its lease", job.id, job.attempt)  # fmt: skip
                    self._cut.add(job.id)
                    return
                await trio.sleep(STORE_RETRY_DELAY)
        if result.state is JobState.RETRYING:
            self.observer.retry_scheduled()
            self.wake()  # the claimer recomputes when the next job is due
            return
        closing = Closing.SENT if result.state is JobState.SENT else Closing.FAILED
        self.ledger.close(job.id, closing, job.attempt, result.last_error or "",
                          len(result.delivered), result.refused)  # fmt: skip
        self.observer.finished(closing)


#: Held while a message is built. Building is CPU-bound pure Python and C that holds
#: the GIL: done by many threads at once, it would compete with the event loop many
#: times over (the loop waits up to a switch interval for the GIL each time it gives
#: it up), so it runs in one thread at a time; sending, mostly waiting, does not.
_BUILDING = threading.Lock()


def _send_in_thread(transport: Transport, job: ClaimedJob) -> SendResult:
    """Build the job's message, then send it to its pending recipients (in a thread)."""
    with _BUILDING:
        envelope = build_envelope(job.request, job.id, job.created_at)
    if envelope.recipients != job.pending:
        envelope = dataclasses.replace(envelope, recipients=job.pending)
    return transport.send(envelope)
