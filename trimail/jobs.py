"""A job's record from acceptance to its one final outcome, and the log lines that tell it.

The ledger rule: every accepted job gets exactly one final line, ``sent``,
``failed`` or ``not delivered``, carrying its id. :meth:`Job.finish` is the only
way to write it, and writes it at most once.

A job's ``state`` is what ``GET /email/{id}`` reports::

    queued ──> sending ──> sent | failed
      ^           │
      └─ retrying <┘            (any unfinished state) ──> undelivered, at shutdown
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from .delivery.message import Envelope
from .models import SendRequest

log = logging.getLogger(__name__)


class Outcome(str, Enum):
    SENT = "sent"
    FAILED = "failed"
    NOT_DELIVERED = "not delivered"


class State(str, Enum):
    QUEUED = "queued"
    SENDING = "sending"
    RETRYING = "retrying"
    SENT = "sent"
    FAILED = "failed"
    UNDELIVERED = "undelivered"


FINAL_STATE = {
    Outcome.SENT: State.SENT,
    Outcome.FAILED: State.FAILED,
    Outcome.NOT_DELIVERED: State.UNDELIVERED,
}


def _timestamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds")


def new_job_id() -> str:
    """An opaque, unguessable id: 32 hex digits."""
    return uuid.uuid4().hex


@dataclass(eq=False)
class Job:
    """One accepted request and what has happened to it so far.

    ``pending`` holds the envelope recipients still to deliver: all of them at
    first, only those refused with a 4xx after a partial delivery.
    """

    request: SendRequest
    owner: str | None = None
    id: str = field(default_factory=new_job_id)
    attempts: int = 0
    pending: tuple[str, ...] = ()
    delivered: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    last_error: str | None = None
    last_error_code: int | None = None
    envelope: Envelope | None = None
    outcome: Outcome | None = None
    state: State = State.QUEUED
    created_at: float = field(default_factory=time.time)
    updated_at: float = 0.0

    def __post_init__(self) -> None:
        if not self.pending:
            self.pending = tuple(m.smtp_address for m in self.request.envelope_recipients)
        self.updated_at = self.created_at

    def set_state(self, state: State) -> None:
        self.state = state
        self.updated_at = time.time()

    def record(self) -> JobRecord:
        """A small snapshot of the job for status lookups, without its message."""
        return JobRecord(
            id=self.id,
            owner=self.owner,
            state=self.state,
            attempts=self.attempts,
            created_at=self.created_at,
            updated_at=self.updated_at,
            last_error_code=self.last_error_code,
            last_error=self.last_error,
            refused=dict(self.refused) if self.refused else None,
        )

    def log_accepted(self) -> None:
        log.info(
            "job %s accepted for %d recipient(s)",
            self.id,
            len(self.pending),
            extra={"job_id": self.id, "event": "accepted", "recipients": len(self.pending)},
        )

    def log_attempt(self, result: str, smtp_code: int | None, duration: float, detail: str) -> None:
        """One line per attempt: its number, its result, the SMTP code and how long it took."""
        log.info(
            "job %s attempt %d: %s (smtp %s, %.0f ms)%s",
            self.id,
            self.attempts,
            result,
            smtp_code if smtp_code is not None else "-",
            duration * 1000,
            f": {detail}" if detail else "",
            extra={
                "job_id": self.id,
                "event": "attempt",
                "attempt": self.attempts,
                "result": result,
                "smtp_code": smtp_code,
                "duration_ms": round(duration * 1000, 1),
            },
        )

    def finish(self, outcome: Outcome, reason: str = "") -> bool:
        """Write the job's final line; False (and nothing written) if it already has one."""
        if self.outcome is not None:
            return False
        self.outcome = outcome
        self.set_state(FINAL_STATE[outcome])
        self.envelope = None  # the built message is no longer needed
        refused = "; ".join(f"{rcpt}: {why}" for rcpt, why in self.refused.items())
        parts = [f"job {self.id} {outcome.value}"]
        if outcome is Outcome.SENT:
            parts.append(f"to {len(self.delivered)} recipient(s)")
            if refused:
                parts.append(f"(failed for {len(self.refused)}: {refused})")
        else:
            parts.append(f"after {self.attempts} attempt(s): {reason or self.last_error or '-'}")
            if refused and outcome is Outcome.FAILED:
                parts.append(f"({refused})")
        level = logging.INFO if outcome is Outcome.SENT and not self.refused else logging.ERROR
        log.log(
            level,
            " ".join(parts),
            extra={
                "job_id": self.id,
                "event": "final",
                "outcome": outcome.value,
                "attempts": self.attempts,
                "delivered": len(self.delivered),
                "failed_recipients": dict(self.refused),
            },
        )
        return True


@dataclass(frozen=True, slots=True)
class JobRecord:
    """What ``GET /email/{id}`` knows about a job; kept after the job itself is gone."""

    id: str
    owner: str | None
    state: State
    attempts: int
    created_at: float
    updated_at: float
    last_error_code: int | None
    last_error: str | None
    refused: dict[str, str] | None

    def status(self) -> dict[str, Any]:
        """The JSON body of ``GET /email/{id}``."""
        body: dict[str, Any] = {
            "id": self.id,
            "status": self.state.value,
            "attempts": self.attempts,
            "created_at": _timestamp(self.created_at),
            "updated_at": _timestamp(self.updated_at),
        }
        if self.last_error is not None and self.state is not State.SENT:
            body["last_error"] = {"code": self.last_error_code, "message": self.last_error}
        if self.refused:
            body["failed_recipients"] = self.refused
        return body
