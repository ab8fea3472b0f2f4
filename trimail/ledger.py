"""The log lines that tell each job's story, and the jobs this process answers for.

The ledger rule: every accepted job gets one ``accepted`` line, one line per
attempt, and one closing line with its id, written by the process that saw
its end: ``sent``, ``failed`` (with why), or, when trimail stops first, ``not
delivered`` (memory store: the job is gone) or ``left queued`` (durable stores:
the next start, or another instance, carries on).

``open`` holds the ids this process accepted or claimed and has not seen
close: at shutdown they are the ones it writes a closing line for.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from enum import Enum

from .errors import StoreUnavailable
from .store import JobStore

log = logging.getLogger(__name__)


class Closing(str, Enum):
    SENT = "sent"
    FAILED = "failed"
    NOT_DELIVERED = "not delivered"
    LEFT_QUEUED = "left queued"


class Ledger:
    """Writes the lines; remembers which jobs are still open for this process."""

    def __init__(self) -> None:
        self.open: set[str] = set()
        #: Closing lines written by this process, by outcome.
        self.closed: Counter[Closing] = Counter()

    def accepted(self, job_id: str, recipients: int) -> None:
        self.open.add(job_id)
        log.info(
            "job %s accepted for %d recipient(s)",
            job_id,
            recipients,
            extra={"job_id": job_id, "event": "accepted", "recipients": recipients},
        )

    def claimed(self, job_id: str) -> None:
        self.open.add(job_id)

    def attempt(
        self,
        job_id: str,
        attempt: int,
        result: str,
        smtp_code: int | None,
        duration: float,
        detail: str = "",
    ) -> None:
        """One line per attempt: its number, its result, the SMTP code and how long it took."""
        log.info(
            "job %s attempt %d: %s (smtp %s, %.0f ms)%s",
            job_id,
            attempt,
            result,
            smtp_code if smtp_code is not None else "-",
            duration * 1000,
            f": {detail}" if detail else "",
            extra={
                "job_id": job_id,
                "event": "attempt",
                "attempt": attempt,
                "result": result,
                "smtp_code": smtp_code,
                "duration_ms": round(duration * 1000, 1),
            },
        )

    def requeued(self, job_id: str, attempt: int, reason: str) -> None:
        """An attempt that never reached the provider: not counted, the job is due again."""
        log.info(
            "job %s attempt %d not made: %s; back in the queue (not counted)",
            job_id,
            attempt,
            reason,
            extra={"job_id": job_id, "event": "requeued", "attempt": attempt},
        )

    def close(
        self,
        job_id: str,
        closing: Closing,
        attempts: int,
        reason: str = "",
        delivered: int = 0,
        refused: dict[str, str] | None = None,
    ) -> None:
        """The job's closing line; ``refused`` maps recipients refused for good to replies."""
        self.open.discard(job_id)
        self.closed[closing] += 1
        refused = refused or {}
        listed = "; ".join(f"{rcpt}: {why}" for rcpt, why in refused.items())
        parts = [f"job {job_id} {closing.value}"]
        if closing is Closing.SENT:
            parts.append(f"to {delivered} recipient(s)")
            if listed:
                parts.append(f"(failed for {len(refused)}: {listed})")
        else:
            parts.append(f"after {attempts} attempt(s): {reason or '-'}")
            if listed and closing is Closing.FAILED:
                parts.append(f"({listed})")
        quiet = closing is Closing.LEFT_QUEUED or (closing is Closing.SENT and not refused)
        log.log(
            logging.INFO if quiet else logging.ERROR,
            " ".join(parts),
            extra={
                "job_id": job_id,
                "event": "final",
                "outcome": closing.value,
                "attempts": attempts,
                "delivered": delivered,
                "failed_recipients": refused,
            },
        )

    def forget(self, job_ids: Iterable[str]) -> None:
        """Stop answering for jobs another instance has closed."""
        self.open.difference_update(job_ids)

    def tally(self) -> str:
        """The closing lines so far, as ``3 sent, 1 failed, 0 not delivered, 0 left queued``."""
        return ", ".join(f"{self.closed[closing]} {closing.value}" for closing in Closing)


async def settle(store: JobStore, ledger: Ledger, now: float, cut: set[str]) -> None:
    """Close every job still open here, as trimail stops without finishing them.

    Memory store: each is logged ``not delivered`` and marked ``undelivered``.
    Durable stores: each that the store still holds open is logged ``left
    queued`` (``cut``: those whose send trimail itself cut, left to their lease);
    those another instance closed meanwhile are forgotten without a line.
    """
    ids = sorted(ledger.open)
    if not ids:
        return
    if not store.durable:
        for job_id in ids:
            status = await store.status(job_id, now)
            reason = "shut down before it could be sent"
            if status is not None and status.last_error:
                reason += f" (last error: {status.last_error})"
            attempts = status.attempts if status is not None else 0
            ledger.close(job_id, Closing.NOT_DELIVERED, attempts, reason)
        await store.abandon(ids, now)
        return
    try:
        still = await store.unfinished(ids)
    except StoreUnavailable:
        still = dict.fromkeys(ids, 0)  # unknown: say what trimail knows, that it left them
    for job_id in ids:
        if job_id not in still:
            ledger.forget([job_id])
        elif job_id in cut:
            ledger.close(job_id, Closing.LEFT_QUEUED, still[job_id],
                         "in flight when trimail stopped; retried after its lease")  # fmt: skip
        else:
            ledger.close(job_id, Closing.LEFT_QUEUED, still[job_id],
                         "queued for the next start, or another instance")  # fmt: skip
