"""Log output: JSON lines with the job fields, and no secrets or bodies."""

from __future__ import annotations

import io
import json
import logging

from trimail.config import LogFormat
from trimail.jobs import Job, Outcome
from trimail.logs import configure_logging, flush_logging
from trimail.models import SendRequest


def test_json_lines_carry_job_fields() -> None:
    """In JSON format every job line is one object with job_id, event and outcome."""
    stream = io.StringIO()
    configure_logging(LogFormat.JSON, "INFO", stream=stream)
    try:
        job = Job(
            SendRequest.model_validate(
                {
                    "from": "a@example.com",
                    "to": "b@example.com",
                    "subject": "S",
                    "text": "secret body text",
                }
            )
        )
        job.log_accepted()
        job.attempts = 1
        job.log_attempt("delivered", 250, 0.012, "")
        job.delivered.append("b@example.com")
        job.finish(Outcome.SENT)
        assert not job.finish(Outcome.FAILED)  # a second final line is refused
    finally:
        flush_logging()
        logging.getLogger("trimail").handlers.clear()
        logging.getLogger("trimail").propagate = True
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [r["event"] for r in records] == ["accepted", "attempt", "final"]
    assert all(r["job_id"] == job.id for r in records)
    assert records[1]["smtp_code"] == 250
    assert records[1]["duration_ms"] == 12.0
    assert records[2]["outcome"] == "sent"
    assert "secret body text" not in stream.getvalue()
