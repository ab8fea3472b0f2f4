"""Log output: JSON lines with the job fields, and no secrets or bodies."""

from __future__ import annotations

import io
import json
import logging

from trimail.config import LogFormat
from trimail.ledger import Closing, Ledger
from trimail.logs import configure_logging, flush_logging


def test_json_lines_carry_job_fields() -> None:
    """In JSON format every job line is one object with job_id, event and outcome."""
    stream = io.StringIO()
    configure_logging(LogFormat.JSON, "INFO", stream=stream)
    ledger = Ledger()
    try:
        ledger.accepted("a" * 32, recipients=1)
        ledger.attempt("a" * 32, 1, "delivered", 250, 0.012)
        ledger.close("a" * 32, Closing.SENT, attempts=1, delivered=1)
    finally:
        flush_logging()
        logging.getLogger("trimail").handlers.clear()
        logging.getLogger("trimail").propagate = True
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [r["event"] for r in records] == ["accepted", "attempt", "final"]
    assert all(r["job_id"] == "a" * 32 for r in records)
    assert records[1]["smtp_code"] == 250
    assert records[1]["duration_ms"] == 12.0
    assert records[2]["outcome"] == "sent"
    assert ledger.open == set()


def test_the_ledger_answers_for_open_jobs_only() -> None:
    """Accepted and claimed jobs are open here until closed, or forgotten when closed elsewhere."""
    ledger = Ledger()
    ledger.accepted("a", 1)
    ledger.claimed("b")
    ledger.claimed("c")
    assert ledger.open == {"a", "b", "c"}
    ledger.close("a", Closing.FAILED, attempts=1, reason="550 no")
    ledger.forget(["b"])
    assert ledger.open == {"c"}
