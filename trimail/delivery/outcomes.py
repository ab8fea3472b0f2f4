"""Where one attempt leaves its job: pure functions from what the server said to a result.

- Every recipient accepted (or some, and the rest refused for good): ``sent``;
  refused recipients are listed with the server's reply.
- Recipients refused with a ``4xx``: the job is retried for them alone (those
  already served never get it twice), as is a whole attempt that failed
  transiently, while the retry policy allows; then it is ``sent`` if anyone
  got it, else ``failed``.
- Every recipient refused for good, or a permanent failure: ``failed``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import DeliveryError
from ..store import AttemptResult, ClaimedJob, JobState
from .exchange import SendResult
from .retry import RetryPolicy, Verdict, classify, classify_code


@dataclass(frozen=True, slots=True)
class Attempted:
    """An attempt's result for the store, and what its log line and metrics say."""

    result: AttemptResult
    line: str  # delivered, refused, partial, transient failure, permanent failure
    kind: str  # for metrics: delivered, transient, permanent, partial
    smtp_code: int | None
    detail: str


def after_send(job: ClaimedJob, sent: SendResult, policy: RetryPolicy, now: float) -> Attempted:
    """The transaction reached DATA, or every recipient was refused."""
    delivered = (*job.delivered, *sent.accepted)
    refused = dict(job.refused)
    retry_for: list[str] = []
    for recipient, (code, reply) in sent.refused.items():
        if classify_code(code) is Verdict.TRANSIENT:
            retry_for.append(recipient)
        else:
            refused[recipient] = f"{code} {reply}"
    summary = f"{len(sent.accepted)} accepted, {len(sent.refused)} refused"
    if retry_for:
        code = sent.refused[retry_for[0]][0]
        reason = "; ".join(f"{r}: {sent.refused[r][0]} {sent.refused[r][1]}" for r in retry_for)
        line, kind = ("partial", "partial") if sent.accepted else ("transient failure", "transient")
        result = _retry_or_close(
            job, policy, now, Verdict.TRANSIENT, tuple(retry_for), delivered, refused, reason, code
        )
        return Attempted(result, line, kind, code, summary)
    if sent.accepted:
        result = _final(job, JobState.SENT, now, delivered, refused)
        return Attempted(result, "delivered", "delivered", 250, summary)
    code = next(iter(sent.refused.values()))[0]
    if delivered:  # an earlier attempt reached the others
        result = _final(job, JobState.SENT, now, delivered, refused)
    else:
        first = next(iter(refused.values()))
        reason = first if len(refused) == 1 else f"all {len(refused)} recipients refused; {first}"
        result = _final(job, JobState.FAILED, now, delivered, refused, reason, code)
    return Attempted(result, "refused", "permanent", code, summary)


def after_failure(
    job: ClaimedJob, error: DeliveryError, policy: RetryPolicy, now: float
) -> Attempted:
    """The whole transaction failed: nobody new got the mail."""
    verdict = classify(error)
    result = _retry_or_close(
        job, policy, now, verdict, job.pending, job.delivered, dict(job.refused), error.reason,
        error.smtp_code,
    )  # fmt: skip
    return Attempted(
        result, f"{verdict.value} failure", verdict.value, error.smtp_code, error.reason
    )


def internal_error(job: ClaimedJob, now: float) -> AttemptResult:
    """A bug in trimail failed the attempt: the job fails rather than retrying a bug."""
    return _final(job, JobState.FAILED, now, job.delivered, dict(job.refused),
                  "internal error in trimail (see the server log)")  # fmt: skip


def _retry_or_close(
    job: ClaimedJob,
    policy: RetryPolicy,
    now: float,
    verdict: Verdict,
    pending: tuple[str, ...],
    delivered: tuple[str, ...],
    refused: dict[str, str],
    reason: str,
    code: int | None,
) -> AttemptResult:
    due = policy.next_attempt(job.attempt, verdict, job.created_at, now)
    if due is not None:
        return AttemptResult(
            job.id, job.attempt, JobState.RETRYING, now, pending, delivered, refused,
            next_attempt_at=due, last_error=reason, last_error_code=code,
        )  # fmt: skip
    if delivered:  # some got it: sent, and the rest failed with the last reason
        refused = {**refused, **dict.fromkeys(pending, reason)}
        return _final(job, JobState.SENT, now, delivered, refused, reason, code)
    return _final(job, JobState.FAILED, now, delivered, refused, reason, code)


def _final(
    job: ClaimedJob,
    state: JobState,
    now: float,
    delivered: tuple[str, ...],
    refused: dict[str, str],
    reason: str | None = None,
    code: int | None = None,
) -> AttemptResult:
    return AttemptResult(
        job.id, job.attempt, state, now, (), delivered, refused,
        last_error=reason, last_error_code=code,
    )  # fmt: skip
