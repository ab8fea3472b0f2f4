"""The bounded job queue, the worker pool that drains it, retry scheduling and shutdown.

Lifetimes, all inside the one nursery that :meth:`Dispatcher.run` opens:

- *workers* (``workers`` of them) take jobs from the queue, each through its own
  :class:`~trimail.delivery.transport.Transport`, and run the blocking send in a thread;
- *retry timers* (one per job waiting for a retry) sleep through the backoff
  and put the job back on the queue; a waiting job holds no worker and no thread.

Shutdown (:meth:`Dispatcher.shutdown`): new jobs are refused at once; the
queue and pending retries get up to ``grace`` seconds to finish. If they do,
the queue is closed and the workers end after saying QUIT. If not, every
connection in use is cut and the nursery is cancelled. Either way, every job
still unfinished is logged ``not delivered`` before :meth:`Dispatcher.run` returns.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence

import trio

from ..errors import DeliveryError, QueueFull, ShuttingDown
from ..jobs import Job, JobRecord, Outcome, State
from ..models import SendRequest
from ..store.expiring import ExpiringStore
from .message import build_envelope
from .retry import RetryPolicy, Verdict, classify, classify_code
from .transport import SendResult, Transport

log = logging.getLogger(__name__)

#: Seconds a caller is told to wait after ``queue_full``: long enough for the
#: workers to finish a round of sends at typical provider latency (a guess).
QUEUE_FULL_RETRY_AFTER = 1
#: Seconds a worker may spend saying QUIT at shutdown before its thread is abandoned.
QUIT_TIMEOUT = 1.0


class Observer:
    """What the dispatcher reports as it works; this base ignores it (see trimail.http.metrics).

    Called on the event loop, synchronously: implementations must not block.
    """

    def attempted(self, result: str, smtp_code: int | None, duration: float) -> None:
        """An attempt ended: ``result`` is delivered, transient, permanent or partial."""

    def retry_scheduled(self) -> None:
        """A job will be tried again after a backoff."""

    def finished(self, outcome: Outcome) -> None:
        """A job got its final outcome."""


class Dispatcher:
    """Accepts jobs without waiting and delivers them in the background.

    ``transport_factory`` is called once per worker; each worker keeps its
    transport (and so its connection) for its whole life.
    """

    def __init__(
        self,
        transport_factory: Callable[[], Transport],
        *,
        workers: int = 8,
        queue_size: int = 10_000,
        retry: RetryPolicy | None = None,
        grace: float = 30.0,
        observer: Observer | None = None,
        history: ExpiringStore[str, JobRecord] | None = None,
    ) -> None:
        self.workers = workers
        self.capacity = queue_size
        self.retry = retry or RetryPolicy()
        self.grace = grace
        self.observer = observer or Observer()
        #: Finished jobs, for status lookups (the default keeps none).
        self.history = history if history is not None else ExpiringStore(0, 0)
        self._transport_factory = transport_factory
        self._send, self._receive = trio.open_memory_channel[Job](queue_size)
        # Our own limiter: trio's default one (40 threads) would silently cap the workers.
        self._threads = trio.CapacityLimiter(workers)
        self._outstanding: dict[str, Job] = {}
        self._in_flight: set[Transport] = set()
        self._retrying = 0
        self._started = False
        self._closing = trio.Event()
        self._drained = trio.Event()
        self._finished = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._grace_scope: trio.CancelScope | None = None

    # -- the request side: never blocks ---------------------------------------------

    @property
    def accepting(self) -> bool:
        """Whether :meth:`submit_many` takes jobs: between start and the start of shutdown."""
        return self._started and not self._closing.is_set() and not self._finished.is_set()

    @property
    def depth(self) -> int:
        """Jobs waiting in the queue (not those being sent or waiting for a retry)."""
        return self._send.statistics().current_buffer_used

    @property
    def outstanding(self) -> int:
        """Accepted jobs without a final outcome yet."""
        return len(self._outstanding)

    @property
    def retrying(self) -> int:
        return self._retrying

    @property
    def busy(self) -> int:
        """Workers in the middle of an attempt."""
        return len(self._in_flight)

    def lookup(self, job_id: str) -> JobRecord | None:
        """The job's current record: live while outstanding, then from ``history``."""
        job = self._outstanding.get(job_id)
        return job.record() if job is not None else self.history.get(job_id)

    def ensure_accepting(self, count: int = 1) -> None:
        """Raise what :meth:`submit_many` would raise for ``count`` jobs now; never waits."""
        if self._finished.is_set() and not self._closing.is_set():
            raise ShuttingDown(
                "delivery has stopped after an internal error and this instance is stopping; "
                "send the mail to another instance or retry later",
                retry_after=1,
            )
        if not self.accepting:
            raise ShuttingDown(
                "trimail is shutting down and accepts no new mail; send it to another instance "
                "or retry later",
                retry_after=max(1, math.ceil(self.grace)),
            )
        free = self.capacity - self.depth
        if count > free:
            raise QueueFull(
                f"the queue has room for {free} of {self.capacity} jobs; retry after the delay "
                "given",
                retry_after=QUEUE_FULL_RETRY_AFTER,
            )

    def submit(self, request: SendRequest, owner: str | None = None) -> Job:
        """Queue ``request`` as a new job, log it accepted and return it; never waits."""
        return self.submit_many([request], owner)[0]

    def submit_many(self, requests: Sequence[SendRequest], owner: str | None = None) -> list[Job]:
        """Queue all of ``requests`` or none of them; never waits.

        Raises :class:`~trimail.errors.ShuttingDown` once shutdown has begun (or
        before :meth:`run` started) and :class:`~trimail.errors.QueueFull` when
        the queue lacks room for all of them; a refused call leaves no trace.
        ``owner`` names the API key the jobs belong to.
        """
        self.ensure_accepting(len(requests))
        jobs = [Job(request, owner=owner) for request in requests]
        for job in jobs:  # no checkpoint in between: the room checked above is still there
            self._send.send_nowait(job)
            self._outstanding[job.id] = job
            job.log_accepted()
        return jobs

    # -- the background side ---------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the workers until :meth:`shutdown` completes; start with ``nursery.start``.

        Cancellation: if the caller cancels this task, in-flight connections are
        cut, and every unfinished job is logged ``not delivered`` before it returns.
        """
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                try:
                    for number in range(self.workers):
                        nursery.start_soon(
                            self._worker, self._receive.clone(), name=f"trimail-worker-{number}"
                        )
                    self._receive.close()  # the workers' clones keep the queue open
                    self._started = True
                    task_status.started()  # before any checkpoint, so a worker cannot fail first
                    await self._closing.wait()
                    self._check_drained()
                    with trio.move_on_after(self.grace) as self._grace_scope:
                        await self._drained.wait()
                    if self._drained.is_set():
                        await self._send.aclose()  # workers see the end of the queue and finish
                finally:
                    if not self._drained.is_set():  # grace over, or we were cancelled
                        self._abort(nursery)
        finally:
            for job in list(self._outstanding.values()):
                self._finish(job, Outcome.NOT_DELIVERED, self._undelivered_reason(job))
            self._finished.set()

    async def shutdown(self) -> None:
        """Stop accepting, drain for up to ``grace`` seconds, and wait until :meth:`run` ended.

        Safe to call more than once and from several tasks. Cancellation: the
        wait is cancelled; the drain itself carries on under :meth:`run`.
        """
        if not self._closing.is_set():
            log.info(
                "shutting down: %d job(s) outstanding, up to %.1f s to finish",
                len(self._outstanding),
                self.grace,
            )
            self._closing.set()
        if self._started:
            await self._finished.wait()

    def stop_now(self) -> None:
        """End the grace period at once (a second SIGTERM): what is unfinished is not delivered."""
        self._closing.set()
        if self._grace_scope is not None:
            self._grace_scope.cancel()
        elif self._nursery is not None:
            self._abort(self._nursery)

    def _abort(self, nursery: trio.Nursery) -> None:
        for transport in list(self._in_flight):
            transport.abort()  # the blocked thread returns at once, its job stays unfinished
        nursery.cancel_scope.cancel()

    def _undelivered_reason(self, job: Job) -> str:
        reason = "shut down before it could be sent"
        if job.last_error:
            reason += f" (last error: {job.last_error})"
        if job.delivered:
            reason += f"; {len(job.delivered)} recipient(s) had already received it"
        return reason

    def _finish(self, job: Job, outcome: Outcome, reason: str = "") -> None:
        if job.finish(outcome, reason):
            del self._outstanding[job.id]
            self.history.put(job.id, job.record())
            self.observer.finished(outcome)
            self._check_drained()

    def _check_drained(self) -> None:
        if self._closing.is_set() and not self._outstanding:
            self._drained.set()

    async def _worker(self, jobs: trio.MemoryReceiveChannel[Job]) -> None:
        transport = self._transport_factory()
        try:
            async with jobs:
                async for job in jobs:
                    try:
                        await self._attempt(job, transport)
                    except Exception:  # a bug must cost one job, not the worker
                        log.exception("internal error while delivering job %s", job.id)
                        job.last_error = "internal error in trimail (see the server log)"
                        job.last_error_code = None
                        self._finish(job, Outcome.FAILED)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(QUIT_TIMEOUT):
                await trio.to_thread.run_sync(
                    transport.close, limiter=self._threads, abandon_on_cancel=True
                )

    async def _attempt(self, job: Job, transport: Transport) -> None:
        """One delivery attempt; ends with the job finished or its retry scheduled."""
        job.attempts += 1
        job.set_state(State.SENDING)
        started = trio.current_time()
        self._in_flight.add(transport)
        try:
            # Not abandoned on cancel: the outcome of a send must be known before it is
            # logged. Shutdown unblocks the thread with transport.abort() instead.
            result = await trio.to_thread.run_sync(_send_job, transport, job, limiter=self._threads)
        except DeliveryError as exc:
            code, reason = exc.smtp_code, exc.reason
            verdict = classify(exc)
            job.last_error = reason
            job.last_error_code = code
            duration = trio.current_time() - started
            job.log_attempt(f"{verdict.value} failure", code, duration, reason)
            self.observer.attempted(verdict.value, code, duration)
            self._after_failure(job, verdict)
            return
        finally:
            self._in_flight.discard(transport)
        self._after_result(job, result, trio.current_time() - started)

    def _after_result(self, job: Job, result: SendResult, duration: float) -> None:
        job.delivered.extend(result.accepted)
        retry_later = []
        for recipient, (code, reply) in result.refused.items():
            if classify_code(code) is Verdict.TRANSIENT:
                retry_later.append(recipient)
            job.refused[recipient] = f"{code} {reply}"
        job.pending = tuple(retry_later)
        summary = f"{len(result.accepted)} accepted, {len(result.refused)} refused"
        if retry_later:
            code = result.refused[retry_later[0]][0]
            job.last_error = "; ".join(f"{r}: {job.refused[r]}" for r in retry_later)
            job.last_error_code = code
            self.observer.attempted("partial" if result.accepted else "transient", code, duration)
            job.log_attempt(
                "partial" if result.accepted else "transient failure", code, duration, summary
            )
            for recipient in retry_later:
                del job.refused[recipient]  # not final yet; it is retried
            self._after_failure(job, Verdict.TRANSIENT)
            return
        code = 250 if result.accepted else next(iter(result.refused.values()))[0]
        job.log_attempt("delivered" if result.accepted else "refused", code, duration, summary)
        self.observer.attempted("delivered" if result.accepted else "permanent", code, duration)
        if job.delivered:
            self._finish(job, Outcome.SENT)
        else:
            first = next(iter(job.refused.values()))
            count = len(job.refused)
            job.last_error = first if count == 1 else f"all {count} recipients refused; {first}"
            job.last_error_code = code
            self._finish(job, Outcome.FAILED)

    def _after_failure(self, job: Job, verdict: Verdict) -> None:
        if not self.retry.should_retry(job.attempts, verdict):
            if job.delivered:  # earlier attempts reached some recipients
                for recipient in job.pending:
                    job.refused[recipient] = job.last_error or "not delivered"
                self._finish(job, Outcome.SENT)
            else:
                self._finish(job, Outcome.FAILED, job.last_error or "")
            return
        delay = self.retry.backoff(job.attempts)
        job.set_state(State.RETRYING)
        self.observer.retry_scheduled()
        assert self._nursery is not None
        self._nursery.start_soon(self._retry_later, job, delay, name=f"trimail-retry-{job.id}")

    async def _retry_later(self, job: Job, delay: float) -> None:
        self._retrying += 1
        try:
            await trio.sleep(delay)
            job.set_state(State.QUEUED)
            await self._send.send(job)  # may wait for room; the request path never does
        finally:
            self._retrying -= 1


def _send_job(transport: Transport, job: Job) -> SendResult:
    """Build the job's message once, then send it to its pending recipients (in a thread)."""
    if job.envelope is None:
        job.envelope = build_envelope(job.request, job.id)
    envelope = job.envelope
    if envelope.recipients != job.pending:
        envelope = dataclasses.replace(envelope, recipients=job.pending)
    return transport.send(envelope)
